package dataplane

import (
	"math/rand/v2"
	"testing"
)

func randomPFKey(r *rand.Rand) policyFixedKey {
	return policyFixedKey{Ifindex: 1 + r.Uint32N(50), Dir: uint8(r.IntN(2)), Kind: uint8(r.IntN(6)),
		Proto: []uint8{0, protoTCP, protoUDP}[r.IntN(3)], Peer: r.Uint32N(5000)}
}

// checkPFA fails unless t answers every key of want with its value, holds
// nothing else, and places each key in one of its two buckets.
func checkPFA(t *testing.T, step string, tab *pfaTable, want map[policyFixedKey]policyFixedVal) {
	t.Helper()
	for k, v := range want {
		if got, ok := tab.lookup(k); !ok || got != v {
			t.Fatalf("%s: lookup %+v = %+v, %v; want %+v", step, k, got, ok, v)
		}
	}
	n := 0
	for b := range tab.b {
		for w := range pfaWays {
			k := tab.b[b].K[w]
			if k.Ifindex == 0 {
				continue
			}
			n++
			if _, ok := want[k]; !ok {
				t.Fatalf("%s: bucket %d holds %+v, which is not wanted", step, b, k)
			}
			if c := pfaCandidates(k, tab.nb()); uint32(b) != c[0] && uint32(b) != c[1] {
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
	have := map[policyFixedKey]policyFixedVal{}
	for round := range 6 {
		// Keep 90% of the ways full: most placements need moves.
		want := map[policyFixedKey]policyFixedVal{}
		for k, v := range have {
			if r.IntN(3) > 0 {
				want[k] = v
				if r.IntN(4) == 0 {
					want[k] = policyFixedVal{AllRule: r.Uint32()}
				}
			}
		}
		for len(want) < nb*pfaWays*9/10 {
			want[randomPFKey(r)] = policyFixedVal{AllRule: r.Uint32(), NPorts: 1}
		}
		if !tab.sync(have, want) {
			t.Fatalf("round %d: %d entries in %d ways did not fit", round, len(want), nb*pfaWays)
		}
		checkPFA(t, "round", tab, want)
		have = want
	}
}

func TestPFATableLeavesItselfUnchangedWhenAKeyDoesNotFit(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	tab := newPFATable(2) // 8 ways
	placed := map[policyFixedKey]policyFixedVal{}
	for len(placed) < 2*pfaWays {
		k := randomPFKey(r)
		v := policyFixedVal{AllRule: r.Uint32()}
		if !tab.put(k, v) {
			t.Fatalf("put %d into a table with free ways failed", len(placed))
		}
		placed[k] = v
	}
	before := append([]pfaBucket(nil), tab.b...)
	for {
		k := randomPFKey(r)
		if _, ok := placed[k]; ok {
			continue
		}
		if tab.put(k, policyFixedVal{AllRule: 1}) {
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
