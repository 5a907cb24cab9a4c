package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// nameBenchRevision gives endpoint "ep" egress enforced with three
// domainNames rules (three name slots): *.example.com on TCP 443,
// api.example.com on TCP 8443, *.org on any protocol; and a NetworkPolicy
// rule allowing TCP 9000 to anyone (the reference for a first SYN allowed
// without a name).
func nameBenchRevision() *Revision {
	rule := func(pattern string, proto uint8, ports policy.PortRange, id policy.RuleID) policy.NameRule {
		return policy.NameRule{Names: []string{pattern}, Proto: proto, Ports: ports, Rule: id, Tier: policy.TierAdmin, Action: policy.ActionAccept}
	}
	return &Revision{Number: 1, Rules: map[string]policy.EndpointRules{"ep": {Identity: 1, Egress: policy.DirectionRules{Enforced: true,
		Identities: []policy.IdentityRule{{Peer: policy.IdentityAny, Proto: protoTCP, Ports: policy.PortRange{First: 9000, Last: 9000}, Rule: 10}},
		Names: []policy.NameRule{
			rule("*.example.com", protoTCP, policy.PortRange{First: 443, Last: 443}, 1),
			rule("api.example.com", protoTCP, policy.PortRange{First: 8443, Last: 8443}, 2),
			rule("*.org", 0, policy.AllPorts, 3),
		}}}}}
}

// learned10k are 10k addresses of endpoint "ep" in 100.64.0.0/16, learned
// for api.example.com (two live slots each), www.example.com and
// mirror.org in turn.
func learned10k(exp time.Time) []LearnedAddr {
	names := []string{"api.example.com", "www.example.com", "mirror.org"}
	out := make([]LearnedAddr, 0, 10_000)
	for i := range 10_000 {
		out = append(out, LearnedAddr{Endpoint: "ep", Addr: netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}),
			Name: names[i%3], Expires: exp})
	}
	return out
}

