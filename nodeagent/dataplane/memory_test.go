package dataplane

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/fedmesh/fedmesh/federation/policy"
)

func TestPortPrefixesCoverExactlyTheRange(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	ranges := []policy.PortRange{policy.AllPorts, {First: 0, Last: 0}, {First: 65535, Last: 65535},
		{First: 1, Last: 65534}, {First: 8000, Last: 8100}}
	for range 20 {
		a, b := uint16(r.IntN(65536)), uint16(r.IntN(65536))
		if a > b {
			a, b = b, a
		}
		ranges = append(ranges, policy.PortRange{First: a, Last: b})
	}
	for _, pr := range ranges {
		pps := portPrefixes(pr)
		if len(pps) > 30 {
			t.Errorf("%v: %d prefixes, want <= 30", pr, len(pps))
		}
		for port := range 65536 {
			covered := 0
			for _, pp := range pps {
				mask := uint16(0xffff) << (16 - pp.bits)
				if pp.bits == 0 {
					mask = 0
				}
				if uint16(port)&mask == pp.value&mask {
					covered++
				}
			}
			if want := pr.Contains(uint16(port)); (covered == 1) != want || covered > 1 {
				t.Fatalf("%v: port %d covered %d times, in range %v", pr, port, covered, want)
			}
		}
	}
}

func TestMemoryDecisions(t *testing.T) {
	peer4, peer6 := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("fd00:18:1::10")
	me4, me6 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("fd00:18::1")
	cidr := func(prefix string, proto uint8, ports policy.PortRange, rule policy.RuleID, except ...string) policy.CIDRRule {
		c := policy.CIDRRule{Prefix: netip.MustParsePrefix(prefix), Proto: proto, Ports: ports, Rule: rule}
		for _, e := range except {
			c.Except = append(c.Except, netip.MustParsePrefix(e))
		}
		return c
	}
	tcp := func(src, dst netip.Addr, dport uint16) pktSpec {
		return pktSpec{src: src, dst: dst, proto: protoTCP, sport: 40000, dport: dport, tcpFlags: 2}
	}
	tests := []struct {
		name     string
		ingress  policy.DirectionRules
		pkt      pktSpec
		want     Reason
		wantRule policy.RuleID
	}{
		{"open direction passes", policy.DirectionRules{}, tcp(peer4, me4, 80), ReasonAllowOpen, 0},
		{"enforced with no rules denies", policy.DirectionRules{Enforced: true}, tcp(peer4, me4, 80), ReasonDenyPolicy, 0},
		{"identity rule with range allows", policy.DirectionRules{Enforced: true, Identities: []policy.IdentityRule{
			{Peer: 50, Proto: protoTCP, Ports: policy.PortRange{First: 70, Last: 90}, Rule: 3}}},
			tcp(peer4, me4, 80), ReasonAllowPolicy, 3},
		{"any-proto rule with ports does not match ICMP", policy.DirectionRules{Enforced: true, Identities: []policy.IdentityRule{
			{Peer: 50, Ports: policy.PortRange{First: 0, Last: 100}, Rule: 3}}},
			pktSpec{src: peer4, dst: me4, proto: protoICMP, icmpType: 8}, ReasonDenyPolicy, 0},
		{"any-proto all-ports rule matches ICMP", policy.DirectionRules{Enforced: true, Identities: []policy.IdentityRule{
			{Peer: 50, Ports: policy.AllPorts, Rule: 4}}},
			pktSpec{src: peer4, dst: me4, proto: protoICMP, icmpType: 8}, ReasonAllowPolicy, 4},
		{"overlapping CIDR rules are additive", policy.DirectionRules{Enforced: true, CIDRs: []policy.CIDRRule{
			cidr("198.18.0.0/16", protoTCP, policy.AllPorts, 5, "198.18.1.0/24"),
			cidr("198.18.1.0/28", protoTCP, policy.AllPorts, 6)}},
			tcp(peer4, me4, 80), ReasonAllowPolicy, 6},
		{"except removes only its own rule's addresses", policy.DirectionRules{Enforced: true, CIDRs: []policy.CIDRRule{
			cidr("198.18.0.0/16", protoTCP, policy.AllPorts, 5, "198.18.1.0/24"),
			cidr("198.18.1.0/28", protoUDP, policy.AllPorts, 6)}},
			tcp(peer4, me4, 80), ReasonDenyPolicy, 0},
		{"IPv6 ::/0 does not match IPv4 peers", policy.DirectionRules{Enforced: true, CIDRs: []policy.CIDRRule{
			cidr("::/0", policy.ProtoAny, policy.AllPorts, 7)}},
			tcp(peer4, me4, 80), ReasonDenyPolicy, 0},
		{"IPv6 ::/0 matches IPv6 peers", policy.DirectionRules{Enforced: true, CIDRs: []policy.CIDRRule{
			cidr("::/0", policy.ProtoAny, policy.AllPorts, 7)}},
			tcp(peer6, me6, 80), ReasonAllowPolicy, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			m := NewMemory()
			if err := m.Attach(ctx, Endpoint{ID: "me", Interface: "veth0"}); err != nil {
				t.Fatal(err)
			}
			rev := &Revision{Number: 1, IPCache: ipcacheOf(
				ipEntry{netip.MustParsePrefix("198.18.1.0/24"), 50}, ipEntry{netip.MustParsePrefix("fd00:18:1::/64"), 50}),
				Rules: map[string]policy.EndpointRules{"me": {Identity: 9, Ingress: tt.ingress}}}
			if err := m.Apply(ctx, rev); err != nil {
				t.Fatal(err)
			}
			_, reason, rule, err := m.Process("me", policy.Ingress, tt.pkt.frame())
			if err != nil {
				t.Fatal(err)
			}
			if reason != tt.want || rule != tt.wantRule {
				t.Fatalf("got %s rule %d, want %s rule %d", reason, rule, tt.want, tt.wantRule)
			}
			if reason != ReasonAllowPolicy {
				return
			}
			// The reply of an allowed flow passes the (enforced, empty) egress.
			rev.Rules["me"] = policy.EndpointRules{Identity: 9, Ingress: tt.ingress, Egress: policy.DirectionRules{Enforced: true}}
			if err := m.Apply(ctx, rev); err != nil {
				t.Fatal(err)
			}
			reply := tt.pkt
			reply.src, reply.dst, reply.sport, reply.dport, reply.tcpFlags = tt.pkt.dst, tt.pkt.src, tt.pkt.dport, tt.pkt.sport, 0x12
			if reply.proto == protoICMP {
				reply.icmpType = 0
			}
			if _, reason, _, _ := m.Process("me", policy.Egress, reply.frame()); reason != ReasonAllowConntrack {
				t.Errorf("reply: got %s, want %s", reason, ReasonAllowConntrack)
			}
		})
	}
}
