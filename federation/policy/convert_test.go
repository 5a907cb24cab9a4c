package policy

import (
	"reflect"
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func samplePolicies() []*fedmeshv1.Policy {
	sel := func(k, v string) *fedmeshv1.LabelSelector {
		return &fedmeshv1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	return []*fedmeshv1.Policy{
		{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "c1", Namespace: "x", Name: "k8s",
			Spec: &fedmeshv1.NetworkPolicySpec{
				PodSelector: sel("app", "web"),
				Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{
					Ports: []*fedmeshv1.NetworkPolicyPort{
						{Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 80}, EndPort: 90},
						{Port: &fedmeshv1.NetworkPolicyPort_Name{Name: "http"}},
						{Protocol: fedmeshv1.Protocol_PROTOCOL_SCTP},
					},
					From: []*fedmeshv1.NetworkPolicyPeer{
						{PodSelector: sel("app", "cli"), NamespaceSelector: &fedmeshv1.LabelSelector{
							MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: "team", Operator: "In", Values: []string{"a", "b"}}}}},
						{IpBlock: &fedmeshv1.IPBlock{Cidr: "10.0.0.0/8", Except: []string{"10.1.0.0/16"}}},
					},
				}},
				PolicyTypes: []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_INGRESS},
			}},
		{Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Name: "fed", ClusterSelector: sel("region", "eu"),
			Spec: &fedmeshv1.NetworkPolicySpec{
				PodSelector: &fedmeshv1.LabelSelector{},
				Egress: []*fedmeshv1.NetworkPolicyEgressRule{{
					To: []*fedmeshv1.NetworkPolicyPeer{
						{PodSelector: sel("app", "db"), ClusterSelector: &fedmeshv1.LabelSelector{}},
						{NamespaceSelector: sel("ns", "y")},
						{IpBlock: &fedmeshv1.IPBlock{Cidr: "fd00::/8"}},
					},
				}},
			}},
	}
}

// TestProtoKubernetesRoundTrip: the Kubernetes form carries every field of
// the API policy, federated extras included.
func TestProtoKubernetesRoundTrip(t *testing.T) {
	for _, p := range samplePolicies() {
		np, err := FromProto(p)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ToProto(np)
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(back, p) {
			t.Errorf("round trip of %s:\n got %v\nwant %v", p.Name, back, p)
		}
	}
}

func TestFromProtoMapsToKubernetesTypes(t *testing.T) {
	np, err := FromProto(samplePolicies()[0])
	if err != nil {
		t.Fatal(err)
	}
	tcp, end := corev1.ProtocolTCP, int32(90)
	p80, http := intstr.FromInt32(80), intstr.FromString("http")
	sctp := corev1.ProtocolSCTP
	want := []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p80, EndPort: &end}, {Port: &http}, {Protocol: &sctp}}
	if got := np.Policy.Spec.Ingress[0].Ports; !reflect.DeepEqual(got, want) {
		t.Fatalf("ports = %+v, want %+v", got, want)
	}
	if np.IngressPeerClusters != nil {
		t.Fatalf("a Kubernetes policy must not carry peer cluster selectors: %v", np.IngressPeerClusters)
	}
	if np.Policy.Spec.Ingress[0].From[1].IPBlock.Except[0] != "10.1.0.0/16" {
		t.Fatalf("ipBlock lost: %+v", np.Policy.Spec.Ingress[0].From[1])
	}
}

// FuzzFromProto: any decodable proto either converts, survives a round trip
// unchanged in Kubernetes form, and compiles without panicking, or is
// refused with an error.
func FuzzFromProto(f *testing.F) {
	for _, p := range samplePolicies() {
		b, _ := proto.Marshal(p)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var p fedmeshv1.Policy
		if proto.Unmarshal(data, &p) != nil {
			return
		}
		np, err := FromProto(&p)
		if err != nil {
			return
		}
		back, err := ToProto(np)
		if err != nil {
			t.Fatalf("ToProto of a converted policy: %v", err)
		}
		np2, err := FromProto(back)
		if err != nil {
			t.Fatalf("FromProto of a round-tripped policy: %v", err)
		}
		if !reflect.DeepEqual(np, np2) {
			t.Fatalf("round trip changed the policy:\n%+v\n%+v", np, np2)
		}
		e := NewEngine()
		e.UpsertCluster(&fedmeshv1.Cluster{Name: "c1", Labels: map[string]string{"region": "eu"}})
		e.UpsertEndpoint(&fedmeshv1.Endpoint{Cluster: "c1", Namespace: p.GetNamespace(), Name: "a", Identity: 300,
			Labels: map[string]string{"app": "web"}, Ips: []string{"10.0.0.1"},
			NamedPorts: []*fedmeshv1.NamedPort{{Name: "http", Port: 80}}})
		e.UpsertNetworkPolicy(np)
		e.Recompute()
		e.DeletePolicy(np.Key())
		e.Recompute()
	})
}
