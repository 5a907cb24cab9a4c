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
	rev := &Revision{Number: 1, IPCache: []IPCacheEntry{{netip.PrefixFrom(peer, 32), 7}},
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