// BenchmarkProgramPerPacketNames measures egress packets of an endpoint
// with domainNames rules and 10k learned addresses, against an empty tc
// program in the same run:
//   - denied-after-fqdn-lookup: a SYN to a learned address on a port no
//     rule names: the tier summary, the fm_fqdn hit, and per live slot
//     (two) the name-rule lookups, then the NetworkPolicy default deny.
//   - denied-never-learned: a SYN to an address not in fm_fqdn.
//   - reference-classic-floor: classicFloor with the learned addresses as
//     its 10k ipcache entries, the least a datapath with hash and LPM
//     tables pays for the denied packet on this host.
//   - allowed-by-name-first-syn: a SYN allowed by a name rule, a new flow
//     each packet (conntrack insert included). BPF_PROG_TEST_RUN repeats
//     one packet, and the second copy of a flow is a conntrack hit, so
//     these run one packet per run with a new source port, each timed by
//     the kernel; baseline-empty-program-single is the empty program timed
//     the same way (the timer's own cost is in both), and
//     allowed-by-networkpolicy-first-syn a first SYN to an address never
//     learned that a NetworkPolicy rule allows (fm_fqdn misses): the
//     difference to allowed-by-name-first-syn is what the name path adds.
func BenchmarkProgramPerPacketNames(b *testing.B) {
	requireKernel(b)
	_, nsPath := newNetNS(b)
	dp, _ := newEBPF(b, nsPath)
	ctx := context.Background()
	if err := dp.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
		b.Fatal(err)
	}
	rev := nameBenchRevision()
	if err := dp.Apply(ctx, rev); err != nil {
		b.Fatal(err)
	}
	learned := learned10k(time.Now().Add(time.Hour))
	if err := dp.Learn(ctx, learned); err != nil {
		b.Fatal(err)
	}
	// The packets must be decided as named: check them on the twin.
	mem := NewMemory(WithIfindexResolver(func(string) (uint32, error) { return 1, nil }))
	if err := mem.Apply(ctx, rev); err != nil {
		b.Fatal(err)
	}
	if err := mem.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
		b.Fatal(err)
	}
	if err := mem.Learn(ctx, learned); err != nil {
		b.Fatal(err)
	}
	me := netip.MustParseAddr("10.0.0.1")
	api := netip.AddrFrom4([4]byte{100, 64, 0, 3}) // learned for api.example.com
	denied := pktSpec{src: me, dst: api, proto: protoTCP, sport: 1, dport: 80, tcpFlags: 2}
	never := denied
	never.dst = netip.MustParseAddr("100.65.0.1")
	allowed := denied
	allowed.dport = 443
	allowedNP := never
	allowedNP.dport = 9000
	for _, c := range []struct {
		pkt    pktSpec
		reason Reason
	}{{denied, ReasonDenyPolicy}, {never, ReasonDenyPolicy}, {allowed, ReasonAllowPolicy}, {allowedNP, ReasonAllowPolicy}} {
		if _, reason, _, _ := mem.Process("ep", policy.Egress, c.pkt.frame()); reason != c.reason {
			b.Fatalf("the benchmark packet to %s:%d is %s, want %s", c.pkt.dst, c.pkt.dport, reason, c.reason)
		}
	}
	var fv fqdnVal
	if err := dp.coll.Maps["fm_fqdn"].Lookup(fqdnKey{Ifindex: 1, IP: mapped(api)}, &fv); err != nil || fv.Mask != 0b11 {
		b.Fatalf("fm_fqdn entry of the benchmark address: %+v, %v; want two live slots", fv, err)
	}
	noop, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer noop.Close()
	// Learned addresses are ipcache entries there (an identity per name's
	// addresses): 10k of them.
	floor := classicFloor(b, learnedAddrs(learned), api, ipv4DstOff)
	checkFloor(b, floor, denied.frame())
	fm := dp.coll.Programs["fm_from_pod"]
	var empty float64
	for _, c := range []struct {
		name string
		prog *ebpf.Program
		pkt  pktSpec
	}{
		{"baseline-empty-program", noop, denied},
		{"reference-classic-floor", floor, denied},
		{"denied-after-fqdn-lookup", fm, denied},
		{"denied-never-learned", fm, never},
	} {
		b.Run(c.name, perPacket(c.prog, c.pkt.frame(), c.prog == noop, &empty))
	}
	single := func(prog *ebpf.Program, pkt pktSpec, wantRet int32) func(b *testing.B) {
		return func(b *testing.B) {
			var total time.Duration
			for i := range b.N {
				// A new flow each packet: source port, then source address.
				pkt.sport = uint16(1024 + i%60000)
				pkt.src = netip.AddrFrom4([4]byte{10, byte(i / 60000 >> 8), byte(i / 60000), 1})
				ret, per, err := prog.Benchmark(pkt.frame(), 1, nil)
				if err != nil {
					b.Fatal(err)
				}
				if int32(ret) != wantRet {
					b.Fatalf("packet %d: program returned %d, want %d", i, int32(ret), wantRet)
				}
				total += per
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/packet")
		}
	}
	b.Run("baseline-empty-program-single", single(noop, allowed, retNext))
	b.Run("allowed-by-networkpolicy-first-syn", single(fm, allowedNP, retNext))
	b.Run("allowed-by-name-first-syn", single(fm, allowed, retNext))
}

// BenchmarkLearnOneAddress measures Dataplane.Learn of one address (the
// DNS proxy holds the answer until it returns) on an endpoint that has
// learned 10k already: the map update included.
func BenchmarkLearnOneAddress(b *testing.B) {
	requireKernel(b)
	_, nsPath := newNetNS(b)
	dp, _ := newEBPF(b, nsPath)
	ctx := context.Background()
	if err := dp.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
		b.Fatal(err)
	}
	if err := dp.Apply(ctx, nameBenchRevision()); err != nil {
		b.Fatal(err)
	}
	base := time.Now().Add(time.Hour)
	if err := dp.Learn(ctx, learned10k(base)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		// A new address, or a later answer for one: a map write each time.
		a := LearnedAddr{Endpoint: "ep", Addr: netip.AddrFrom4([4]byte{100, 66, byte(i >> 8), byte(i)}),
			Name: "www.example.com", Expires: base.Add(time.Duration(i) * time.Millisecond)}
		if err := dp.Learn(ctx, []LearnedAddr{a}); err != nil {
			b.Fatal(fmt.Errorf("learn %d: %w", i, err))
		}
	}
}
