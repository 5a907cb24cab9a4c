package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// bigRevision has 100k ipcache entries (/32s in 198.18.0.0/15) and 10k
// identity rules (one port each) on endpoint "ep"; shift changes the
// identity of 10k ipcache entries.
func bigRevision(n uint64, shift int) *Revision {
	rev := &Revision{Number: n, Rules: map[string]policy.EndpointRules{}}
	base := netip.MustParseAddr("198.18.0.0").As4()
	b := NewIPCacheBuilder(IPCache{})
	for i := range 100_000 {
		a := base
		a[1] += byte(i >> 16)
		a[2], a[3] = byte(i>>8), byte(i)
		id := uint32(1000 + i%20_000)
		if i < 10_000 {
			id += uint32(shift)
		}
		b.Set(netip.PrefixFrom(netip.AddrFrom4(a), 32), id)
	}
	rev.IPCache = b.IPCache()
	dr := policy.DirectionRules{Enforced: true}
	for i := range 10_000 {
		dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: uint32(1000 + i), Proto: protoTCP,
			Ports: policy.PortRange{First: uint16(1 + i%60000), Last: uint16(1 + i%60000)}, Rule: policy.RuleID(i + 1)})
	}
	rev.Rules["ep"] = policy.EndpointRules{Identity: 1, Ingress: dr, Egress: dr}
	return rev
}

// BenchmarkProgramPerPacket measures the program's per-packet cost with
// BPF_PROG_TEST_RUN repeat (Program.Benchmark) against an empty tc program
// measured in the same run. The endpoint is "lo" of a test netns: ifindex 1,
// which is also the device test runs use.
//
// What a packet costs, by map (array and array-of-maps lookups are inlined
// by the verifier and nearly free; each hash lookup is three calls, to
// hash, to walk the bucket and to compare keys, ~30 ns on this host, where
// every return goes through the SRSO "Safe RET" thunk; an LPM trie lookup
// ~105 ns):
//   - denied-full-lookup (IPv4 TCP SYN to a port no rule allows): endpoint
//     array, the conntrack filter's bit (clear: no LRU lookup in fm_ct4), the
//     ipcache host array (two buckets at most), the call to the
//     NetworkPolicy stage and its policy index array lookup, the endpoint
//     counter (per-CPU array) and the event token (jiffies clock, inlined).
//   - established-conntrack-hit: endpoint array, the filter bit (set), one conntrack hit, the
//     jiffies clock, the endpoint counter.
//   - ipv6-denied-full-lookup: as denied, with an IPv6 key.
func BenchmarkProgramPerPacket(b *testing.B) {
	requireKernel(b)
	_, nsPath := newNetNS(b)
	dp, _ := newEBPF(b, nsPath)
	ctx := context.Background()
	if err := dp.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
		b.Fatal(err)
	}
	if err := dp.Apply(ctx, bigRevision(1, 0)); err != nil {
		b.Fatal(err)
	}
	noop, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer noop.Close()
	peer := netip.MustParseAddr("198.18.0.5") // identity 1005: rule 6 allows port 6
	me := netip.MustParseAddr("10.0.0.1")
	cases := []struct {
		name string
		prog *ebpf.Program
		pkt  pktSpec
	}{
		{"baseline-empty-program", noop, pktSpec{src: peer, dst: me, proto: protoTCP, sport: 1, dport: 6}},
		{"denied-full-lookup", dp.coll.Programs["fm_to_pod"], pktSpec{src: peer, dst: me, proto: protoTCP, sport: 1, dport: 7, tcpFlags: 2}},
		{"established-conntrack-hit", dp.coll.Programs["fm_to_pod"], pktSpec{src: peer, dst: me, proto: protoTCP, sport: 1, dport: 6, tcpFlags: 0x10}},
		{"ipv6-denied-full-lookup", dp.coll.Programs["fm_to_pod"], pktSpec{src: netip.MustParseAddr("fd00::5"), dst: netip.MustParseAddr("fd00::1"), proto: protoUDP, sport: 1, dport: 7}},
	}
	var empty float64
	for _, c := range cases {
		b.Run(c.name, perPacket(c.prog, c.pkt.frame(), c.prog == noop, &empty))
	}
}

// perPacket is a benchmark of prog on frame that reports ns per packet
// and, after the empty program's run in the same benchmark (baseline: this
// is it; it sets *empty), the cost above it: what the program adds to the
// harness, the figure that compares across runs and hosts (the harness
// alone cost 26 ns on this host one day and 32-42 on another).
func perPacket(prog *ebpf.Program, frame []byte, baseline bool, empty *float64) func(*testing.B) {
	return func(b *testing.B) {
		_, per, err := prog.Benchmark(frame, b.N, b.ResetTimer)
		if err != nil {
			b.Fatal(err)
		}
		ns := float64(per.Nanoseconds())
		b.ReportMetric(ns, "ns/packet")
		switch {
		case baseline:
			*empty = ns
		case *empty > 0:
			b.ReportMetric(ns-*empty, "ns-above-empty/packet")
		}
	}
}

