package policy

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/fedmesh/fedmesh/federation/identity"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// clusterPolicy draws a random ClusterNetworkPolicy: both tiers, every
// action, priorities from a small pool (so equal ones are common), subjects
// by namespaces or pods, peers by namespaces, pods and networks (and now
// and then a peer this code cannot read), ports by number, range and name.
func (w *world) clusterPolicy(i int) *ClusterPolicy {
	p := &ClusterPolicy{Name: fmt.Sprintf("cnp%d", i)}
	if w.r.IntN(3) == 0 {
		p.Cluster = w.clusters[w.r.IntN(len(w.clusters))].Name
	} else if w.r.IntN(2) == 0 {
		p.ClusterSelector = w.selector("region", "env")
	}
	s := &p.Spec
	s.Tier = []cnpv1.Tier{cnpv1.AdminTier, cnpv1.BaselineTier}[w.r.IntN(2)]
	s.Priority = int32(w.r.IntN(4))
	if w.r.IntN(2) == 0 {
		s.Subject.Namespaces = w.selector("team", "kubernetes.io/metadata.name")
	} else {
		s.Subject.Pods = &cnpv1.NamespacedPod{NamespaceSelector: *w.selector("team", "kubernetes.io/metadata.name"),
			PodSelector: *w.selector("app", "tier")}
	}
	actions := []cnpv1.ClusterNetworkPolicyRuleAction{cnpv1.ClusterNetworkPolicyRuleActionAccept,
		cnpv1.ClusterNetworkPolicyRuleActionDeny, cnpv1.ClusterNetworkPolicyRuleActionPass}
	for range w.r.IntN(3) {
		peers, cls := w.tierPeers(p.Cluster == "", false)
		var from []cnpv1.ClusterNetworkPolicyIngressPeer
		for _, pe := range peers {
			if pe.Networks != nil {
				continue // networks peers are egress only
			}
			from = append(from, cnpv1.ClusterNetworkPolicyIngressPeer{Namespaces: pe.Namespaces, Pods: pe.Pods})
		}
		if len(from) == 0 {
			from = []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}
			cls = nil
		}
		s.Ingress = append(s.Ingress, cnpv1.ClusterNetworkPolicyIngressRule{Name: fmt.Sprintf("in%d", len(s.Ingress)),
			Action: actions[w.r.IntN(3)], From: from, Protocols: w.tierProtocols()})
		p.IngressPeerClusters = append(p.IngressPeerClusters, cls)
	}
	for range w.r.IntN(3) {
		action := actions[w.r.IntN(3)]
		peers, cls := w.tierPeers(p.Cluster == "", action == cnpv1.ClusterNetworkPolicyRuleActionAccept)
		s.Egress = append(s.Egress, cnpv1.ClusterNetworkPolicyEgressRule{Name: fmt.Sprintf("eg%d", len(s.Egress)),
			Action: action, To: peers, Protocols: w.tierProtocols()})
		p.EgressPeerClusters = append(p.EgressPeerClusters, cls)
	}
	return p
}

// namePatterns and resolvedNames are the domainNames patterns the
// generator writes and the names flows are resolved from: exact and
// wildcard matches, misses by one label, case and a trailing dot.
var (
	namePatterns  = []cnpv1.DomainName{"api.example.com", "*.example.com", "example.com", "*.org", "Other.ORG."}
	resolvedNames = []string{"api.example.com", "www.example.com", "a.b.example.com", "example.com", "other.org", "example.net"}
)

