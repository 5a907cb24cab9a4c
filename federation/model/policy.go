package model

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ValidateApplyPolicies checks a batch of policies of one owner (a cluster,
// or the federation when cluster is empty).
func ValidateApplyPolicies(req *fedmeshv1.ApplyPoliciesRequest) error {
	var errs field.ErrorList
	if c := req.GetCluster(); c != "" {
		errs = append(errs, ClusterName(field.NewPath("cluster"), c)...)
	}
	p := field.NewPath("policies")
	errs = append(errs, tooMany(p, len(req.GetPolicies()), MaxBatch)...)
	keys := map[string]int{}
	for i, pol := range req.GetPolicies() {
		pp := p.Index(i)
		errs = append(errs, validatePolicy(pp, pol)...)
		if pol.GetCluster() != req.GetCluster() {
			errs = append(errs, field.Invalid(pp.Child("cluster"), pol.GetCluster(), fmt.Sprintf("must equal the batch's owner %q", req.GetCluster())))
		}
		k := pol.GetNamespace() + "/" + pol.GetName()
		if j, dup := keys[k]; dup {
			errs = append(errs, field.Duplicate(pp, fmt.Sprintf("%s (also %s)", k, p.Index(j))))
		}
		keys[k] = i
	}
	errs = append(errs, validateResync(field.NewPath("resync"), req.GetResync())...)
	return AsError(errs)
}

// ValidatePolicy checks one policy (path "policy").
func ValidatePolicy(pol *fedmeshv1.Policy) error {
	return AsError(validatePolicy(field.NewPath("policy"), pol))
}

// ValidatePolicyKey checks a policy key as DeletePolicy and GetPolicy take it.
func ValidatePolicyKey(p *field.Path, k *fedmeshv1.PolicyKey) error {
	if k == nil {
		return AsError(field.ErrorList{field.Required(p, "")})
	}
	var errs field.ErrorList
	if k.GetCluster() != "" {
		errs = append(errs, ClusterName(p.Child("cluster"), k.GetCluster())...)
		errs = append(errs, Namespace(p.Child("namespace"), k.GetNamespace())...)
	} else if k.GetNamespace() != "" {
		errs = append(errs, Namespace(p.Child("namespace"), k.GetNamespace())...)
	}
	errs = append(errs, dnsSubdomain(p.Child("name"), k.GetName())...)
	return AsError(errs)
}

func validatePolicy(p *field.Path, pol *fedmeshv1.Policy) field.ErrorList {
	if pol == nil {
		return field.ErrorList{field.Required(p, "")}
	}
	var errs field.ErrorList
	federated := false
	switch pol.GetKind() {
	case fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES:
		errs = append(errs, ClusterName(p.Child("cluster"), pol.GetCluster())...)
		errs = append(errs, Namespace(p.Child("namespace"), pol.GetNamespace())...)
		if pol.GetClusterSelector() != nil {
			errs = append(errs, field.Forbidden(p.Child("clusterSelector"), "only a federated policy selects clusters; a Kubernetes NetworkPolicy applies to its own cluster"))
		}
	case fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED:
		federated = true
		if pol.GetCluster() != "" {
			errs = append(errs, field.Forbidden(p.Child("cluster"), "a federated policy belongs to the federation, not to a cluster"))
		}
		if ns := pol.GetNamespace(); ns != "" {
			errs = append(errs, Namespace(p.Child("namespace"), ns)...)
		}
		errs = append(errs, validateSelector(p.Child("clusterSelector"), pol.GetClusterSelector())...)
	default:
		errs = append(errs, field.NotSupported(p.Child("kind"), pol.GetKind().String(), []string{"POLICY_KIND_KUBERNETES", "POLICY_KIND_FEDERATED"}))
	}
	errs = append(errs, dnsSubdomain(p.Child("name"), pol.GetName())...)
	errs = append(errs, validateSpec(p.Child("spec"), pol.GetSpec(), federated)...)
	return errs
}

func validateSpec(p *field.Path, s *fedmeshv1.NetworkPolicySpec, federated bool) field.ErrorList {
	if s == nil {
		return field.ErrorList{field.Required(p, "")}
	}
	var errs field.ErrorList
	if s.GetPodSelector() == nil {
		errs = append(errs, field.Required(p.Child("podSelector"), "use an empty selector to select every pod"))
	}
	errs = append(errs, validateSelector(p.Child("podSelector"), s.GetPodSelector())...)
	tp := p.Child("policyTypes")
	seen := map[fedmeshv1.PolicyType]bool{}
	for i, t := range s.GetPolicyTypes() {
		switch t {
		case fedmeshv1.PolicyType_POLICY_TYPE_INGRESS, fedmeshv1.PolicyType_POLICY_TYPE_EGRESS:
		default:
			errs = append(errs, field.NotSupported(tp.Index(i), t.String(), []string{"POLICY_TYPE_INGRESS", "POLICY_TYPE_EGRESS"}))
		}
		if seen[t] {
			errs = append(errs, field.Duplicate(tp.Index(i), t.String()))
		}
		seen[t] = true
	}
	ip := p.Child("ingress")
	errs = append(errs, tooMany(ip, len(s.GetIngress()), MaxRulesPerDir)...)
	for i, r := range s.GetIngress() {
		errs = append(errs, validateRule(ip.Index(i), "from", r.GetPorts(), r.GetFrom(), federated)...)
	}
	ep := p.Child("egress")
	errs = append(errs, tooMany(ep, len(s.GetEgress()), MaxRulesPerDir)...)
	for i, r := range s.GetEgress() {
		errs = append(errs, validateRule(ep.Index(i), "to", r.GetPorts(), r.GetTo(), federated)...)
	}
	return errs
}

func validateRule(p *field.Path, peersName string, ports []*fedmeshv1.NetworkPolicyPort, peers []*fedmeshv1.NetworkPolicyPeer, federated bool) field.ErrorList {
	var errs field.ErrorList
	pp := p.Child("ports")
	errs = append(errs, tooMany(pp, len(ports), MaxPortsPerRule)...)
	for i, port := range ports {
		errs = append(errs, validatePolicyPort(pp.Index(i), port)...)
	}
	peerPath := p.Child(peersName)
	errs = append(errs, tooMany(peerPath, len(peers), MaxPeersPerRule)...)
	for i, peer := range peers {
		errs = append(errs, validatePeer(peerPath.Index(i), peer, federated)...)
	}
	return errs
}

func validatePolicyPort(p *field.Path, port *fedmeshv1.NetworkPolicyPort) field.ErrorList {
	if port == nil {
		return field.ErrorList{field.Required(p, "")}
	}
	errs := l4Protocol(p.Child("protocol"), port.GetProtocol())
	switch v := port.GetPort().(type) {
	case *fedmeshv1.NetworkPolicyPort_Number:
		errs = append(errs, portNum(p.Child("port"), v.Number)...)
		if end := port.GetEndPort(); end != 0 {
			if end > 65535 {
				errs = append(errs, field.Invalid(p.Child("endPort"), end, "must be between 1 and 65535, inclusive"))
			} else if end < v.Number {
				errs = append(errs, field.Invalid(p.Child("endPort"), end, fmt.Sprintf("must be greater than or equal to port (%d)", v.Number)))
			}
		}
	case *fedmeshv1.NetworkPolicyPort_Name:
		errs = append(errs, portName(p.Child("port"), v.Name)...)
		if port.GetEndPort() != 0 {
			errs = append(errs, field.Forbidden(p.Child("endPort"), "may not be set when port is a named port"))
		}
	case nil:
		if port.GetEndPort() != 0 {
			errs = append(errs, field.Required(p.Child("port"), "endPort needs a numeric port"))
		}
	}
	return errs
}

func validatePeer(p *field.Path, peer *fedmeshv1.NetworkPolicyPeer, federated bool) field.ErrorList {
	if peer == nil {
		return field.ErrorList{field.Required(p, "")}
	}
	var errs field.ErrorList
	hasSelector := peer.GetPodSelector() != nil || peer.GetNamespaceSelector() != nil
	switch {
	case peer.GetIpBlock() != nil && (hasSelector || peer.GetClusterSelector() != nil):
		errs = append(errs, field.Forbidden(p, "may not specify both ipBlock and a selector"))
	case peer.GetIpBlock() == nil && !hasSelector && peer.GetClusterSelector() == nil:
		errs = append(errs, field.Required(p, "must specify a podSelector, namespaceSelector, clusterSelector or ipBlock"))
	}
	errs = append(errs, validateSelector(p.Child("podSelector"), peer.GetPodSelector())...)
	errs = append(errs, validateSelector(p.Child("namespaceSelector"), peer.GetNamespaceSelector())...)
	if peer.GetClusterSelector() != nil {
		if !federated {
			errs = append(errs, field.Forbidden(p.Child("clusterSelector"), "only a federated policy's peers may select clusters; a Kubernetes NetworkPolicy's peers are in its own cluster"))
		}
		errs = append(errs, validateSelector(p.Child("clusterSelector"), peer.GetClusterSelector())...)
	}
	if b := peer.GetIpBlock(); b != nil {
		errs = append(errs, validateIPBlock(p.Child("ipBlock"), b)...)
	}
	return errs
}

func validateIPBlock(p *field.Path, b *fedmeshv1.IPBlock) field.ErrorList {
	cidr, errs := prefix(p.Child("cidr"), b.GetCidr())
	ep := p.Child("except")
	errs = append(errs, tooMany(ep, len(b.GetExcept()), MaxExceptPerCIDR)...)
	for i, x := range b.GetExcept() {
		ex, e := prefix(ep.Index(i), x)
		errs = append(errs, e...)
		if len(e) > 0 || !cidr.IsValid() {
			continue
		}
		switch {
		case ex.Addr().Is4() != cidr.Addr().Is4():
			errs = append(errs, field.Invalid(ep.Index(i), x, fmt.Sprintf("must be the same address family as cidr %s", cidr)))
		case ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()):
			errs = append(errs, field.Invalid(ep.Index(i), x, fmt.Sprintf("must be a strict subset of cidr %s", cidr)))
		}
	}
	return errs
}
