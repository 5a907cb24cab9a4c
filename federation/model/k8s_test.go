package model

import (
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

const npYAML = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allow, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [a]}]}
      podSelector: {}
    - ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}
    ports:
    - {port: 8000, endPort: 8100}
    - {protocol: UDP, port: dns}
  egress:
  - {}
`

func TestPolicyFromK8sIsFaithful(t *testing.T) {
	var np networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(npYAML), &np); err != nil {
		t.Fatal(err)
	}
	got := PolicyFromK8s("east", &np)
	want := &fedmeshv1.Policy{}
	if err := prototext.Unmarshal([]byte(`
kind: POLICY_KIND_KUBERNETES cluster: "east" namespace: "shop" name: "web-allow"
spec: {
  pod_selector: {match_labels: {key: "app" value: "web"}}
  policy_types: [POLICY_TYPE_INGRESS, POLICY_TYPE_EGRESS]
  ingress: {
    from: {pod_selector: {} namespace_selector: {match_expressions: {key: "team" operator: "In" values: "a"}}}
    from: {ip_block: {cidr: "192.0.2.0/24" except: "192.0.2.128/25"}}
    ports: {number: 8000 end_port: 8100}
    ports: {protocol: PROTOCOL_UDP name: "dns"}
  }
  egress: {}
}`), want); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("got\n%v\nwant\n%v", prototext.Format(got), prototext.Format(want))
	}
	if err := ValidatePolicy(got); err != nil {
		t.Fatalf("a valid NetworkPolicy must convert to a valid policy: %v", err)
	}
	// An absent podSelector in a peer stays absent: Kubernetes gives absent
	// and empty selectors different meanings.
	if got.Spec.Ingress[0].From[1].PodSelector != nil {
		t.Fatal("absent peer podSelector became present")
	}
}

func TestPolicyFromFederated(t *testing.T) {
	var f FederatedNetworkPolicy
	err := yaml.UnmarshalStrict([]byte(`
apiVersion: fedmesh.io/v1
kind: FederatedNetworkPolicy
metadata: {name: allow-frontends}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from:
    - clusterSelector: {}
      podSelector: {matchLabels: {app: frontend}}
`), &f)
	if err != nil {
		t.Fatal(err)
	}
	p := PolicyFromFederated(&f)
	if err := ValidatePolicy(p); err != nil {
		t.Fatal(err)
	}
	if p.Kind != fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED || p.ClusterSelector.MatchLabels["env"] != "prod" ||
		p.Spec.Ingress[0].From[0].ClusterSelector == nil {
		t.Fatalf("lost federated fields: %v", prototext.Format(p))
	}
}