// tierPeers draws a rule's peers; withNames (egress Accept rules, the only
// place validation allows them) adds domainNames peers to the mix.
func (w *world) tierPeers(federated, withNames bool) ([]cnpv1.ClusterNetworkPolicyEgressPeer, []*metav1.LabelSelector) {
	var out []cnpv1.ClusterNetworkPolicyEgressPeer
	var cls []*metav1.LabelSelector
	for range 1 + w.r.IntN(2) {
		var pe cnpv1.ClusterNetworkPolicyEgressPeer
		n := 8
		if withNames {
			n = 10
		}
		switch w.r.IntN(n) {
		case 8, 9:
			for range 1 + w.r.IntN(2) {
				pe.DomainNames = append(pe.DomainNames, namePatterns[w.r.IntN(len(namePatterns))])
			}
		case 0, 1:
			pe.Namespaces = w.selector("team", "kubernetes.io/metadata.name")
		case 2, 3, 4:
			pe.Pods = &cnpv1.NamespacedPod{NamespaceSelector: *w.selector("team", "kubernetes.io/metadata.name"),
				PodSelector: *w.selector("app", "tier")}
		case 5, 6:
			nets := []cnpv1.CIDR{"10.0.0.0/8", "10.1.0.0/16", "0.0.0.0/0", "fd00::/16", "fd00:1::/32", "198.51.100.0/24", "::/0"}
			for range 1 + w.r.IntN(2) {
				pe.Networks = append(pe.Networks, nets[w.r.IntN(len(nets))])
			}
		case 7: // a peer of a newer CRD: fails closed
		}
		var cs *metav1.LabelSelector
		if federated && pe.Networks == nil && pe.DomainNames == nil && w.r.IntN(2) == 0 {
			cs = w.selector("region", "env")
		}
		out = append(out, pe)
		cls = append(cls, cs)
	}
	return out, cls
}

func (w *world) tierProtocols() []cnpv1.ClusterNetworkPolicyProtocol {
	var out []cnpv1.ClusterNetworkPolicyProtocol
	for range w.r.IntN(3) {
		var port *cnpv1.Port
		switch w.r.IntN(3) {
		case 1:
			port = &cnpv1.Port{Number: []int32{53, 80, 443, 8080, 9000}[w.r.IntN(5)]}
		case 2:
			a := []int32{53, 80, 443, 8080, 9000}[w.r.IntN(5)]
			port = &cnpv1.Port{Range: &cnpv1.PortRange{Start: a, End: a + 1 + int32(w.r.IntN(100))}}
		}
		var pr cnpv1.ClusterNetworkPolicyProtocol
		switch w.r.IntN(4) {
		case 0:
			pr.TCP = &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: port}
		case 1:
			pr.UDP = &cnpv1.ClusterNetworkPolicyProtocolUDP{DestinationPort: port}
		case 2:
			pr.SCTP = &cnpv1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: port}
		default:
			pr.DestinationNamedPort = w.pick("http", "dns", "sig", "nope")
		}
		out = append(out, pr)
	}
	return out
}

