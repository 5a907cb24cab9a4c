package dataplane

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// The endpoint array (fm_endpoints_fast) and the hash behind it must give
// the same answers: an endpoint with an ifindex past the array is found in
// the hash, and a detached endpoint leaves no entry behind in either, so
// its packets are dropped as having no endpoint instead of being judged by
// a stale entry.
func TestEndpointArrayAndHashAgree(t *testing.T) {
	requireKernel(t)
	ns, nsPath := newNetNS(t)
	run(t, "ip", "-n", ns, "link", "add", "small", "type", "veth", "peer", "name", "small-p")
	run(t, "ip", "-n", ns, "link", "add", "big", "index", "70000", "type", "veth", "peer", "name", "big-p")
	small, err := ifindexIn(nsPath, "small")
	if err != nil {
		t.Fatal(err)
	}
	if small >= epFastEntries {
		t.Fatalf("ifindex %d of small is past the array", small)
	}
	dp, cfg := newEBPF(t, nsPath)
	ctx := context.Background()
	for _, ep := range []Endpoint{{ID: "small", Interface: "small"}, {ID: "big", Interface: "big"}} {
		if err := dp.Attach(ctx, ep); err != nil {
			t.Fatal(err)
		}
	}
	peer, me := netip.MustParseAddr("198.18.0.5"), netip.MustParseAddr("198.18.0.1")
	ipc := ipcacheOf(ipEntry{netip.PrefixFrom(peer, 32), 7})
	allow80 := policy.DirectionRules{Enforced: true, Identities: []policy.IdentityRule{
		{Peer: 7, Proto: protoTCP, Ports: policy.PortRange{First: 80, Last: 80}, Rule: 1}}}
	rev := &Revision{Number: 1, IPCache: ipc, Rules: map[string]policy.EndpointRules{
		"small": {Identity: 1, Ingress: allow80}, "big": {Identity: 1, Ingress: allow80}}}
	if err := dp.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	check := func(step string, ifindex uint32, dport uint16, want int32) {
		t.Helper()
		err := inNetNS(nsPath, func() error {
			f := pktSpec{src: peer, dst: me, proto: protoTCP, sport: 40000, dport: dport, tcpFlags: 2}.frame()
			got, err := dp.runProg(uint8(policy.Ingress), ifindex, f)
			if err != nil {
				return err
			}
			if got != want {
				t.Errorf("%s: packet to port %d on ifindex %d: program returned %d, want %d", step, dport, ifindex, got, want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, idx := range []uint32{small, 70000} {
		check("both attached", idx, 80, retNext)
		check("both attached", idx, 81, retDrop)
	}
	var fv endpointFastVal
	if err := dp.inner[dp.active][tabEndpointsFast].Lookup(small, &fv); err != nil || fv.Flags&epfValid == 0 {
		t.Fatalf("array entry of small: %+v, %v; want a valid entry", fv, err)
	}

	if err := dp.Detach(ctx, "small"); err != nil {
		t.Fatal(err)
	}
	rev2 := &Revision{Number: 2, IPCache: ipc, Rules: rev.Rules}
	if err := dp.Apply(ctx, rev2); err != nil {
		t.Fatal(err)
	}
	check("small detached", small, 80, retDrop)
	check("small detached", 70000, 80, retNext)
	if err := dp.inner[dp.active][tabEndpointsFast].Lookup(small, &fv); err != nil || fv != (endpointFastVal{}) {
		t.Fatalf("array entry of detached small: %+v, %v; want zero", fv, err)
	}
	// A restarted dataplane reads the hashes until its first Apply: the
	// pinned array may be older than the pinned revision.
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	dp2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	for slot := range uint32(2) {
		var inner *ebpf.Map
		if err := dp2.outer[tabEndpointsFast].Lookup(slot, &inner); !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("endpoint array slot %d after a restart: %v, want none until the first Apply", slot, err)
		}
	}
	dp = dp2
	check("restarted, before its first Apply", 70000, 80, retNext)
	check("restarted, before its first Apply", 70000, 81, retDrop)
	var c counterVal
	var per []counterVal
	if err := dp.coll.Maps["fm_ep_counters"].Lookup(epCounterKey{Ifindex: small, Dir: uint8(policy.Ingress), Reason: uint8(ReasonDenyNoEndpoint)}, &per); err != nil {
		t.Fatalf("no-endpoint counter of small: %v", err)
	}
	for _, p := range per {
		c.Packets += p.Packets
	}
	if c.Packets != 1 {
		t.Fatalf("small's packet after detach counted %d times as having no endpoint, want 1", c.Packets)
	}
}

func TestFastEndpointsCarryTheTierSummary(t *testing.T) {
	tb := &Tables{
		Endpoints: map[uint32]endpointVal{3: {Identity: 9, Enforced: [2]uint8{1, 0}}, epFastEntries: {Identity: 10}},
		PolicyFixed: map[policyFixedKey]policyFixedVal{
			{Ifindex: 3, Dir: 1, Kind: kindTierSummary}: {AllRule: eplPeerProto | eplFQDNAny, Rules: [pfInline]uint32{0x3, 0x8000}},
		},
	}
	got := tb.fastEndpoints()
	want := map[uint32]endpointFastVal{3: {Ep: endpointVal{Identity: 9, Enforced: [2]uint8{1, 0}}, Flags: epfValid | epfIPCHostsOnly,
		TierMask: [2]uint32{0, eplPeerProto | eplFQDNAny}, FQDNProtoSlots: [2]uint16{0, 3}, FQDNAnySlots: [2]uint16{0, 0x8000}}}
	if len(got) != len(want) || got[3] != want[3] {
		t.Fatalf("fastEndpoints = %+v, want %+v (the ifindex past the array left to the hash)", got, want)
	}
}

// TestFastEndpointsSayWhetherTheIPCacheHasPrefixes: with host entries
// only, an address they lack has no identity, and the program may skip
// fm_ipcache's trie; one shorter prefix makes every endpoint read it.
func TestFastEndpointsSayWhetherTheIPCacheHasPrefixes(t *testing.T) {
	for _, c := range []struct {
		name     string
		prefixes []string
		want     bool
	}{
		{"empty", nil, true},
		{"hosts of both families", []string{"10.0.0.1/32", "fd00::1/128"}, true},
		{"an IPv4 prefix", []string{"10.0.0.1/32", "192.0.2.0/24"}, false},
		{"an IPv6 prefix", []string{"fd00::/64"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := NewIPCacheBuilder(IPCache{})
			for i, p := range c.prefixes {
				b.Set(netip.MustParsePrefix(p), uint32(100+i))
			}
			tb := &Tables{IPCache: b.IPCache(), Endpoints: map[uint32]endpointVal{3: {Identity: 9}, 4: {Identity: 10}}}
			for idx, v := range tb.fastEndpoints() {
				if got := v.Flags&epfIPCHostsOnly != 0; got != c.want {
					t.Errorf("endpoint %d: hosts only %v, want %v (flags %#x)", idx, got, c.want, v.Flags)
				}
			}
		})
	}
}
