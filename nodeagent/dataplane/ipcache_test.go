package dataplane

import (
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// collidingV6 returns n distinct IPv6 host prefixes whose keys hash to the
// same 64 bits, so they share a collision node.
func collidingV6(n int) []netip.Prefix {
	var out []netip.Prefix
	base := fmix64(0x11 ^ fmix64(0xfd00<<48^uint64(128)<<56))
	for i := range n {
		hi := uint64(0xfd00)<<48 | uint64(i+1)
		lo := base ^ fmix64(hi^uint64(128)<<56) // lo ^ fmix64(hi…) = base for every i
		var b [16]byte
		binary.BigEndian.PutUint64(b[:8], hi)
		binary.BigEndian.PutUint64(b[8:], lo)
		out = append(out, netip.PrefixFrom(netip.AddrFrom16(b), 128))
	}
	return out
}

// prefixPool draws prefixes that share trie paths and kinds: IPv4 and IPv6
// hosts, shorter prefixes, IPv4-mapped forms and full-hash collisions.
func prefixPool(r *rand.Rand) []netip.Prefix {
	var pool []netip.Prefix
	for i := range 300 {
		pool = append(pool, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), byte(r.IntN(256))}), 32))
	}
	for i := range 100 {
		pool = append(pool, netip.MustParsePrefix(fmt.Sprintf("fd00:%x::%x/128", i%3, i)))
	}
	for _, s := range []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "0.0.0.0/0", "fd00::/64", "fd00:1::/48", "::/0"} {
		pool = append(pool, netip.MustParsePrefix(s))
	}
	return append(pool, collidingV6(4)...)
}

func contents(c IPCache) map[ipKey]uint32 {
	m := map[ipKey]uint32{}
	for p, id := range c.All() {
		k := keyOf(p)
		if _, dup := m[k]; dup {
			panic(fmt.Sprintf("All yields %s twice", p))
		}
		m[k] = id
	}
	return m
}

// build makes an IPCache from scratch, in key order.
func build(m map[ipKey]uint32) IPCache {
	b := NewIPCacheBuilder(IPCache{})
	for _, k := range slices.SortedFunc(maps.Keys(m), compareKeys) {
		b.Set(k.prefix(), m[k])
	}
	return b.IPCache()
}

// sameShape reports whether two tries have the same structure.
func sameShape(a, b *hnode) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.bitmap != b.bitmap || len(a.slots) != len(b.slots) {
		return false
	}
	for i := range a.slots {
		sa, sb := a.slots[i], b.slots[i]
		if (sa.sub == nil) != (sb.sub == nil) || (sa.sub == nil && (sa.key != sb.key || sa.id != sb.id)) {
			return false
		}
		if sa.sub != nil && !sameShape(sa.sub, sb.sub) {
			return false
		}
	}
	return true
}

type version struct {
	c    IPCache
	want map[ipKey]uint32
}

// TestIPCacheVersionsAreIndependentValues edits one builder at random and
// checks every version it handed out against a plain map: contents,
// exact and longest-prefix lookups, a canonical shape, and the diff to
// every other version.
func TestIPCacheVersionsAreIndependentValues(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 99))
			pool := prefixPool(r)
			b := NewIPCacheBuilder(IPCache{})
			want := map[ipKey]uint32{}
			var versions []version
			for step := range 3000 {
				p := pool[r.IntN(len(pool))]
				if r.IntN(3) == 0 {
					b.Delete(p)
					delete(want, keyOf(p))
				} else {
					id := uint32(1 + r.IntN(4))
					b.Set(p, id)
					want[keyOf(p)] = id
				}
				if id, ok := b.Get(p); ok != (want[keyOf(p)] != 0) || id != want[keyOf(p)] {
					t.Fatalf("step %d: builder Get(%s) = %d, %v; want %d", step, p, id, ok, want[keyOf(p)])
				}
				if r.IntN(50) == 0 {
					versions = append(versions, version{b.IPCache(), maps.Clone(want)})
				}
			}
			versions = append(versions, version{b.IPCache(), maps.Clone(want)})
			for i, v := range versions {
				if got := contents(v.c); !maps.Equal(got, v.want) {
					t.Fatalf("version %d holds %d entries, want %d (edits after it leaked in or were lost)", i, len(got), len(v.want))
				}
				if v.c.Len() != len(v.want) {
					t.Fatalf("version %d: Len = %d, want %d", i, v.c.Len(), len(v.want))
				}
				fresh := build(v.want)
				if !sameShape(v.c.hosts, fresh.hosts) || !sameShape(v.c.nets, fresh.nets) {
					t.Fatalf("version %d: shape depends on the edit history", i)
				}
				for _, p := range pool {
					id, ok := v.c.Get(p)
					wid, wok := v.want[keyOf(p)]
					if id != wid || ok != wok {
						t.Fatalf("version %d: Get(%s) = %d, %v; want %d, %v", i, p, id, ok, wid, wok)
					}
					a := p.Addr()
					id, ok = v.c.Lookup(a)
					wid, wok = longestMatch(v.want, a)
					if id != wid || ok != wok {
						t.Fatalf("version %d: Lookup(%s) = %d, %v; want %d, %v", i, a, id, ok, wid, wok)
					}
				}
			}
			for range 50 {
				x, y := versions[r.IntN(len(versions))], versions[r.IntN(len(versions))]
				got := map[ipKey][2]int64{}
				diffIPCache(x.c, y.c, func(k ipKey, oldID uint32, inOld bool, newID uint32, inNew bool) bool {
					if _, dup := got[k]; dup {
						t.Fatalf("diff reports %s twice", k.prefix())
					}
					got[k] = [2]int64{idOrNone(oldID, inOld), idOrNone(newID, inNew)}
					return true
				})
				want := map[ipKey][2]int64{}
				for k := range mergeKeys(x.want, y.want) {
					o, inO := x.want[k]
					n, inN := y.want[k]
					if inO != inN || o != n {
						want[k] = [2]int64{idOrNone(o, inO), idOrNone(n, inN)}
					}
				}
				if !maps.Equal(got, want) {
					t.Fatalf("diff has %d changes, want %d", len(got), len(want))
				}
			}
		})
	}
}

