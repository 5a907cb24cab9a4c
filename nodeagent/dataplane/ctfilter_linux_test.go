package dataplane

import (
	"context"
	"net/netip"
	"testing"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// TestConntrackFilterRebuildKeepsEveryFlow opens IPv4 and IPv6 flows,
// then denies everything and rebuilds the filter twice, so the generation
// packets test holds only the bits the walk set (programs set theirs in
// both generations; the second rebuild cleared the one they had set): an
// established packet of every flow must still pass by conntrack, which it
// does only if the agent hashes each key to the bit the programs test. A
// packet of no flow is denied, and the filter is valid and not full.
func TestConntrackFilterRebuildKeepsEveryFlow(t *testing.T) {
	requireKernel(t)
	_, nsPath := newNetNS(t)
	ctx := context.Background()
	kern, _ := newEBPF(t, nsPath)
	peer, me := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("198.18.0.1")
	peer6, me6 := netip.MustParseAddr("fd00:18:1::10"), netip.MustParseAddr("fd00:18::1")
	ipc := ipcacheOf(ipEntry{netip.MustParsePrefix("198.18.1.0/24"), 50}, ipEntry{netip.MustParsePrefix("fd00:18:1::/64"), 50})
	open := &Revision{Number: 1, IPCache: ipc, Rules: map[string]policy.EndpointRules{"me": {Identity: 9,
		Ingress: policy.DirectionRules{Enforced: true, Identities: []policy.IdentityRule{
			{Peer: 50, Proto: protoTCP, Ports: policy.PortRange{First: 80, Last: 80}, Rule: 1}}},
		Egress: policy.DirectionRules{Enforced: true}}}}
	closed := &Revision{Number: 2, IPCache: ipc, Rules: map[string]policy.EndpointRules{"me": {Identity: 9,
		Ingress: policy.DirectionRules{Enforced: true}, Egress: policy.DirectionRules{Enforced: true}}}}
	if err := kern.Attach(ctx, Endpoint{ID: "me", Interface: "lo"}); err != nil {
		t.Fatal(err)
	}
	if err := kern.Apply(ctx, open); err != nil {
		t.Fatal(err)
	}
	if !kern.ctf.valid() {
		t.Fatal("the conntrack filter is not in use after the first Apply")
	}
	tcp := func(src, dst netip.Addr, sport uint16, flags uint8) pktSpec {
		return pktSpec{src: src, dst: dst, proto: protoTCP, sport: sport, dport: 80, tcpFlags: flags}
	}
	const flows = 300
	send := func(pkt pktSpec) Reason {
		t.Helper()
		var reason Reason
		err := inNetNS(nsPath, func() error {
			before, err := kern.Counters(ctx)
			if err != nil {
				return err
			}
			if _, err := kern.runProg(uint8(policy.Ingress), 1, pkt.frame()); err != nil {
				return err
			}
			after, err := kern.Counters(ctx)
			if err != nil {
				return err
			}
			_, reason = reasonOf(t, before, after, "me")
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return reason
	}
	// Flow i of each family: from port 20000+i of the peer.
	forFlows := func(fn func(i int, src, dst netip.Addr)) {
		for i := range flows {
			fn(i, peer, me)
			fn(i, peer6, me6)
		}
	}
	forFlows(func(i int, src, dst netip.Addr) {
		if r := send(tcp(src, dst, uint16(20000+i), 0x02)); r != ReasonAllowPolicy {
			t.Fatalf("SYN of flow %d from %s: %s, want allowed by policy", i, src, r)
		}
	})
	if err := kern.Apply(ctx, closed); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := kern.ctf.rebuild(); err != nil {
			t.Fatal(err)
		}
	}
	if fill := kern.ctf.fill(); fill <= 0 || fill > float64(2*flows)/float64(len(kern.ctf.gen(0))*64) {
		t.Errorf("filter fill %g for %d flows, want in (0, %g]", fill, 2*flows, float64(2*flows)/float64(len(kern.ctf.gen(0))*64))
	}
	forFlows(func(i int, src, dst netip.Addr) {
		if r := send(tcp(src, dst, uint16(20000+i), 0x10)); r != ReasonAllowConntrack {
			t.Errorf("established packet of flow %d from %s after the rebuild: %s, want allowed by conntrack", i, src, r)
		}
	})
	if r := send(tcp(peer, me, 19999, 0x10)); r != ReasonDenyPolicy {
		t.Errorf("packet of no flow: %s, want denied by policy", r)
	}
}

// TestConntrackFilterHashSpreadsKeys guards the hash the programs and the
// agent share: keys that differ in one field only (a port, an address
// byte, the endpoint, the protocol) must not pile onto a few bits, or the
// filter would send most packets of no flow to the lookup anyway.
func TestConntrackFilterHashSpreadsKeys(t *testing.T) {
	for _, c := range []struct {
		name string
		key  func(i int) uint32
	}{
		{"IPv4 source port", func(i int) uint32 { return ctfHash4(ct4Key{Ifindex: 3, Proto: 6, PortA: uint16(i), PortB: 80}) }},
		{"IPv4 address", func(i int) uint32 {
			return ctfHash4(ct4Key{Ifindex: 3, Proto: 6, PortA: 1, PortB: 80, A: [4]byte{10, 0, byte(i >> 8), byte(i)}})
		}},
		{"endpoint", func(i int) uint32 { return ctfHash4(ct4Key{Ifindex: uint32(i), Proto: 17, PortA: 53, PortB: 53}) }},
		{"IPv6 address", func(i int) uint32 {
			return ctfHash6(ct6Key{Ifindex: 3, Proto: 6, PortA: 1, PortB: 80, B: [16]byte{0xfd, 15: byte(i), 14: byte(i >> 8)}})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			const n = 4096
			seen := map[uint32]bool{}
			for i := range n {
				seen[c.key(i)] = true
			}
			// 4,096 keys in 2^21 bits: a uniform hash collides ~4 times.
			if len(seen) < n-64 {
				t.Errorf("%d keys hash to %d distinct bits", n, len(seen))
			}
		})
	}
}
