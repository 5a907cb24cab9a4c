package dataplane

import (
	"maps"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// foldRevision draws NetworkPolicy and tier rules of every lookup shape
// for two endpoints from small pools, so that shapes overlap: peers and
// any peer, each port protocol and any protocol, single ports (past the
// inline limit too), ranges (some across port blocks) and all ports.
func foldRevision(r *rand.Rand) *Revision {
	peers := []uint32{policy.IdentityAny, 1, 2, 3}
	protos := []uint8{policy.ProtoAny, protoTCP, protoUDP, protoSCTP}
	ports := func() policy.PortRange {
		switch r.IntN(6) {
		case 0:
			return policy.AllPorts
		case 1:
			a := uint16(r.IntN(24))
			return policy.PortRange{First: a, Last: a + uint16(r.IntN(8))}
		case 2:
			a := uint16(4000 + r.IntN(2000))
			return policy.PortRange{First: a, Last: a + uint16(r.IntN(5000))}
		}
		p := uint16(r.IntN(24))
		return policy.PortRange{First: p, Last: p}
	}
	rule := policy.RuleID(1)
	tier := func() (policy.RuleTier, policy.Action) {
		switch r.IntN(3) {
		case 0:
			return policy.TierNetworkPolicy, policy.ActionAllow
		case 1:
			return policy.TierAdmin, []policy.Action{policy.ActionAccept, policy.ActionDeny, policy.ActionPass}[r.IntN(3)]
		}
		return policy.TierBaseline, []policy.Action{policy.ActionAccept, policy.ActionDeny}[r.IntN(2)]
	}
	dirRules := func() policy.DirectionRules {
		dr := policy.DirectionRules{Enforced: r.IntN(4) != 0}
		for range r.IntN(16) {
			tr, act := tier()
			dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: peers[r.IntN(len(peers))],
				Proto: protos[r.IntN(len(protos))], Ports: ports(), Rule: rule, Tier: tr, Action: act})
			rule++
		}
		for range r.IntN(4) {
			tr, act := tier()
			dr.CIDRs = append(dr.CIDRs, policy.CIDRRule{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, 0}),
				15+r.IntN(18)).Masked(), Proto: protos[r.IntN(len(protos))], Ports: ports(), Rule: rule, Tier: tr, Action: act})
			rule++
		}
		return dr
	}
	rev := &Revision{Number: 1, Rules: map[string]policy.EndpointRules{}}
	for _, id := range []string{"a", "b"} {
		eg := dirRules()
		// domainNames rules (tiers only, egress only), in three name slots.
		for range r.IntN(5) {
			tr, act := tier()
			if tr == policy.TierNetworkPolicy {
				tr, act = policy.TierAdmin, policy.ActionAccept
			}
			eg.Names = append(eg.Names, policy.NameRule{Names: []string{[]string{"a.example", "*.example", "b.test"}[r.IntN(3)]},
				Proto: protos[r.IntN(len(protos))], Ports: ports(), Rule: rule, Tier: tr, Action: act})
			rule++
		}
		rev.Rules[id] = policy.EndpointRules{Identity: 9, Ingress: dirRules(), Egress: eg}
	}
	rev.IPCache = ipcacheOf(ipEntry{netip.MustParsePrefix("198.18.0.1/32"), 1},
		ipEntry{netip.MustParsePrefix("198.18.0.0/16"), 2}, ipEntry{netip.MustParsePrefix("198.19.0.0/16"), 3})
	return rev
}

// TestFoldedTablesDecideLikeEveryShape holds the folded tables, read the
// way policy_folded reads them (fewest shapes) and shape by shape (as
// programs of an earlier version do), to the unfolded tables read shape by
// shape: same verdict, same deciding rule.
func TestFoldedTablesDecideLikeEveryShape(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	addrs := []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.3.4"),
		netip.MustParseAddr("198.19.0.9"), netip.MustParseAddr("10.1.2.3")}
	attached := map[string]uint32{"a": 7, "b": 8}
	merged, rangesMerged, cases := 0, 0, 0
	for range 300 {
		rev := foldRevision(r)
		folded, err := renderFolded(rev, attached, nil, true)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := renderFolded(rev, attached, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		if len(folded.folded) != 2 {
			t.Fatalf("endpoints folded: %v, want both", folded.folded)
		}
		for _, m := range folded.allMerged {
			merged++
			if m.blocks != 0 {
				rangesMerged++
			}
		}
		// Programs of an earlier version, still attached while a new agent
		// starts, read the folded tables shape by shape.
		earlier := *folded
		earlier.folded = nil
		foldedTB, plainTB, earlierTB := indexTables(folded), indexTables(plain), indexTables(&earlier)
		for range 200 {
			spec := pktSpec{src: addrs[r.IntN(len(addrs))], dst: addrs[r.IntN(len(addrs))],
				proto: []uint8{protoTCP, protoUDP, protoSCTP, protoICMP, 47}[r.IntN(5)], sport: 40000,
				dport: []uint16{uint16(r.IntN(30)), uint16(4000 + r.IntN(7000))}[r.IntN(2)], tcpFlags: 2, icmpType: 8}
			f := spec.frame()
			ifindex, dir := uint32(7+r.IntN(2)), uint8(r.IntN(2))
			// The destination learned for some of the endpoint's name
			// slots, each live (2) or expired (0, 1) at time 1.
			var fv fqdnVal
			for s := range len(folded.NameSlots[ifindex]) {
				if r.IntN(2) == 0 {
					fv.Mask |= 1 << s
					fv.Expires[s] = uint64(r.IntN(3))
				}
			}
			// Fresh flow state each time: conntrack would hide the policy.
			learned := func() *flowState {
				fs := newFlowState(DefaultTimeouts)
				fs.fqdn[fqdnKey{Ifindex: ifindex, IP: mapped(spec.dst)}] = fv
				return fs
			}
			got := decide(f, ifindex, dir, foldedTB, learned(), 1)
			want := decide(f, ifindex, dir, plainTB, learned(), 1)
			old := decide(f, ifindex, dir, earlierTB, learned(), 1)
			if got.reason != want.reason || got.rule != want.rule || old.reason != want.reason || old.rule != want.rule {
				t.Fatalf("%+v on %d dir %d: folded %s rule %d, folded read shape by shape %s rule %d, every shape %s rule %d\nrules %+v",
					spec, ifindex, dir, got.reason, got.rule, old.reason, old.rule, want.reason, want.rule, rev.Rules)
			}
			cases++
		}
	}
	if merged == 0 || rangesMerged == 0 {
		t.Fatalf("the draw missed a case: %d merged entries, %d with any-peer ranges", merged, rangesMerged)
	}
	t.Logf("%d cases, %d merged entries (%d with any-peer ranges)", cases, merged, rangesMerged)
}

