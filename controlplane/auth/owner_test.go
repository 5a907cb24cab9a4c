package auth

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func kubePolicies(cluster string, names ...string) *fedmeshv1.ApplyPoliciesRequest {
	r := &fedmeshv1.ApplyPoliciesRequest{Cluster: cluster}
	for _, n := range names {
		r.Policies = append(r.Policies, &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: cluster, Namespace: "default", Name: n})
	}
	return r
}

// A cluster's NetworkPolicies have one writer, the cluster's syncer: an
// admin's write would be enforced and then deleted by the next resync.
func TestClusterNetworkPoliciesAreWrittenOnlyByTheirClustersSyncer(t *testing.T) {
	apply, del := fedmeshv1.PolicyService_ApplyPolicies_FullMethodName, fedmeshv1.PolicyService_DeletePolicy_FullMethodName
	cnpApply, cnpDel := fedmeshv1.ClusterPolicyService_ApplyClusterPolicies_FullMethodName, fedmeshv1.ClusterPolicyService_DeleteClusterPolicy_FullMethodName
	cnps := func(cluster string, names ...string) *fedmeshv1.ApplyClusterPoliciesRequest {
		r := &fedmeshv1.ApplyClusterPoliciesRequest{Cluster: cluster}
		for _, n := range names {
			r.Policies = append(r.Policies, &fedmeshv1.ClusterNetworkPolicy{Cluster: cluster, Name: n})
		}
		return r
	}
	cnpDelReq := func(cluster string) *fedmeshv1.DeleteClusterPolicyRequest {
		return &fedmeshv1.DeleteClusterPolicyRequest{Key: &fedmeshv1.ClusterPolicyKey{Cluster: cluster, Name: "x"}}
	}
	delReq := func(cluster string) *fedmeshv1.DeletePolicyRequest {
		return &fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Cluster: cluster, Namespace: "default", Name: "x"}}
	}
	tests := []struct {
		name    string
		p       Principal
		method  string
		req     any
		refused string // "" when the write may go ahead
	}{
		{"admin applies a cluster's NetworkPolicy", Admin(), apply, kubePolicies("cluster-a", "x"),
			"NetworkPolicy default/x belongs to cluster cluster-a; apply it in cluster-a's API"},
		{"admin applies several", Admin(), apply, kubePolicies("cluster-a", "x", "y", "z", "w"),
			"NetworkPolicies default/x, default/y, default/z and 1 more belong to cluster cluster-a; apply them in cluster-a's API"},
		{"admin resyncs a cluster's NetworkPolicies away", Admin(), apply,
			&fedmeshv1.ApplyPoliciesRequest{Cluster: "cluster-a", Resync: &fedmeshv1.ResyncMarker{Generation: 9, Final: true}},
			"the NetworkPolicies of cluster cluster-a belong to that cluster"},
		{"admin deletes a cluster's NetworkPolicy", Admin(), del, delReq("cluster-a"),
			"NetworkPolicy default/x belongs to cluster cluster-a; delete it in cluster-a's API"},
		{"the cluster's syncer applies", Syncer("cluster-a"), apply, kubePolicies("cluster-a", "x"), ""},
		{"the cluster's syncer deletes", Syncer("cluster-a"), del, delReq("cluster-a"), ""},
		{"admin applies federated policies", Admin(), apply,
			&fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{{Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Name: "x"}}}, ""},
		{"admin deletes a federated policy", Admin(), del, delReq(""), ""},
		{"admin writes endpoints (a cluster without a syncer)", Admin(), fedmeshv1.EndpointService_UpsertEndpoints_FullMethodName, endpointOf("cluster-a"), ""},
		{"admin applies a cluster's ClusterNetworkPolicy", Admin(), cnpApply, cnps("cluster-a", "guard"),
			"ClusterNetworkPolicy guard belongs to cluster cluster-a; apply it in cluster-a's API"},
		{"admin applies several ClusterNetworkPolicies", Admin(), cnpApply, cnps("cluster-a", "g1", "g2"),
			"ClusterNetworkPolicies g1, g2 belong to cluster cluster-a; apply them in cluster-a's API"},
		{"admin deletes a cluster's ClusterNetworkPolicy", Admin(), cnpDel, cnpDelReq("cluster-a"),
			"ClusterNetworkPolicy x belongs to cluster cluster-a; delete it in cluster-a's API"},
		{"the cluster's syncer applies ClusterNetworkPolicies", Syncer("cluster-a"), cnpApply, cnps("cluster-a", "guard"), ""},
		{"the cluster's syncer deletes a ClusterNetworkPolicy", Syncer("cluster-a"), cnpDel, cnpDelReq("cluster-a"), ""},
		{"admin applies federated ClusterNetworkPolicies", Admin(), cnpApply, cnps("", "guard"), ""},
		{"admin deletes a federated ClusterNetworkPolicy", Admin(), cnpDel, cnpDelReq(""), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Authorize(tt.p, tt.method, tt.req); err != nil {
				t.Fatalf("Authorize refused what ownership decides: %v", err)
			}
			err := CheckOwner(tt.p, tt.method, tt.req)
			if tt.refused == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			st := status.Convert(err)
			if st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), tt.refused) {
				t.Fatalf("got %v, want FailedPrecondition %q", err, tt.refused)
			}
			var info *errdetails.ErrorInfo
			for _, d := range st.Details() {
				if i, ok := d.(*errdetails.ErrorInfo); ok {
					info = i
				}
			}
			if info.GetReason() != OwnedByClusterReason || info.GetMetadata()["cluster"] != "cluster-a" {
				t.Fatalf("error info %v does not name the owner", info)
			}
		})
	}
}

// The Guard runs the ownership rule on every call, after authorization: the
// admin's write never reaches the service, the syncer's does, and another
// cluster's syncer is still refused as unauthorized.
func TestGuardRefusesWritesOfObjectsAnotherPrincipalOwns(t *testing.T) {
	k := newPKI(t)
	addr, rec := serveRecorder(t, k, false)
	ctx := ctxT(t)
	as := func(p Principal) fedmeshv1.PolicyServiceClient {
		return fedmeshv1.NewPolicyServiceClient(dial(t, addr, k.pool(), k.cert(p)))
	}
	_, err := as(Admin()).ApplyPolicies(ctx, kubePolicies("a", "x"))
	wantCode(t, err, codes.FailedPrecondition, "NetworkPolicy default/x belongs to cluster a; apply it in a's API")
	_, err = as(Syncer("b")).ApplyPolicies(ctx, kubePolicies("a", "x"))
	wantCode(t, err, codes.PermissionDenied, "not the syncer's own cluster")
	if len(rec.Calls()) != 0 {
		t.Fatalf("refused writes reached the service: %v", rec.Calls())
	}
	if _, err := as(Syncer("a")).ApplyPolicies(ctx, kubePolicies("a", "x")); err != nil {
		t.Fatal(err)
	}
	if _, err := as(Admin()).ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{{Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Name: "x"}}}); err != nil {
		t.Fatal(err)
	}
	if got := rec.Calls(); len(got) != 2 {
		t.Fatalf("calls %v, want the syncer's and the admin's federated write", got)
	}
}
