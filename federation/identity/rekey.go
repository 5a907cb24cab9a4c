package identity

import (
	"cmp"
	"fmt"
	"slices"
)

// Holder is one reference to an identity while identities are re-derived:
// the number it holds and the Key it stands for now.
type Holder struct {
	ID  uint32
	Key Key
}

// Rekey moves holders to the identities of their current Keys, all at once:
// what the FSM does when a policy makes a filtered label key count, or stop
// counting (see the package doc for which Key keeps which number). holders
// must be every reference of each identity it names, so no identity is left
// standing for a Key none of its holders has; a holder whose Key did not
// change is listed all the same. It returns each holder's identity, in
// order. On error nothing changed.
func (a *Allocator) Rekey(holders []Holder) ([]uint32, error) {
	counts := map[uint32]uint64{}
	for _, h := range holders {
		counts[h.ID]++
	}
	for _, id := range sortedIDs(counts) {
		if refs := a.Refs(id); refs != counts[id] {
			return nil, fmt.Errorf("rekey identity %d: %d holders given, it has %d", id, counts[id], refs)
		}
	}
	return a.regroup(holders, counts)
}

// Rebuild replaces the allocator's state with the identities of holders,
// with its cursor at next: for a restore from a snapshot, which records
// each endpoint's number. Every holder keeps its number as long as the
// numbers agree with the Keys (one Key per number, one number per Key:
// the state Rekey and Acquire maintain); where they do not (a state an
// older binary wrote under another rule), the numbers are reassigned as
// Rekey would. It returns each holder's identity, in order. On error
// nothing changed.
func (a *Allocator) Rebuild(next uint32, holders []Holder) ([]uint32, error) {
	b := NewAllocatorRange(a.min, a.max)
	b.seed, b.next = a.seed, next
	counts := map[uint32]uint64{}
	for _, h := range holders {
		if h.ID >= b.min && h.ID <= b.max {
			counts[h.ID]++
		}
	}
	ids, err := b.regroup(holders, counts)
	if err != nil {
		return nil, err
	}
	*a = *b
	return ids, nil
}

// class is the holders that share one new Key.
type class struct {
	key     Key
	hash    uint64
	members []int
	id      uint32
	// keep: id is an identity no holder held, already standing for key.
	keep bool
}

// regroup gives every holder the identity of its Key. counts are the
// holders per old number; those numbers are (re)assigned here, every other
// identity keeps its Key and number.
func (a *Allocator) regroup(holders []Holder, counts map[uint32]uint64) ([]uint32, error) {
	var classes []*class
	byHash := map[uint64][]*class{}
	of := make([]*class, len(holders))
	for i, h := range holders {
		hv := a.hash(h.Key)
		var c *class
		for _, x := range byHash[hv] {
			if x.key.Equal(h.Key) {
				c = x
				break
			}
		}
		if c == nil {
			c = &class{key: h.Key, hash: hv}
			byHash[hv] = append(byHash[hv], c)
			classes = append(classes, c)
		}
		c.members = append(c.members, i)
		of[i] = c
	}
	slices.SortFunc(classes, func(x, y *class) int { return x.key.Compare(y.key) })

	// A Key some untouched identity stands for keeps that identity.
	for _, c := range classes {
		if id, ok := a.find(c.key, c.hash); ok && counts[id] == 0 {
			c.id, c.keep = id, true
		}
	}
	// Otherwise an old number goes to the Key holding most of its holders.
	type candidate struct {
		n   int
		id  uint32
		cls int
	}
	var cands []candidate
	for ci, c := range classes {
		if c.keep {
			continue
		}
		per := map[uint32]int{}
		for _, i := range c.members {
			if id := holders[i].ID; counts[id] > 0 {
				per[id]++
			}
		}
		for id, n := range per {
			cands = append(cands, candidate{n: n, id: id, cls: ci})
		}
	}
	slices.SortFunc(cands, func(x, y candidate) int {
		if c := cmp.Compare(y.n, x.n); c != 0 {
			return c
		}
		if c := cmp.Compare(x.id, y.id); c != 0 {
			return c
		}
		return cmp.Compare(x.cls, y.cls)
	})
	claimed := map[uint32]bool{}
	for _, cd := range cands {
		if c := classes[cd.cls]; c.id == 0 && !claimed[cd.id] {
			c.id = cd.id
			claimed[cd.id] = true
		}
	}
	// Afterwards: the identities no holder held, plus one per Key that
	// does not keep one of those.
	after := len(a.byID)
	for id := range counts {
		if _, ok := a.byID[id]; ok {
			after--
		}
	}
	for _, c := range classes {
		if !c.keep {
			after++
		}
	}
	if uint64(after) > uint64(a.max-a.min)+1 {
		return nil, fmt.Errorf("rekey %d identities into %d: %w", len(counts), len(classes), ErrExhausted)
	}

	// Validated: from here on nothing fails.
	for _, id := range sortedIDs(counts) {
		if e, ok := a.byID[id]; ok {
			a.unindex(id, e.hash)
			if !claimed[id] {
				delete(a.byID, id)
			}
		}
	}
	for _, c := range classes {
		n := uint64(len(c.members))
		switch {
		case c.keep:
			a.byID[c.id].refs += n
		case c.id != 0:
			a.byID[c.id] = &entry{key: c.key, hash: c.hash, refs: n}
			a.index(c.id, c.hash)
		}
	}
	for _, c := range classes {
		if c.id == 0 {
			id, err := a.allocate(c.key, c.hash, uint64(len(c.members)))
			if err != nil {
				panic(fmt.Sprintf("identity: allocate after the capacity check: %v", err))
			}
			c.id = id
		}
	}
	ids := make([]uint32, len(holders))
	for i, c := range of {
		ids[i] = c.id
	}
	return ids, nil
}

func sortedIDs[V any](m map[uint32]V) []uint32 {
	out := make([]uint32, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}
