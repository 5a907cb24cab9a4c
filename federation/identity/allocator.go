package identity

import (
	"cmp"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
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
	ID  uint32
	Key Key
	// Refs is how many holders (endpoints) use the identity.
	Refs uint64
}

type entry struct {
	key  Key
	hash uint64
	refs uint64
}

// Allocator maps Keys to numeric identities and counts, per identity, the
// holders (endpoints) that use it: the one reference count of the control
// plane. It is deterministic: the same sequence of calls yields the same
// numbers, so every Raft replica that applies the same log assigns the same
// identities. New numbers are handed out in increasing order (never reusing
// a just-released number, which could make stale dataplane entries grant a
// new workload the old one's access); after the top of the range it wraps
// and takes the lowest free number.
//
// Keys are indexed by a seeded 64-bit hash and compared on a hit, so a
// collision costs a comparison, never a wrong answer; the seed differs per
// process and changes only the index's layout, never a number.
//
// Not safe for concurrent use: its owner (the FSM) serialises calls.
type Allocator struct {
	min, max, next uint32
	seed           maphash.Seed
	byID           map[uint32]*entry
	// byHash holds the first identity of each hash; more the others
	// (collisions, rare), so the common case is one small map entry.
	byHash map[uint64]uint32
	more   map[uint64][]uint32
}

// NewAllocator returns an allocator over [MinAllocated, MaxAllocated].
func NewAllocator() *Allocator { return NewAllocatorRange(MinAllocated, MaxAllocated) }

// NewAllocatorRange returns an allocator over [lo, hi]; lo is raised to 1 so
// 0 is never handed out.
func NewAllocatorRange(lo, hi uint32) *Allocator {
	if lo == 0 {
		lo = 1
	}
	return &Allocator{min: lo, max: hi, next: lo, seed: maphash.MakeSeed(),
		byID: map[uint32]*entry{}, byHash: map[uint64]uint32{}, more: map[uint64][]uint32{}}
}

func (a *Allocator) hash(k Key) uint64 {
	var h maphash.Hash
	h.SetSeed(a.seed)
	h.WriteString(k.Cluster)
	h.WriteByte(0)
	h.WriteString(k.Namespace)
	h.WriteByte(0)
	for _, l := range k.Labels {
		h.WriteString(l.Key)
		h.WriteByte(0)
		h.WriteString(l.Value)
		h.WriteByte(0)
	}
	return h.Sum64()
}

func (a *Allocator) find(k Key, h uint64) (uint32, bool) {
	if id, ok := a.byHash[h]; ok && a.byID[id].key.Equal(k) {
		return id, true
	}
	for _, id := range a.more[h] {
		if a.byID[id].key.Equal(k) {
			return id, true
		}
	}
	return 0, false
}

func (a *Allocator) index(id uint32, h uint64) {
	if _, taken := a.byHash[h]; !taken {
		a.byHash[h] = id
		return
	}
	a.more[h] = append(a.more[h], id)
}

func (a *Allocator) unindex(id uint32, h uint64) {
	more := a.more[h]
	if first, ok := a.byHash[h]; ok && first == id {
		if len(more) == 0 {
			delete(a.byHash, h)
			return
		}
		a.byHash[h], more = more[0], more[1:]
	} else if i := slices.Index(more, id); i >= 0 {
		more = slices.Delete(more, i, i+1)
	}
	if len(more) == 0 {
		delete(a.more, h)
	} else {
		a.more[h] = more
	}
}

// Acquire returns the identity of k and takes a reference on it; created
// is true when the number is new. k's label slice is kept: the caller must
// not modify it afterwards.
func (a *Allocator) Acquire(k Key) (id uint32, created bool, err error) {
	h := a.hash(k)
	if id, ok := a.find(k, h); ok {
		a.byID[id].refs++
		return id, false, nil
	}
	id, err = a.allocate(k, h, 1)
	if err != nil {
		return 0, false, fmt.Errorf("allocate identity for %s: %w", k, err)
	}
	return id, true, nil
}

