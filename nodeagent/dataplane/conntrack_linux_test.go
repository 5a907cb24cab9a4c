package dataplane

import (
	"context"
	"net/netip"
	"testing"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// reasonOf returns the (only) endpoint counter that grew between a and b.
func reasonOf(t *testing.T, a, b Counters, id string) (policy.Direction, Reason) {
	t.Helper()
	for k, v := range b.Endpoints[id] {
		if v.Packets > a.Endpoints[id][k].Packets {
			return k.Direction, k.Reason
		}
	}
	t.Fatal("no endpoint counter grew")
	return 0, 0
}

// TestConntrackMatchesFlowsRepliesAndErrorsOnly runs one packet sequence
// through the kernel and Memory: a flow's packets and replies pass by
// conntrack, packets that only look like them (same direction with the ends
// swapped, or the flow's tuple in the other direction) face policy, ICMP
// errors pass only when their quote travelled the flow's way, and a tuple
// whose ends are equal matches in either direction.
func TestConntrackMatchesFlowsRepliesAndErrorsOnly(t *testing.T) {
	requireKernel(t)
	_, nsPath := newNetNS(t)
	ctx := context.Background()
	kern, _ := newEBPF(t, nsPath)
	mem := NewMemory(WithIfindexResolver(func(iface string) (uint32, error) { return ifindexIn(nsPath, iface) }))
	peer, me := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("198.18.0.1")
	peer6, me6 := netip.MustParseAddr("fd00:18:1::10"), netip.MustParseAddr("fd00:18::1")
	rev := &Revision{Number: 1, IPCache: ipcacheOf(
		ipEntry{netip.MustParsePrefix("198.18.1.0/24"), 50}, ipEntry{netip.MustParsePrefix("fd00:18:1::/64"), 50}),
		Rules: map[string]policy.EndpointRules{"me": {Identity: 9,
			Ingress: policy.DirectionRules{Enforced: true, Identities: []policy.IdentityRule{
				{Peer: 50, Proto: protoTCP, Ports: policy.PortRange{First: 80, Last: 80}, Rule: 1},
				{Peer: 50, Proto: protoUDP, Ports: policy.PortRange{First: 7, Last: 7}, Rule: 2}}},
			Egress: policy.DirectionRules{Enforced: true}}}}
	for _, dp := range []Dataplane{kern, mem} {
		if err := dp.Attach(ctx, Endpoint{ID: "me", Interface: "lo"}); err != nil {
			t.Fatal(err)
		}
		if err := dp.Apply(ctx, rev); err != nil {
			t.Fatal(err)
		}
	}
	tcp := func(src, dst netip.Addr, sport, dport uint16, flags uint8) pktSpec {
		return pktSpec{src: src, dst: dst, proto: protoTCP, sport: sport, dport: dport, tcpFlags: flags}
	}
	unreach := func(src, dst netip.Addr, quote pktSpec) pktSpec {
		q := quote.ipPacket()[:28]
		return pktSpec{src: src, dst: dst, proto: protoICMP, icmpType: 3, inner: q}
	}
	in, out := policy.Ingress, policy.Egress
	steps := []struct {
		name string
		dir  policy.Direction
		pkt  pktSpec
		want Reason
	}{
		{"new flow allowed by policy", in, tcp(peer, me, 40000, 80, 0x02), ReasonAllowPolicy},
		{"its reply", out, tcp(me, peer, 80, 40000, 0x12), ReasonAllowConntrack},
		{"its next packet", in, tcp(peer, me, 40000, 80, 0x10), ReasonAllowConntrack},
		{"reply-shaped packet in the flow's direction", in, tcp(me, peer, 80, 40000, 0x10), ReasonDenyPolicy},
		{"the flow's tuple in the reply direction", out, tcp(peer, me, 40000, 80, 0x10), ReasonDenyPolicy},
		{"error about a packet of the flow", out, unreach(me, peer, tcp(peer, me, 40000, 80, 0x10)), ReasonAllowRelated},
		{"error about a reply", in, unreach(peer, me, tcp(me, peer, 80, 40000, 0x10)), ReasonAllowRelated},
		{"error quoting the flow the wrong way", in, unreach(peer, me, tcp(peer, me, 40000, 80, 0x10)), ReasonDenyPolicy},
		{"IPv6 flow", in, tcp(peer6, me6, 40000, 80, 0x02), ReasonAllowPolicy},
		{"IPv6 reply", out, tcp(me6, peer6, 80, 40000, 0x12), ReasonAllowConntrack},
		{"IPv6 reply-shaped packet in the flow's direction", in, tcp(me6, peer6, 80, 40000, 0x10), ReasonDenyPolicy},
		{"equal ends allowed", in, pktSpec{src: peer, dst: peer, proto: protoUDP, sport: 7, dport: 7}, ReasonAllowPolicy},
		{"equal ends the other way", out, pktSpec{src: peer, dst: peer, proto: protoUDP, sport: 7, dport: 7}, ReasonAllowConntrack},
		{"flow ending", in, tcp(peer, me, 40000, 80, 0x11), ReasonAllowConntrack},
		{"after FIN still passes until the closing timeout", out, tcp(me, peer, 80, 40000, 0x10), ReasonAllowConntrack},
	}
	err := inNetNS(nsPath, func() error {
		for _, s := range steps {
			f := s.pkt.frame()
			before, err := kern.Counters(ctx)
			if err != nil {
				return err
			}
			if _, err := kern.runProg(uint8(s.dir), 1, f); err != nil {
				return err
			}
			after, err := kern.Counters(ctx)
			if err != nil {
				return err
			}
			dir, kr := reasonOf(t, before, after, "me")
			_, mr, _, err := mem.Process("me", s.dir, f)
			if err != nil {
				return err
			}
			if dir != s.dir || kr != s.want || mr != s.want {
				t.Errorf("%s: kernel %s %s, memory %s; want %s %s", s.name, dir, kr, mr, s.dir, s.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