// BenchmarkApplyRevision measures Apply of a revision that changes 10k
// ipcache entries relative to the previous one (100k ipcache, 10k policy
// entries loaded). The slot written holds the revision before the previous
// one, so each Apply writes up to 20k changed entries.
func BenchmarkApplyRevision(b *testing.B) {
	requireKernel(b)
	_, nsPath := newNetNS(b)
	dp, _ := newEBPF(b, nsPath)
	ctx := context.Background()
	if err := dp.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
		b.Fatal(err)
	}
	revs := []*Revision{bigRevision(1, 0), bigRevision(2, 50_000), bigRevision(3, 100_000)}
	for _, r := range revs[:2] {
		if err := dp.Apply(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		if err := dp.Apply(ctx, revs[(i+2)%3]); err != nil {
			b.Fatal(err)
		}
	}
}

// churnRevisions are two revisions with n ipcache entries (/32s in
// 198.18.0.0/15) that differ in one entry's identity (a pod replaced
// elsewhere), and 100 identity rules per direction on endpoint "ep".
func churnRevisions(n int) [2]*Revision {
	dr := policy.DirectionRules{Enforced: true}
	for i := range 100 {
		dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: uint32(1000 + i), Proto: protoTCP,
			Ports: policy.PortRange{First: uint16(1 + i), Last: uint16(1 + i)}, Rule: policy.RuleID(i + 1)})
	}
	rules := map[string]policy.EndpointRules{"ep": {Identity: 1, Ingress: dr, Egress: dr}}
	b := NewIPCacheBuilder(IPCache{})
	for i := range n {
		b.Set(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)}), 32), uint32(1000+i%20_000))
	}
	first := b.IPCache()
	b.Set(netip.MustParsePrefix("198.18.0.7/32"), 99)
	return [2]*Revision{{Number: 1, IPCache: first, Rules: rules}, {Number: 2, IPCache: b.IPCache(), Rules: rules}}
}

