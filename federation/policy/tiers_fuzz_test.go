package policy

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/fedmesh/fedmesh/federation/model"
	"k8s.io/apimachinery/pkg/util/validation/field"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// FuzzClusterPolicyValidatorAndCompiler decodes arbitrary JSON as a
// ClusterNetworkPolicy spec. The validator must never panic; whatever it
// accepts the tier compiler must take (the edge and the compiler agree),
// and Explain over it must decide without panicking.
func FuzzClusterPolicyValidatorAndCompiler(f *testing.F) {
	for _, s := range []string{
		`{"tier":"Admin","priority":10,"subject":{"namespaces":{}},"ingress":[{"name":"d","action":"Deny","from":[{"namespaces":{"matchLabels":{"ns":"x"}}}]}]}`,
		`{"tier":"Baseline","priority":0,"subject":{"pods":{"namespaceSelector":{},"podSelector":{"matchExpressions":[{"key":"pod","operator":"In","values":["a"]}]}}},"egress":[{"action":"Pass","to":[{"networks":["10.0.0.0/8"]}],"protocols":[{"tcp":{"destinationPort":{"range":{"start":1,"end":1024}}}}]}]}`,
		`{"tier":"Admin","priority":1000,"subject":{"namespaces":{}},"egress":[{"action":"Accept","to":[{"pods":{"namespaceSelector":{},"podSelector":{}}}],"protocols":[{"destinationNamedPort":"serve-80-tcp"},{"sctp":{"destinationPort":{"number":9003}}}]}]}`,
		// Near misses the validator must reject (else the compiler would).
		`{"tier":"Admin","priority":1,"subject":{"namespaces":{}},"ingress":[{"action":"Allow","from":[{"namespaces":{}}]}]}`,
		`{"tier":"Admin","priority":1,"subject":{"namespaces":{}},"egress":[{"action":"Deny","to":[{"networks":["10.0.0.0/33"]}]}]}`,
		`{"tier":"Admin","priority":1,"subject":{"namespaces":{},"pods":{"namespaceSelector":{},"podSelector":{}}},"egress":[]}`,
		`{"tier":"Baseline","priority":1,"subject":{"namespaces":{"matchExpressions":[{"key":"k","operator":"Bogus"}]}}}`,
		`{"tier":"Admin","priority":1,"subject":{"namespaces":{}},"ingress":[{"action":"Deny","from":[{"namespaces":{}}],"protocols":[{"udp":{"destinationPort":{"range":{"start":9,"end":9}}}}]}]}`,
		`{"tier":"Tier0","priority":1,"subject":{"namespaces":{}}}`,
	} {
		f.Add([]byte(s))
	}
	w := newConfWorld(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var s cnpv1.ClusterNetworkPolicySpec
		if json.Unmarshal(data, &s) != nil {
			return
		}
		errs := model.ValidateClusterNetworkPolicySpec(field.NewPath("spec"), &s)
		for _, e := range errs {
			if e.Field == "" {
				t.Fatalf("error without a field path: %v", e)
			}
		}
		tiers := NewTiers()
		err := tiers.Upsert(&ClusterPolicy{Cluster: "c1", Name: "fuzz", Spec: s})
		if len(errs) == 0 && err != nil {
			t.Fatalf("the validator accepts a spec the compiler refuses: %v\n%s", err, data)
		}
		if err != nil {
			return
		}
		src, dst := EndpointKey{"c1", "x", "a"}, EndpointKey{"c1", "y", "b"}
		for _, f := range []Flow{
			{Src: Target{Endpoint: &src}, Dst: Target{Endpoint: &dst}, Proto: ProtoTCP, Port: 80},
			{Src: Target{Endpoint: &dst}, Dst: Target{IP: netip.MustParseAddr("10.9.9.9")}, Proto: ProtoSCTP, Port: 9003},
			{Src: Target{IP: netip.MustParseAddr("fd00::1")}, Dst: Target{Endpoint: &src}, Proto: ProtoICMPv6},
		} {
			if _, err := tiers.Explain(w.e, f); err != nil {
				t.Fatal(err)
			}
		}
	})
}
