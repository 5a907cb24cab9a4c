package dataplane

import (
	"context"
	"net/netip"
	"testing"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// TestPairedWaysAnswerBothLayers gives one endpoint, for each lookup
// shape (peer identity, any identity, CIDR; one protocol, any protocol),
// NetworkPolicy rules and an Admin tier rule of that shape, which share
// one way of the policy index array: NetworkPolicy allows two single
// ports, the tier rule denies the second. A packet to the first port is allowed only
// through the way's NetworkPolicy half, one to the second denied only
// through its tier half, through the array and through the hash alike,
// as the twin says.
func TestPairedWaysAnswerBothLayers(t *testing.T) {
	requireKernel(t)
	_, nsPath := newNetNS(t)
	ctx := context.Background()
	known, unknown := netip.MustParseAddr("198.18.0.5"), netip.MustParseAddr("198.18.9.9") // identity 1005, none
	me := netip.MustParseAddr("10.0.0.1")
	b := NewIPCacheBuilder(IPCache{})
	b.Set(netip.PrefixFrom(known, 32), 1005)
	pfx := netip.MustParsePrefix("198.18.0.0/16")
	dr := policy.DirectionRules{Enforced: true}
	type probe struct {
		peer  netip.Addr
		dport uint16
		allow bool
	}
	var probes []probe
	next := uint16(1000)
	for _, proto := range []uint8{protoTCP, policy.ProtoAny} {
		for _, shape := range []string{"peer", "any", "cidr"} {
			open, denied := next, next+1
			next += 2
			// Single ports: their entries live in the way itself (a range
			// would send both layers to the trie, which holds every kind).
			np := []policy.PortRange{{First: open, Last: open}, {First: denied, Last: denied}}
			tier := policy.PortRange{First: denied, Last: denied}
			npRule, tierRule := policy.RuleID(100+open), policy.RuleID(open)
			src := unknown
			switch shape {
			case "cidr":
				dr.CIDRs = append(dr.CIDRs, policy.CIDRRule{Prefix: pfx, Proto: proto, Ports: np[0], Rule: npRule},
					policy.CIDRRule{Prefix: pfx, Proto: proto, Ports: np[1], Rule: npRule},
					policy.CIDRRule{Prefix: pfx, Proto: proto, Ports: tier, Rule: tierRule, Tier: policy.TierAdmin,
						Action: policy.ActionDeny})
			default:
				peer := policy.IdentityAny
				if shape == "peer" {
					peer, src = 1005, known
				}
				dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: peer, Proto: proto, Ports: np[0], Rule: npRule},
					policy.IdentityRule{Peer: peer, Proto: proto, Ports: np[1], Rule: npRule},
					policy.IdentityRule{Peer: peer, Proto: proto, Ports: tier, Rule: tierRule, Tier: policy.TierAdmin,
						Action: policy.ActionDeny})
			}
			probes = append(probes, probe{src, open, true}, probe{src, denied, false})
		}
	}
	rev := &Revision{Number: 1, IPCache: b.IPCache(), Rules: map[string]policy.EndpointRules{
		"ep": {Identity: 1, Ingress: dr}}}
	mem := NewMemory(WithIfindexResolver(func(string) (uint32, error) { return 1, nil }))
	if err := mem.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := mem.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
		t.Fatal(err)
	}
	for _, viaHash := range []bool{false, true} {
		kern, _ := newEBPF(t, nsPath)
		if viaHash {
			kern.pfaLimit = 1
		}
		if err := kern.Attach(ctx, Endpoint{ID: "ep", Interface: "lo"}); err != nil {
			t.Fatal(err)
		}
		if err := kern.Apply(ctx, rev); err != nil {
			t.Fatal(err)
		}
		fast := kern.shadow[kern.active].fastEndpoints()[1]
		if got := fast.Flags&epfPFPairs != 0; got == viaHash {
			t.Fatalf("hash %v: endpoint reads the array: %v", viaHash, got)
		}
		if n, l := len(kern.shadow[kern.active].PolicyFixed), pfaLen(kern.shadow[kern.active].PolicyFixed); l >= n {
			t.Fatalf("hash %v: %d policy index entries make %d array entries: no way is shared", viaHash, n, l)
		}
		err := inNetNS(nsPath, func() error {
			for _, p := range probes {
				f := pktSpec{src: p.peer, dst: me, proto: protoTCP, sport: 40000, dport: p.dport, tcpFlags: 2}.frame()
				got, err := kern.runProg(uint8(policy.Ingress), 1, f)
				if err != nil {
					return err
				}
				v, reason, rule, err := mem.Process("ep", policy.Ingress, f)
				if err != nil {
					return err
				}
				want := int32(retDrop)
				if p.allow {
					want = retNext
				}
				if got != want || (v == Allow) != p.allow {
					t.Errorf("hash %v: %v to port %d: kernel %d, twin %s (%s rule %d); want allow %v",
						viaHash, p.peer, p.dport, got, v, reason, rule, p.allow)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
