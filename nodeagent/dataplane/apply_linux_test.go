package dataplane

import (
	"context"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// TestApplyWritesTheMapsTheKernelReads: Apply installs a slot's inner maps
// once and afterwards only writes into them (a write that failed halfway
// starts the slot over with new maps, installed again), so after any
// number of revisions every outer map entry must still point at the inner
// map this process wrote for that slot, and the active slot must hold the
// newest revision's ipcache.
func TestApplyWritesTheMapsTheKernelReads(t *testing.T) {
	requireKernel(t)
	_, nsPath := newNetNS(t)
	dp, _ := newEBPF(t, nsPath)
	ctx := context.Background()
	if err := dp.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
		t.Fatal(err)
	}
	revs := churnRevisions(1000)
	// big adds 5000 entries: enough for Apply to see a cancelled context
	// halfway through writing them.
	b := NewIPCacheBuilder(revs[0].IPCache)
	for i := range 5000 {
		b.Set(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), 32), 5)
	}
	big := &Revision{IPCache: b.IPCache(), Rules: revs[0].Rules}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	p := netip.MustParsePrefix("198.18.0.7/32")
	for n := range uint64(8) {
		if n == 3 {
			if err := dp.Apply(cancelled, big); err == nil {
				t.Fatal("Apply with a cancelled context wrote 5000 entries")
			}
		}
		r := *revs[n%2]
		r.Number = n + 1
		if err := dp.Apply(ctx, &r); err != nil {
			t.Fatal(err)
		}
		for slot := range uint32(2) {
			for i, outer := range dp.outer {
				mine := dp.inner[slot][i]
				if mine == nil {
					continue
				}
				var inner *ebpf.Map
				if err := outer.Lookup(slot, &inner); err != nil {
					t.Fatalf("revision %d: read %s slot %d: %v", r.Number, outerNames[i], slot, err)
				}
				got, err1 := inner.Info()
				want, err2 := mine.Info()
				inner.Close()
				if err1 != nil || err2 != nil {
					t.Fatal(err1, err2)
				}
				gid, _ := got.ID()
				wid, _ := want.ID()
				if gid != wid {
					t.Errorf("revision %d: %s slot %d points at map %d, but this process wrote map %d", r.Number, outerNames[i], slot, gid, wid)
				}
			}
		}
		var id uint32
		ip, _ := prefixKey(p)
		if err := dp.inner[dp.active][tabIPHosts].Lookup(ip, &id); err != nil {
			t.Fatalf("revision %d: look up %s in the active slot: %v", r.Number, p, err)
		}
		if want, _ := r.IPCache.Get(p); id != want {
			t.Errorf("revision %d: the active slot maps %s to %d, want %d", r.Number, p, id, want)
		}
	}
}
