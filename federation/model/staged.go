package model

import (
	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ValidateStagePolicy checks a policy to stage exactly as the enforced
// policy of the same kind is checked (validatePolicy,
// validateClusterPolicy), and that it is federated: a cluster's own
// policies have one writer, its syncer, and are not staged.
func ValidateStagePolicy(req *fedmeshv1.StagePolicyRequest) error {
	p := field.NewPath("policy")
	switch x := req.GetPolicy().GetPolicy().(type) {
	case *fedmeshv1.StagedPolicy_NetworkPolicy:
		pp := p.Child("networkPolicy")
		if x.NetworkPolicy != nil && x.NetworkPolicy.GetKind() != fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED {
			return AsError(field.ErrorList{field.NotSupported(pp.Child("kind"), x.NetworkPolicy.GetKind().String(), []string{"POLICY_KIND_FEDERATED"})})
		}
		return AsError(validatePolicy(pp, x.NetworkPolicy))
	case *fedmeshv1.StagedPolicy_ClusterNetworkPolicy:
		pp := p.Child("clusterNetworkPolicy")
		if x.ClusterNetworkPolicy == nil {
			return AsError(field.ErrorList{field.Required(pp, "")})
		}
		if c := x.ClusterNetworkPolicy.GetCluster(); c != "" {
			return AsError(field.ErrorList{field.Forbidden(pp.Child("cluster"),
				"only federated ClusterNetworkPolicies are staged; a cluster's own are copied from its Kubernetes API by its syncer")})
		}
		return AsError(validateClusterPolicy(pp, x.ClusterNetworkPolicy))
	default:
		return AsError(field.ErrorList{field.Required(p, "a networkPolicy or a clusterNetworkPolicy")})
	}
}

// ValidateStagedPolicyKey checks a staged policy's key: a kind, a
// namespace only for a NetworkPolicy, a name.
func ValidateStagedPolicyKey(p *field.Path, k *fedmeshv1.StagedPolicyKey) error {
	if k == nil {
		return AsError(field.ErrorList{field.Required(p, "")})
	}
	var errs field.ErrorList
	switch k.GetKind() {
	case fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_NETWORK_POLICY:
		if ns := k.GetNamespace(); ns != "" {
			errs = append(errs, Namespace(p.Child("namespace"), ns)...)
		}
	case fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY:
		if k.GetNamespace() != "" {
			errs = append(errs, field.Forbidden(p.Child("namespace"), "a ClusterNetworkPolicy is cluster-scoped"))
		}
	default:
		errs = append(errs, field.NotSupported(p.Child("kind"), k.GetKind().String(),
			[]string{"STAGED_POLICY_KIND_NETWORK_POLICY", "STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY"}))
	}
	errs = append(errs, dnsSubdomain(p.Child("name"), k.GetName())...)
	return AsError(errs)
}
