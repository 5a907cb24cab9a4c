package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/fedmesh/fedmesh/federation/identity"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// TestMatchDomainNameUpstreamExamples holds MatchDomainName to every
// example of the upstream DomainName doc comment
// (sigs.k8s.io/network-policy-api v0.3.0 apis/v1alpha2), plus the
// readings doc.go states (case, trailing dot, partial labels).
func TestMatchDomainNameUpstreamExamples(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		// `kubernetes.io` matches only `kubernetes.io`.
		{"kubernetes.io", "kubernetes.io", true},
		{"kubernetes.io", "www.kubernetes.io", false},
		{"kubernetes.io", "blog.kubernetes.io", false},
		{"kubernetes.io", "my-kubernetes.io", false},
		{"kubernetes.io", "wikipedia.org", false},
		// `blog.kubernetes.io` matches only "blog.kubernetes.io".
		{"blog.kubernetes.io", "blog.kubernetes.io", true},
		{"blog.kubernetes.io", "www.kubernetes.io", false},
		{"blog.kubernetes.io", "kubernetes.io", false},
		// `*.kubernetes.io` matches subdomains: one or more entire labels.
		{"*.kubernetes.io", "www.kubernetes.io", true},
		{"*.kubernetes.io", "blog.kubernetes.io", true},
		{"*.kubernetes.io", "latest.blog.kubernetes.io", true},
		{"*.kubernetes.io", "kubernetes.io", false},
		{"*.kubernetes.io", "wikipedia.org", false},
		// No partial labels.
		{"*.kubernetes.io", "my-kubernetes.io", false},
		{"*.kubernetes.io", ".kubernetes.io", false},
		{"*.kubernetes.io", "x.my-kubernetes.io", false},
		// Case-insensitive, one trailing dot ignored on either side.
		{"Kubernetes.IO", "kubernetes.io", true},
		{"kubernetes.io", "KUBERNETES.io.", true},
		{"kubernetes.io.", "kubernetes.io", true},
		{"*.Kubernetes.io", "WWW.kubernetes.IO.", true},
		{"*.kubernetes.io.", "www.kubernetes.io", true},
		{"kubernetes.io", "kubernetes.io..", false},
		// Degenerate input matches nothing.
		{"", "", false},
		{"kubernetes.io", "", false},
		{"*.", "a.", false},
		// The wildcard only as a whole leading label.
		{"*.io", "kubernetes.io", true},
		{"w*.kubernetes.io", "www.kubernetes.io", false},
	}
	for _, tc := range tests {
		if got := MatchDomainName(tc.pattern, tc.name); got != tc.want {
			t.Errorf("MatchDomainName(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestDirectionRulesMatchesNameAnyRule(t *testing.T) {
	d := DirectionRules{Names: []NameRule{{Names: []string{"api.example.com"}}, {Names: []string{"*.corp.example"}}}}
	for name, want := range map[string]bool{"api.example.com": true, "a.b.corp.example": true, "corp.example": false,
		"www.example.com": false} {
		if got := d.MatchesName(name); got != want {
			t.Errorf("MatchesName(%q) = %v, want %v", name, got, want)
		}
	}
	if (DirectionRules{}).MatchesName("api.example.com") {
		t.Error("no name rules match a name")
	}
}

// TestExplainNameRules: a domainNames rule decides with the names the
// flow's destination was resolved from; without a matching one, Explain
// says which rule would accept and falls through to the next layer; the
// compiled rules agree.
func TestExplainNameRules(t *testing.T) {
	e := NewEngine()
	e.UpsertCluster(&fedmeshv1.Cluster{Name: "c1"})
	src := &fedmeshv1.Endpoint{Cluster: "c1", Namespace: "app", Name: "web", Identity: 7, Ips: []string{"10.0.0.1"},
		NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "app"}}
	e.UpsertEndpoint(src)
	tcp443 := []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: 443}}}}
	all := &metav1.LabelSelector{}
	for _, p := range []*ClusterPolicy{
		{Name: "saas", Spec: cnpv1.ClusterNetworkPolicySpec{Tier: cnpv1.AdminTier, Priority: 10,
			Subject: cnpv1.ClusterNetworkPolicySubject{Namespaces: all},
			Egress: []cnpv1.ClusterNetworkPolicyEgressRule{{Name: "to-saas", Action: cnpv1.ClusterNetworkPolicyRuleActionAccept,
				To: []cnpv1.ClusterNetworkPolicyEgressPeer{{DomainNames: []cnpv1.DomainName{"API.example.com.", "*.cdn.example"}}}, Protocols: tcp443}}}},
		{Name: "default-deny", Spec: cnpv1.ClusterNetworkPolicySpec{Tier: cnpv1.BaselineTier, Priority: 10,
			Subject: cnpv1.ClusterNetworkPolicySubject{Namespaces: all},
			Egress: []cnpv1.ClusterNetworkPolicyEgressRule{{Name: "deny", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
				To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"0.0.0.0/0"}}}}}}},
	} {
		if err := e.UpsertClusterPolicy(p); err != nil {
			t.Fatal(err)
		}
	}
	e.Recompute()
	key := EndpointKey{Cluster: "c1", Namespace: "app", Name: "web"}
	c, _ := e.Rules(key)
	if len(c.Rules.Egress.Names) != 1 || !slices.Equal(c.Rules.Egress.Names[0].Names, []string{"*.cdn.example", "api.example.com"}) {
		t.Fatalf("compiled name rules %+v, want one with the canonical patterns", c.Rules.Egress.Names)
	}
	dst := netip.MustParseAddr("203.0.113.5")
	tests := []struct {
		name      string
		names     []string
		port      uint16
		allowed   bool
		layer     Layer
		ifResolve bool
	}{
		{"resolved from the exact name", []string{"api.example.com"}, 443, true, LayerAdmin, false},
		{"resolved from a name two labels under the wildcard", []string{"x.y.cdn.example"}, 443, true, LayerAdmin, false},
		{"resolved from the wildcard's parent", []string{"cdn.example"}, 443, false, LayerBaseline, true},
		{"address alone", nil, 443, false, LayerBaseline, true},
		{"right name, wrong port", []string{"api.example.com"}, 80, false, LayerBaseline, false},
	}
	for _, tc := range tests {
		x, err := e.Tiers().Explain(e, Flow{Src: Target{Endpoint: &key}, Dst: Target{IP: dst}, Proto: ProtoTCP, Port: tc.port, DstNames: tc.names})
		if err != nil {
			t.Fatal(err)
		}
		v := x.Egress
		if v.Allowed != tc.allowed || v.Layer != tc.layer || (len(v.IfResolved) > 0) != tc.ifResolve {
			t.Errorf("%s: %v (layer %s, if-resolved %v), want allowed=%v by %s", tc.name, v, v.Layer, v.IfResolved, tc.allowed, tc.layer)
		}
		if tc.ifResolve && !strings.Contains(v.String(), "egress rule to-saas (Accept) of Admin policy federated/saas (priority 10) would accept if the destination was resolved from a name matching api.example.com, *.cdn.example") {
			t.Errorf("%s: Explain says %q", tc.name, v)
		}
		if ok, _ := c.Rules.Egress.EvaluateResolved(identity.World, dst, ProtoTCP, tc.port, tc.names); ok != tc.allowed {
			t.Errorf("%s: compiled rules say %v, Explain %v", tc.name, ok, tc.allowed)
		}
	}
}
