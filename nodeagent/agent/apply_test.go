package agent

import (
	"runtime"
	"testing"
)

// TestIncrementalApplyCostDoesNotGrowWithTheIPCache: one incremental
// revision (a pod replaced elsewhere in the federation) costs the sync
// goroutine, from the watch message to the dataplane's Apply, the same
// allocations with 10k and with 100k ipcache entries under the same
// policy: nothing on the path copies, rebuilds or walks the ipcache.
func TestIncrementalApplyCostDoesNotGrowWithTheIPCache(t *testing.T) {
	type cost struct{ allocs, bytes float64 }
	measure := func(n int) cost {
		a := churnAgent(t, n)
		rev := uint64(10)
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
		const steps = 50
		best := cost{allocs: -1}
		// The least of three rounds: a stray allocation elsewhere in the
		// process only ever adds.
		for range 3 {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range steps {
				rev++
				churnStep(a, rev)
			}
			runtime.ReadMemStats(&after)
			c := cost{float64(after.Mallocs-before.Mallocs) / steps, float64(after.TotalAlloc-before.TotalAlloc) / steps}
			if best.allocs < 0 || c.bytes < best.bytes {
				best = c
			}
		}
		if got, _ := a.Enforced(); got != rev {
			t.Fatalf("enforced revision %d, want %d: the steps were not applied", got, rev)
		}
		return best
	}
	small, big := measure(10_000), measure(100_000)
	t.Logf("per incremental revision: %.0f allocations, %.0f B at 10k entries; %.0f, %.0f B at 100k",
		small.allocs, small.bytes, big.allocs, big.bytes)
	// The ipcache's trie is one level deeper at 100k entries: a few hundred
	// bytes more per changed entry. Work proportional to the ipcache costs
	// at least a byte per entry, 90 KB more at 100k.
	if big.allocs > small.allocs+8 || big.bytes > small.bytes+16<<10 {
		t.Errorf("an incremental revision costs %.0f allocations (%.0f B) at 100k ipcache entries and %.0f (%.0f B) at 10k: "+
			"the apply path does work proportional to the ipcache", big.allocs, big.bytes, small.allocs, small.bytes)
	}
}