// TestFoldMergesOnlyWhatReadsFaster: the any peer's entry is merged into
// a peer's when the merge keeps the peer's single ports inline and fits
// the budget; otherwise both entries stay apart, unflagged, and a packet
// probes both.
func TestFoldMergesOnlyWhatReadsFaster(t *testing.T) {
	single := func(peer uint32, port uint16, rule policy.RuleID) policy.IdentityRule {
		return policy.IdentityRule{Peer: peer, Proto: protoTCP, Ports: policy.PortRange{First: port, Last: port}, Rule: rule}
	}
	cases := []struct {
		name   string
		rules  []policy.IdentityRule
		merged bool
	}{
		{"any peer all ports", []policy.IdentityRule{single(5, 80, 1),
			{Peer: policy.IdentityAny, Proto: protoTCP, Ports: policy.AllPorts, Rule: 2}}, true},
		{"any peer ranges stay in its trie entries", []policy.IdentityRule{single(5, 80, 1),
			{Peer: policy.IdentityAny, Proto: protoTCP, Ports: policy.PortRange{First: 1000, Last: 2000}, Rule: 2}}, true},
		{"merged single ports still inline", []policy.IdentityRule{single(5, 80, 1), single(5, 81, 2),
			single(policy.IdentityAny, 82, 3), single(policy.IdentityAny, 83, 4)}, true},
		{"merged single ports would spill", []policy.IdentityRule{single(5, 80, 1), single(5, 81, 2), single(5, 84, 5),
			single(policy.IdentityAny, 82, 3), single(policy.IdentityAny, 83, 4)}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rev := &Revision{Number: 1, Rules: map[string]policy.EndpointRules{"a": {Identity: 9,
				Ingress: policy.DirectionRules{Enforced: true, Identities: c.rules}}}}
			tabs, err := Render(rev, map[string]uint32{"a": 7})
			if err != nil {
				t.Fatal(err)
			}
			fv := tabs.PolicyFixed[policyFixedKey{Ifindex: 7, Kind: kindIdentity, Proto: protoTCP, Peer: 5}]
			if got := fv.Flags&pfAllMerged != 0; got != c.merged {
				t.Fatalf("peer entry %+v: merged %v, want %v", fv, got, c.merged)
			}
			if c.merged && fv.Flags&pfExact != 0 {
				t.Fatalf("merged peer entry %+v spilled its single ports to the port hash", fv)
			}
			// The any peer's ranges are walked from its own trie entries,
			// not copied under the peer.
			ranges := 0
			for k := range tabs.Policy {
				if k.Peer == 5 && k.Prefixlen > policyFixedBits && k.Prefixlen < policyAllBits {
					ranges++
				}
			}
			if ranges != 0 || c.merged && fv.Flags&pfRanges != 0 && fv.Flags&pfAllRanges == 0 {
				t.Fatalf("peer entry %+v with %d range entries under the peer", fv, ranges)
			}
		})
	}
	// The budget: an any peer's single port merged into 3,000 peers' entries
	// would add 3,000 entries to a revision of ~3,000, past the least
	// budget (1,024; an eighth of the revision is less): the merges stop
	// there.
	var rules []policy.IdentityRule
	for p := range uint32(3000) {
		rules = append(rules, single(100+p, 80, policy.RuleID(p+1)))
	}
	rules = append(rules, single(policy.IdentityAny, 443, 9999))
	rev := &Revision{Number: 1, Rules: map[string]policy.EndpointRules{"a": {Identity: 9,
		Ingress: policy.DirectionRules{Enforced: true, Identities: rules}}}}
	folded, err := Render(rev, map[string]uint32{"a": 7})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := renderFolded(rev, map[string]uint32{"a": 7}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	merged := 0
	for k := range folded.allMerged {
		if k.Kind == kindIdentity {
			merged++
		}
	}
	if grown := len(folded.Policy) - len(plain.Policy); merged == 0 || grown > max(minAllFoldEntries, len(plain.Policy)/8) {
		t.Fatalf("%d peers merged, the revision grew by %d entries of %d: want some merged, within the budget",
			merged, grown, len(plain.Policy))
	}
	// Which peers the budget reaches does not depend on map order.
	for range 3 {
		again, err := Render(rev, map[string]uint32{"a": 7})
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(again.Policy, folded.Policy) || !maps.Equal(again.PolicyFixed, folded.PolicyFixed) {
			t.Fatal("one revision rendered twice: the folded tables differ")
		}
	}
}
