package model

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ValidateStagePolicy checks a request to stage policies: one (policy)
// or several (policies, at most MaxBatch, distinct keys), exactly one of
// the two. Each is checked exactly as the enforced policy of the same kind
// is (validatePolicy, validateClusterPolicy), and must be federated: a
// cluster's own policies have one writer, its syncer, and are not staged.
// Every policy is checked before any is staged, so the errors name each
// bad one by its index.
func ValidateStagePolicy(req *fedmeshv1.StagePolicyRequest) error {
	if req.GetPolicy() != nil && len(req.GetPolicies()) > 0 {
		return AsError(field.ErrorList{field.Forbidden(field.NewPath("policies"), "set policy (one) or policies (several), not both")})
	}
	if req.GetPolicy() != nil || len(req.GetPolicies()) == 0 {
		return AsError(validateStaged(field.NewPath("policy"), req.GetPolicy()))
	}
	p := field.NewPath("policies")
	errs := tooMany(p, len(req.GetPolicies()), MaxBatch)
	seen := map[string]int{}
	for i, sp := range req.GetPolicies() {
		pp := p.Index(i)
		errs = append(errs, validateStaged(pp, sp)...)
		k := stagedKeyString(sp)
		if k == "" {
			continue
		}
		if j, dup := seen[k]; dup {
			errs = append(errs, field.Duplicate(pp, fmt.Sprintf("%s (also %s)", k, p.Index(j))))
		}
		seen[k] = i
	}
	return AsError(errs)
}

// stagedKeyString tells staged policies apart within one request; empty
// for one holding no policy.
func stagedKeyString(sp *fedmeshv1.StagedPolicy) string {
	if np := sp.GetNetworkPolicy(); np != nil {
		return "federated/" + np.GetNamespace() + "/" + np.GetName()
	}
	if cp := sp.GetClusterNetworkPolicy(); cp != nil {
		return "cnp/federated/" + cp.GetName()
	}
	return ""
}

// validateStaged checks one staged policy at path p.
func validateStaged(p *field.Path, sp *fedmeshv1.StagedPolicy) field.ErrorList {
	switch x := sp.GetPolicy().(type) {
	case *fedmeshv1.StagedPolicy_NetworkPolicy:
		pp := p.Child("networkPolicy")
		if x.NetworkPolicy != nil && x.NetworkPolicy.GetKind() != fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED {
			return field.ErrorList{field.NotSupported(pp.Child("kind"), x.NetworkPolicy.GetKind().String(), []string{"POLICY_KIND_FEDERATED"})}
		}
		return validatePolicy(pp, x.NetworkPolicy)
	case *fedmeshv1.StagedPolicy_ClusterNetworkPolicy:
		pp := p.Child("clusterNetworkPolicy")
		if x.ClusterNetworkPolicy == nil {
			return field.ErrorList{field.Required(pp, "")}
		}
		if c := x.ClusterNetworkPolicy.GetCluster(); c != "" {
			return field.ErrorList{field.Forbidden(pp.Child("cluster"),
				"only federated ClusterNetworkPolicies are staged; a cluster's own are copied from its Kubernetes API by its syncer")}
		}
		return validateClusterPolicy(pp, x.ClusterNetworkPolicy)
	default:
		return field.ErrorList{field.Required(p, "a networkPolicy or a clusterNetworkPolicy")}
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
