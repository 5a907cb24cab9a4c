package model

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ValidateCluster checks a cluster spec on its own. Overlap with other
// clusters needs the store: see ValidateClusterOverlap.
func ValidateCluster(c *fedmeshv1.Cluster) error {
	p := field.NewPath("cluster")
	if c == nil {
		return AsError(field.ErrorList{field.Required(p, "")})
	}
	errs := ClusterName(p.Child("name"), c.GetName())
	errs = append(errs, labels(p.Child("labels"), c.GetLabels())...)

	podPath := p.Child("podCIDRs")
	if len(c.GetPodCidrs()) == 0 {
		errs = append(errs, field.Required(podPath, "a cluster needs at least one pod CIDR"))
	}
	// One per family, as Kubernetes' --cluster-cidr: a second IPv4 range is
	// almost always a dual-stack registration with the IPv6 one mistyped,
	// and one range per family is what lets a node's prefix be checked
	// against "the cluster's CIDR of that family".
	pods, e := cidrList(podPath, c.GetPodCidrs(), MaxCIDRsPerFam)
	errs = append(errs, e...)

	svcPath := p.Child("serviceCIDRs")
	svcs, e := cidrList(svcPath, c.GetServiceCidrs(), 1)
	errs = append(errs, e...)
	for i, s := range svcs {
		for j, pod := range pods {
			if s.Overlaps(pod) {
				errs = append(errs, field.Invalid(svcPath.Index(i), s.String(), fmt.Sprintf("overlaps pod CIDR %s (%s)", pod, podPath.Index(j))))
			}
		}
	}
	errs = append(errs, validateBGP(p.Child("bgp"), c.GetBgp())...)
	errs = append(errs, validateWireGuard(p.Child("wireguard"), c.GetWireguard())...)
	errs = append(errs, validateScope(p.Child("exports"), c.GetExports())...)
	errs = append(errs, validateScope(p.Child("imports"), c.GetImports())...)
	return AsError(errs)
}

// ValidateClusterOverlap rejects pod CIDRs of c that overlap those of any
// other cluster: two clusters sharing pod addresses would make the
// federation's IP-to-identity map ambiguous. others may include c itself
// (an update); it is skipped by name.
func ValidateClusterOverlap(c *fedmeshv1.Cluster, others []*fedmeshv1.Cluster) error {
	p := field.NewPath("cluster", "podCIDRs")
	var errs field.ErrorList
	for i, v := range c.GetPodCidrs() {
		mine, err := netip.ParsePrefix(v)
		if err != nil {
			continue // ValidateCluster reports it
		}
		for _, o := range others {
			if o.GetName() == c.GetName() {
				continue
			}
			for _, ov := range o.GetPodCidrs() {
				theirs, err := netip.ParsePrefix(ov)
				if err == nil && mine.Overlaps(theirs) {
					errs = append(errs, field.Invalid(p.Index(i), v, fmt.Sprintf("overlaps pod CIDR %s of cluster %q", ov, o.GetName())))
				}
			}
		}
	}
	return AsError(errs)
}

func validASN(p *field.Path, asn uint32) field.ErrorList {
	switch {
	case asn == 0:
		return field.ErrorList{field.Required(p, "ASN must be between 1 and 4294967294")}
	case asn > maxASN:
		return field.ErrorList{field.Invalid(p, asn, "ASN must be between 1 and 4294967294")}
	case asn == asTrans:
		return field.ErrorList{field.Invalid(p, asn, "23456 is AS_TRANS (RFC 6793), not a usable ASN")}
	}
	return nil
}

func validateBGP(p *field.Path, b *fedmeshv1.BGPSettings) field.ErrorList {
	if b == nil || !b.GetEnabled() {
		if b != nil && len(b.GetPeers()) > 0 {
			return field.ErrorList{field.Invalid(p.Child("enabled"), false, "peers are set but BGP is not enabled")}
		}
		return nil
	}
	errs := validASN(p.Child("localAsn"), b.GetLocalAsn())
	peers := p.Child("peers")
	errs = append(errs, tooMany(peers, len(b.GetPeers()), MaxBGPPeers)...)
	seen := map[netip.Addr]int{}
	for i, peer := range b.GetPeers() {
		pp := peers.Index(i)
		a, e := addr(pp.Child("address"), peer.GetAddress())
		errs = append(errs, e...)
		if a.IsValid() {
			if j, dup := seen[a]; dup {
				errs = append(errs, field.Duplicate(pp.Child("address"), fmt.Sprintf("%s (also %s)", a, peers.Index(j))))
			}
			seen[a] = i
		}
		errs = append(errs, validASN(pp.Child("asn"), peer.GetAsn())...)
		if peer.GetPassword() != "" {
			// The Cluster object is read by every agent and admin: a
			// password in it is a secret in clear in the store. Clusters
			// stored with one by an older version keep their sessions;
			// a write must move it to a peer object's reference.
			errs = append(errs, field.Forbidden(pp.Child("password"),
				"the control plane stores no BGP password in clear: leave it out here and give the peer's password by reference with a BGP peer object (fedctl bgp peer apply: password.file on the node, or password.secret in the member cluster)"))
		}
		hold, ka := peer.GetHoldTimeSeconds(), peer.GetKeepaliveSeconds()
		if hold != 0 && (hold < 3 || hold > 65535) {
			errs = append(errs, field.Invalid(pp.Child("holdTimeSeconds"), hold, "must be 0 (default 90) or between 3 and 65535 (RFC 4271)"))
		}
		effHold := hold
		if effHold == 0 {
			effHold = 90
		}
		if ka != 0 && ka >= effHold {
			errs = append(errs, field.Invalid(pp.Child("keepaliveSeconds"), ka, fmt.Sprintf("must be less than the hold time (%ds)", effHold)))
		}
		errs = append(errs, port(pp.Child("port"), peer.GetPort(), true)...)
	}
	if b.GetGracefulRestartSeconds() > 4095 {
		errs = append(errs, field.Invalid(p.Child("gracefulRestartSeconds"), b.GetGracefulRestartSeconds(), "must be at most 4095 (12-bit field, RFC 4724)"))
	}
	if c := b.GetUnhealthyCommunity(); c != "" {
		if _, err := ParseCommunity(c); err != nil {
			errs = append(errs, field.Invalid(p.Child("unhealthyCommunity"), c, err.Error()))
		}
	}
	return errs
}

