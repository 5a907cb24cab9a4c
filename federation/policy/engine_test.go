package policy

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/fedmesh/fedmesh/federation/identity"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func ep(cluster, ns, name, app string, id uint32, ip string) *fedmeshv1.Endpoint {
	return &fedmeshv1.Endpoint{Cluster: cluster, Namespace: ns, Name: name, Labels: map[string]string{"app": app},
		NamespaceLabels: map[string]string{"ns": ns}, Identity: id, Ips: []string{ip}, Node: "n1"}
}

func allowFrom(cluster, ns, name, selApp, fromApp string) *NetworkPolicy {
	return &NetworkPolicy{Cluster: cluster, Policy: networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": selApp}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fromApp}}}}}},
		},
	}}
}

// TestRecomputeReportsOnlyAffectedEndpoints: each mutation touches only the
// endpoints whose rules really change.
func TestRecomputeReportsOnlyAffectedEndpoints(t *testing.T) {
	k := func(ns, name string) EndpointKey { return EndpointKey{"c1", ns, name} }
	e := NewEngine()
	e.UpsertCluster(&fedmeshv1.Cluster{Name: "c1"})
	e.UpsertEndpoint(ep("c1", "x", "web1", "web", 300, "10.0.0.1"))
	e.UpsertEndpoint(ep("c1", "x", "web2", "web", 300, "10.0.0.2"))
	e.UpsertEndpoint(ep("c1", "x", "cli1", "cli", 301, "10.0.0.3"))
	e.UpsertEndpoint(ep("c1", "y", "other", "web", 302, "10.0.1.1"))
	e.UpsertNetworkPolicy(allowFrom("c1", "x", "web-from-cli", "web", "cli"))
	first := e.Recompute()
	if len(first.Updated) != 4 {
		t.Fatalf("first Recompute updated %v, want all 4", first.Updated)
	}
	steps := []struct {
		name   string
		mutate func()
		want   Changes
	}{
		{"nothing changed", func() {}, Changes{}},
		{"same endpoint again", func() { e.UpsertEndpoint(ep("c1", "x", "cli1", "cli", 301, "10.0.0.3")) }, Changes{}},
		{"second client with an existing identity changes no rules except its own (none)",
			func() { e.UpsertEndpoint(ep("c1", "x", "cli2", "cli", 301, "10.0.0.4")) }, Changes{Updated: []EndpointKey{k("x", "cli2")}}},
		{"a new client identity reaches the selected pods",
			func() {
				c := ep("c1", "x", "cli3", "cli", 303, "10.0.0.5")
				c.Labels["v"] = "2"
				e.UpsertEndpoint(c)
			}, Changes{Updated: []EndpointKey{k("x", "cli3"), k("x", "web1"), k("x", "web2")}}},
		{"policy in another namespace touches only its pods",
			func() { e.UpsertNetworkPolicy(allowFrom("c1", "y", "p2", "web", "cli")) }, Changes{Updated: []EndpointKey{k("y", "other")}}},
		{"relabelling a selected pod out of the policy",
			func() { e.UpsertEndpoint(ep("c1", "x", "web2", "api", 304, "10.0.0.2")) }, Changes{Updated: []EndpointKey{k("x", "web2")}}},
		{"deleting an endpoint",
			func() { e.DeleteEndpoint(k("y", "other")) }, Changes{Removed: []EndpointKey{k("y", "other")}}},
		{"deleting the policy opens its pods",
			func() { e.DeletePolicy(PolicyKey{"c1", "x", "web-from-cli"}) }, Changes{Updated: []EndpointKey{k("x", "web1")}}},
	}
	for _, s := range steps {
		s.mutate()
		got := e.Recompute()
		if !reflect.DeepEqual(got, s.want) {
			t.Errorf("%s: Recompute = %+v, want %+v", s.name, got, s.want)
		}
	}
}

func TestWithNodeCompilesOnlyLocalEndpoints(t *testing.T) {
	e := NewEngine(WithNode("c1", "n1"))
	a := ep("c1", "x", "a", "web", 300, "10.0.0.1")
	b := ep("c1", "x", "b", "web", 300, "10.0.0.2")
	b.Node = "n2"
	e.UpsertEndpoint(a)
	e.UpsertEndpoint(b)
	ch := e.Recompute()
	if !slices.Equal(ch.Updated, []EndpointKey{{"c1", "x", "a"}}) {
		t.Fatalf("Updated = %v", ch.Updated)
	}
	a.Node = "n2" // moved away: no longer local
	e.UpsertEndpoint(a)
	if ch := e.Recompute(); !slices.Equal(ch.Removed, []EndpointKey{{"c1", "x", "a"}}) {
		t.Fatalf("Removed = %v", ch.Removed)
	}
}