// BenchmarkApplyOneIPCacheChange measures Apply of a revision that differs
// from the previous one in a single ipcache entry, the common case under
// churn, at two ipcache sizes with the same rules and an endpoint
// attached. B/op and allocs/op must not grow with the ipcache.
func BenchmarkApplyOneIPCacheChange(b *testing.B) {
	requireKernel(b)
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("ipcache=%dk", n/1000), func(b *testing.B) {
			_, nsPath := newNetNS(b)
			dp, _ := newEBPF(b, nsPath)
			ctx := context.Background()
			if err := dp.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
				b.Fatal(err)
			}
			revs := churnRevisions(n)
			for _, r := range revs {
				if err := dp.Apply(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
			num := uint64(2)
			b.ReportAllocs()
			for b.Loop() {
				num++
				r := *revs[num%2]
				r.Number = num
				if err := dp.Apply(ctx, &r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// tieredBigRevision is bigRevision plus NetworkPolicy rules of every
// lookup kind and 1,000 ClusterNetworkPolicy rules (both tiers, every
// lookup kind, port ranges so lookups walk the trie) on endpoint "ep",
// none of which matches a TCP packet from 198.18.0.5 (identity 1005) to
// port 7 or 20007: such a packet runs every lookup of both stages, then is
// denied by the NetworkPolicy default deny. Every lookup of a packet to
// 20007 also walks the trie (its port block holds range entries of every
// lookup); one to port 7 is answered by the hash index.
func tieredBigRevision(n uint64) *Revision {
	rev := bigRevision(n, 0)
	dr := rev.Rules["ep"].Ingress
	dr.Identities = append([]policy.IdentityRule(nil), dr.Identities...)
	next := policy.RuleID(20_000)
	np := func(peer uint32, proto uint8, first, last uint16) {
		dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: peer, Proto: proto,
			Ports: policy.PortRange{First: first, Last: last}, Rule: next})
		next++
	}
	// Every range lies in the port block of 16384-20479 (see pfBlocks),
	// none covers port 20007.
	np(1005, policy.ProtoAny, 17000, 17100)
	np(policy.IdentityAny, protoTCP, 17200, 17300)
	np(policy.IdentityAny, policy.ProtoAny, 17400, 17500)
	for i, proto := range []uint8{protoTCP, policy.ProtoAny} {
		dr.CIDRs = append(dr.CIDRs, policy.CIDRRule{Prefix: netip.MustParsePrefix("198.18.0.0/16"), Proto: proto,
			Ports: policy.PortRange{First: uint16(17600 + 200*i), Last: uint16(17700 + 200*i)}, Rule: next})
		next++
	}
	tier := func(id int) (policy.RuleTier, policy.Action, policy.RuleID) {
		t := policy.TierAdmin
		if id%2 == 1 {
			t = policy.TierBaseline
		}
		return t, []policy.Action{policy.ActionDeny, policy.ActionAccept, policy.ActionPass}[id%3], policy.RuleID(1 + id)
	}
	for i := range 995 {
		t, a, id := tier(i)
		dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: uint32(1000 + i%100), Proto: protoTCP,
			Ports: policy.PortRange{First: uint16(20000 + 10*i), Last: uint16(20005 + 10*i)}, Rule: id, Tier: t, Action: a})
	}
	for i, r := range []policy.IdentityRule{
		{Peer: 1005, Proto: policy.ProtoAny, Ports: policy.PortRange{First: 18000, Last: 18100}},
		{Peer: policy.IdentityAny, Proto: protoTCP, Ports: policy.PortRange{First: 18200, Last: 18300}},
		{Peer: policy.IdentityAny, Proto: policy.ProtoAny, Ports: policy.PortRange{First: 18400, Last: 18500}},
	} {
		r.Tier, r.Action, r.Rule = tier(995 + i)
		dr.Identities = append(dr.Identities, r)
	}
	for i, proto := range []uint8{protoTCP, policy.ProtoAny} {
		t, a, id := tier(998 + i)
		dr.CIDRs = append(dr.CIDRs, policy.CIDRRule{Prefix: netip.MustParsePrefix("198.18.0.0/15"), Proto: proto,
			Ports: policy.PortRange{First: uint16(18600 + 200*i), Last: uint16(18700 + 200*i)}, Rule: id, Tier: t, Action: a})
	}
	rev.Rules["ep"] = policy.EndpointRules{Identity: 1, Ingress: dr, Egress: dr}
	return rev
}

// BenchmarkProgramPerPacketTiers measures a packet denied after every
// lookup of both layers (the tier summary, the CIDR class, and the six
// lookup shapes, each answering a tier and a NetworkPolicy entry: four
// identity shapes and two CIDR class shapes; with port 20007 each entry
// also walks the trie for its port ranges) with 100k ipcache entries, 10k
// NetworkPolicy rules and 1k ClusterNetworkPolicy rules, against an empty
// tc program in the same run. The shapes are folded (fold.go: the peer's
// entry holds the any peer's and the any-protocol ones, so three probes
// answer: the peer's, the CIDR class and its entry); the -every-shape
// cases read the same revision rendered unfolded, six probes, as before
// the folding. reference-classic-floor is classicFloor with the same 100k
// ipcache addresses: the least a datapath with hash and LPM tables pays
// for the same packet on this host.
func BenchmarkProgramPerPacketTiers(b *testing.B) {
	requireKernel(b)
	ctx := context.Background()
	rev := tieredBigRevision(1)
	load := func(unfolded bool) *EBPF {
		_, nsPath := newNetNS(b)
		dp, _ := newEBPF(b, nsPath)
		dp.unfolded = unfolded
		if err := dp.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
			b.Fatal(err)
		}
		if err := dp.Apply(ctx, rev); err != nil {
			b.Fatal(err)
		}
		return dp
	}
	dp, every := load(false), load(true)
	peerKey := policyFixedKey{Ifindex: 1, Dir: uint8(policy.Ingress), Kind: kindIdentity, Proto: protoTCP, Peer: 1005}
	for _, c := range []struct {
		dp     *EBPF
		folded bool
	}{{dp, true}, {every, false}} {
		tabs := c.dp.shadow[c.dp.active]
		folded := tabs.fast[1].Flags&epfFolded != 0 && tabs.PolicyFixed[peerKey].Flags&pfAllMerged != 0
		if folded != c.folded {
			b.Fatalf("endpoint flags %#x, peer entry %+v: folded %v, want %v", tabs.fast[1].Flags,
				tabs.PolicyFixed[peerKey], folded, c.folded)
		}
	}
	// The packet must be denied after every lookup: check it on the twin.
	mem := NewMemory(WithIfindexResolver(func(string) (uint32, error) { return 1, nil }))
	if err := mem.Apply(ctx, rev); err != nil {
		b.Fatal(err)
	}
	if err := mem.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
		b.Fatal(err)
	}
	noop, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer noop.Close()
	peer, me := netip.MustParseAddr("198.18.0.5"), netip.MustParseAddr("10.0.0.1")
	hashed := pktSpec{src: peer, dst: me, proto: protoTCP, sport: 1, dport: 7, tcpFlags: 2}
	walked := hashed
	walked.dport = 20007
	for _, pkt := range []pktSpec{hashed, walked} {
		if v, reason, _, _ := mem.Process("ep", policy.Ingress, pkt.frame()); v != Deny || reason != ReasonDenyPolicy {
			b.Fatalf("the benchmark packet to %d is %s (%s), want denied by policy", pkt.dport, v, reason)
		}
	}
	ep := dp.shadow[dp.active].Endpoints[1]
	if ep.Lookups[policy.Ingress] != 0xff {
		b.Fatalf("endpoint lookups %#x: not every lookup runs", ep.Lookups[policy.Ingress])
	}
	floor := classicFloor(b, hostAddrs4(rev.IPCache), peer, ipv4SrcOff)
	checkFloor(b, floor, hashed.frame())
	fm := dp.coll.Programs["fm_to_pod"]
	var empty float64
	for _, c := range []struct {
		name string
		prog *ebpf.Program
		pkt  pktSpec
	}{
		{"baseline-empty-program", noop, hashed},
		{"reference-classic-floor", floor, hashed},
		{"tiers-denied-after-every-lookup", fm, hashed},
		{"tiers-denied-after-every-lookup-and-trie-walk", fm, walked},
		{"tiers-denied-after-every-lookup-every-shape", every.coll.Programs["fm_to_pod"], hashed},
		{"tiers-denied-after-every-lookup-and-trie-walk-every-shape", every.coll.Programs["fm_to_pod"], walked},
	} {
		b.Run(c.name, perPacket(c.prog, c.pkt.frame(), c.prog == noop, &empty))
	}
}

