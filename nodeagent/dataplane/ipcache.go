package dataplane

import (
	"encoding/binary"
	"iter"
	"math/bits"
	"net/netip"
	"slices"
)

// IPCache maps address prefixes of every cluster to their identities: the
// ipcache of a Revision. It is an immutable value (the zero IPCache is
// empty): an IPCacheBuilder makes the next version, which shares every
// part that did not change with the previous one. So the agent hands the
// dataplane a 100k-entry ipcache per revision without copying it, and the
// dataplane writes only the entries that differ from what a slot holds
// (diffIPCache) instead of comparing every entry.
//
// Prefixes live in the programs' address space: an IPv4 prefix is stored
// as its IPv4-mapped IPv6 prefix, so 10.0.0.1/32 and ::ffff:10.0.0.1/128
// are one entry (as in the kernel's maps), and All returns it as IPv4.
// Host prefixes (/32, /128) go to the kernel's hash, shorter ones to its
// LPM trie.
//
// Inside, each of the two kinds is a hash array mapped trie (32 ways per
// level) of canonical shape: equal contents give equal shapes, so two
// versions differ exactly in the nodes on the paths to the entries that
// changed.
type IPCache struct {
	hosts, nets *hnode
	nHosts      int
	nNets       int
	// netLens are the distinct lengths of nets, longest first (Lookup
	// probes them in order, like the kernel's LPM trie).
	netLens []uint8
}

// ipKey is a prefix in the programs' address space: the IPv4-mapped
// address and the length in that space (an IPv4 /24 is 120).
type ipKey struct {
	ip   [16]byte
	bits uint8
}

func keyOf(p netip.Prefix) ipKey {
	ip, b := prefixKey(p)
	return ipKey{ip: ip, bits: uint8(b)}
}

func (k ipKey) prefix() netip.Prefix {
	a := netip.AddrFrom16(k.ip)
	if a.Is4In6() && k.bits >= 96 {
		return netip.PrefixFrom(a.Unmap(), int(k.bits)-96)
	}
	return netip.PrefixFrom(a, int(k.bits))
}

// hash mixes the key into 64 bits. It is fixed (not seeded), so tries are
// deterministic; for a fixed high half and length it is a bijection of the
// low half, so the addresses of one IPv4 range or one IPv6 /64 never
// collide in full.
func (k ipKey) hash() uint64 {
	hi := binary.BigEndian.Uint64(k.ip[:8])
	lo := binary.BigEndian.Uint64(k.ip[8:])
	return fmix64(lo ^ fmix64(hi^uint64(k.bits)<<56))
}

// fmix64 is MurmurHash3's finaliser, a bijection.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

func compareKeys(a, b ipKey) int {
	if c := slices.Compare(a.ip[:], b.ip[:]); c != 0 {
		return c
	}
	return int(a.bits) - int(b.bits)
}

// Trie shape: level L (shift 5L) indexes its 32 slots with hash bits
// [5L, 5L+5); the last such level is 12 (shift 60, 4 bits left). Keys whose
// 64 hash bits all agree meet below it (shift > maxShift) in a collision
// node: slots sorted by key, no bitmap.
const (
	levelBits = 5
	maxShift  = 60
)

// hnode is a trie node. A slot holds either an entry (sub == nil) or a
// subtrie. Canonical shape: a node other than the root never holds a
// single entry and nothing else (that entry sits in the parent's slot).
type hnode struct {
	// edit is the builder allowed to change this node in place; a node
	// reachable from an IPCache value is never changed again.
	edit   *editToken
	bitmap uint32
	slots  []hslot
}

type hslot struct {
	sub *hnode
	key ipKey
	id  uint32
}

// editToken marks the nodes one builder made since its last IPCache call.
// It is not empty: pointers to distinct zero-size values may be equal.
type editToken struct{ _ byte }

func slotIndex(h uint64, shift uint) (bit uint32) { return 1 << ((h >> shift) & 31) }

func (n *hnode) pos(bit uint32) int { return bits.OnesCount32(n.bitmap & (bit - 1)) }

func (n *hnode) get(k ipKey, h uint64) (uint32, bool) {
	for shift := uint(0); n != nil; shift += levelBits {
		if shift > maxShift {
			i, ok := slices.BinarySearchFunc(n.slots, k, func(s hslot, k ipKey) int { return compareKeys(s.key, k) })
			if !ok {
				return 0, false
			}
			return n.slots[i].id, true
		}
		bit := slotIndex(h, shift)
		if n.bitmap&bit == 0 {
			return 0, false
		}
		s := &n.slots[n.pos(bit)]
		if s.sub == nil {
			if s.key == k {
				return s.id, true
			}
			return 0, false
		}
		n = s.sub
	}
	return 0, false
}

