package policy

import (
	"fmt"
	"slices"
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// TestClusterPolicyChangeRecompilesOnlyWhatItSelects: a change to one
// ClusterNetworkPolicy recompiles the endpoints its old or new subject
// selects, and no other (the users of its peers do not change: peers only
// shape the rules of the subject's endpoints).
func TestClusterPolicyChangeRecompilesOnlyWhatItSelects(t *testing.T) {
	e := NewEngine()
	e.UpsertCluster(&fedmeshv1.Cluster{Name: "c"})
	for i, ns := range []string{"n0", "n0", "n1", "n1", "n2", "n2"} {
		e.UpsertEndpoint(&fedmeshv1.Endpoint{Cluster: "c", Namespace: ns, Name: fmt.Sprintf("p%d", i), Identity: uint32(100 + i),
			Labels: map[string]string{"app": "a"}, NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": ns},
			Ips: []string{fmt.Sprintf("10.0.0.%d", i+1)}})
	}
	e.Recompute()
	cnp := func(subjectNS string, port int32) *ClusterPolicy {
		return &ClusterPolicy{Name: "guard", Spec: cnpv1.ClusterNetworkPolicySpec{Tier: cnpv1.AdminTier, Priority: 1,
			Subject: cnpv1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": subjectNS}}},
			Ingress: []cnpv1.ClusterNetworkPolicyIngressRule{{Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
				From:      []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "n2"}}}},
				Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: port}}}}}}}}
	}
	steps := []struct {
		name   string
		do     func() error
		update []string
	}{
		{"add", func() error { return e.UpsertClusterPolicy(cnp("n0", 80)) }, []string{"p0", "p1"}},
		{"same again", func() error { return e.UpsertClusterPolicy(cnp("n0", 80)) }, nil},
		{"change a port", func() error { return e.UpsertClusterPolicy(cnp("n0", 81)) }, []string{"p0", "p1"}},
		{"move the subject", func() error { return e.UpsertClusterPolicy(cnp("n1", 81)) }, []string{"p0", "p1", "p2", "p3"}},
		{"delete", func() error { e.DeleteClusterPolicy(ClusterPolicyKey{Name: "guard"}); return nil }, []string{"p2", "p3"}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if n := len(e.dirty); n > len(s.update) {
			t.Errorf("%s: %d endpoints marked for recompiling, want at most %d", s.name, n, len(s.update))
		}
		var got []string
		for _, k := range e.Recompute().Updated {
			got = append(got, k.Name)
		}
		if !slices.Equal(got, s.update) {
			t.Errorf("%s: updated %v, want %v", s.name, got, s.update)
		}
	}
}