// BenchmarkProgramPerPacketCIDRs measures a SYN denied after its CIDR
// class lookup on an endpoint with 1,000 ipBlock rules (/24, /22 and /20
// prefixes in 100.64.0.0/10, one TCP port each, none matching the
// packet's port): through fm_cidr_arr (three probes, one per prefix
// length) and through the trie, as when the array cannot hold a revision,
// beside the empty program in the same run.
func BenchmarkProgramPerPacketCIDRs(b *testing.B) {
	requireKernel(b)
	rev := &Revision{Number: 1, Rules: map[string]policy.EndpointRules{}}
	dr := policy.DirectionRules{Enforced: true}
	for i := range 1000 {
		bits := []int{24, 22, 20}[i%3]
		a := netip.AddrFrom4([4]byte{100, 64 + byte(i>>6), byte(i << 2), 0})
		dr.CIDRs = append(dr.CIDRs, policy.CIDRRule{Prefix: netip.PrefixFrom(a, bits).Masked(), Proto: protoTCP,
			Ports: policy.PortRange{First: uint16(1000 + i), Last: uint16(1000 + i)}, Rule: policy.RuleID(i + 1)})
	}
	rev.Rules["ep"] = policy.EndpointRules{Identity: 1, Ingress: dr, Egress: dr}
	pkt := pktSpec{src: netip.MustParseAddr("100.64.4.9"), dst: netip.MustParseAddr("10.0.0.1"), proto: protoTCP,
		sport: 1, dport: 7, tcpFlags: 2}
	noop, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer noop.Close()
	// Both dataplanes are set up before the sub-benchmarks: set up inside
	// one, their seconds of setup and teardown count toward -benchtime, and
	// the framework stops at one packet, timed cold.
	var empty float64
	b.Run("baseline-empty-program", perPacket(noop, pkt.frame(), true, &empty))
	for _, c := range []struct {
		name  string
		limit int
	}{{"denied-after-cidr-array", 0}, {"denied-after-cidr-trie", 1}} {
		_, nsPath := newNetNS(b)
		dp, _ := newEBPF(b, nsPath)
		dp.cidrLimit = c.limit
		ctx := context.Background()
		if err := dp.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
			b.Fatal(err)
		}
		if err := dp.Apply(ctx, rev); err != nil {
			b.Fatal(err)
		}
		if got := dp.shadow[dp.active].cidrComplete; got != (c.limit == 0) {
			b.Fatalf("%s: CIDR array complete: %v, want %v", c.name, got, c.limit == 0)
		}
		prog := dp.coll.Programs["fm_to_pod"]
		if ret, _, err := prog.Benchmark(pkt.frame(), 1, nil); err != nil || int32(ret) != 2 {
			b.Fatalf("%s: program returned %d, %v; want the packet dropped", c.name, int32(ret), err)
		}
		b.Run(c.name, perPacket(prog, pkt.frame(), false, &empty))
	}
}