// mutable returns n itself when edit may change it, else a copy edit may
// change, with room for one more slot.
func (n *hnode) mutable(edit *editToken) *hnode {
	if n.edit == edit {
		return n
	}
	c := &hnode{edit: edit, bitmap: n.bitmap, slots: make([]hslot, len(n.slots), len(n.slots)+1)}
	copy(c.slots, n.slots)
	return c
}

// setResult says what a set did.
type setResult uint8

const (
	unchanged setResult = iota // k already mapped to id
	updated                    // k mapped to another identity
	added                      // k was not there
)

// set returns the trie with k mapped to id. Nodes edit owns are changed in
// place (so the result may be n itself even when something changed: read
// the setResult); the others are copied along the path to k.
func (n *hnode) set(k ipKey, h uint64, id uint32, shift uint, edit *editToken) (*hnode, setResult) {
	if n == nil {
		return &hnode{edit: edit, bitmap: slotIndex(h, shift), slots: []hslot{{key: k, id: id}}}, added
	}
	if shift > maxShift {
		i, ok := slices.BinarySearchFunc(n.slots, k, func(s hslot, k ipKey) int { return compareKeys(s.key, k) })
		if ok && n.slots[i].id == id {
			return n, unchanged
		}
		c := n.mutable(edit)
		if ok {
			c.slots[i].id = id
			return c, updated
		}
		c.slots = slices.Insert(c.slots, i, hslot{key: k, id: id})
		return c, added
	}
	bit := slotIndex(h, shift)
	i := n.pos(bit)
	if n.bitmap&bit == 0 {
		c := n.mutable(edit)
		c.bitmap |= bit
		c.slots = slices.Insert(c.slots, i, hslot{key: k, id: id})
		return c, added
	}
	s := n.slots[i]
	switch {
	case s.sub != nil:
		sub, r := s.sub.set(k, h, id, shift+levelBits, edit)
		if r == unchanged {
			return n, unchanged
		}
		c := n.mutable(edit)
		c.slots[i].sub = sub
		return c, r
	case s.key == k:
		if s.id == id {
			return n, unchanged
		}
		c := n.mutable(edit)
		c.slots[i].id = id
		return c, updated
	default:
		c := n.mutable(edit)
		c.slots[i] = hslot{sub: pair(s, s.key.hash(), hslot{key: k, id: id}, h, shift+levelBits, edit)}
		return c, added
	}
}

// pair is the smallest subtrie holding the entries a and b.
func pair(a hslot, ha uint64, b hslot, hb uint64, shift uint, edit *editToken) *hnode {
	if shift > maxShift {
		if compareKeys(a.key, b.key) > 0 {
			a, b = b, a
		}
		return &hnode{edit: edit, slots: []hslot{a, b}}
	}
	ba, bb := slotIndex(ha, shift), slotIndex(hb, shift)
	if ba == bb {
		return &hnode{edit: edit, bitmap: ba, slots: []hslot{{sub: pair(a, ha, b, hb, shift+levelBits, edit)}}}
	}
	if ba > bb {
		a, b = b, a
	}
	return &hnode{edit: edit, bitmap: ba | bb, slots: []hslot{a, b}}
}

// del returns the trie without k (nil when it becomes empty) and whether
// k was there; like set, it changes the nodes edit owns in place.
func (n *hnode) del(k ipKey, h uint64, shift uint, edit *editToken) (*hnode, bool) {
	if n == nil {
		return nil, false
	}
	if shift > maxShift {
		i, ok := slices.BinarySearchFunc(n.slots, k, func(s hslot, k ipKey) int { return compareKeys(s.key, k) })
		if !ok {
			return n, false
		}
		return n.without(i, 0, edit), true
	}
	bit := slotIndex(h, shift)
	if n.bitmap&bit == 0 {
		return n, false
	}
	i := n.pos(bit)
	s := n.slots[i]
	if s.sub == nil {
		if s.key != k {
			return n, false
		}
		return n.without(i, bit, edit), true
	}
	sub, removed := s.sub.del(k, h, shift+levelBits, edit)
	if !removed {
		return n, false
	}
	if sub == nil {
		return n.without(i, bit, edit), true
	}
	c := n.mutable(edit)
	if len(sub.slots) == 1 && sub.slots[0].sub == nil {
		c.slots[i] = sub.slots[0] // a lone entry moves up: the shape stays canonical
	} else {
		c.slots[i].sub = sub
	}
	return c, true
}

