package dataplane

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// This file holds what both dataplanes share for domainNames rules
// (policy.NameRule): the learned addresses, the name-rule slots of each
// endpoint and the fm_fqdn entries they render into.
//
// An endpoint's egress NameRules are grouped by pattern set (the rule's
// domainNames); each distinct set gets a slot 0..maxNameSlots-1, stable
// across revisions while the set exists. Render writes the rules under
// kindTierFQDN with the slot as peer, folded like every tier entry. A
// learned address becomes one fm_fqdn entry {ifindex, address} whose
// value holds, per slot, the monotonic expiry of the latest answer for a
// name the slot's patterns match. The tier stage reads the entry (one hash
// lookup, egress only, only when the endpoint has name rules) and looks up
// the slots whose expiry is in the future.

// LearnedAddr is one address an endpoint received in a DNS answer.
type LearnedAddr struct {
	// Endpoint is the Endpoint.ID of the pod that asked.
	Endpoint string
	Addr     netip.Addr
	// Name is the canonical queried name (policy.CanonicalDomainName) the
	// address was answered for; for a CNAME chain the name asked, not the
	// chain's targets.
	Name string
	// Expires is when the answer's TTL (floor applied) runs out: absolute
	// wall-clock time, converted once to the datapath's monotonic clock,
	// so a restart never extends it.
	Expires time.Time
}

// maxNameSlots bounds the distinct domainNames pattern sets among one
// endpoint's egress rules: the tier stage loops over at most this many
// slots. Render refuses a revision with more (the previous one stays).
const maxNameSlots = 16

// fqdnKey and fqdnVal are bpf/fedmesh.c's struct fqdn_key and fqdn_val.
type fqdnKey struct {
	Ifindex uint32
	IP      [16]byte // IPv4-mapped for IPv4, like every address key
}

type fqdnVal struct {
	// Mask has bit s set when Expires[s] holds an answer.
	Mask uint32
	Pad  uint32
	// Expires per slot: CLOCK_MONOTONIC ns (the coarse clock the program
	// reads); the slot matches while now < Expires[s].
	Expires [maxNameSlots]uint64
}

// nameSlot is one slot of an endpoint: a pattern set, and its hash, which
// the eBPF dataplane pins (fm_fqdn_slots) so a restarted agent keeps the
// slot meanings fm_fqdn's entries were written for.
type nameSlot struct {
	Patterns []string // nil: free
	Hash     uint64
}

func patternHash(patterns []string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(strings.Join(patterns, "\n")))
	return h.Sum64() | 1 // never 0: 0 is a free slot in fm_fqdn_slots
}

// assignNameSlots gives each distinct pattern set of rules a slot: the one
// it held in prev when it did, else the lowest slot free in prev too (so a
// slot changes meaning only when the endpoint runs out of unused ones).
func assignNameSlots(rules []policy.NameRule, prev []nameSlot) ([]nameSlot, map[uint64]uint32, error) {
	var sets [][]string
	seen := map[uint64]bool{}
	for _, r := range rules {
		h := patternHash(r.Names)
		if !seen[h] {
			seen[h] = true
			sets = append(sets, r.Names)
		}
	}
	if len(sets) > maxNameSlots {
		return nil, nil, fmt.Errorf("%d distinct domainNames pattern sets in egress rules: over the %d one endpoint can hold", len(sets), maxNameSlots)
	}
	slots := make([]nameSlot, maxNameSlots)
	bySet := map[uint64]uint32{}
	var unplaced [][]string
	for _, s := range sets {
		h := patternHash(s)
		i := slices.IndexFunc(prev, func(p nameSlot) bool { return p.Hash == h })
		if i < 0 {
			unplaced = append(unplaced, s)
			continue
		}
		slots[i], bySet[h] = nameSlot{Patterns: s, Hash: h}, uint32(i)
	}
	for _, reuse := range []bool{false, true} {
		for i := range slots {
			if len(unplaced) == 0 {
				break
			}
			if slots[i].Hash != 0 || (!reuse && i < len(prev) && prev[i].Hash != 0) {
				continue
			}
			h := patternHash(unplaced[0])
			slots[i], bySet[h] = nameSlot{Patterns: unplaced[0], Hash: h}, uint32(i)
			unplaced = unplaced[1:]
		}
	}
	return slots, bySet, nil
}

