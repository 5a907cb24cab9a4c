package identity

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"sort"
)

// Reserved numeric identities. 0 is never an identity: the policy compiler
// uses it as "any peer".
const (
	// Host is the local node itself (kubelet probes, host-network pods).
	Host uint32 = 1
	// World is every address outside the federation's endpoints and nodes.
	World uint32 = 2
	// RemoteNode is a node of the federation other than the local one.
	RemoteNode uint32 = 3
	// Unknown is an address inside a cluster's pod CIDRs that no endpoint
	// has (yet): a pod the syncer has not published.
	Unknown uint32 = 4

	// MinAllocated is the first number the allocator hands out; numbers
	// below it are reserved for fedmesh.
	MinAllocated uint32 = 256
	// MaxAllocated is the last number the allocator hands out.
	MaxAllocated uint32 = math.MaxUint32
)

// ReservedName returns the name of a reserved identity ("world"), or "".
func ReservedName(id uint32) string {
	switch id {
	case Host:
		return "host"
	case World:
		return "world"
	case RemoteNode:
		return "remote-node"
	case Unknown:
		return "unknown"
	}
	return ""
}

// ErrExhausted is returned when every number of the allocator's range is in
// use.
var ErrExhausted = errors.New("identity space exhausted")

// Entry is one allocated identity.
type Entry struct {
	ID     uint32
	Labels Labels
	// Refs is how many holders (endpoints) use the identity.
	Refs uint64
}

type entry struct {
	id     uint32
	labels Labels
	refs   uint64
}

// Allocator maps label sets to numeric identities. It is deterministic: the
// same sequence of Acquire/Release calls yields the same numbers, so every
// Raft replica that applies the same log assigns the same identities. New
// numbers are handed out in increasing order (never reusing a just-released
// number, which could make stale dataplane entries grant a new workload the
// old one's access); after the top of the range it wraps and takes the
// lowest free number.
//
// Not safe for concurrent use: its owner (the FSM) serialises calls.
type Allocator struct {
	min, max uint32
	next     uint32
	// byKey is keyed by the SHA-256 of the canonical label string, not the
	// string itself: label sets can be kilobytes, and holding each twice
	// (key and entry) doubled the FSM's memory for unique label sets.
	byKey map[labelKey]*entry
	byID  map[uint32]*entry
}

type labelKey [sha256.Size]byte

func keyOf(ls Labels) labelKey { return sha256.Sum256([]byte(ls.String())) }

// NewAllocator returns an allocator over [MinAllocated, MaxAllocated].
func NewAllocator() *Allocator { return NewAllocatorRange(MinAllocated, MaxAllocated) }

// NewAllocatorRange returns an allocator over [lo, hi]; lo is raised to 1 so
// 0 is never handed out.
func NewAllocatorRange(lo, hi uint32) *Allocator {
	if lo == 0 {
		lo = 1
	}
	return &Allocator{min: lo, max: hi, next: lo, byKey: map[labelKey]*entry{}, byID: map[uint32]*entry{}}
}

// Acquire returns the identity of ls and takes a reference on it; created
// is true when the number is new.
func (a *Allocator) Acquire(ls Labels) (id uint32, created bool, err error) {
	key := keyOf(ls)
	if e, ok := a.byKey[key]; ok {
		e.refs++
		return e.id, false, nil
	}
	id, err = a.free()
	if err != nil {
		return 0, false, fmt.Errorf("allocate identity for %q: %w", ls.String(), err)
	}
	e := &entry{id: id, labels: append(Labels(nil), ls...), refs: 1}
	a.byKey[key] = e
	a.byID[id] = e
	if id == a.max {
		a.next = a.min
	} else {
		a.next = id + 1
	}
	return id, true, nil
}

// free finds the next free number at or after a.next, wrapping once.
func (a *Allocator) free() (uint32, error) {
	if uint64(len(a.byID)) > uint64(a.max-a.min) {
		return 0, ErrExhausted
	}
	id := a.next
	if id < a.min || id > a.max {
		id = a.min
	}
	for {
		if _, used := a.byID[id]; !used {
			return id, nil
		}
		if id == a.max {
			id = a.min
		} else {
			id++
		}
	}
}

// Release drops one reference on id; when the last one goes the number is
// freed and Release reports true. Releasing an unknown id is a no-op.
func (a *Allocator) Release(id uint32) (freed bool) {
	e, ok := a.byID[id]
	if !ok {
		return false
	}
	e.refs--
	if e.refs > 0 {
		return false
	}
	delete(a.byID, id)
	delete(a.byKey, keyOf(e.labels))
	return true
}

// Lookup returns the labels of id.
func (a *Allocator) Lookup(id uint32) (Labels, bool) {
	if e, ok := a.byID[id]; ok {
		return e.labels, true
	}
	return nil, false
}

// LookupLabels returns the identity of ls without taking a reference.
func (a *Allocator) LookupLabels(ls Labels) (uint32, bool) {
	if e, ok := a.byKey[keyOf(ls)]; ok {
		return e.id, true
	}
	return 0, false
}

// Len is the number of allocated identities.
func (a *Allocator) Len() int { return len(a.byID) }

// State is the allocator's full state, for FSM snapshots.
type State struct {
	Next    uint32
	Entries []Entry // sorted by ID
}

// Snapshot returns the allocator's state.
func (a *Allocator) Snapshot() State {
	s := State{Next: a.next, Entries: make([]Entry, 0, len(a.byID))}
	for _, e := range a.byID {
		s.Entries = append(s.Entries, Entry{ID: e.id, Labels: append(Labels(nil), e.labels...), Refs: e.refs})
	}
	sort.Slice(s.Entries, func(i, j int) bool { return s.Entries[i].ID < s.Entries[j].ID })
	return s
}

// Restore replaces the allocator's state with s. It fails, leaving the
// allocator unchanged, when s has a number outside the range, a duplicate
// number or label set, or an entry with no references.
func (a *Allocator) Restore(s State) error {
	byKey := make(map[labelKey]*entry, len(s.Entries))
	byID := make(map[uint32]*entry, len(s.Entries))
	for _, e := range s.Entries {
		if e.ID < a.min || e.ID > a.max {
			return fmt.Errorf("restore identity %d: outside [%d, %d]", e.ID, a.min, a.max)
		}
		if e.Refs == 0 {
			return fmt.Errorf("restore identity %d: no references", e.ID)
		}
		key := keyOf(e.Labels)
		if _, dup := byID[e.ID]; dup {
			return fmt.Errorf("restore identity %d: duplicate number", e.ID)
		}
		if _, dup := byKey[key]; dup {
			return fmt.Errorf("restore identity %d: duplicate labels %q", e.ID, e.Labels.String())
		}
		en := &entry{id: e.ID, labels: append(Labels(nil), e.Labels...), refs: e.Refs}
		byKey[key], byID[e.ID] = en, en
	}
	a.byKey, a.byID, a.next = byKey, byID, s.Next
	return nil
}
