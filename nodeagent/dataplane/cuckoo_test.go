package dataplane

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

func randomPFKey(r *rand.Rand) policyFixedKey {
	return policyFixedKey{Ifindex: 1 + r.Uint32N(50), Dir: uint8(r.IntN(2)), Kind: uint8(r.IntN(6)),
		Proto: []uint8{0, protoTCP, protoUDP}[r.IntN(3)], Peer: r.Uint32N(5000)}
}

// checkPFA fails unless t answers every key of want with its value, holds
// nothing else, and places each key in one of its two buckets.
func checkPFA(t *testing.T, step string, tab *pfaTable, want map[policyFixedKey]pfaVal) {
	t.Helper()
	for k, v := range want {
		if got, ok := tab.lookup(k); !ok || got != v {
			t.Fatalf("%s: lookup %+v = %+v, %v; want %+v", step, k, got, ok, v)
		}
	}
	n := 0
	for b := range tab.b {
		for w := range cuckooWays {
			k := tab.b[b].K[w]
			if k.Ifindex == 0 {
				continue
			}
			n++
			if _, ok := want[k]; !ok {
				t.Fatalf("%s: bucket %d holds %+v, which is not wanted", step, b, k)
			}
			if c := tab.candidates(k); uint32(b) != c[0] && uint32(b) != c[1] {
				t.Fatalf("%s: %+v in bucket %d, not one of its candidates %v", step, k, b, c)
			}
		}
	}
	if n != len(want) {
		t.Fatalf("%s: table holds %d entries, want %d", step, n, len(want))
	}
}

func TestPFATablePlacesUpdatesAndRemovesToHighLoad(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const nb = 64
	tab := newPFATable(nb)
	have := map[policyFixedKey]pfaVal{}
	for round := range 6 {
		// Keep 90% of the ways full: most placements need moves.
		want := map[policyFixedKey]pfaVal{}
		for k, v := range have {
			if r.IntN(3) > 0 {
				want[k] = v
				if r.IntN(4) == 0 {
					want[k] = pfaVal{pfaTier: {AllRule: r.Uint32()}}
				}
			}
		}
		for len(want) < nb*cuckooWays*9/10 {
			want[randomPFKey(r)] = pfaVal{{AllRule: r.Uint32(), NPorts: 1}, {AllRule: r.Uint32()}}
		}
		if !tab.sync(have, want) {
			t.Fatalf("round %d: %d entries in %d ways did not fit", round, len(want), nb*cuckooWays)
		}
		checkPFA(t, "round", tab, want)
		have = want
	}
}

func TestPFATableLeavesItselfUnchangedWhenAKeyDoesNotFit(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	tab := newPFATable(2) // 8 ways
	placed := map[policyFixedKey]pfaVal{}
	for len(placed) < 2*cuckooWays {
		k := randomPFKey(r)
		v := pfaVal{{AllRule: r.Uint32()}}
		if !tab.put(k, v) {
			t.Fatalf("put %d into a table with free ways failed", len(placed))
		}
		placed[k] = v
	}
	before := append([]cuckooBucket[policyFixedKey, pfaVal](nil), tab.b...)
	for {
		k := randomPFKey(r)
		if _, ok := placed[k]; ok {
			continue
		}
		if tab.put(k, pfaVal{{AllRule: 1}}) {
			t.Fatal("a ninth key was placed in eight ways")
		}
		break
	}
	for i := range before {
		if before[i] != tab.b[i] {
			t.Fatalf("bucket %d changed by a failed put", i)
		}
	}
	checkPFA(t, "after a failed put", tab, placed)
}

