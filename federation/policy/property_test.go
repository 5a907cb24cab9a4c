package policy

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/fedmesh/fedmesh/federation/identity"
)

// TestCompiledRulesAgreeWithExplain is the property that makes Reach honest:
// for random federations, mutated incrementally, evaluating the compiled
// (cached, incrementally maintained) rules gives the same verdict and the
// same deciding rule as Explain, which reads the policies directly; and the
// incremental cache equals a fresh compile on a fresh engine.
func TestCompiledRulesAgreeWithExplain(t *testing.T) {
	const seeds, flowsPerSeed = 24, 450
	cases := 0
	for seed := range uint64(seeds) {
		w := newWorld(seed)
		e := NewEngine()
		for _, c := range w.clusters {
			e.UpsertCluster(c)
		}
		var pols []*NetworkPolicy
		for i := range 12 {
			np := w.policy(i)
			pols = append(pols, np)
			e.UpsertNetworkPolicy(np)
		}
		for range 40 {
			e.UpsertEndpoint(w.endpoint(nil))
		}
		e.Recompute()
		// Incremental mutations, each followed by Recompute.
		for step := range 40 {
			switch w.r.IntN(6) {
			case 0: // relabel an endpoint (new identity)
				k := randomKey(w)
				e.UpsertEndpoint(w.endpoint(&k))
			case 1: // delete an endpoint
				k := randomKey(w)
				w.alloc.Release(w.eps[k].Identity)
				delete(w.eps, k)
				e.DeleteEndpoint(k)
			case 2:
				e.UpsertEndpoint(w.endpoint(nil))
			case 3: // replace a policy
				i := w.r.IntN(len(pols))
				e.DeletePolicy(pols[i].Key())
				pols[i] = w.policy(100 + step)
				e.UpsertNetworkPolicy(pols[i])
			case 4: // relabel a cluster
				c := w.clusters[w.r.IntN(len(w.clusters))]
				c.Labels = w.clusterLabels()
				e.UpsertCluster(c)
			case 5: // change only named ports of an endpoint
				k := randomKey(w)
				ep := w.eps[k]
				ep.NamedPorts = w.namedPorts()
				e.UpsertEndpoint(ep)
			}
			e.Recompute()
		}
		fresh := NewEngine()
		for _, c := range w.clusters {
			fresh.UpsertCluster(c)
		}
		for _, ep := range w.eps {
			fresh.UpsertEndpoint(ep)
		}
		for _, np := range pols {
			fresh.UpsertNetworkPolicy(np)
		}
		fresh.Recompute()
		keys := sortedKeys(w)
		for _, k := range keys {
			got, ok1 := e.Rules(k)
			want, ok2 := fresh.Rules(k)
			if !ok1 || !ok2 || !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d: incremental rules of %s differ from a fresh compile:\n got %+v\nwant %+v", seed, k, got, want)
			}
		}
		for range flowsPerSeed {
			checkFlow(t, seed, w, e, keys)
			cases++
		}
	}
	if cases < 10000 {
		t.Fatalf("only %d cases", cases)
	}
	t.Logf("%d random flows agreed", cases)
}

func randomKey(w *world) EndpointKey {
	keys := sortedKeys(w)
	return keys[w.r.IntN(len(keys))]
}

func sortedKeys(w *world) []EndpointKey {
	var keys []EndpointKey
	for k := range w.eps {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareEndpointKeys)
	return keys
}

var externalIPs = []string{"198.51.100.7", "203.0.113.9", "10.1.9.9", "2001:db8::1", "fd00:1::ffff"}

func checkFlow(t *testing.T, seed uint64, w *world, e *Engine, keys []EndpointKey) {
	t.Helper()
	fam := w.r.IntN(2)
	side := func() (Target, uint32, netip.Addr, *Compiled) {
		if w.r.IntN(8) == 0 {
			a := netip.MustParseAddr(externalIPs[w.r.IntN(len(externalIPs))])
			return Target{IP: a}, identity.World, a, nil
		}
		k := keys[w.r.IntN(len(keys))]
		ep := w.eps[k]
		a := netip.MustParseAddr(ep.Ips[fam])
		c, _ := e.Rules(k)
		return Target{Endpoint: &k}, ep.Identity, a, c
	}
	st, sid, sip, sc := side()
	dt, did, dip, dc := side()
	proto := []uint8{ProtoTCP, ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMP}[w.r.IntN(5)]
	port := []uint16{53, 80, 81, 443, 8080, 8100, 9000, uint16(w.r.IntN(65536))}[w.r.IntN(8)]
	if proto == ProtoICMP {
		port = 0
	}
	st.IP = sip
	dt.IP = dip
	x, err := e.Explain(Flow{Src: st, Dst: dt, Proto: proto, Port: port})
	if err != nil {
		t.Fatalf("seed %d: Explain: %v", seed, err)
	}
	check := func(c *Compiled, dir Direction, peer uint32, peerIP netip.Addr, v DirectionVerdict) {
		if c == nil {
			if v.Reason != ReasonNotEnforced {
				t.Fatalf("seed %d: external side explained as %v", seed, v.Reason)
			}
			return
		}
		ok, id := c.Rules.Evaluate(dir, peer, peerIP, proto, port)
		origin, _ := c.Origin(id)
		if ok != v.Allowed || (v.Reason == ReasonRuleAllows && origin != v.Rule) || (v.Reason == ReasonNotSelected) != (id == 0 && ok) {
			t.Fatalf("seed %d: flow %v -> %v %d/%d %s: Evaluate = %v rule %d (%+v), Explain = %v\nrules: %+v",
				seed, x.Src, x.Dst, proto, port, dir, ok, id, origin, v, c.Rules)
		}
	}
	check(sc, Egress, did, dip, x.Egress)
	check(dc, Ingress, sid, sip, x.Ingress)
}
