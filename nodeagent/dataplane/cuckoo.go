package dataplane

import (
	"encoding/binary"
	"math/bits"
)

// Static cuckoo tables in arrays: every entry of a per-revision table
// placed in one of two candidate buckets of cuckooWays entries, chosen by
// a hash the programs compute too, in an array they read with inlined
// array lookups instead of hash-map calls (~30 ns each on hosts whose
// every return is mitigated). Two tables have this form: the policy index
// (fm_policy_fixarr_v2, pfa_find) and the ipcache's host entries
// (fm_ipcache_hostarr, ipc_find). The kernel hashes behind them stay
// complete: the programs use an array only when every entry of the
// revision was placed (an endpoint flag), so a revision too big for it,
// or tables an older agent wrote, are read as before.
//
// Placement is the bucketised cuckoo of MemC3/libcuckoo: a key goes to a
// free way of its two buckets, else a breadth-first search finds the
// shortest chain of entries that each move to their other bucket to free
// one (at most cuckooMaxDepth moves). The search changes nothing until a
// chain is found, so an insert that fails leaves the table as it was.

const (
	cuckooWays = 4 // PFA_WAYS, IPC_WAYS
	// cuckooMaxDepth bounds a placement's chain of moves; the search
	// visits at most ~2 x 4^depth buckets.
	cuckooMaxDepth = 5

	pfaBuckets  = 1 << 15 // PFA_BUCKETS
	ipcBuckets  = 1 << 16 // IPC_BUCKETS
	cidrBuckets = 1 << 12 // CIDRA_BUCKETS
)

// cuckooBucket is struct pf_bucket and struct ipc_bucket; a way holding
// the zero key is free (no table has it: every endpoint has an ifindex,
// and :: is no endpoint's address).
type cuckooBucket[K, V comparable] struct {
	K [cuckooWays]K
	V [cuckooWays]V
}

// pfaVal is struct pf_pair: a way of the policy index array holds the
// NetworkPolicy entry of its key (pfaNP) and the tier entry of the same
// shape (pfaTier), so one probe answers both layers; an absent half is
// zero, which the programs read as no entry.
type pfaVal [2]policyFixedVal

const (
	pfaNP   = 0 // PFA_NP
	pfaTier = 1 // PFA_TIER
)

type pfaTable = cuckoo[policyFixedKey, pfaVal]

func newPFATable(nb uint32) *pfaTable { return newCuckoo[policyFixedKey, pfaVal](nb, pfaHash) }

// pfaSlot is where PolicyFixed's entry k lives in the array: the tier
// kinds fold onto the NetworkPolicy kinds of their shape (half pfaTier),
// every other kind keeps its key (half pfaNP).
func pfaSlot(k policyFixedKey) (policyFixedKey, int) {
	if k.Kind == kindTierIdentity || k.Kind == kindTierCIDR {
		k.Kind &^= 2
		return k, pfaTier
	}
	return k, pfaNP
}

// pfaEntry is the array's entry for key ak (a key pfaSlot returns) given
// PolicyFixed pf: false when neither half has an entry.
func pfaEntry(pf map[policyFixedKey]policyFixedVal, ak policyFixedKey) (pfaVal, bool) {
	var v pfaVal
	var ok bool
	v[pfaNP], ok = pf[ak]
	if ak.Kind == kindIdentity || ak.Kind == kindCIDR {
		tk := ak
		tk.Kind |= 2
		tv, tok := pf[tk]
		v[pfaTier], ok = tv, ok || tok
	}
	return v, ok
}

// pfaEntries is the whole array for PolicyFixed pf.
func pfaEntries(pf map[policyFixedKey]policyFixedVal) map[policyFixedKey]pfaVal {
	m := make(map[policyFixedKey]pfaVal, len(pf))
	for k, v := range pf {
		ak, h := pfaSlot(k)
		e := m[ak]
		e[h] = v
		m[ak] = e
	}
	return m
}

// pfaChanges are the array entries that differ between PolicyFixed old and
// pf, as they are in old (have) and in pf (want): what sync needs to bring
// an array holding old's entries to pf's, at the cost of a pass over both
// maps, like the diff of the hash.
func pfaChanges(old, pf map[policyFixedKey]policyFixedVal) (have, want map[policyFixedKey]pfaVal) {
	touched := map[policyFixedKey]bool{}
	for k, v := range pf {
		if ov, ok := old[k]; !ok || ov != v {
			ak, _ := pfaSlot(k)
			touched[ak] = true
		}
	}
	for k := range old {
		if _, ok := pf[k]; !ok {
			ak, _ := pfaSlot(k)
			touched[ak] = true
		}
	}
	have, want = map[policyFixedKey]pfaVal{}, map[policyFixedKey]pfaVal{}
	for ak := range touched {
		if v, ok := pfaEntry(old, ak); ok {
			have[ak] = v
		}
		if v, ok := pfaEntry(pf, ak); ok {
			want[ak] = v
		}
	}
	return have, want
}

