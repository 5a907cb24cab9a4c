package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/fedmesh/fedmesh/bgp/peering"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// resolveServices adds to d the service addresses the node advertises,
// given the advertisements (peering.ClassService) of the peers selected
// for it (its policy's peers) and its cluster's services. Pure.
//
//   - A kind (load-balancer IP, external IP, cluster IP) is advertised
//     when a peer of the node lists it; its ranges are the union of what
//     those peers list (the cluster's service CIDRs for cluster IPs) and
//     go into d.Policy.ServiceRanges, where the speaker's policy sends a
//     kind only to the peers that list it.
//   - A Service whose externalTrafficPolicy is Local is advertised only by
//     a node that has a ready backend of it (ReadyNodes); every node
//     advertises the others. So the ToR sees one next hop per such node
//     (ECMP) and none once the last local backend goes.
//   - Each address is a host route (/32, /128) inside its kind's ranges;
//     an address outside them is a problem, not advertised. With cluster
//     IPs in SERVICE_CIDR mode the service CIDRs themselves are
//     advertised from every node, plus the host routes of Local Services.
func resolveServices(d *Desired, cluster *fedmeshv1.Cluster, node string, services []*fedmeshv1.ServiceAdvertisement) []string {
	var problems []string
	ranges := map[peering.ServiceKind][]netip.Prefix{}
	mode := peering.ClusterIPsOff
	for _, pp := range d.Policy.Peers {
		for _, a := range pp.Advertise {
			if a.Class != peering.ClassService {
				continue
			}
			ranges[peering.ServiceLoadBalancerIP] = append(ranges[peering.ServiceLoadBalancerIP], a.Service.LoadBalancerIPCIDRs...)
			ranges[peering.ServiceExternalIP] = append(ranges[peering.ServiceExternalIP], a.Service.ExternalIPCIDRs...)
			mode = max(mode, a.Service.ClusterIPs)
		}
	}
	var serviceCIDRs []netip.Prefix
	if mode != peering.ClusterIPsOff {
		for _, s := range cluster.GetServiceCidrs() {
			c, err := netip.ParsePrefix(s)
			if err != nil || c != c.Masked() {
				problems = append(problems, fmt.Sprintf("cluster service CIDR %q is not a canonical prefix; cluster IPs in it are not advertised", s))
				continue
			}
			serviceCIDRs = append(serviceCIDRs, c)
		}
		if len(serviceCIDRs) == 0 && len(cluster.GetServiceCidrs()) == 0 {
			problems = append(problems, "peers advertise cluster IPs but the cluster has no service CIDRs; set the cluster's serviceCidrs")
		}
		ranges[peering.ServiceClusterIP] = serviceCIDRs
	}
	for _, k := range peering.ServiceKinds {
		for _, c := range ranges[k] {
			d.Policy.ServiceRanges = append(d.Policy.ServiceRanges, ServiceRange{Kind: k, CIDR: c})
		}
	}
	if len(d.Policy.ServiceRanges) == 0 {
		return problems
	}
	seen := map[netip.Prefix]bool{}
	for _, p := range d.Prefixes {
		seen[p.CIDR] = true
	}
	add := func(c netip.Prefix) {
		if !seen[c] {
			seen[c] = true
			d.Prefixes = append(d.Prefixes, Prefix{CIDR: c})
		}
	}
	if mode == peering.ClusterIPsServiceCIDR {
		for _, c := range serviceCIDRs {
			add(c)
		}
	}
	svcs := slices.Clone(services)
	slices.SortFunc(svcs, func(a, b *fedmeshv1.ServiceAdvertisement) int {
		return strings.Compare(a.GetNamespace()+"/"+a.GetName(), b.GetNamespace()+"/"+b.GetName())
	})
	for _, s := range svcs {
		local := s.GetExternalTrafficPolicy() == fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL
		if local && !slices.Contains(s.GetReadyNodes(), node) {
			continue
		}
		kinds := []struct {
			kind  peering.ServiceKind
			addrs []string
		}{
			{peering.ServiceLoadBalancerIP, s.GetLoadBalancerIps()},
			{peering.ServiceExternalIP, s.GetExternalIps()},
		}
		if mode == peering.ClusterIPsAddresses || (mode == peering.ClusterIPsServiceCIDR && local) {
			kinds = append(kinds, struct {
				kind  peering.ServiceKind
				addrs []string
			}{peering.ServiceClusterIP, s.GetClusterIps()})
		}
		for _, k := range kinds {
			if len(ranges[k.kind]) == 0 {
				continue
			}
			for _, a := range k.addrs {
				ip, err := netip.ParseAddr(a)
				if err != nil || ip.Zone() != "" {
					problems = append(problems, fmt.Sprintf("service %s/%s: %s %q is not an IP address; not advertised", s.GetNamespace(), s.GetName(), k.kind, a))
					continue
				}
				ip = ip.Unmap()
				host := netip.PrefixFrom(ip, ip.BitLen())
				if !slices.ContainsFunc(ranges[k.kind], func(r netip.Prefix) bool { return r.Contains(ip) }) {
					if k.kind != peering.ServiceClusterIP {
						problems = append(problems, fmt.Sprintf("service %s/%s: %s %s is inside no peer's %s ranges; not advertised", s.GetNamespace(), s.GetName(), k.kind, ip, k.kind))
					}
					continue
				}
				add(host)
			}
		}
	}
	return problems
}
