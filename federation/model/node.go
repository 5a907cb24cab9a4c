package model

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ValidateNode checks a node spec. When cluster is not nil, the node's pod
// CIDRs must lie inside the cluster's.
func ValidateNode(n *fedmeshv1.Node, cluster *fedmeshv1.Cluster) error {
	p := field.NewPath("node")
	if n == nil {
		return AsError(field.ErrorList{field.Required(p, "")})
	}
	errs := ClusterName(p.Child("cluster"), n.GetCluster())
	errs = append(errs, dnsSubdomain(p.Child("name"), n.GetName())...)
	_, e := addr(p.Child("underlayIp"), n.GetUnderlayIp())
	errs = append(errs, e...)
	podPath := p.Child("podCIDRs")
	pods, e := cidrList(podPath, n.GetPodCidrs(), MaxCIDRsPerFam)
	errs = append(errs, e...)
	if cluster != nil {
		for i, pfx := range pods {
			if !insideAny(pfx, cluster.GetPodCidrs()) {
				errs = append(errs, field.Invalid(podPath.Index(i), pfx.String(), OutsidePodCIDRs(cluster, pfx.Addr())))
			}
		}
	}
	if k := n.GetWireguardPublicKey(); k != "" {
		raw, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(raw) != 32 {
			errs = append(errs, field.Invalid(p.Child("wireguardPublicKey"), k, "must be a base64 Curve25519 public key (32 bytes)"))
		}
	}
	errs = append(errs, port(p.Child("wireguardListenPort"), n.GetWireguardListenPort(), true)...)
	errs = append(errs, labels(p.Child("labels"), n.GetLabels())...)
	return AsError(errs)
}

// OutsidePodCIDRs says why an address (or a prefix starting at it) of a
// node or pod is refused: the cluster has no pod CIDR of its family, or
// none of that family holds it. A dual-stack cluster has one pod CIDR per
// family, so naming the family's CIDR tells the user which one to widen.
func OutsidePodCIDRs(cluster *fedmeshv1.Cluster, a netip.Addr) string {
	fam := family(a)
	var same []string
	for _, c := range cluster.GetPodCidrs() {
		if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() == a.Is4() {
			same = append(same, c)
		}
	}
	if len(same) == 0 {
		return fmt.Sprintf("is %s, but cluster %q has no %s pod CIDR (it has %v); register the cluster with one first", fam, cluster.GetName(), fam, cluster.GetPodCidrs())
	}
	return fmt.Sprintf("is not inside the %s pod CIDR %s of cluster %q", fam, strings.Join(same, ", "), cluster.GetName())
}

// insideAny reports whether pfx lies entirely inside one of cidrs.
func insideAny(pfx netip.Prefix, cidrs []string) bool {
	for _, c := range cidrs {
		outer, err := netip.ParsePrefix(c)
		if err == nil && outer.Bits() <= pfx.Bits() && outer.Contains(pfx.Addr()) {
			return true
		}
	}
	return false
}

// addrInsideAny reports whether a lies inside one of cidrs.
func addrInsideAny(a netip.Addr, cidrs []string) bool {
	for _, c := range cidrs {
		outer, err := netip.ParsePrefix(c)
		if err == nil && outer.Contains(a) {
			return true
		}
	}
	return false
}