// learnedNames is the learned state: per endpoint ID and address, the
// names it was learned for and their monotonic expiry. Both dataplanes
// keep one and render fm_fqdn entries from it.
type learnedNames map[string]map[netip.Addr]map[string]uint64

// validateLearned checks a whole batch before any of it is applied.
func validateLearned(addrs []LearnedAddr) error {
	for i, a := range addrs {
		switch {
		case a.Endpoint == "":
			return fmt.Errorf("addrs[%d].Endpoint: empty", i)
		case !a.Addr.IsValid():
			return fmt.Errorf("addrs[%d].Addr: not an address", i)
		case a.Name == "" || a.Name != policy.CanonicalDomainName(a.Name):
			return fmt.Errorf("addrs[%d].Name %q: not a canonical name (lower case, no trailing dot)", i, a.Name)
		}
	}
	return nil
}

// errLearnedClosed is returned by Learn after Close.
var errLearnedClosed = errors.New("dataplane closed")

// learn records a, converting its wall-clock expiry with now (monotonic)
// and wall; a later expiry wins. An answer already expired is dropped.
// It reports whether anything changed.
func (l learnedNames) learn(a LearnedAddr, now uint64, wall time.Time) bool {
	left := a.Expires.Sub(wall)
	if left <= 0 {
		return false
	}
	exp := now + uint64(left)
	addr := a.Addr.Unmap()
	byAddr := l[a.Endpoint]
	if byAddr == nil {
		byAddr = map[netip.Addr]map[string]uint64{}
		l[a.Endpoint] = byAddr
	}
	names := byAddr[addr]
	if names == nil {
		names = map[string]uint64{}
		byAddr[addr] = names
	}
	if names[a.Name] >= exp {
		return false
	}
	names[a.Name] = exp
	return true
}

// sweep drops what expired by now.
func (l learnedNames) sweep(now uint64) {
	for id, byAddr := range l {
		for a, names := range byAddr {
			for n, exp := range names {
				if exp <= now {
					delete(names, n)
				}
			}
			if len(names) == 0 {
				delete(byAddr, a)
			}
		}
		if len(byAddr) == 0 {
			delete(l, id)
		}
	}
}

// entry is the fm_fqdn value for names (one endpoint and address) under
// slots; ok is false when no slot matches any name.
func entry(names map[string]uint64, slots []nameSlot) (fqdnVal, bool) {
	var v fqdnVal
	for s, sl := range slots {
		for n, exp := range names {
			if exp > v.Expires[s] && slices.ContainsFunc(sl.Patterns, func(p string) bool { return policy.MatchDomainName(p, n) }) {
				v.Expires[s] = exp
				v.Mask |= 1 << s
			}
		}
	}
	return v, v.Mask != 0
}

// mergeVal keeps, per slot, the later expiry of a and b.
func mergeVal(a, b fqdnVal) fqdnVal {
	for s := range maxNameSlots {
		if b.Expires[s] > a.Expires[s] {
			a.Expires[s] = b.Expires[s]
			a.Mask |= 1 << s
		}
	}
	return a
}

// fqdnEntries renders the fm_fqdn entries of every attached endpoint.
func (l learnedNames) entries(attached map[string]uint32, slots map[uint32][]nameSlot) map[fqdnKey]fqdnVal {
	out := map[fqdnKey]fqdnVal{}
	for id, byAddr := range l {
		idx, ok := attached[id]
		if !ok || slots[idx] == nil {
			continue
		}
		for a, names := range byAddr {
			if v, ok := entry(names, slots[idx]); ok {
				out[fqdnKey{Ifindex: idx, IP: mapped(a)}] = v
			}
		}
	}
	return out
}
