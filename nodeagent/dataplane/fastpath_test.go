package dataplane

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// fastPathRevision draws rules for two endpoints from small pools so that
// single ports pile up on one (peer, protocol) (past the inline limit),
// ranges overlap single ports, and all-ports rules shadow nothing or
// everything.
func fastPathRevision(r *rand.Rand) *Revision {
	peers := []uint32{policy.IdentityAny, 1, 2, 3}
	protos := []uint8{policy.ProtoAny, protoTCP, protoUDP, protoICMP}
	ports := func() policy.PortRange {
		switch r.IntN(4) {
		case 0:
			return policy.AllPorts
		case 1:
			a := uint16(r.IntN(16))
			return policy.PortRange{First: a, Last: a + uint16(r.IntN(8))}
		}
		p := uint16(r.IntN(16))
		return policy.PortRange{First: p, Last: p}
	}
	rev := &Revision{Number: 1, Rules: map[string]policy.EndpointRules{}}
	rule := policy.RuleID(1)
	dirRules := func() policy.DirectionRules {
		dr := policy.DirectionRules{Enforced: r.IntN(5) != 0}
		for range r.IntN(12) {
			dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: peers[r.IntN(len(peers))],
				Proto: protos[r.IntN(len(protos))], Ports: ports(), Rule: rule})
			rule++
		}
		for range r.IntN(3) {
			dr.CIDRs = append(dr.CIDRs, policy.CIDRRule{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, 0}),
				16+r.IntN(17)).Masked(), Proto: protos[r.IntN(len(protos))], Ports: ports(), Rule: rule})
			rule++
		}
		return dr
	}
	for _, id := range []string{"a", "b"} {
		rev.Rules[id] = policy.EndpointRules{Identity: 9, Ingress: dirRules(), Egress: dirRules()}
	}
	return rev
}

// TestPolicyFastPathAnswersLikeTheTrie holds the hash index (PolicyFixed,
// PolicyPort, inline ports) to the longest-prefix match it stands in for:
// the trie's entries of its key, and of the any peer's too when merged.
func TestPolicyFastPathAnswersLikeTheTrie(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	spilled, inline := 0, 0
	for range 200 {
		tabs, err := Render(fastPathRevision(r), map[string]uint32{"a": 7, "b": 8})
		if err != nil {
			t.Fatal(err)
		}
		for _, fv := range tabs.PolicyFixed {
			if fv.Flags&pfExact != 0 {
				spilled++
			} else if fv.NPorts > 0 {
				inline++
			}
		}
		tb := indexTables(tabs)
		for range 500 {
			p := &pkt{hasPorts: r.IntN(4) != 0}
			p.t.dport = uint16(r.IntN(24))
			ifindex, dir, kind := uint32(7+r.IntN(2)), uint8(r.IntN(2)), uint8(r.IntN(2))
			peer, proto := uint32(r.IntN(5)), []uint8{0, protoTCP, protoUDP, protoICMP}[r.IntN(4)]
			fast := tb.policyLookup(true, ifindex, dir, kind, peer, p, proto)
			trie := tb.policyTrieLookup(ifindex, dir, kind, peer, p, proto)
			fk := policyFixedKey{Ifindex: ifindex, Dir: dir, Kind: kind, Proto: proto, Peer: peer}
			if fv := tabs.PolicyFixed[fk]; fv.Flags&pfAllMerged != 0 {
				// A merged entry (fold.go), read as folded, stands in for
				// the peer's trie entries and the any peer's.
				fast = tb.policyEntry(fk, fv, p, true)
				trie = firstRule(trie, tb.policyTrieLookup(ifindex, dir, kind, 0, p, proto))
			}
			if fast != trie {
				t.Fatalf("ifindex %d dir %d kind %d peer %d proto %d port %d (ports %v): fast path says rule %d, trie %d",
					ifindex, dir, kind, peer, proto, p.t.dport, p.hasPorts, fast, trie)
			}
		}
	}
	if spilled == 0 || inline == 0 {
		t.Fatalf("the draw missed a case: %d spilled, %d inline port sets", spilled, inline)
	}
}

// TestDecideSkipsOnlyLookupsThatCannotMatch compares decisions with the
// endpoints' lookup summaries against decisions with every lookup in the
// trie (what the program does with tables an older agent wrote).
func TestDecideSkipsOnlyLookupsThatCannotMatch(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	addrs := []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.3.4"),
		netip.MustParseAddr("198.19.0.9"), netip.MustParseAddr("10.1.2.3")}
	for range 100 {
		rev := fastPathRevision(r)
		rev.IPCache = ipcacheOf(ipEntry{netip.MustParsePrefix("198.18.0.1/32"), 1},
			ipEntry{netip.MustParsePrefix("198.18.0.0/16"), 2}, ipEntry{netip.MustParsePrefix("198.19.0.0/16"), 3})
		tabs, err := Render(rev, map[string]uint32{"a": 7, "b": 8})
		if err != nil {
			t.Fatal(err)
		}
		legacy := *tabs
		legacy.Endpoints = map[uint32]endpointVal{}
		for k, v := range tabs.Endpoints {
			v.Lookups = [2]uint8{}
			legacy.Endpoints[k] = v
		}
		fastTB, legacyTB := indexTables(tabs), indexTables(&legacy)
		for range 300 {
			spec := pktSpec{src: addrs[r.IntN(len(addrs))], dst: addrs[r.IntN(len(addrs))],
				proto: []uint8{protoTCP, protoUDP, protoICMP, 47}[r.IntN(4)], sport: 40000, dport: uint16(r.IntN(24)),
				tcpFlags: 2, icmpType: 8}
			f := spec.frame()
			ifindex, dir := uint32(7+r.IntN(2)), uint8(r.IntN(2))
			// Fresh flow state each time: conntrack would hide the policy.
			got := decide(f, ifindex, dir, fastTB, newFlowState(DefaultTimeouts), 1)
			want := decide(f, ifindex, dir, legacyTB, newFlowState(DefaultTimeouts), 1)
			if got.reason != want.reason || got.rule != want.rule {
				t.Fatalf("%+v on %d dir %d: with summaries %s rule %d, all lookups %s rule %d",
					spec, ifindex, dir, got.reason, got.rule, want.reason, want.rule)
			}
		}
	}
}
