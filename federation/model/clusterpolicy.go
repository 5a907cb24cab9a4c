package model

import (
	"fmt"
	"regexp"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// Limits of a ClusterNetworkPolicy, from the upstream CRD schema
// (sigs.k8s.io/network-policy-api v0.3.0, apis/v1alpha2).
const (
	CNPMaxPriority     = 1000
	CNPMaxRulesPerDir  = 25
	CNPMaxPeersPerRule = 25
	CNPMaxProtocols    = 25
	CNPMaxNetworks     = 25
	CNPMaxDomainNames  = 25
	CNPMaxRuleName     = 100
	CNPMaxCIDRLength   = 43
)

// cnpDomainName is the CRD's pattern for a DomainName.
var cnpDomainName = regexp.MustCompile(`^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`)

// ValidateClusterNetworkPolicy checks a ClusterNetworkPolicy's name and
// spec (p is the path of the object) as the upstream CRD's schema and CEL
// rules do, standard and experimental channel, plus what fedmesh cannot
// enforce yet (nodes peers). It is the one check for both sources: a
// syncer runs it on a policy read from its cluster, the control plane's
// edge on a federated one. Every error names its field path.
func ValidateClusterNetworkPolicy(p *field.Path, name string, s *cnpv1.ClusterNetworkPolicySpec) field.ErrorList {
	errs := dnsSubdomain(p.Child("metadata", "name"), name)
	return append(errs, ValidateClusterNetworkPolicySpec(p.Child("spec"), s)...)
}

// ValidateClusterNetworkPolicySpec checks a spec at path p; see
// ValidateClusterNetworkPolicy.
func ValidateClusterNetworkPolicySpec(p *field.Path, s *cnpv1.ClusterNetworkPolicySpec) field.ErrorList {
	if s == nil {
		return field.ErrorList{field.Required(p, "")}
	}
	var errs field.ErrorList
	switch s.Tier {
	case cnpv1.AdminTier, cnpv1.BaselineTier:
	case "":
		errs = append(errs, field.Required(p.Child("tier"), "Admin or Baseline"))
	default:
		errs = append(errs, field.NotSupported(p.Child("tier"), s.Tier, []string{string(cnpv1.AdminTier), string(cnpv1.BaselineTier)}))
	}
	if s.Priority < 0 || s.Priority > CNPMaxPriority {
		errs = append(errs, field.Invalid(p.Child("priority"), s.Priority, fmt.Sprintf("must be between 0 and %d, inclusive", CNPMaxPriority)))
	}
	errs = append(errs, validateCNPSubject(p.Child("subject"), &s.Subject)...)
	ip := p.Child("ingress")
	errs = append(errs, tooMany(ip, len(s.Ingress), CNPMaxRulesPerDir)...)
	for i := range s.Ingress {
		r := &s.Ingress[i]
		rp := ip.Index(i)
		errs = append(errs, validateCNPRuleHead(rp, r.Name, r.Action)...)
		fp := rp.Child("from")
		errs = append(errs, peerCount(fp, len(r.From))...)
		for j, f := range r.From {
			errs = append(errs, validateCNPPeer(fp.Index(j), f.Namespaces, f.Pods)...)
		}
		errs = append(errs, validateCNPProtocols(rp.Child("protocols"), r.Protocols)...)
	}
	ep := p.Child("egress")
	errs = append(errs, tooMany(ep, len(s.Egress), CNPMaxRulesPerDir)...)
	for i := range s.Egress {
		r := &s.Egress[i]
		rp := ep.Index(i)
		errs = append(errs, validateCNPRuleHead(rp, r.Name, r.Action)...)
		tp := rp.Child("to")
		errs = append(errs, peerCount(tp, len(r.To))...)
		noNamedPorts := false
		for j := range r.To {
			errs = append(errs, validateCNPEgressPeer(tp.Index(j), &r.To[j], r.Action)...)
			to := &r.To[j]
			noNamedPorts = noNamedPorts || to.Networks != nil || to.Nodes != nil || to.DomainNames != nil
		}
		errs = append(errs, validateCNPProtocols(rp.Child("protocols"), r.Protocols)...)
		if noNamedPorts {
			for k, pr := range r.Protocols {
				if pr.DestinationNamedPort != "" {
					errs = append(errs, field.Forbidden(rp.Child("protocols").Index(k).Child("destinationNamedPort"),
						"networks/nodes/domainNames peers have no named ports; a rule with such a peer may not name a port"))
				}
			}
		}
	}
	return errs
}

func validateCNPRuleHead(p *field.Path, name string, action cnpv1.ClusterNetworkPolicyRuleAction) field.ErrorList {
	var errs field.ErrorList
	if len(name) > CNPMaxRuleName {
		errs = append(errs, field.TooLong(p.Child("name"), "", CNPMaxRuleName))
	}
	switch action {
	case cnpv1.ClusterNetworkPolicyRuleActionAccept, cnpv1.ClusterNetworkPolicyRuleActionDeny, cnpv1.ClusterNetworkPolicyRuleActionPass:
	case "":
		errs = append(errs, field.Required(p.Child("action"), "Accept, Deny or Pass"))
	default:
		errs = append(errs, field.NotSupported(p.Child("action"), action, []string{"Accept", "Deny", "Pass"}))
	}
	return errs
}

func peerCount(p *field.Path, n int) field.ErrorList {
	if n == 0 {
		return field.ErrorList{field.Required(p, "at least one peer; a rule without peers matches nothing")}
	}
	return tooMany(p, n, CNPMaxPeersPerRule)
}

func validateCNPSubject(p *field.Path, s *cnpv1.ClusterNetworkPolicySubject) field.ErrorList {
	switch {
	case s.Namespaces == nil && s.Pods == nil:
		return field.ErrorList{field.Required(p, "exactly one of namespaces and pods")}
	case s.Namespaces != nil && s.Pods != nil:
		return field.ErrorList{field.Forbidden(p, "exactly one of namespaces and pods may be set, not both")}
	case s.Namespaces != nil:
		return validateK8sSelector(p.Child("namespaces"), s.Namespaces)
	}
	return validateNamespacedPod(p.Child("pods"), s.Pods)
}

func validateK8sSelector(p *field.Path, s *metav1.LabelSelector) field.ErrorList {
	return validateSelector(p, SelectorFromK8s(s))
}

func validateNamespacedPod(p *field.Path, np *cnpv1.NamespacedPod) field.ErrorList {
	errs := validateK8sSelector(p.Child("namespaceSelector"), &np.NamespaceSelector)
	return append(errs, validateK8sSelector(p.Child("podSelector"), &np.PodSelector)...)
}

// validateCNPPeer checks an ingress peer: exactly one of namespaces, pods.
func validateCNPPeer(p *field.Path, ns *metav1.LabelSelector, pods *cnpv1.NamespacedPod) field.ErrorList {
	switch {
	case ns == nil && pods == nil:
		return field.ErrorList{field.Required(p, "exactly one of namespaces and pods")}
	case ns != nil && pods != nil:
		return field.ErrorList{field.Forbidden(p, "exactly one peer field may be set")}
	case ns != nil:
		return validateK8sSelector(p.Child("namespaces"), ns)
	}
	return validateNamespacedPod(p.Child("pods"), pods)
}

func validateCNPEgressPeer(p *field.Path, to *cnpv1.ClusterNetworkPolicyEgressPeer, action cnpv1.ClusterNetworkPolicyRuleAction) field.ErrorList {
	set := 0
	for _, has := range []bool{to.Namespaces != nil, to.Pods != nil, to.Nodes != nil, to.Networks != nil, to.DomainNames != nil} {
		if has {
			set++
		}
	}
	switch {
	case set == 0:
		return field.ErrorList{field.Required(p, "exactly one of namespaces, pods, networks and domainNames")}
	case set > 1:
		return field.ErrorList{field.Forbidden(p, "exactly one peer field may be set")}
	case to.Namespaces != nil || to.Pods != nil:
		return validateCNPPeer(p, to.Namespaces, to.Pods)
	case to.Nodes != nil:
		return field.ErrorList{field.Forbidden(p.Child("nodes"), "nodes peers are not supported by fedmesh yet (it does not track node addresses)")}
	case to.Networks != nil:
		np := p.Child("networks")
		var errs field.ErrorList
		if len(to.Networks) == 0 {
			errs = append(errs, field.Required(np, "at least one CIDR"))
		}
		errs = append(errs, tooMany(np, len(to.Networks), CNPMaxNetworks)...)
		seen := map[cnpv1.CIDR]bool{}
		for i, c := range to.Networks {
			if len(c) > CNPMaxCIDRLength {
				errs = append(errs, field.TooLong(np.Index(i), "", CNPMaxCIDRLength))
				continue
			}
			if seen[c] {
				errs = append(errs, field.Duplicate(np.Index(i), string(c)))
			}
			seen[c] = true
			_, e := prefix(np.Index(i), string(c))
			errs = append(errs, e...)
		}
		return errs
	}
	dp := p.Child("domainNames")
	var errs field.ErrorList
	if action != cnpv1.ClusterNetworkPolicyRuleActionAccept {
		errs = append(errs, field.Forbidden(dp, "domainNames peers are allowed only in Accept rules"))
	}
	if len(to.DomainNames) == 0 {
		errs = append(errs, field.Required(dp, "at least one domain name"))
	}
	errs = append(errs, tooMany(dp, len(to.DomainNames), CNPMaxDomainNames)...)
	seen := map[cnpv1.DomainName]bool{}
	for i, d := range to.DomainNames {
		if seen[d] {
			errs = append(errs, field.Duplicate(dp.Index(i), string(d)))
		}
		seen[d] = true
		if !cnpDomainName.MatchString(string(d)) {
			errs = append(errs, field.Invalid(dp.Index(i), string(d), "must be a domain name such as example.com, or *.example.com for its subdomains"))
		}
	}
	return errs
}

func validateCNPProtocols(p *field.Path, protos []cnpv1.ClusterNetworkPolicyProtocol) field.ErrorList {
	errs := tooMany(p, len(protos), CNPMaxProtocols)
	if protos != nil && len(protos) == 0 {
		errs = append(errs, field.Required(p, "at least one protocol, or leave protocols out to match every protocol"))
	}
	for i := range protos {
		pr := &protos[i]
		pp := p.Index(i)
		set := 0
		var port *cnpv1.Port
		var portPath *field.Path
		if pr.TCP != nil {
			set, port, portPath = set+1, pr.TCP.DestinationPort, pp.Child("tcp", "destinationPort")
		}
		if pr.UDP != nil {
			set, port, portPath = set+1, pr.UDP.DestinationPort, pp.Child("udp", "destinationPort")
		}
		if pr.SCTP != nil {
			set, port, portPath = set+1, pr.SCTP.DestinationPort, pp.Child("sctp", "destinationPort")
		}
		if pr.DestinationNamedPort != "" {
			set++
		}
		switch {
		case set == 0:
			errs = append(errs, field.Required(pp, "exactly one of tcp, udp, sctp and destinationNamedPort"))
			continue
		case set > 1:
			errs = append(errs, field.Forbidden(pp, "exactly one of tcp, udp, sctp and destinationNamedPort may be set"))
			continue
		case pr.DestinationNamedPort != "":
			errs = append(errs, portName(pp.Child("destinationNamedPort"), pr.DestinationNamedPort)...)
			continue
		}
		errs = append(errs, validateCNPPort(portPath, port)...)
	}
	return errs
}

func validateCNPPort(p *field.Path, port *cnpv1.Port) field.ErrorList {
	if port == nil {
		// The CRD's MinProperties=1 on tcp/udp/sctp: destinationPort is the
		// only property.
		return field.ErrorList{field.Required(p, "number or range")}
	}
	switch {
	case port.Number != 0 && port.Range != nil:
		return field.ErrorList{field.Forbidden(p, "exactly one of number and range may be set; a named port is destinationNamedPort")}
	case port.Range != nil:
		rp := p.Child("range")
		errs := rangeEnd(rp.Child("start"), port.Range.Start)
		errs = append(errs, rangeEnd(rp.Child("end"), port.Range.End)...)
		if len(errs) == 0 && port.Range.Start >= port.Range.End {
			errs = append(errs, field.Invalid(rp, fmt.Sprintf("%d-%d", port.Range.Start, port.Range.End), "start must be less than end"))
		}
		return errs
	case port.Number == 0:
		return field.ErrorList{field.Required(p, "number or range")}
	}
	return rangeEnd(p.Child("number"), port.Number)
}

func rangeEnd(p *field.Path, v int32) field.ErrorList {
	if v < 1 || v > 65535 {
		return field.ErrorList{field.Invalid(p, v, "must be between 1 and 65535, inclusive")}
	}
	return nil
}
