package auth

import (
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Ownership. A Kubernetes NetworkPolicy stored for a cluster (kind
// POLICY_KIND_KUBERNETES, owner cluster set) is a copy of an object in that
// cluster's Kubernetes API, which its syncer keeps the control plane in
// step with: every full resync deletes what the cluster no longer has. A
// copy written by anyone else would be enforced until the syncer's next
// resync and then deleted — a write silently lost — and one deleted by
// anyone else would come back. So such a policy has one writer, the
// cluster's syncer; everyone else is told where to make the change.
// Federated policies (owner empty) are the control plane's own objects.
//
// This is not authorization (the admin may call the RPC; the write is in
// the wrong place), hence FailedPrecondition rather than PermissionDenied,
// with an errdetails.ErrorInfo (reason OwnedByClusterReason, metadata
// "cluster") for programs. Endpoints and service exports are synced too,
// but a cluster without a syncer (fedlab up --no-kube) has an admin stand
// in for it, so only the kind with a fedmesh-native alternative (a
// FederatedNetworkPolicy) is refused.

// OwnedByClusterReason is the errdetails.ErrorInfo reason of a write
// refused because a cluster's syncer owns the object.
const OwnedByClusterReason = "OWNED_BY_CLUSTER"

// CheckOwner decides whether p may write what req changes, given who owns
// it. Pure, like Authorize, which runs first: it returns nil or a
// codes.FailedPrecondition status naming the owner and where to make the
// change.
func CheckOwner(p Principal, fullMethod string, req any) error {
	switch fullMethod {
	case fedmeshv1.PolicyService_ApplyPolicies_FullMethodName:
		r, ok := req.(*fedmeshv1.ApplyPoliciesRequest)
		if !ok || r.GetCluster() == "" || p.isSyncerOf(r.GetCluster()) {
			return nil
		}
		var names []string
		for _, pol := range r.GetPolicies() {
			names = append(names, pol.GetNamespace()+"/"+pol.GetName())
		}
		return ownedBy("NetworkPolicy", r.GetCluster(), names, "apply")
	case fedmeshv1.PolicyService_DeletePolicy_FullMethodName:
		r, ok := req.(*fedmeshv1.DeletePolicyRequest)
		if k := r.GetKey(); !ok || k.GetCluster() == "" || p.isSyncerOf(k.GetCluster()) {
			return nil
		}
		return ownedBy("NetworkPolicy", r.GetKey().GetCluster(), []string{r.GetKey().GetNamespace() + "/" + r.GetKey().GetName()}, "delete")
	case fedmeshv1.ClusterPolicyService_ApplyClusterPolicies_FullMethodName:
		r, ok := req.(*fedmeshv1.ApplyClusterPoliciesRequest)
		if !ok || r.GetCluster() == "" || p.isSyncerOf(r.GetCluster()) {
			return nil
		}
		var names []string
		for _, pol := range r.GetPolicies() {
			names = append(names, pol.GetName())
		}
		return ownedBy("ClusterNetworkPolicy", r.GetCluster(), names, "apply")
	case fedmeshv1.ClusterPolicyService_DeleteClusterPolicy_FullMethodName:
		r, ok := req.(*fedmeshv1.DeleteClusterPolicyRequest)
		if k := r.GetKey(); !ok || k.GetCluster() == "" || p.isSyncerOf(k.GetCluster()) {
			return nil
		}
		return ownedBy("ClusterNetworkPolicy", r.GetKey().GetCluster(), []string{r.GetKey().GetName()}, "delete")
	}
	return nil
}

func (p Principal) isSyncerOf(cluster string) bool {
	return p.Kind == KindSyncer && p.Cluster == cluster
}

// ownedBy is the refusal of a write (verb) of cluster's objects of kind
// (NetworkPolicy, ClusterNetworkPolicy) names.
func ownedBy(kind, cluster string, names []string, verb string) error {
	var msg string
	kinds := strings.TrimSuffix(kind, "y") + "ies" // both kinds end in Policy
	switch len(names) {
	case 0:
		msg = fmt.Sprintf("the %s of cluster %s belong to that cluster; change them in %s's API (its syncer resyncs them here)", kinds, cluster, cluster)
	case 1:
		msg = fmt.Sprintf("%s %s belongs to cluster %s; %s it in %s's API (its syncer copies it here)", kind, names[0], cluster, verb, cluster)
	default:
		shown := names
		more := ""
		if len(shown) > 3 {
			shown, more = shown[:3], fmt.Sprintf(" and %d more", len(names)-3)
		}
		msg = fmt.Sprintf("%s %s%s belong to cluster %s; %s them in %s's API (its syncer copies them here)", kinds, strings.Join(shown, ", "), more, cluster, verb, cluster)
	}
	st, err := status.New(codes.FailedPrecondition, msg).WithDetails(&errdetails.ErrorInfo{
		Reason: OwnedByClusterReason, Domain: "fedmesh.io", Metadata: map[string]string{"cluster": cluster}})
	if err != nil {
		return status.Error(codes.FailedPrecondition, msg)
	}
	return st.Err()
}
