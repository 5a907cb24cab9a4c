package store

import (
	"bytes"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func cnpSelecting(cluster, name, key string) *fedmeshv1.ClusterNetworkPolicy {
	return &fedmeshv1.ClusterNetworkPolicy{Cluster: cluster, Name: name, SpecJson: []byte(fmt.Sprintf(
		`{"tier":"Admin","priority":1,"subject":{"pods":{"namespaceSelector":{},"podSelector":{"matchLabels":{%q:"a"}}}},`+
			`"ingress":[{"action":"Deny","from":[{"namespaces":{}}]}]}`, key))}
}

func applyCNPs(cluster string, resync *fedmeshv1.ResyncMarker, ps ...*fedmeshv1.ClusterNetworkPolicy) Command {
	return Command{Type: CmdApplyClusterPolicies, Payload: &fedmeshv1.ApplyClusterPoliciesRequest{Cluster: cluster, Resync: resync, Policies: ps}}
}

func names(ps []*fedmeshv1.ClusterNetworkPolicy) []string {
	var out []string
	for _, p := range ps {
		out = append(out, clusterPolicyKeyString(p.GetCluster(), p.GetName()))
	}
	return out
}

// A pod label a ClusterNetworkPolicy selects on counts for identity: two
// pods that differ only in it get distinct identities while the policy is
// stored, in the revision of the policy write.
func TestClusterPolicyPodSelectorSplitsIdentities(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"),
		upsert("a", 0, false, ep("x", "p1", "10.1.0.1", map[string]string{"app": "w", "pod-template-hash": "a"}), ep("x", "p2", "10.1.0.2", map[string]string{"app": "w", "pod-template-hash": "b"})))
	if a, b := s.Endpoint("a", "x", "p1").GetIdentity(), s.Endpoint("a", "x", "p2").GetIdentity(); a != b {
		t.Fatalf("before any policy reads pod-template-hash, identities %d and %d differ", a, b)
	}
	res := apply(t, s, applyCNPs("a", nil, cnpSelecting("a", "g", "pod-template-hash")))
	if a, b := s.Endpoint("a", "x", "p1").GetIdentity(), s.Endpoint("a", "x", "p2").GetIdentity(); a == b {
		t.Fatalf("a ClusterNetworkPolicy selecting on pod-template-hash left both pods at identity %d", a)
	}
	batches, _ := s.Log().Since(res.Revision-1, 100)
	moved := 0
	for _, e := range batches[0].Events {
		if e.GetEndpoint() != nil {
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("the identity change is not in the policy's revision")
	}
}

// A final resync batch deletes the owner's policies the resync did not
// carry, only that owner's; a deleted cluster takes its synced policies
// and their generation with it; federated ones stay.
func TestClusterPolicyResyncAndClusterDeleteRemoveGhosts(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"), cluster("b", "10.2.0.0/16"),
		applyCNPs("a", &fedmeshv1.ResyncMarker{Generation: 1}, cnpSelecting("a", "g1", "k"), cnpSelecting("a", "g2", "k")),
		applyCNPs("b", nil, cnpSelecting("b", "g1", "k")),
		applyCNPs("", nil, cnpSelecting("", "fed", "k")))
	res := apply(t, s, applyCNPs("a", &fedmeshv1.ResyncMarker{Generation: 2, Final: true}, cnpSelecting("a", "g2", "k")))
	if got := fmt.Sprint(names(s.ClusterPolicies(0, ""))); res.Deleted != 1 || got != "[federated/fed a/g2 b/g1]" {
		t.Fatalf("after a's final resync: deleted %d, policies %s; want 1 and [federated/fed a/g2 b/g1]", res.Deleted, got)
	}
	if bad := applyEncoded(t, s, applyCNPs("a", &fedmeshv1.ResyncMarker{Generation: 1}, cnpSelecting("a", "g9", "k"))); status.Code(bad.Err) != codes.InvalidArgument || s.ClusterPolicy("a", "g9") != nil {
		t.Fatalf("an older resync generation: %v", bad.Err)
	}
	apply(t, s, Command{Type: CmdDeleteCluster, Payload: &fedmeshv1.DeleteClusterRequest{Name: "a"}})
	if got := fmt.Sprint(names(s.ClusterPolicies(0, ""))); got != "[federated/fed b/g1]" {
		t.Fatalf("after deleting cluster a: %s", got)
	}
	if _, ok := s.gens[genKey{owner: "a", kind: genClusterPolicies}]; ok {
		t.Fatal("the deleted cluster's resync generation survived it")
	}
	for _, tc := range []struct {
		source  fedmeshv1.ClusterPolicySource
		cluster string
		want    string
	}{
		{fedmeshv1.ClusterPolicySource_CLUSTER_POLICY_SOURCE_FEDERATED, "", "[federated/fed]"},
		{fedmeshv1.ClusterPolicySource_CLUSTER_POLICY_SOURCE_SYNCED, "", "[b/g1]"},
		{0, "b", "[b/g1]"},
	} {
		if got := fmt.Sprint(names(s.ClusterPolicies(tc.source, tc.cluster))); got != tc.want {
			t.Errorf("list %v %q = %s, want %s", tc.source, tc.cluster, got, tc.want)
		}
	}
	if res := applyEncoded(t, s, Command{Type: CmdDeleteClusterPolicy, Payload: &fedmeshv1.DeleteClusterPolicyRequest{Key: &fedmeshv1.ClusterPolicyKey{Name: "nope"}}}); status.Code(res.Err) != codes.NotFound {
		t.Fatalf("delete of a missing policy: %v", res.Err)
	}
}

// A snapshot carries the policies with their generations and the identity
// relevance they imply; without policies it stays at the version older
// replicas read.
func TestSnapshotCarriesClusterPolicies(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"),
		upsert("a", 0, false, ep("x", "p1", "10.1.0.1", map[string]string{"pod-template-hash": "a"}), ep("x", "p2", "10.1.0.2", map[string]string{"pod-template-hash": "b"})),
		applyCNPs("a", &fedmeshv1.ResyncMarker{Generation: 3}, cnpSelecting("a", "g", "pod-template-hash")),
		applyCNPs("", nil, cnpSelecting("", "fed", "k")))
	var buf bytes.Buffer
	if _, err := s.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(buf.Bytes(), []byte(`"version":6`)) {
		t.Fatal("snapshot with ClusterNetworkPolicies is not version 6")
	}
	r, err := ReadSnapshot(&buf, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range [][2]string{{"a", "g"}, {"", "fed"}} {
		if !proto.Equal(r.ClusterPolicy(k[0], k[1]), s.ClusterPolicy(k[0], k[1])) {
			t.Fatalf("restored %v, want %v", r.ClusterPolicy(k[0], k[1]), s.ClusterPolicy(k[0], k[1]))
		}
	}
	if r.gens[genKey{owner: "a", kind: genClusterPolicies}] != 3 {
		t.Fatal("the resync generation was not restored")
	}
	if a, b := r.Endpoint("a", "x", "p1").GetIdentity(), r.Endpoint("a", "x", "p2").GetIdentity(); a == b {
		t.Fatal("after restore the policy's label no longer splits identities")
	}
	if dump(r) != dump(s) {
		t.Fatalf("restored state differs:\n%s\nwant\n%s", dump(r), dump(s))
	}
}