// AcquireHinted is Acquire for a caller that remembers which identity k
// had: when hint still stands for k, it skips hashing k. Any hint is safe;
// a wrong one only costs the hash.
func (a *Allocator) AcquireHinted(k Key, hint uint32) (id uint32, created bool, err error) {
	if e, ok := a.byID[hint]; ok && e.key.Equal(k) {
		e.refs++
		return hint, false, nil
	}
	return a.Acquire(k)
}

// allocate gives k (hash h) a new number with refs references.
func (a *Allocator) allocate(k Key, h uint64, refs uint64) (uint32, error) {
	id, err := a.free()
	if err != nil {
		return 0, err
	}
	a.byID[id] = &entry{key: k, hash: h, refs: refs}
	a.index(id, h)
	if id == a.max {
		a.next = a.min
	} else {
		a.next = id + 1
	}
	return id, nil
}

// free finds the next free number at or after a.next, wrapping once.
func (a *Allocator) free() (uint32, error) {
	if a.Free() == 0 {
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
	a.unindex(id, e.hash)
	return true
}

// Lookup returns the Key of id.
func (a *Allocator) Lookup(id uint32) (Key, bool) {
	if e, ok := a.byID[id]; ok {
		return e.key, true
	}
	return Key{}, false
}

// LookupKey returns the identity of k without taking a reference.
func (a *Allocator) LookupKey(k Key) (uint32, bool) { return a.find(k, a.hash(k)) }

// Refs is the number of references on id (0 when it is not allocated).
func (a *Allocator) Refs(id uint32) uint64 {
	if e, ok := a.byID[id]; ok {
		return e.refs
	}
	return 0
}

// Len is the number of allocated identities.
func (a *Allocator) Len() int { return len(a.byID) }

// Free is how many numbers are left to allocate.
func (a *Allocator) Free() uint64 { return uint64(a.max-a.min) + 1 - uint64(len(a.byID)) }

// Next is the cursor: where the search for the next new number starts.
func (a *Allocator) Next() uint32 { return a.next }

// State is the allocator's full state, for snapshots and tests.
type State struct {
	Next    uint32
	Entries []Entry // sorted by ID
}

// Snapshot returns the allocator's state.
func (a *Allocator) Snapshot() State {
	s := State{Next: a.next, Entries: make([]Entry, 0, len(a.byID))}
	for id, e := range a.byID {
		s.Entries = append(s.Entries, Entry{ID: id, Key: e.key, Refs: e.refs})
	}
	slices.SortFunc(s.Entries, func(x, y Entry) int { return cmp.Compare(x.ID, y.ID) })
	return s
}

// Restore replaces the allocator's state with s. It fails, leaving the
// allocator unchanged, when s has a number outside the range, a duplicate
// number or Key, or an entry with no references.
func (a *Allocator) Restore(s State) error {
	b := NewAllocatorRange(a.min, a.max)
	b.seed, b.next = a.seed, s.Next
	for _, e := range s.Entries {
		if e.ID < a.min || e.ID > a.max {
			return fmt.Errorf("restore identity %d: outside [%d, %d]", e.ID, a.min, a.max)
		}
		if e.Refs == 0 {
			return fmt.Errorf("restore identity %d: no references", e.ID)
		}
		if _, dup := b.byID[e.ID]; dup {
			return fmt.Errorf("restore identity %d: duplicate number", e.ID)
		}
		h := b.hash(e.Key)
		if other, dup := b.find(e.Key, h); dup {
			return fmt.Errorf("restore identity %d: %s is already identity %d", e.ID, e.Key, other)
		}
		b.byID[e.ID] = &entry{key: e.Key, hash: h, refs: e.Refs}
		b.index(e.ID, h)
	}
	*a = *b
	return nil
}