// without is n minus slot i (whose bitmap bit is bit; 0 in a collision
// node), nil when nothing is left.
func (n *hnode) without(i int, bit uint32, edit *editToken) *hnode {
	if len(n.slots) == 1 {
		return nil
	}
	c := n.mutable(edit)
	c.bitmap &^= bit
	c.slots = slices.Delete(c.slots, i, i+1)
	return c
}

func (n *hnode) all(yield func(ipKey, uint32) bool) bool {
	if n == nil {
		return true
	}
	for _, s := range n.slots {
		if s.sub != nil {
			if !s.sub.all(yield) {
				return false
			}
		} else if !yield(s.key, s.id) {
			return false
		}
	}
	return true
}

// diffFunc receives one difference: an entry only in the old trie (inNew
// false), only in the new one (inOld false) or in both with another
// identity. Returning false stops the diff.
type diffFunc func(k ipKey, oldID uint32, inOld bool, newID uint32, inNew bool) bool

// diffTries reports every difference between a and b, skipping the
// subtries they share: the work is proportional to what changed (times the
// depth), not to their size.
func diffTries(a, b *hnode, shift uint, fn diffFunc) bool {
	switch {
	case a == b:
		return true
	case a == nil:
		return b.all(func(k ipKey, id uint32) bool { return fn(k, 0, false, id, true) })
	case b == nil:
		return a.all(func(k ipKey, id uint32) bool { return fn(k, id, true, 0, false) })
	case shift > maxShift:
		return diffSorted(a.slots, b.slots, fn)
	}
	for rest := a.bitmap | b.bitmap; rest != 0; rest &= rest - 1 {
		bit := rest & -rest
		var sa, sb *hslot
		if a.bitmap&bit != 0 {
			sa = &a.slots[a.pos(bit)]
		}
		if b.bitmap&bit != 0 {
			sb = &b.slots[b.pos(bit)]
		}
		var ok bool
		switch {
		case sb == nil && sa.sub != nil:
			ok = diffTries(sa.sub, nil, 0, fn)
		case sb == nil:
			ok = fn(sa.key, sa.id, true, 0, false)
		case sa == nil && sb.sub != nil:
			ok = diffTries(nil, sb.sub, 0, fn)
		case sa == nil:
			ok = fn(sb.key, 0, false, sb.id, true)
		case sa.sub != nil && sb.sub != nil:
			ok = diffTries(sa.sub, sb.sub, shift+levelBits, fn)
		case sa.sub == nil && sb.sub == nil:
			ok = diffSorted([]hslot{*sa}, []hslot{*sb}, fn)
		default:
			// An entry on one side, a subtrie (which may hold it) on the
			// other: as sorted lists; the subtrie holds what was added or
			// removed at this slot since, so this stays small.
			ok = diffSorted(sortedEntries(sa), sortedEntries(sb), fn)
		}
		if !ok {
			return false
		}
	}
	return true
}

// diffSorted compares two lists of entries sorted by key.
func diffSorted(ea, eb []hslot, fn diffFunc) bool {
	for len(ea) > 0 || len(eb) > 0 {
		switch {
		case len(eb) == 0 || (len(ea) > 0 && compareKeys(ea[0].key, eb[0].key) < 0):
			if !fn(ea[0].key, ea[0].id, true, 0, false) {
				return false
			}
			ea = ea[1:]
		case len(ea) == 0 || compareKeys(ea[0].key, eb[0].key) > 0:
			if !fn(eb[0].key, 0, false, eb[0].id, true) {
				return false
			}
			eb = eb[1:]
		default:
			if ea[0].id != eb[0].id && !fn(ea[0].key, ea[0].id, true, eb[0].id, true) {
				return false
			}
			ea, eb = ea[1:], eb[1:]
		}
	}
	return true
}

// sortedEntries is the entry of a slot, or the entries of its subtrie,
// sorted by key.
func sortedEntries(s *hslot) []hslot {
	if s.sub == nil {
		return []hslot{*s}
	}
	var out []hslot
	s.sub.all(func(k ipKey, id uint32) bool {
		out = append(out, hslot{key: k, id: id})
		return true
	})
	slices.SortFunc(out, func(a, b hslot) int { return compareKeys(a.key, b.key) })
	return out
}

// Len is the number of entries.
func (c IPCache) Len() int { return c.nHosts + c.nNets }

// Get returns the identity of exactly the prefix p.
func (c IPCache) Get(p netip.Prefix) (uint32, bool) {
	if !p.IsValid() {
		return 0, false
	}
	k := keyOf(p)
	return c.trie(k).get(k, k.hash())
}