func idOrNone(id uint32, ok bool) int64 {
	if !ok {
		return -1
	}
	return int64(id)
}

func mergeKeys(a, b map[ipKey]uint32) map[ipKey]bool {
	m := map[ipKey]bool{}
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}

func longestMatch(m map[ipKey]uint32, a netip.Addr) (uint32, bool) {
	ip := mapped(a)
	best, found, bestBits := uint32(0), false, -1
	for k, id := range m {
		if int(k.bits) > bestBits && maskedEqual(k.ip[:], ip[:], int(k.bits)) {
			best, found, bestBits = id, true, int(k.bits)
		}
	}
	return best, found
}

func TestIPCacheStoresIPv4AsMappedAndReturnsIPv4(t *testing.T) {
	b := NewIPCacheBuilder(IPCache{})
	b.Set(netip.MustParsePrefix("10.0.0.1/32"), 5)
	b.Set(netip.MustParsePrefix("::ffff:10.0.0.1/128"), 6)
	b.Set(netip.MustParsePrefix("10.1.0.0/16"), 7)
	c := b.IPCache()
	got := map[string]uint32{}
	for p, id := range c.All() {
		got[p.String()] = id
	}
	want := map[string]uint32{"10.0.0.1/32": 6, "10.1.0.0/16": 7}
	if !maps.Equal(got, want) {
		t.Fatalf("entries %v, want %v", got, want)
	}
	if id, ok := c.Lookup(netip.MustParseAddr("::ffff:10.1.2.3")); !ok || id != 7 {
		t.Errorf("Lookup of an IPv4-mapped address = %d, %v; want 7", id, ok)
	}
}

// ipEntry is one ipcache entry of a test revision.
type ipEntry struct {
	p  netip.Prefix
	id uint32
}

// ipcacheOf is an IPCache holding es.
func ipcacheOf(es ...ipEntry) IPCache {
	b := NewIPCacheBuilder(IPCache{})
	for _, e := range es {
		b.Set(e.p, e.id)
	}
	return b.IPCache()
}

// bigIPCache holds n IPv4 hosts.
func bigIPCache(n int) IPCache {
	b := NewIPCacheBuilder(IPCache{})
	for i := range n {
		b.Set(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32), uint32(i))
	}
	return b.IPCache()
}

// TestIPCacheNewVersionCostsItsChangesNotItsSize: the next version after
// one change allocates a path of the trie, and the diff between the two
// visits that change only.
func TestIPCacheNewVersionCostsItsChangesNotItsSize(t *testing.T) {
	const n = 100_000
	base := bigIPCache(n)
	p := netip.MustParsePrefix("10.0.0.7/32")
	var next IPCache
	allocs := testing.AllocsPerRun(20, func() {
		b := NewIPCacheBuilder(base)
		b.Set(p, 1<<20)
		b.Delete(netip.MustParsePrefix("10.0.0.8/32"))
		next = b.IPCache()
	})
	// Two paths of at most 4 nodes (32^4 > 100k), each node and its slots,
	// the builder and its token.
	if allocs > 20 {
		t.Errorf("a version with 2 changes to %d entries costs %.0f allocations, want at most 20", n, allocs)
	}
	if base.Len() != n || next.Len() != n-1 {
		t.Fatalf("Len: base %d, next %d; want %d and %d", base.Len(), next.Len(), n, n-1)
	}
	seen := make([]ipKey, 0, 2)
	allocs = testing.AllocsPerRun(20, func() {
		seen = seen[:0]
		diffIPCache(base, next, func(k ipKey, _ uint32, _ bool, _ uint32, _ bool) bool {
			seen = append(seen, k)
			return true
		})
	})
	slices.SortFunc(seen, compareKeys)
	if len(seen) != 2 || seen[0] != keyOf(p) || seen[1] != keyOf(netip.MustParsePrefix("10.0.0.8/32")) {
		t.Errorf("diff saw %d entries, want the two changed ones", len(seen))
	}
	if allocs != 0 {
		t.Errorf("diffing two versions that differ in 2 entries allocates %.0f times", allocs)
	}
}

func TestIPCacheBuilderReportsRealChangesOnly(t *testing.T) {
	b := NewIPCacheBuilder(IPCache{})
	p := netip.MustParsePrefix("10.0.0.1/32")
	b.Set(p, 1)
	c := b.IPCache()
	b.Set(p, 1)
	b.Delete(netip.MustParsePrefix("10.0.0.2/32"))
	if b.Modified() {
		t.Error("setting an entry to its identity and deleting an absent one count as a change")
	}
	if got := b.IPCache(); got.hosts != c.hosts {
		t.Error("a builder with no change made a new trie")
	}
	b.Set(p, 2)
	if !b.Modified() {
		t.Error("a changed identity does not count as a change")
	}
}

func TestCollidingKeysShareOneHash(t *testing.T) {
	ps := collidingV6(3)
	h := keyOf(ps[0]).hash()
	for _, p := range ps[1:] {
		if keyOf(p).hash() != h {
			t.Fatalf("%s and %s hash apart: the collision-node cases are not exercised", ps[0], p)
		}
	}
}