// pfaLen is the number of array entries PolicyFixed pf makes: a tier
// entry shares the way of the NetworkPolicy entry of its shape.
func pfaLen(pf map[policyFixedKey]policyFixedVal) int {
	n := len(pf)
	for k := range pf {
		if ak, h := pfaSlot(k); h == pfaTier {
			if _, ok := pf[ak]; ok {
				n--
			}
		}
	}
	return n
}

type ipcTable = cuckoo[[16]byte, uint32]

func newIPCTable(nb uint32) *ipcTable { return newCuckoo[[16]byte, uint32](nb, ipcHash) }

// cidrArrKey is struct cidr_akey: a CIDR trie entry's key with the
// prefix length of the address alone.
type cidrArrKey struct {
	Ifindex uint32
	Dir     uint8
	Bits    uint8
	Pad     uint16
	IP      [16]byte
}

type cidrTable = cuckoo[cidrArrKey, uint32]

func newCIDRTable(nb uint32) *cidrTable { return newCuckoo[cidrArrKey, uint32](nb, cidrHash) }

// cidrHash is cidr_find's hash over the key's six little-endian words.
func cidrHash(k cidrArrKey) uint64 {
	w := func(i int) uint32 { return binary.LittleEndian.Uint32(k.IP[4*i:]) }
	kw1 := uint32(k.Dir) | uint32(k.Bits)<<8 | uint32(k.Pad)<<16
	hi := w(0) ^ w(2) ^ bits.RotateLeft32(k.Ifindex, 16)
	return (uint64(hi)<<32 | uint64(w(1)^w(3)^kw1)) * 0x9E3779B97F4A7C15
}

// pfaHash is pfa_hash over the key's three little-endian words.
func pfaHash(k policyFixedKey) uint64 {
	w1 := uint32(k.Dir) | uint32(k.Kind)<<8 | uint32(k.Proto)<<16 | uint32(k.Pad)<<24
	lo := k.Ifindex ^ bits.RotateLeft32(w1, 16)
	return (uint64(k.Peer)<<32 | uint64(lo)) * 0x9E3779B97F4A7C15
}

// ipcHash is ipc_hash over an address's four little-endian words.
func ipcHash(a [16]byte) uint64 {
	w := func(i int) uint32 { return binary.LittleEndian.Uint32(a[4*i:]) }
	return (uint64(w(0)^w(2))<<32 | uint64(w(1)^w(3))) * 0x9E3779B97F4A7C15
}

// cuckoo is the Go copy of one slot's array: what the kernel holds once
// the dirty buckets are written.
type cuckoo[K, V comparable] struct {
	b     []cuckooBucket[K, V]
	hash  func(K) uint64
	dirty map[uint32]bool
}

func newCuckoo[K, V comparable](nb uint32, hash func(K) uint64) *cuckoo[K, V] {
	return &cuckoo[K, V]{b: make([]cuckooBucket[K, V], nb), hash: hash, dirty: map[uint32]bool{}}
}

func (t *cuckoo[K, V]) nb() uint32 { return uint32(len(t.b)) }

// candidates are k's two buckets (possibly equal).
func (t *cuckoo[K, V]) candidates(k K) [2]uint32 {
	h := t.hash(k)
	return [2]uint32{uint32(h>>48) & (t.nb() - 1), uint32(h>>32) & (t.nb() - 1)}
}

// find returns the bucket and way holding k.
func (t *cuckoo[K, V]) find(k K) (uint32, int, bool) {
	for _, b := range t.candidates(k) {
		for w := range cuckooWays {
			if t.b[b].K[w] == k {
				return b, w, true
			}
		}
	}
	return 0, 0, false
}

// lookup is what pfa_find returns for k.
func (t *cuckoo[K, V]) lookup(k K) (V, bool) {
	b, w, ok := t.find(k)
	if !ok {
		var zero V
		return zero, false
	}
	return t.b[b].V[w], true
}

func (t *cuckoo[K, V]) set(b uint32, w int, k K, v V) {
	t.b[b].K[w], t.b[b].V[w] = k, v
	t.dirty[b] = true
}

// put places or updates k; false when no chain of at most cuckooMaxDepth moves
// frees a way (the table is then unchanged).
func (t *cuckoo[K, V]) put(k K, v V) bool {
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
	var zeroK K
	cands := t.candidates(k)
	nodes := []node{{bucket: cands[0], parent: -1}, {bucket: cands[1], parent: -1}}
	for i := 0; i < len(nodes); i++ {
		n := nodes[i]
		for w := range cuckooWays {
			if t.b[n.bucket].K[w] != zeroK {
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
		if n.depth == cuckooMaxDepth {
			continue
		}
		for w := range cuckooWays {
			alt := t.candidates(t.b[n.bucket].K[w])
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
func (t *cuckoo[K, V]) remove(k K) {
	if b, w, ok := t.find(k); ok {
		var zk K
		var zv V
		t.set(b, w, zk, zv)
	}
}

// sync makes t hold want, given that it holds have; false when an entry of
// want could not be placed (t then holds part of want: rebuild before
// trusting it).
func (t *cuckoo[K, V]) sync(have, want map[K]V) bool {
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