// The policy index array pairs each NetworkPolicy entry with the tier
// entry of its shape and follows PolicyFixed through its diffs: every
// entry is found in its half under the folded key, nothing else is held,
// and the array's entry count is pfaLen.
func TestPFAArrayPairsTheLayersAndFollowsPolicyFixed(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	const nb = 256
	tab := newPFATable(nb)
	var old map[policyFixedKey]policyFixedVal
	for round := range 8 {
		pf := map[policyFixedKey]policyFixedVal{}
		for k, v := range old {
			if r.IntN(4) > 0 {
				pf[k] = v
				if r.IntN(5) == 0 {
					pf[k] = policyFixedVal{AllRule: r.Uint32(), Flags: pfRanges}
				}
			}
		}
		for range 150 {
			k := randomPFKey(r)
			k.Ifindex, k.Peer = 1+k.Ifindex%3, k.Peer%10 // shapes both layers share
			pf[k] = policyFixedVal{AllRule: r.Uint32(), NPorts: 1, Rules: [pfInline]uint32{r.Uint32()}}
		}
		var ok bool
		if round%3 == 0 {
			tab = newPFATable(nb)
			ok = tab.sync(nil, pfaEntries(pf))
		} else {
			ok = tab.sync(pfaChanges(old, pf))
		}
		if !ok {
			t.Fatalf("round %d: %d entries did not fit %d ways", round, pfaLen(pf), nb*cuckooWays)
		}
		want := pfaEntries(pf)
		if len(want) != pfaLen(pf) {
			t.Fatalf("round %d: pfaLen %d, the array holds %d entries", round, pfaLen(pf), len(want))
		}
		checkPFA(t, "round", tab, want)
		paired := 0
		for k, v := range pf {
			ak, h := pfaSlot(k)
			got, found := tab.lookup(ak)
			if !found || got[h] != v {
				t.Fatalf("round %d: %+v is %+v in half %d of %+v, want %+v", round, k, got[h], h, ak, v)
			}
			if tierHalf := k.Kind == kindTierIdentity || k.Kind == kindTierCIDR; tierHalf != (h == pfaTier) {
				t.Fatalf("round %d: kind %d in half %d", round, k.Kind, h)
			}
			if h == pfaTier && got[pfaNP] != (policyFixedVal{}) {
				paired++
			}
		}
		if paired == 0 {
			t.Fatalf("round %d: no tier entry shares a way with a NetworkPolicy entry", round)
		}
		old = pf
	}
}

// The ipcache array follows the revisions' host entries through their
// diffs (prefixes stay in the trie), whatever moved in between.
func TestIPCacheArrayFollowsTheHostEntries(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	const nb = 512
	tab := newIPCTable(nb)
	have := IPCache{}
	for round := range 8 {
		b := NewIPCacheBuilder(have)
		for range 300 {
			a := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
			switch r.IntN(3) {
			case 0:
				b.Delete(netip.PrefixFrom(a, 32))
			default:
				b.Set(netip.PrefixFrom(a, 32), 1+r.Uint32N(100))
			}
		}
		b.Set(netip.MustParsePrefix("192.0.2.0/24"), 7) // a prefix: never in the array
		want := b.IPCache()
		// What syncIPCache hands over: the host entries of the diff,
		// deletes first. Every other round starts from an empty table.
		var changes []hostChange
		for _, del := range []bool{true, false} {
			diffIPCache(have, want, func(k ipKey, _ uint32, _ bool, id uint32, inNew bool) bool {
				if k.bits == 128 && inNew != del {
					changes = append(changes, hostChange{ip: k.ip, id: id, del: del})
				}
				return true
			})
		}
		ok := false
		if round%2 == 1 {
			tab = newIPCTable(nb)
			ok = fillIPCacheArray(tab, want)
		} else {
			ok = applyHostChanges(tab, changes)
		}
		if !ok {
			t.Fatalf("round %d: %d host entries did not fit %d ways", round, want.nHosts, nb*cuckooWays)
		}
		hosts := map[[16]byte]uint32{}
		for p, id := range want.All() {
			if p.Bits() == p.Addr().BitLen() {
				hosts[mapped(p.Addr())] = id
			}
		}
		n := 0
		for b := range tab.b {
			for w := range cuckooWays {
				if k := tab.b[b].K[w]; k != ([16]byte{}) {
					n++
					if id, ok := hosts[k]; !ok || id != tab.b[b].V[w] {
						t.Fatalf("round %d: array holds %v -> %d, ipcache %d (%v)", round, netip.AddrFrom16(k), tab.b[b].V[w], id, ok)
					}
				}
			}
		}
		if n != len(hosts) {
			t.Fatalf("round %d: array holds %d host entries, ipcache %d", round, n, len(hosts))
		}
		have = want
	}
}