// ParseCommunity parses a standard BGP community "ASN:VALUE" (two 16-bit
// numbers) into its 32-bit form.
func ParseCommunity(s string) (uint32, error) {
	hi, lo, ok := strings.Cut(s, ":")
	if !ok {
		return 0, fmt.Errorf("must be a community ASN:VALUE such as 65000:666")
	}
	a, err1 := strconv.ParseUint(hi, 10, 16)
	b, err2 := strconv.ParseUint(lo, 10, 16)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("must be a community ASN:VALUE with both parts between 0 and 65535")
	}
	return uint32(a)<<16 | uint32(b), nil
}

func validateWireGuard(p *field.Path, w *fedmeshv1.WireGuardSettings) field.ErrorList {
	if w == nil {
		return nil
	}
	errs := port(p.Child("listenPort"), w.GetListenPort(), true)
	if m := w.GetMtu(); m != 0 && (m < 1280 || m > 9000) {
		errs = append(errs, field.Invalid(p.Child("mtu"), m, "must be 0 (default 1420) or between 1280 and 9000"))
	}
	if k := w.GetPersistentKeepaliveSeconds(); k > 65535 {
		errs = append(errs, field.Invalid(p.Child("persistentKeepaliveSeconds"), k, "must be at most 65535"))
	}
	return errs
}

func validateScope(p *field.Path, s *fedmeshv1.NamespaceScope) field.ErrorList {
	var errs field.ErrorList
	check := func(pp *field.Path, names []string) {
		seen := map[string]bool{}
		for i, n := range names {
			errs = append(errs, Namespace(pp.Index(i), n)...)
			if seen[n] {
				errs = append(errs, field.Duplicate(pp.Index(i), n))
			}
			seen[n] = true
		}
	}
	check(p.Child("names"), s.GetNames())
	check(p.Child("excludeNames"), s.GetExcludeNames())
	return errs
}

// InScope reports whether a namespace is admitted by a scope (nil admits all).
func InScope(s *fedmeshv1.NamespaceScope, ns string) bool {
	for _, x := range s.GetExcludeNames() {
		if x == ns {
			return false
		}
	}
	if len(s.GetNames()) == 0 {
		return true
	}
	for _, n := range s.GetNames() {
		if n == ns {
			return true
		}
	}
	return false
}

// ValidateClusterKeepsMembers rejects a cluster update whose pod CIDRs no
// longer hold one of the cluster's nodes' pod CIDRs or endpoints' IPs:
// accepting it would leave stored objects the federation can no longer
// place (their IPs outside every cluster, or reserved by a cluster that no
// longer claims them). Nodes and endpoints are checked in the order given,
// and only the first offender of each kind is named.
func ValidateClusterKeepsMembers(c *fedmeshv1.Cluster, nodes []*fedmeshv1.Node, endpoints []*fedmeshv1.Endpoint) error {
	p := field.NewPath("cluster", "podCIDRs")
	var errs field.ErrorList
	for _, n := range nodes {
		for _, v := range n.GetPodCidrs() {
			if pfx, err := netip.ParsePrefix(v); err == nil && !insideAny(pfx, c.GetPodCidrs()) {
				errs = append(errs, field.Invalid(p, c.GetPodCidrs(), fmt.Sprintf("must still contain node %s's pod CIDR %s; delete or re-register the node first", n.GetName(), v)))
				break
			}
		}
		if len(errs) > 0 {
			break
		}
	}
	for _, e := range endpoints {
		for _, v := range e.GetIps() {
			if a, err := netip.ParseAddr(v); err == nil && !addrInsideAny(a, c.GetPodCidrs()) {
				errs = append(errs, field.Invalid(p, c.GetPodCidrs(), fmt.Sprintf("must still contain endpoint %s/%s's IP %s; its syncer must remove it first", e.GetNamespace(), e.GetName(), v)))
				return AsError(errs)
			}
		}
	}
	return AsError(errs)
}