// TestCompiledTiersAgreeWithExplain: for random mixes of
// ClusterNetworkPolicies (both tiers, every action, equal priorities) and
// NetworkPolicies, mutated incrementally, the compiled rules decide every
// random flow as Tiers.Explain does, naming the same deciding rule; and the
// incremental cache equals a fresh compile.
func TestCompiledTiersAgreeWithExplain(t *testing.T) {
	const seeds, flowsPerSeed = 30, 400
	cases := 0
	for seed := range uint64(seeds) {
		w := newWorld(1000 + seed)
		e := NewEngine()
		for _, c := range w.clusters {
			e.UpsertCluster(c)
		}
		var pols []*NetworkPolicy
		for i := range 6 {
			pols = append(pols, w.policy(i))
			e.UpsertNetworkPolicy(pols[i])
		}
		cnps := map[ClusterPolicyKey]*ClusterPolicy{}
		addCNP := func(i int) {
			p := w.clusterPolicy(i)
			if err := e.UpsertClusterPolicy(p); err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
			cnps[p.Key()] = p
		}
		for i := range 8 {
			addCNP(i)
		}
		for range 40 {
			e.UpsertEndpoint(w.endpoint(nil))
		}
		e.Recompute()
		for range 40 {
			switch w.r.IntN(7) {
			case 0:
				k := randomKey(w)
				e.UpsertEndpoint(w.endpoint(&k))
			case 1:
				k := randomKey(w)
				w.alloc.Release(w.eps[k].Identity)
				delete(w.eps, k)
				e.DeleteEndpoint(k)
			case 2:
				e.UpsertEndpoint(w.endpoint(nil))
			case 3: // replace a cluster network policy (same name: a change)
				addCNP(w.r.IntN(10))
			case 4: // delete one
				for k := range cnps {
					e.DeleteClusterPolicy(k)
					delete(cnps, k)
					break
				}
			case 5:
				c := w.clusters[w.r.IntN(len(w.clusters))]
				c.Labels = w.clusterLabels()
				e.UpsertCluster(c)
			case 6:
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
		for _, p := range cnps {
			if err := fresh.UpsertClusterPolicy(p); err != nil {
				t.Fatal(err)
			}
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
			checkTieredFlow(t, seed, w, e, keys)
			cases++
		}
	}
	if cases < 10000 {
		t.Fatalf("only %d cases", cases)
	}
	t.Logf("%d random flows agreed; directions decided: %v", cases, tieredLayers)
}

// tieredLayers counts the decisions the property test saw, by layer and
// verdict, so its log shows every layer was exercised.
var tieredLayers = map[string]int{}

func checkTieredFlow(t *testing.T, seed uint64, w *world, e *Engine, keys []EndpointKey) {
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
		return Target{Endpoint: &k, IP: a}, ep.Identity, a, c
	}
	st, sid, sip, sc := side()
	dt, did, dip, dc := side()
	proto := []uint8{ProtoTCP, ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMP}[w.r.IntN(5)]
	port := []uint16{53, 80, 81, 443, 8080, 8100, 9000, uint16(w.r.IntN(65536))}[w.r.IntN(8)]
	if proto == ProtoICMP {
		port = 0
	}
	var names []string
	for range w.r.IntN(3) {
		names = append(names, resolvedNames[w.r.IntN(len(resolvedNames))])
	}
	x, err := e.Tiers().Explain(e, Flow{Src: st, Dst: dt, Proto: proto, Port: port, DstNames: names})
	if err != nil {
		t.Fatalf("seed %d: Explain: %v", seed, err)
	}
	check := func(c *Compiled, dir Direction, peer uint32, peerIP netip.Addr, v TieredVerdict) {
		if c == nil {
			if !v.NotEnforced {
				t.Fatalf("seed %d: external side explained as enforced: %v", seed, v)
			}
			return
		}
		ok, id := c.Rules.Evaluate(dir, peer, peerIP, proto, port)
		if dir == Egress {
			ok, id = c.Rules.Egress.EvaluateResolved(peer, peerIP, proto, port, names)
		}
		origin, _ := c.Origin(id)
		tieredLayers[fmt.Sprintf("%s/%v", v.Layer, v.Allowed)]++
		if dir == Egress && id != 0 && slices.ContainsFunc(c.Rules.Egress.Names, func(r NameRule) bool { return r.Rule == id }) {
			tieredLayers["by-domainNames"]++
		}
		if len(v.IfResolved) > 0 {
			tieredLayers["if-resolved"]++
		}
		fail := func(why string) {
			t.Fatalf("seed %d: flow %v -> %v %d/%d %s: %s: Evaluate = %v rule %d (%+v), Explain = %v",
				seed, x.Src, x.Dst, proto, port, dir, why, ok, id, origin, v)
		}
		if ok != v.Allowed {
			fail("verdicts differ")
		}
		switch v.Layer {
		case LayerAdmin, LayerBaseline:
			if tr, isTier := origin.TierRule(); !isTier || tr != v.Rule {
				fail("deciding tier rule differs")
			}
		case LayerNetworkPolicy:
			if v.NetworkPolicy.Reason == ReasonRuleAllows && origin != v.NetworkPolicy.Rule {
				fail("deciding NetworkPolicy rule differs")
			}
			if !v.Allowed && id != 0 {
				fail("a NetworkPolicy denial names a rule")
			}
		case LayerDefault:
			// A Baseline Pass decides "allow" and is the rule named.
			var want TierRule
			if n := len(v.Passed); n > 0 && v.Passed[n-1].Tier == cnpv1.BaselineTier {
				want = v.Passed[n-1]
			}
			tr, _ := origin.TierRule()
			if tr != want {
				fail("default decision names the wrong rule")
			}
		}
	}
	check(sc, Egress, did, dip, x.Egress)
	check(dc, Ingress, sid, sip, x.Ingress)
}