func TestExplainNamesDecidingPolicyAndReasons(t *testing.T) {
	e := NewEngine()
	e.UpsertCluster(&fedmeshv1.Cluster{Name: "c1"})
	e.UpsertEndpoint(ep("c1", "x", "web", "web", 300, "10.0.0.1"))
	e.UpsertEndpoint(ep("c1", "x", "cli", "cli", 301, "10.0.0.2"))
	e.UpsertEndpoint(ep("c1", "x", "bad", "bad", 302, "10.0.0.3"))
	e.UpsertNetworkPolicy(allowFrom("c1", "x", "web-from-cli", "web", "cli"))
	web := EndpointKey{"c1", "x", "web"}
	tests := []struct {
		name            string
		src, dst        Target
		allowed         bool
		egress, ingress Reason
	}{
		{"selected and allowed", Target{Endpoint: &EndpointKey{"c1", "x", "cli"}}, Target{Endpoint: &web}, true, ReasonNotSelected, ReasonRuleAllows},
		{"selected and denied", Target{Endpoint: &EndpointKey{"c1", "x", "bad"}}, Target{Endpoint: &web}, false, ReasonNotSelected, ReasonNoRuleAllows},
		{"external source by address", Target{IP: netip.MustParseAddr("192.0.2.1")}, Target{IP: netip.MustParseAddr("10.0.0.1")}, false, ReasonNotEnforced, ReasonNoRuleAllows},
		{"nothing selects", Target{Endpoint: &web}, Target{Endpoint: &EndpointKey{"c1", "x", "cli"}}, true, ReasonNotSelected, ReasonNotSelected},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x, err := e.Explain(Flow{Src: tc.src, Dst: tc.dst, Proto: ProtoTCP, Port: 80})
			if err != nil {
				t.Fatal(err)
			}
			if x.Allowed != tc.allowed || x.Egress.Reason != tc.egress || x.Ingress.Reason != tc.ingress {
				t.Fatalf("got %v %v/%v, want %v %v/%v (%s; %s)", x.Allowed, x.Egress.Reason, x.Ingress.Reason, tc.allowed, tc.egress, tc.ingress, x.Egress, x.Ingress)
			}
			if tc.ingress == ReasonRuleAllows {
				want := RuleOrigin{Cluster: "c1", Namespace: "x", Name: "web-from-cli", Direction: Ingress, Index: 0}
				if x.Ingress.Rule != want {
					t.Fatalf("rule = %+v, want %+v", x.Ingress.Rule, want)
				}
			}
			if tc.ingress == ReasonNoRuleAllows && !slices.Equal(x.Ingress.Selecting, []PolicyKey{{"c1", "x", "web-from-cli"}}) {
				t.Fatalf("selecting = %v", x.Ingress.Selecting)
			}
		})
	}
	if x, _ := e.Explain(Flow{Src: Target{IP: netip.MustParseAddr("192.0.2.1")}, Dst: Target{Endpoint: &web}}); x.Src.Identity != identity.World {
		t.Fatalf("external source identity = %d, want world", x.Src.Identity)
	}
	for name, f := range map[string]Flow{
		"unknown endpoint": {Src: Target{Endpoint: &EndpointKey{"c9", "x", "y"}}, Dst: Target{Endpoint: &web}},
		"foreign address":  {Src: Target{Endpoint: &web, IP: netip.MustParseAddr("10.9.9.9")}, Dst: Target{Endpoint: &web}},
		"empty target":     {Dst: Target{Endpoint: &web}},
	} {
		if _, err := e.Explain(f); !errors.Is(err, ErrUnknownEndpoint) && !errors.Is(err, ErrBadTarget) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestEvaluateICMPNeedsAllPortsRule(t *testing.T) {
	dr := DirectionRules{Enforced: true, Identities: []IdentityRule{
		{Peer: 300, Proto: ProtoTCP, Ports: AllPorts, Rule: 1},
		{Peer: 301, Proto: ProtoAny, Ports: PortRange{80, 80}, Rule: 2},
		{Peer: 302, Proto: ProtoAny, Ports: AllPorts, Rule: 3},
	}}
	for peer, want := range map[uint32]bool{300: false, 301: false, 302: true} {
		if ok, _ := dr.Evaluate(peer, netip.Addr{}, ProtoICMP, 0); ok != want {
			t.Errorf("ICMP from %d: %v, want %v", peer, ok, want)
		}
	}
}

func TestUpsertPolicyRejectsUnsupportedProto(t *testing.T) {
	e := NewEngine()
	err := e.UpsertPolicy(&fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "c1", Namespace: "x", Name: "p",
		Spec: &fedmeshv1.NetworkPolicySpec{Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{Ports: []*fedmeshv1.NetworkPolicyPort{{Protocol: fedmeshv1.Protocol_PROTOCOL_ICMP}}}}}})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("err = %v, want ErrUnsupported", err)
	}
}
