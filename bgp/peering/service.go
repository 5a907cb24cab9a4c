package peering

import (
	"fmt"
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// maxServiceCIDRs bounds each CIDR list of a service advertisement.
const maxServiceCIDRs = 32

// ServiceKind is a kind of service address a node advertises.
type ServiceKind uint8

// Service address kinds, in the order a address that is several kinds at
// once is counted as (a load-balancer IP also listed in externalIPs is a
// load-balancer IP).
const (
	ServiceLoadBalancerIP ServiceKind = iota + 1
	ServiceExternalIP
	ServiceClusterIP
)

// ServiceKinds lists every kind in that order.
var ServiceKinds = []ServiceKind{ServiceLoadBalancerIP, ServiceExternalIP, ServiceClusterIP}

func (k ServiceKind) String() string {
	switch k {
	case ServiceLoadBalancerIP:
		return "load-balancer-ip"
	case ServiceExternalIP:
		return "external-ip"
	case ServiceClusterIP:
		return "cluster-ip"
	}
	return fmt.Sprintf("service-kind(%d)", uint8(k))
}

// ClusterIPMode is how cluster IPs are advertised.
type ClusterIPMode uint8

// Cluster IP modes (fedmeshv1.BGPClusterIPAdvertisement).
const (
	ClusterIPsOff ClusterIPMode = iota
	// ClusterIPsServiceCIDR advertises the cluster's service CIDRs from
	// every node, and the cluster IPs of externalTrafficPolicy Local
	// Services as host routes from their nodes (Calico's behaviour).
	ClusterIPsServiceCIDR
	// ClusterIPsAddresses advertises every cluster IP as a host route.
	ClusterIPsAddresses
)

// ServiceAddresses is which service addresses a SERVICE advertisement
// carries. A host route is advertised only inside the listed CIDRs (the
// cluster's service CIDRs for cluster IPs), so a Service cannot make nodes
// announce someone else's range.
type ServiceAddresses struct {
	ClusterIPs          ClusterIPMode
	ExternalIPCIDRs     []netip.Prefix
	LoadBalancerIPCIDRs []netip.Prefix
}

// Kinds lists the kinds a carries, in ServiceKinds order.
func (a ServiceAddresses) Kinds() []ServiceKind {
	var out []ServiceKind
	if len(a.LoadBalancerIPCIDRs) > 0 {
		out = append(out, ServiceLoadBalancerIP)
	}
	if len(a.ExternalIPCIDRs) > 0 {
		out = append(out, ServiceExternalIP)
	}
	if a.ClusterIPs != ClusterIPsOff {
		out = append(out, ServiceClusterIP)
	}
	return out
}

// Equal reports whether a and b carry the same addresses.
func (a ServiceAddresses) Equal(b ServiceAddresses) bool {
	return a.ClusterIPs == b.ClusterIPs && slices.Equal(a.ExternalIPCIDRs, b.ExternalIPCIDRs) &&
		slices.Equal(a.LoadBalancerIPCIDRs, b.LoadBalancerIPCIDRs)
}

// parseServiceAddresses parses an advertisement's service field; set only
// with the SERVICE class, which needs at least one kind.
func parseServiceAddresses(p *field.Path, class PrefixClass, s *fedmeshv1.BGPServiceAddresses) (ServiceAddresses, field.ErrorList) {
	var out ServiceAddresses
	var errs field.ErrorList
	if class != ClassService {
		if s != nil {
			errs = append(errs, field.Forbidden(p, "set only with class BGP_PREFIX_CLASS_SERVICE"))
		}
		return out, errs
	}
	switch m := s.GetClusterIps(); m {
	case fedmeshv1.BGPClusterIPAdvertisement_BGP_CLUSTER_IP_ADVERTISEMENT_UNSPECIFIED:
	case fedmeshv1.BGPClusterIPAdvertisement_BGP_CLUSTER_IP_ADVERTISEMENT_SERVICE_CIDR:
		out.ClusterIPs = ClusterIPsServiceCIDR
	case fedmeshv1.BGPClusterIPAdvertisement_BGP_CLUSTER_IP_ADVERTISEMENT_ADDRESSES:
		out.ClusterIPs = ClusterIPsAddresses
	default:
		errs = append(errs, field.NotSupported(p.Child("clusterIps"), m.String(), []string{
			"BGP_CLUSTER_IP_ADVERTISEMENT_UNSPECIFIED", "BGP_CLUSTER_IP_ADVERTISEMENT_SERVICE_CIDR", "BGP_CLUSTER_IP_ADVERTISEMENT_ADDRESSES"}))
	}
	var e field.ErrorList
	out.ExternalIPCIDRs, e = parseCIDRs(p.Child("externalIpCidrs"), s.GetExternalIpCidrs())
	errs = append(errs, e...)
	out.LoadBalancerIPCIDRs, e = parseCIDRs(p.Child("loadBalancerIpCidrs"), s.GetLoadBalancerIpCidrs())
	errs = append(errs, e...)
	if len(errs) == 0 && len(out.Kinds()) == 0 {
		errs = append(errs, field.Required(p, "the SERVICE class needs clusterIps, externalIpCidrs or loadBalancerIpCidrs"))
	}
	return out, errs
}

func parseCIDRs(p *field.Path, in []string) ([]netip.Prefix, field.ErrorList) {
	var errs field.ErrorList
	if len(in) > maxServiceCIDRs {
		return nil, field.ErrorList{field.TooMany(p, len(in), maxServiceCIDRs)}
	}
	var out []netip.Prefix
	for i, s := range in {
		c, err := netip.ParsePrefix(s)
		switch {
		case err != nil:
			errs = append(errs, field.Invalid(p.Index(i), s, "not a CIDR"))
		case c != c.Masked() || c.Addr().Zone() != "" || c.Addr().Is4In6():
			errs = append(errs, field.Invalid(p.Index(i), s, fmt.Sprintf("must be a canonical IPv4 or IPv6 prefix (did you mean %s?)", c.Masked())))
		case slices.Contains(out, c):
			errs = append(errs, field.Duplicate(p.Index(i), s))
		default:
			out = append(out, c)
		}
	}
	return out, errs
}

// SecretRef names one key of a Secret in a member cluster.
type SecretRef struct {
	Namespace, Name, Key string
}

func (r SecretRef) String() string { return r.Namespace + "/" + r.Name + "[" + r.Key + "]" }

func parseSecretRef(p *field.Path, s *fedmeshv1.BGPSecretKeyRef) (SecretRef, field.ErrorList) {
	out := SecretRef{Namespace: s.GetNamespace(), Name: s.GetName(), Key: s.GetKey()}
	errs := dnsLabel(p.Child("namespace"), out.Namespace)
	if out.Name == "" {
		errs = append(errs, field.Required(p.Child("name"), ""))
	}
	for _, msg := range validation.IsDNS1123Subdomain(out.Name) {
		if out.Name != "" {
			errs = append(errs, field.Invalid(p.Child("name"), out.Name, msg))
		}
	}
	if out.Key == "" {
		errs = append(errs, field.Required(p.Child("key"), ""))
	}
	for _, msg := range validation.IsConfigMapKey(out.Key) {
		if out.Key != "" {
			errs = append(errs, field.Invalid(p.Child("key"), out.Key, msg))
		}
	}
	return out, errs
}
