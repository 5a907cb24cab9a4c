package dataplane

import (
	"context"
	"net/netip"
	"testing"

	"github.com/fedmesh/fedmesh/federation/policy"
)

func TestKernelCountsRulesWhateverTheirIDs(t *testing.T) {
	requireKernel(t)
	_, nsPath := newNetNS(t)
	dp, _ := newEBPF(t, nsPath)
	ctx := context.Background()
	if err := dp.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
		t.Fatal(err)
	}
	peer, me := netip.MustParseAddr("198.18.0.5"), netip.MustParseAddr("198.18.0.1")
	ids := []policy.RuleID{1, 65535, 65536, 1 << 31}
	dr := policy.DirectionRules{Enforced: true}
	for i, id := range ids {
		port := uint16(80 + i)
		dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: 7, Proto: protoTCP,
			Ports: policy.PortRange{First: port, Last: port}, Rule: id})
	}
	rev := &Revision{Number: 1, IPCache: ipcacheOf(ipEntry{netip.PrefixFrom(peer, 32), 7}),
		Rules: map[string]policy.EndpointRules{"ep": {Identity: 1, Ingress: dr}}}
	if err := dp.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	err := inNetNS(nsPath, func() error {
		for i := range ids {
			f := pktSpec{src: peer, dst: me, proto: protoTCP, sport: 40000, dport: uint16(80 + i), tcpFlags: 2}.frame()
			if got, err := dp.runProg(uint8(policy.Ingress), 1, f); err != nil || got != retNext {
				t.Errorf("packet to port %d: program returned %d, %v; want allow", 80+i, got, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := dp.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if c.Rules[id].Packets != 1 {
			t.Errorf("rule %d: counted %d packets, want 1", id, c.Rules[id].Packets)
		}
	}
}

// TestEndpointCountersSurviveRestartAndStartAtZeroForANewEndpoint: an
// endpoint's counters outlive an agent restart (its counter index is
// re-adopted from the pinned revision), and an endpoint attached after
// another was detached starts at zero although it may reuse its index.
func TestEndpointCountersSurviveRestartAndStartAtZeroForANewEndpoint(t *testing.T) {
	requireKernel(t)
	ns, nsPath := newNetNS(t)
	run(t, "ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "pd0")
	ctx := context.Background()
	dp1, cfg := newEBPF(t, nsPath)
	rev := &Revision{Number: 1, Rules: map[string]policy.EndpointRules{}}
	if err := dp1.Attach(ctx, Endpoint{ID: "a", Interface: "lo"}); err != nil {
		t.Fatal(err)
	}
	if err := dp1.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	peer, me := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("198.18.0.1")
	sport := uint16(1000)
	send := func(dp *EBPF, ifindex uint32) {
		t.Helper()
		sport++
		f := pktSpec{src: peer, dst: me, proto: protoUDP, sport: sport, dport: 53}.frame()
		err := inNetNS(nsPath, func() error {
			_, err := dp.runProg(uint8(policy.Ingress), ifindex, f)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	open := EndpointCounterKey{Direction: policy.Ingress, Reason: ReasonAllowOpen}
	count := func(dp *EBPF, id string) uint64 {
		t.Helper()
		c, err := dp.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c.Endpoints[id][open].Packets
	}
	send(dp1, 1)
	send(dp1, 1)
	if err := dp1.Close(); err != nil {
		t.Fatal(err)
	}

	dp2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	if err := dp2.Attach(ctx, Endpoint{ID: "a", Interface: "lo"}); err != nil {
		t.Fatal(err)
	}
	if got := count(dp2, "a"); got != 2 {
		t.Errorf("after the restart: %d packets counted, want 2", got)
	}
	if err := dp2.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	send(dp2, 1)
	if got := count(dp2, "a"); got != 3 {
		t.Errorf("after the restart and a packet: %d packets counted, want 3", got)
	}
	if err := dp2.Detach(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := dp2.Attach(ctx, Endpoint{ID: "b", Interface: "d0"}); err != nil {
		t.Fatal(err)
	}
	d0, err := ifindexIn(nsPath, "d0")
	if err != nil {
		t.Fatal(err)
	}
	send(dp2, d0)
	if got := count(dp2, "b"); got != 1 {
		t.Errorf("new endpoint: %d packets counted, want 1", got)
	}
}
