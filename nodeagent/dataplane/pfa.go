package dataplane

import "encoding/binary"

// The policy index as a static cuckoo table (fm_policy_fixarr): every
// PolicyFixed entry of a revision placed in one of two candidate buckets
// of pfaWays entries, chosen by pfaHash, in an array the programs read
// with inlined array lookups instead of hash-map calls (bpf/fedmesh.c,
// pfa_find). The kernel hash fm_policy_fixed stays complete: programs use
// the array only when every entry of the revision was placed.
//
// Placement is the bucketised cuckoo of MemC3/libcuckoo: a key goes to a
// free way of its two buckets, else a breadth-first search finds the
// shortest chain of entries that each move to their other bucket to free
// one (at most pfaMaxDepth moves). The search changes nothing until a
// chain is found, so an insert that fails leaves the table as it was.

const (
	pfaWays    = 4       // PFA_WAYS
	pfaBuckets = 1 << 15 // PFA_BUCKETS
	// pfaMaxDepth bounds a placement's chain of moves; the search visits
	// at most ~2 x 4^depth buckets.
	pfaMaxDepth = 5
)

// pfaBucket is struct pf_bucket; a way whose key has ifindex 0 is free
// (every endpoint has an ifindex).
type pfaBucket struct {
	K [pfaWays]policyFixedKey
	V [pfaWays]policyFixedVal
}

// pfaHash is pfa_hash over the key's three little-endian words.
func pfaHash(k policyFixedKey) uint64 {
	var b [12]byte
	binary.LittleEndian.PutUint32(b[0:], k.Ifindex)
	b[4], b[5], b[6], b[7] = k.Dir, k.Kind, k.Proto, k.Pad
	binary.LittleEndian.PutUint32(b[8:], k.Peer)
	w0 := uint64(binary.LittleEndian.Uint32(b[0:]))
	w1 := uint64(binary.LittleEndian.Uint32(b[4:]))
	w2 := uint64(binary.LittleEndian.Uint32(b[8:]))
	h := w0 * 0x9E3779B97F4A7C15
	h ^= w1 * 0xC2B2AE3D27D4EB4F
	h ^= w2 * 0x165667B19E3779F9
	h ^= h >> 29
	h *= 0xBF58476D1CE4E5B9
	h ^= h >> 32
	return h
}

// pfaCandidates are k's two buckets (possibly equal).
func pfaCandidates(k policyFixedKey, nb uint32) [2]uint32 {
	h := pfaHash(k)
	return [2]uint32{uint32(h) & (nb - 1), uint32(h>>32) & (nb - 1)}
}

// pfaTable is the Go copy of one slot's array: what the kernel holds once
// the dirty buckets are written.
type pfaTable struct {
	b     []pfaBucket
	dirty map[uint32]bool
}

func newPFATable(nb uint32) *pfaTable {
	return &pfaTable{b: make([]pfaBucket, nb), dirty: map[uint32]bool{}}
}

func (t *pfaTable) nb() uint32 { return uint32(len(t.b)) }

// find returns the bucket and way holding k.
func (t *pfaTable) find(k policyFixedKey) (uint32, int, bool) {
	for _, b := range pfaCandidates(k, t.nb()) {
		for w := range pfaWays {
			if t.b[b].K[w] == k {
				return b, w, true
			}
		}
	}
	return 0, 0, false
}

// lookup is what pfa_find returns for k.
func (t *pfaTable) lookup(k policyFixedKey) (policyFixedVal, bool) {
	b, w, ok := t.find(k)
	if !ok {
		return policyFixedVal{}, false
	}
	return t.b[b].V[w], true
}

func (t *pfaTable) set(b uint32, w int, k policyFixedKey, v policyFixedVal) {
	t.b[b].K[w], t.b[b].V[w] = k, v
	t.dirty[b] = true
}

// put places or updates k; false when no chain of at most pfaMaxDepth moves
// frees a way (the table is then unchanged).
func (t *pfaTable) put(k policyFixedKey, v policyFixedVal) bool {
	if b, w, ok := t.find(k); ok {
		if t.b[b].V[w] != v {
			t.set(b, w, k, v)
		}
		return true
	}
	// Breadth-first over buckets: each node is a bucket reached by moving
	// the entry in way `way` of its parent bucket to this one.
	type node struct {
		bucket uint32
		parent int // index in nodes, -1 for the roots
		way    int // the parent's way whose entry moves here
		depth  int
	}
	cands := pfaCandidates(k, t.nb())
	nodes := []node{{bucket: cands[0], parent: -1}, {bucket: cands[1], parent: -1}}
	for i := 0; i < len(nodes); i++ {
		n := nodes[i]
		for w := range pfaWays {
			if t.b[n.bucket].K[w].Ifindex != 0 {
				continue
			}
			// Free way: move each entry of the chain down one step, last
			// first, then put k in the root.
			for n.parent >= 0 {
				p := nodes[n.parent]
				t.set(n.bucket, w, t.b[p.bucket].K[n.way], t.b[p.bucket].V[n.way])
				w = n.way
				n = p
			}
			t.set(n.bucket, w, k, v)
			return true
		}
		if n.depth == pfaMaxDepth {
			continue
		}
		for w := range pfaWays {
			alt := pfaCandidates(t.b[n.bucket].K[w], t.nb())
			next := alt[0]
			if next == n.bucket {
				next = alt[1]
			}
			if next == n.bucket {
				continue // both candidates are this bucket: it cannot move
			}
			// A chain through one bucket twice would move entries into
			// ways the search saw before the chain changed them.
			seen := false
			for j := i; j >= 0; j = nodes[j].parent {
				if nodes[j].bucket == next {
					seen = true
					break
				}
			}
			if !seen {
				nodes = append(nodes, node{bucket: next, parent: i, way: w, depth: n.depth + 1})
			}
		}
	}
	return false
}

// remove frees k's way, if k is placed.
func (t *pfaTable) remove(k policyFixedKey) {
	if b, w, ok := t.find(k); ok {
		t.set(b, w, policyFixedKey{}, policyFixedVal{})
	}
}

// sync makes t hold want, given that it holds have; false when an entry of
// want could not be placed (t then holds part of want: rebuild before
// trusting it).
func (t *pfaTable) sync(have, want map[policyFixedKey]policyFixedVal) bool {
	for k := range have {
		if _, ok := want[k]; !ok {
			t.remove(k)
		}
	}
	for k, v := range want {
		if hv, ok := have[k]; ok && hv == v {
			continue
		}
		if !t.put(k, v) {
			return false
		}
	}
	return true
}
