package dataplane

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// TestProgramsBeforeTiersEnforceTheNetworkPolicyLayer: during an upgrade
// the programs of the version before tiers (testdata/
// fedmesh_pretiers_bpfel.o, the object that version committed) keep
// reading the tables the new agent writes until their links are
// re-pointed. They must enforce exactly the NetworkPolicy layer, as they
// did before the upgrade: the tier entries (their own kinds, the endpoint
// summary bit, PF_BLOCKS) are invisible to them. The old program runs on
// random revisions with tier rules added and must agree, packet by packet,
// with the twin on the same revision without its tier rules.
func TestProgramsBeforeTiersEnforceTheNetworkPolicyLayer(t *testing.T) {
	requireKernel(t)
	ns, nsPath := newNetNS(t)
	ifaces := []string{"o0", "o1"}
	ids := []string{"c/ns/a", "c/ns/b"}
	for _, i := range ifaces {
		run(t, "ip", "-n", ns, "link", "add", i, "type", "veth", "peer", "name", "p"+i)
		run(t, "ip", "-n", ns, "link", "set", i, "up")
	}
	ctx := context.Background()
	kern, cfg := newEBPF(t, nsPath)
	spec, err := ebpf.LoadCollectionSpec("testdata/fedmesh_pretiers_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}})
	if err != nil {
		t.Fatalf("load the pre-tiers programs on the new agent's pins: %v", err)
	}
	defer old.Close()
	g := &gen{r: rand.New(rand.NewPCG(3, 4))}
	tierRules := func(dr *policy.DirectionRules, next *policy.RuleID) {
		for range 1 + g.r.IntN(4) {
			tier := []policy.RuleTier{policy.TierAdmin, policy.TierBaseline}[g.r.IntN(2)]
			act := []policy.Action{policy.ActionAccept, policy.ActionDeny, policy.ActionPass}[g.r.IntN(3)]
			if g.r.IntN(2) == 0 {
				dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: uint32(g.r.IntN(7)),
					Proto: protoPool[g.r.IntN(len(protoPool))], Ports: g.ports(), Rule: *next, Tier: tier, Action: act})
			} else {
				dr.CIDRs = append(dr.CIDRs, policy.CIDRRule{Prefix: g.prefix(g.r.IntN(2) == 0),
					Proto: protoPool[g.r.IntN(len(protoPool))], Ports: g.ports(), Rule: *next, Tier: tier, Action: act})
			}
			*next++
		}
	}
	total, tiered := 0, 0
	for n := range uint64(4) {
		npOnly := g.revision(n+1, ids)
		full := &Revision{Number: npOnly.Number, IPCache: npOnly.IPCache, Rules: map[string]policy.EndpointRules{}}
		for id, r := range npOnly.Rules {
			next := policy.RuleID(1000)
			in, eg := r.Ingress, r.Egress
			in.Identities, in.CIDRs = append([]policy.IdentityRule(nil), in.Identities...), append([]policy.CIDRRule(nil), in.CIDRs...)
			eg.Identities, eg.CIDRs = append([]policy.IdentityRule(nil), eg.Identities...), append([]policy.CIDRRule(nil), eg.CIDRs...)
			tierRules(&in, &next)
			tierRules(&eg, &next)
			full.Rules[id] = policy.EndpointRules{Identity: r.Identity, Ingress: in, Egress: eg}
		}
		if err := kern.Apply(ctx, full); err != nil {
			t.Fatal(err)
		}
		mem := NewMemory(WithIfindexResolver(func(iface string) (uint32, error) { return ifindexIn(nsPath, iface) }))
		if err := mem.Apply(ctx, npOnly); err != nil {
			t.Fatal(err)
		}
		idx := map[string]uint32{}
		for i, id := range ids {
			if err := kern.Attach(ctx, Endpoint{ID: id, Interface: ifaces[i]}); err != nil {
				t.Fatal(err)
			}
			if err := mem.Attach(ctx, Endpoint{ID: id, Interface: ifaces[i]}); err != nil {
				t.Fatal(err)
			}
			idx[id], _ = ifindexIn(nsPath, ifaces[i])
		}
		for _, ep := range kern.shadow[kern.active].Endpoints {
			if ep.Lookups[0]&eplTier != 0 || ep.Lookups[1]&eplTier != 0 {
				tiered++
			}
		}
		// Conntrack is shared by old and new programs: start each revision
		// from an empty table, as the twin does.
		for _, m := range []string{"fm_ct4", "fm_ct6", "fm_frag"} {
			var k, v []byte
			it := kern.coll.Maps[m].Iterate()
			var keys [][]byte
			for it.Next(&k, &v) {
				keys = append(keys, append([]byte(nil), k...))
			}
			for _, k := range keys {
				_ = kern.coll.Maps[m].Delete(k)
			}
		}
		err := inNetNS(nsPath, func() error {
			for range 800 {
				p := g.packet()
				f := g.mangle(p.frame())
				e := g.r.IntN(len(ids))
				dir := policy.Direction(g.r.IntN(2))
				prog := old.Programs["fm_to_pod"]
				if dir == policy.Egress {
					prog = old.Programs["fm_from_pod"]
				}
				ret, err := prog.Run(&ebpf.RunOptions{Data: f, Context: skbCtx{Ifindex: idx[ids[e]]}})
				if errors.Is(err, unix.EINVAL) && truncatedL3(f) {
					continue
				}
				if err != nil {
					return fmt.Errorf("run the pre-tiers program: %w", err)
				}
				v, reason, _, err := mem.Process(ids[e], dir, f)
				if err != nil {
					return err
				}
				want := int32(retNext)
				if v == Deny {
					want = retDrop
				}
				if int32(ret) != want {
					return fmt.Errorf("revision %d packet %d (%s %s): pre-tiers program returned %d, NetworkPolicy-only twin %s (%s)\nspec %+v",
						n+1, total, ids[e], dir, int32(ret), v, reason, p)
				}
				total++
			}
			return nil
		})
		mem.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if tiered == 0 {
		t.Fatal("no endpoint had tier entries: the test checks nothing")
	}
	t.Logf("%d packets: the pre-tiers program enforced the NetworkPolicy layer", total)
}
