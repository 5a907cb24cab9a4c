package dataplane

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// TestUpgradeReplacesIncompatiblePinsAndKeepsFlows starts the dataplane on
// a pin directory an older version left: a conntrack table of the legacy
// layout holding established flows (IPv4 and IPv6), an fm_ct4 of another
// layout and a full learned-address index of another layout. The start
// succeeds, the incompatible maps are replaced (the index emptied first,
// for the programs still reading it), the legacy pin is gone and the replies of the legacy flows still pass an egress that
// allows nothing.
func TestUpgradeReplacesIncompatiblePinsAndKeepsFlows(t *testing.T) {
	requireKernel(t)
	_, nsPath := newNetNS(t)
	ctx := context.Background()
	cfg := Config{PinDir: "/sys/fs/bpf/" + randName("fmdp-test-"), NetNS: nsPath}
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Uninstall(context.Background(), cfg.PinDir); err != nil {
			t.Error(err)
		}
	})
	pin := func(spec *ebpf.MapSpec) *ebpf.Map {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		if err := m.Pin(filepath.Join(cfg.PinDir, spec.Name)); err != nil {
			t.Fatal(err)
		}
		return m
	}
	legacy := pin(&ebpf.MapSpec{Name: legacyCT, Type: ebpf.LRUHash, KeySize: 44, ValueSize: 16, MaxEntries: 1 << 18})
	pin(&ebpf.MapSpec{Name: "fm_ct4", Type: ebpf.LRUHash, KeySize: 20, ValueSize: 16, MaxEntries: 1024})
	// A learned-address index of another layout, full: the programs still
	// attached read it until they are replaced, so it must be emptied.
	oldIndex := pin(&ebpf.MapSpec{Name: "fm_fqdn_index", Type: ebpf.Array, KeySize: 4, ValueSize: 64, MaxEntries: 16,
		Flags: unix.BPF_F_MMAPABLE})
	full := bytes.Repeat([]byte{0xa5}, 64)
	for i := range uint32(16) {
		if err := oldIndex.Put(i, full); err != nil {
			t.Fatal(err)
		}
	}

	me, peer := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.1.10")
	me6, peer6 := netip.MustParseAddr("fd00:18::1"), netip.MustParseAddr("fd00:18:1::10")
	// Flows the pod opened (egress, ifindex 1: lo of the test netns).
	for _, f := range [][2]netip.Addr{{me, peer}, {me6, peer6}} {
		k := legacyCTKey{Ifindex: 1, Dir: uint8(policy.Egress), Proto: protoTCP, Sport: 40000, Dport: 443,
			Src: mapped(f[0]), Dst: mapped(f[1])}
		if err := legacy.Put(k, legacyCTVal{LastSeen: monotonicNow(), Rule: 3}); err != nil {
			t.Fatal(err)
		}
	}

	dp, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("start on an older version's pins: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	if _, err := os.Stat(filepath.Join(cfg.PinDir, legacyCT)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("legacy conntrack pin: stat err %v, want it removed", err)
	}
	ct4, err := ebpf.LoadPinnedMap(filepath.Join(cfg.PinDir, "fm_ct4"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ct4.Close()
	if want := dp.spec.Maps["fm_ct4"]; ct4.ValueSize() != want.ValueSize || ct4.MaxEntries() != want.MaxEntries {
		t.Errorf("pinned fm_ct4 has value size %d, %d entries; want the new layout (%d, %d)",
			ct4.ValueSize(), ct4.MaxEntries(), want.ValueSize, want.MaxEntries)
	}

	for i := range uint32(16) {
		var got []byte
		if err := oldIndex.Lookup(i, &got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, make([]byte, 64)) {
			t.Errorf("entry %d of the replaced learned-address index: %x, want it emptied", i, got)
		}
	}
	if idx, err := ebpf.LoadPinnedMap(filepath.Join(cfg.PinDir, "fm_fqdn_index"), nil); err != nil {
		t.Error(err)
	} else {
		if want := dp.spec.Maps["fm_fqdn_index"]; idx.ValueSize() != want.ValueSize {
			t.Errorf("pinned fm_fqdn_index has value size %d, want the new layout's %d", idx.ValueSize(), want.ValueSize)
		}
		idx.Close()
	}

	if err := dp.Attach(ctx, Endpoint{ID: "me", Interface: "lo"}); err != nil {
		t.Fatal(err)
	}
	rev := &Revision{Number: 1, Rules: map[string]policy.EndpointRules{"me": {Identity: 9,
		Ingress: policy.DirectionRules{Enforced: true}, Egress: policy.DirectionRules{Enforced: true}}}}
	if err := dp.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	err = inNetNS(nsPath, func() error {
		for _, f := range [][2]netip.Addr{{peer, me}, {peer6, me6}} {
			reply := pktSpec{src: f[0], dst: f[1], proto: protoTCP, sport: 443, dport: 40000, tcpFlags: 0x12}
			if got, err := dp.runProg(uint8(policy.Ingress), 1, reply.frame()); err != nil || got != retNext {
				t.Errorf("reply %s -> %s of a legacy flow: program returned %d, %v; want allow", f[0], f[1], got, err)
			}
			other := pktSpec{src: f[0], dst: f[1], proto: protoTCP, sport: 443, dport: 40001, tcpFlags: 0x12}
			if got, err := dp.runProg(uint8(policy.Ingress), 1, other.frame()); err != nil || got != retDrop {
				t.Errorf("packet %s -> %s of no flow: program returned %d, %v; want drop", f[0], f[1], got, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeAdoptsLegacyEndpointsTable starts the dataplane on pins of a
// version whose endpoints table had no counter indexes: the pinned
// revision stays enforced by the new programs when Attach comes before the
// first Apply, packets are counted meanwhile, the first Apply writes the
// legacy table too (for old programs still attached) and then removes it.
func TestUpgradeAdoptsLegacyEndpointsTable(t *testing.T) {
	requireKernel(t)
	_, nsPath := newNetNS(t)
	ctx := context.Background()
	cfg := Config{PinDir: "/sys/fs/bpf/" + randName("fmdp-test-"), NetNS: nsPath}
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Uninstall(context.Background(), cfg.PinDir); err != nil {
			t.Error(err)
		}
	})
	inner := legacyEndpointsInner
	outer, err := ebpf.NewMap(&ebpf.MapSpec{Name: legacyEndpoints, Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4,
		MaxEntries: 2, InnerMap: &inner})
	if err != nil {
		t.Fatal(err)
	}
	defer outer.Close()
	slot0, err := ebpf.NewMap(&inner)
	if err != nil {
		t.Fatal(err)
	}
	defer slot0.Close()
	// lo (ifindex 1): ingress open, egress enforced (and no policy tables).
	if err := slot0.Put(uint32(1), legacyEndpointVal{Identity: 9, Enforced: [2]uint8{0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := outer.Put(uint32(0), slot0); err != nil {
		t.Fatal(err)
	}
	legacyPin := filepath.Join(cfg.PinDir, legacyEndpoints)
	if err := outer.Pin(legacyPin); err != nil {
		t.Fatal(err)
	}

	dp, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("start on an older version's pins: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	if err := dp.Attach(ctx, Endpoint{ID: "me", Interface: "lo"}); err != nil {
		t.Fatal(err)
	}
	peer, me := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("198.18.0.1")
	sport := uint16(5000)
	send := func(dir policy.Direction, want int32) {
		t.Helper()
		sport++ // a new flow each time
		err := inNetNS(nsPath, func() error {
			f := pktSpec{src: peer, dst: me, proto: protoUDP, sport: sport, dport: 53}.frame()
			if dir == policy.Egress {
				f = pktSpec{src: me, dst: peer, proto: protoUDP, sport: sport, dport: 53}.frame()
			}
			got, err := dp.runProg(uint8(dir), 1, f)
			if err != nil {
				return err
			}
			if got != want {
				t.Errorf("%s packet: program returned %d, want %d", dir, got, want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	send(policy.Ingress, retNext) // the pinned revision: open
	send(policy.Egress, retDrop)  // enforced, nothing allowed
	c, err := dp.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Endpoints["me"][EndpointCounterKey{policy.Ingress, ReasonAllowOpen}].Packets; got != 1 {
		t.Errorf("before the first Apply: counted %d open ingress packets, want 1", got)
	}

	// The first Apply flips to slot 1: the legacy table must hold the new
	// revision there before the flip, and is gone after.
	rev := &Revision{Number: 1, Rules: map[string]policy.EndpointRules{"me": {Identity: 9,
		Egress: policy.DirectionRules{Enforced: true}, Ingress: policy.DirectionRules{Enforced: true}}}}
	if err := dp.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	var slot1 *ebpf.Map
	if err := outer.Lookup(uint32(1), &slot1); err != nil {
		t.Fatalf("legacy endpoints slot 1 after Apply: %v", err)
	}
	defer slot1.Close()
	var v legacyEndpointVal
	if err := slot1.Lookup(uint32(1), &v); err != nil || v.Enforced != [2]uint8{1, 1} {
		t.Errorf("legacy endpoints slot 1 holds %+v, %v; want the applied revision (both directions enforced)", v, err)
	}
	if _, err := os.Stat(legacyPin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("legacy endpoints pin after the first Apply: stat err %v, want it removed", err)
	}
	send(policy.Ingress, retDrop) // the applied revision: enforced
	c, err = dp.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Endpoints["me"][EndpointCounterKey{policy.Ingress, ReasonAllowOpen}].Packets; got != 1 {
		t.Errorf("after the first Apply: counted %d open ingress packets, want 1 (kept)", got)
	}
	if got := c.Endpoints["me"][EndpointCounterKey{policy.Ingress, ReasonDenyPolicy}].Packets; got != 1 {
		t.Errorf("after the first Apply: counted %d denied ingress packets, want 1", got)
	}
}

// TestUpgradeRemovesTheRetiredPolicyArrayPin starts the dataplane on a pin
// directory holding fm_policy_fixarr as the version before the paired
// array left it (one policy_fixed entry per way): the start succeeds, the
// pin is gone, and a revision is written to fm_policy_fixarr_v2, whose
// endpoints say so with EPF_PF_PAIRS and never with EPF_PF_ARRAY (0x2),
// which programs of that version would take for the retired array.
func TestUpgradeRemovesTheRetiredPolicyArrayPin(t *testing.T) {
	requireKernel(t)
	_, nsPath := newNetNS(t)
	ctx := context.Background()
	cfg := Config{PinDir: "/sys/fs/bpf/" + randName("fmdp-test-"), NetNS: nsPath}
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Uninstall(context.Background(), cfg.PinDir); err != nil {
			t.Error(err)
		}
	})
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "fm_policy_fixarr", Type: ebpf.ArrayOfMaps, KeySize: 4, MaxEntries: 2,
		InnerMap: &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 176, MaxEntries: pfaBuckets}})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(cfg.PinDir, "fm_policy_fixarr")); err != nil {
		t.Fatal(err)
	}

	dp, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("start on an older version's pins: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	if _, err := os.Stat(filepath.Join(cfg.PinDir, "fm_policy_fixarr")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("retired fm_policy_fixarr pin: stat err %v, want it removed", err)
	}
	if err := dp.Attach(ctx, Endpoint{ID: "me", Interface: "lo"}); err != nil {
		t.Fatal(err)
	}
	rev := &Revision{Number: 1, Rules: map[string]policy.EndpointRules{"me": {
		Identity: 1, Ingress: policy.DirectionRules{Enforced: true,
			Identities: []policy.IdentityRule{{Peer: policy.IdentityAny, Proto: protoTCP, Ports: policy.PortRange{First: 80, Last: 80}, Rule: 1}}}}}}
	if err := dp.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	for ifindex, v := range dp.shadow[dp.active].fastEndpoints() {
		if v.Flags&0x2 != 0 || v.Flags&epfPFPairs == 0 {
			t.Errorf("endpoint %d has flags %#x, want EPF_PF_PAIRS and not EPF_PF_ARRAY", ifindex, v.Flags)
		}
	}
}
