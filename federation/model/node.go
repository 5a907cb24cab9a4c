package model

import (
	"encoding/base64"
	"fmt"
	"net/netip"

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
				errs = append(errs, field.Invalid(podPath.Index(i), pfx.String(), fmt.Sprintf("is not inside any pod CIDR of cluster %q %v", cluster.GetName(), cluster.GetPodCidrs())))
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
