package model

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

type applyCNPRequest = fedmeshv1.ApplyClusterPoliciesRequest

func applyCNP(cluster string, ps ...*fedmeshv1.ClusterNetworkPolicy) *applyCNPRequest {
	return &fedmeshv1.ApplyClusterPoliciesRequest{Cluster: cluster, Policies: ps}
}

func cnp(cluster, name string, spec []byte) *fedmeshv1.ClusterNetworkPolicy {
	return &fedmeshv1.ClusterNetworkPolicy{Cluster: cluster, Name: name, SpecJson: spec}
}

const fedCNP = `apiVersion: fedmesh.io/v1
kind: FederatedClusterNetworkPolicy
metadata: {name: g}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  tier: Baseline
  priority: 3
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}
  ingress:
  - action: Deny
    from:
    - namespaces: {}
    - pods: {namespaceSelector: {}, podSelector: {}}
      clusterSelector: {}
  egress:
  - name: out
    action: Accept
    to:
    - networks: [10.0.0.0/8]
`

// The manifest's per-peer cluster selectors land at their rule and peer,
// the spec keeps no trace of them, and the stored object shows as the same
// manifest again.
func TestFederatedClusterNetworkPolicyManifestRoundTrips(t *testing.T) {
	var f FederatedClusterNetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(fedCNP), &f); err != nil {
		t.Fatal(err)
	}
	p, err := ClusterPolicyFromFederated(&f)
	if err != nil {
		t.Fatal(err)
	}
	if errs := ValidateClusterPolicy(nil, p); len(errs) != 0 {
		t.Fatalf("valid manifest refused: %v", errs)
	}
	sc := p.GetIngressPeerClusters()
	if len(sc) != 1 || len(sc[0].GetPeers()) != 2 || sc[0].GetPeers()[0].GetClusterSelector() != nil || sc[0].GetPeers()[1].GetClusterSelector() == nil {
		t.Fatalf("ingress peer scopes %v: want [own cluster, every cluster]", sc)
	}
	if p.GetEgressPeerClusters() != nil {
		t.Fatalf("egress peers without cluster selectors got scopes %v", p.GetEgressPeerClusters())
	}
	if strings.Contains(string(p.GetSpecJson()), "clusterSelector") {
		t.Fatalf("the upstream spec carries a fedmesh field: %s", p.GetSpecJson())
	}
	back, err := FederatedFromClusterPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ClusterPolicyFromFederated(back)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(again, p) {
		t.Fatalf("round trip:\n got %v\nwant %v", again, p)
	}
}

func TestValidateApplyClusterPoliciesChecksTheBatch(t *testing.T) {
	spec := []byte(`{"tier":"Admin","priority":1,"subject":{"namespaces":{}}}`)
	for name, tc := range map[string]struct {
		req   func() *applyCNPRequest
		field string
	}{
		"duplicate name": {func() *applyCNPRequest {
			return applyCNP("", cnp("", "a", spec), cnp("", "a", spec))
		}, "policies[1].name"},
		"policy of another owner": {func() *applyCNPRequest { return applyCNP("east", cnp("west", "a", spec)) }, "policies[0].cluster"},
		"bad owner name":          {func() *applyCNPRequest { return applyCNP("East", cnp("East", "a", spec)) }, "cluster"},
		"spec is not JSON":        {func() *applyCNPRequest { return applyCNP("", cnp("", "a", []byte("tier: Admin"))) }, "policies[0].specJson"},
		"trailing data":           {func() *applyCNPRequest { return applyCNP("", cnp("", "a", append(slices.Clone(spec), "{}"...))) }, "policies[0].specJson"},
	} {
		err := ValidateApplyClusterPolicies(tc.req())
		var fields []string
		for _, e := range FieldErrors(err) {
			fields = append(fields, e.Field)
		}
		if !slices.Contains(fields, tc.field) {
			t.Errorf("%s: errors %v, want one at %s", name, err, tc.field)
		}
	}
}