func (c IPCache) trie(k ipKey) *hnode {
	if k.bits == 128 {
		return c.hosts
	}
	return c.nets
}

// Lookup returns the identity of the longest prefix holding a, as the
// programs find it: the host entry, else the longest shorter prefix.
func (c IPCache) Lookup(a netip.Addr) (uint32, bool) {
	return c.lookup(a.Unmap().As16())
}

func (c IPCache) lookup(ip [16]byte) (uint32, bool) {
	k := ipKey{ip: ip, bits: 128}
	if id, ok := c.hosts.get(k, k.hash()); ok {
		return id, true
	}
	for _, l := range c.netLens {
		m := ipKey{bits: l}
		for i := range int(l+7) / 8 {
			m.ip[i] = ip[i]
		}
		if r := l % 8; r != 0 {
			m.ip[l/8] &= byte(0xff << (8 - r))
		}
		if id, ok := c.nets.get(m, m.hash()); ok {
			return id, true
		}
	}
	return 0, false
}

// All yields every entry: host prefixes first, each kind in trie order
// (deterministic, not sorted).
func (c IPCache) All() iter.Seq2[netip.Prefix, uint32] {
	return func(yield func(netip.Prefix, uint32) bool) {
		f := func(k ipKey, id uint32) bool { return yield(k.prefix(), id) }
		_ = c.hosts.all(f) && c.nets.all(f)
	}
}

// IPCacheBuilder makes new versions of an IPCache. Edits change only
// nodes it made itself since its last IPCache call; everything else is
// copied on first change. Not safe for concurrent use.
type IPCacheBuilder struct {
	c        IPCache
	edit     *editToken
	modified bool // since the last IPCache call
	netsMod  bool
}

// NewIPCacheBuilder starts from base (the zero IPCache for an empty one).
func NewIPCacheBuilder(base IPCache) *IPCacheBuilder {
	return &IPCacheBuilder{c: base, edit: &editToken{}}
}

// Set maps p to id. p must be valid (Set panics otherwise: it is a bug of
// the caller, which parses and validates addresses where they come in).
func (b *IPCacheBuilder) Set(p netip.Prefix, id uint32) {
	if !p.IsValid() {
		panic("dataplane: IPCacheBuilder.Set of an invalid prefix")
	}
	k := keyOf(p)
	t, r := b.c.trie(k).set(k, k.hash(), id, 0, b.edit)
	switch r {
	case added:
		b.put(k, t, 1)
	case updated:
		b.put(k, t, 0)
	}
}

// Delete removes p; deleting a prefix that is not there does nothing.
func (b *IPCacheBuilder) Delete(p netip.Prefix) {
	if !p.IsValid() {
		return
	}
	k := keyOf(p)
	if t, removed := b.c.trie(k).del(k, k.hash(), 0, b.edit); removed {
		b.put(k, t, -1)
	}
}

// put installs the new trie of k's kind, whose entry count moved by delta.
func (b *IPCacheBuilder) put(k ipKey, t *hnode, delta int) {
	b.modified = true
	if k.bits == 128 {
		b.c.hosts, b.c.nHosts = t, b.c.nHosts+delta
		return
	}
	b.c.nets, b.c.nNets, b.netsMod = t, b.c.nNets+delta, true
}

// Get returns the identity of exactly the prefix p.
func (b *IPCacheBuilder) Get(p netip.Prefix) (uint32, bool) { return b.c.Get(p) }

// Len is the number of entries.
func (b *IPCacheBuilder) Len() int { return b.c.Len() }

// Modified reports whether an edit changed the contents since the last
// IPCache call.
func (b *IPCacheBuilder) Modified() bool { return b.modified }

// IPCache returns the contents as an immutable value; later edits leave
// it alone.
func (b *IPCacheBuilder) IPCache() IPCache {
	if b.netsMod {
		var lens []uint8
		b.c.nets.all(func(k ipKey, _ uint32) bool {
			if !slices.Contains(lens, k.bits) {
				lens = append(lens, k.bits)
			}
			return true
		})
		slices.Sort(lens)
		slices.Reverse(lens)
		b.c.netLens, b.netsMod = lens, false
	}
	if b.modified {
		b.edit, b.modified = &editToken{}, false
	}
	return b.c
}

// diffIPCache reports every entry that differs between old and cur, host
// entries first; fn returning false stops it (and diffIPCache returns
// false).
func diffIPCache(old, cur IPCache, fn diffFunc) bool {
	return diffTries(old.hosts, cur.hosts, 0, fn) && diffTries(old.nets, cur.nets, 0, fn)
}
