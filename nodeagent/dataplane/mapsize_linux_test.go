package dataplane

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// hostsRevision is revision n with n·1000+count host entries, all of
// identity 1000+n (a revision tells its own entries apart).
func hostsRevision(n uint64, count int) *Revision {
	b := NewIPCacheBuilder(IPCache{})
	for i := range count {
		a := netip.AddrFrom4([4]byte{10, byte(n), byte(i >> 8), byte(i)})
		b.Set(netip.PrefixFrom(a, 32), uint32(1000+n))
	}
	return &Revision{Number: n, IPCache: b.IPCache()}
}

// pinnedState is what the programs read: the active slot and its revision.
func pinnedState(t *testing.T, dp *EBPF) stateVal {
	t.Helper()
	var st stateVal
	if err := dp.coll.Maps["fm_state"].Lookup(uint32(0), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// innerSizes are the max_entries of the ipcache maps the kernel has
// installed in a slot (what the programs look up), hosts then nets.
func innerSizes(t *testing.T, dp *EBPF, slot uint32) [2]uint32 {
	t.Helper()
	var out [2]uint32
	for i, tab := range []int{tabIPHosts, tabIPCache} {
		var id uint32
		if err := dp.outer[tab].Lookup(slot, &id); err != nil {
			t.Fatalf("slot %d of %s: %v", slot, outerNames[tab], err)
		}
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			t.Fatal(err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = info.MaxEntries
	}
	return out
}

// enforcedIdentity is the identity the active slot's host map gives a.
func enforcedIdentity(t *testing.T, dp *EBPF, a netip.Addr) uint32 {
	t.Helper()
	st := pinnedState(t, dp)
	var id uint32
	if err := dp.outer[tabIPHosts].Lookup(st.Active, &id); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var v uint32
	if err := m.Lookup(a.Unmap().As16(), &v); err != nil {
		return 0
	}
	return v
}

func TestIPCacheMaxEntriesSizesTheMapsRefusesWhatDoesNotFitAndChangesAcrossRestarts(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	dp, cfg := newEBPFWith(t, Config{IPCacheMaxEntries: 1024})

	// Applied: both ipcache tables of the written slot have the set size.
	if err := dp.Apply(ctx, hostsRevision(1, 1000)); err != nil {
		t.Fatal(err)
	}
	st := pinnedState(t, dp)
	if got := innerSizes(t, dp, st.Active); got != [2]uint32{1024, 1024} {
		t.Fatalf("ipcache maps of the active slot have %v entries, want the configured 1024", got)
	}

	// Over the size: refused whole, with the error naming the setting;
	// revision 1 stays enforced.
	err := dp.Apply(ctx, hostsRevision(2, 1025))
	var full *IPCacheFullError
	if !errors.As(err, &full) || !errors.Is(err, ErrIPCacheFull) || full.Hosts != 1025 || full.MaxEntries != 1024 {
		t.Fatalf("applying 1025 entries into 1024: %v, want an IPCacheFullError (1025 hosts, 1024 max)", err)
	}
	if !strings.Contains(err.Error(), "--ipcache-max-entries") || !strings.Contains(err.Error(), "agent.ipcacheMaxEntries") {
		t.Errorf("error %q does not say what to raise", err)
	}
	if st := pinnedState(t, dp); st.Revision != 1 {
		t.Fatalf("after the refused revision the programs read revision %d, want 1", st.Revision)
	}
	if got := enforcedIdentity(t, dp, netip.MustParseAddr("10.1.3.231")); got != 1001 {
		t.Fatalf("10.1.3.231 (entry 999 of revision 1) has identity %d, want 1001 still", got)
	}

	// Restart with a larger size: the pinned revision keeps being
	// enforced from the old maps; the first write creates the new size, the
	// second the other slot's.
	dp.Close()
	dp, err = New(ctx, Config{PinDir: cfg.PinDir, IPCacheMaxEntries: 2048})
	if err != nil {
		t.Fatalf("restart with another ipcache size: %v", err)
	}
	defer dp.Close()
	st = pinnedState(t, dp)
	if st.Revision != 1 || innerSizes(t, dp, st.Active) != [2]uint32{1024, 1024} {
		t.Fatalf("after the restart: revision %d in maps of %v; want revision 1 still enforced in the old maps", st.Revision, innerSizes(t, dp, st.Active))
	}
	for _, rev := range []uint64{3, 4} {
		if err := dp.Apply(ctx, hostsRevision(rev, 1500)); err != nil {
			t.Fatalf("revision %d (1500 entries) after raising the size to 2048: %v", rev, err)
		}
		st := pinnedState(t, dp)
		if got := innerSizes(t, dp, st.Active); got != [2]uint32{2048, 2048} {
			t.Fatalf("revision %d written into maps of %v, want 2048", rev, got)
		}
	}
	if got := innerSizes(t, dp, pinnedState(t, dp).Active^1); got != [2]uint32{2048, 2048} {
		t.Fatalf("after two revisions the other slot has maps of %v, want both slots at 2048", got)
	}
	if got := enforcedIdentity(t, dp, netip.MustParseAddr("10.4.5.219")); got != 1004 {
		t.Fatalf("10.4.5.219 (entry 1499 of revision 4) has identity %d, want 1004", got)
	}

	// Restart with a smaller size than the pinned revision needs: the next
	// revision that does not fit is refused and revision 4 stays enforced.
	dp.Close()
	dp, err = New(ctx, Config{PinDir: cfg.PinDir, IPCacheMaxEntries: 1024})
	if err != nil {
		t.Fatalf("restart with a smaller ipcache: %v", err)
	}
	defer dp.Close()
	if err := dp.Apply(ctx, hostsRevision(5, 1500)); !errors.Is(err, ErrIPCacheFull) {
		t.Fatalf("1500 entries after lowering the size to 1024: %v, want ErrIPCacheFull", err)
	}
	if st := pinnedState(t, dp); st.Revision != 4 {
		t.Fatalf("after the refused revision the programs read revision %d, want 4", st.Revision)
	}
	if err := dp.Apply(ctx, hostsRevision(6, 1000)); err != nil {
		t.Fatalf("a revision that fits the smaller size: %v", err)
	}
	if got := innerSizes(t, dp, pinnedState(t, dp).Active); got != [2]uint32{1024, 1024} {
		t.Fatalf("revision 6 written into maps of %v, want 1024", got)
	}
}

func TestIPCacheMaxEntriesOutOfRangeIsRefusedBeforeLoading(t *testing.T) {
	for _, n := range []uint32{1, 1023, MaxIPCacheMaxEntries + 1} {
		err := ValidateIPCacheMaxEntries(n)
		if err == nil || !strings.Contains(err.Error(), "--ipcache-max-entries") {
			t.Errorf("%d entries: %v, want an error naming --ipcache-max-entries", n, err)
		}
	}
	for _, n := range []uint32{0, 1024, DefaultIPCacheMaxEntries, MaxIPCacheMaxEntries} {
		if err := ValidateIPCacheMaxEntries(n); err != nil {
			t.Errorf("%d entries: %v, want accepted", n, err)
		}
	}
}
