package agent

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// kindOrder orders puts so that what others refer to comes first (a
// cluster's labels before its endpoints, endpoints before the policies that
// select them); deletes go first, in the reverse order.
func kindOrder(k fedmeshv1.ResourceKind) int {
	switch k {
	case fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER:
		return 0
	case fedmeshv1.ResourceKind_RESOURCE_KIND_NODE:
		return 1
	case fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT:
		return 2
	default:
		return 3
	}
}

func compareKeys(a, b Key) int {
	return cmp.Or(strings.Compare(a.Cluster, b.Cluster), strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

// sortChanges puts a snapshot diff in a deterministic, dependency-friendly
// order: deletes (policies, endpoints, nodes, clusters), then puts
// (clusters, nodes, endpoints, policies), each by key.
func sortChanges(cs []Change) {
	slices.SortFunc(cs, func(a, b Change) int {
		if a.Delete != b.Delete {
			if a.Delete {
				return -1
			}
			return 1
		}
		ka, kb := kindOrder(a.Kind), kindOrder(b.Kind)
		if a.Delete {
			ka, kb = -ka, -kb
		}
		return cmp.Or(cmp.Compare(ka, kb), compareKeys(a.Key, b.Key))
	})
}

// clusterCIDRs parses every cluster's pod CIDRs; a CIDR that does not parse
// is reported and left out.
func clusterCIDRs(clusters map[string]*fedmeshv1.Cluster) (map[string][]netip.Prefix, []BadInput) {
	out := make(map[string][]netip.Prefix, len(clusters))
	var bad []BadInput
	for name, c := range clusters {
		for _, s := range c.GetPodCidrs() {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				bad = append(bad, BadInput{Reason: ReasonBadClusterCIDR, Object: "cluster/" + name, Detail: fmt.Sprintf("pod CIDR %q: %v", s, err)})
				continue
			}
			out[name] = append(out[name], p.Masked())
		}
	}
	return out, bad
}

func inAny(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// BuildIPCache maps every endpoint address of every cluster to the
// endpoint's identity, as host prefixes sorted by address. It skips, and
// reports, what would let one cluster speak for another's addresses:
//   - an address that does not parse, or an endpoint with no identity;
//   - an address outside its own cluster's pod CIDRs (that includes every
//     address of an endpoint whose cluster the view does not have);
//   - an address two clusters claim (their pod CIDRs overlap, which the
//     control plane rejects, so only bad input gets here): neither wins, the
//     address stays out of the map (identity 0, "world").
//
// Two endpoints of one cluster with one address (a pod replaced before the
// old one's delete arrived) are not an error: the one changed last wins.
// Pure.
func BuildIPCache(clusters map[string]*fedmeshv1.Cluster, endpoints map[Key]*fedmeshv1.Endpoint) ([]IPCacheEntry, []BadInput) {
	cidrs, bad := clusterCIDRs(clusters)
	type claim struct {
		key      Key
		identity uint32
		rev      uint64
		conflict bool
	}
	claims := make(map[netip.Addr]*claim, len(endpoints))
	for k, ep := range endpoints {
		if ep.GetIdentity() == 0 {
			bad = append(bad, BadInput{Reason: ReasonNoIdentity, Object: "endpoint/" + k.String(), Detail: "identity 0 (not assigned)"})
			continue
		}
		for _, s := range ep.GetIps() {
			a, err := netip.ParseAddr(s)
			if err != nil {
				bad = append(bad, BadInput{Reason: ReasonBadIP, Object: "endpoint/" + k.String(), Detail: fmt.Sprintf("address %q: %v", s, err)})
				continue
			}
			a = a.Unmap()
			if !inAny(a, cidrs[k.Cluster]) {
				bad = append(bad, BadInput{Reason: ReasonIPOutside, Object: "endpoint/" + k.String(),
					Detail: fmt.Sprintf("address %s is outside cluster %q's pod CIDRs %v", a, k.Cluster, cidrs[k.Cluster])})
				continue
			}
			c := claims[a]
			switch {
			case c == nil:
				claims[a] = &claim{key: k, identity: ep.GetIdentity(), rev: ep.GetMeta().GetRevision()}
			case c.key.Cluster != k.Cluster:
				c.conflict = true
				first, second := c.key, k
				if compareKeys(first, second) > 0 {
					first, second = second, first
				}
				bad = append(bad, BadInput{Reason: ReasonDuplicateIP, Object: "endpoint/" + second.String(),
					Detail: fmt.Sprintf("address %s is also claimed by endpoint %s of another cluster; left out of the ipcache", a, first)})
			case ep.GetMeta().GetRevision() > c.rev || (ep.GetMeta().GetRevision() == c.rev && compareKeys(k, c.key) > 0):
				c.key, c.identity, c.rev = k, ep.GetIdentity(), ep.GetMeta().GetRevision()
			}
		}
	}
	out := make([]IPCacheEntry, 0, len(claims))
	for a, c := range claims {
		if c.conflict {
			continue
		}
		out = append(out, IPCacheEntry{Prefix: netip.PrefixFrom(a, a.BitLen()), Identity: c.identity})
	}
	slices.SortFunc(out, func(x, y IPCacheEntry) int { return x.Prefix.Addr().Compare(y.Prefix.Addr()) })
	slices.SortFunc(bad, func(x, y BadInput) int {
		return cmp.Or(strings.Compare(x.Reason, y.Reason), strings.Compare(x.Object, y.Object), strings.Compare(x.Detail, y.Detail))
	})
	return out, bad
}

// IsLocal reports whether an endpoint runs on this node.
func IsLocal(ep *fedmeshv1.Endpoint, cluster, node string) bool {
	return ep.GetCluster() == cluster && ep.GetNode() == node
}

// WireGuardPeers builds the WireGuard port's input: the local node (the
// stored one when the view has it, else self), every cluster, and the nodes
// of every other cluster sorted by cluster and name. Pure.
func WireGuardPeers(v *View, self *fedmeshv1.Node) WireGuardConfig {
	local := self
	if n := v.Nodes[Key{Cluster: self.GetCluster(), Name: self.GetName()}]; n != nil {
		local = n
	}
	cfg := WireGuardConfig{Local: local}
	for _, c := range v.Clusters {
		cfg.Clusters = append(cfg.Clusters, c)
	}
	slices.SortFunc(cfg.Clusters, func(a, b *fedmeshv1.Cluster) int { return strings.Compare(a.GetName(), b.GetName()) })
	for k, n := range v.Nodes {
		if k.Cluster != self.GetCluster() {
			cfg.Peers = append(cfg.Peers, n)
		}
	}
	slices.SortFunc(cfg.Peers, func(a, b *fedmeshv1.Node) int {
		return cmp.Or(strings.Compare(a.GetCluster(), b.GetCluster()), strings.Compare(a.GetName(), b.GetName()))
	})
	return cfg
}

// BGPFor builds the BGP port's input from this cluster's BGP settings and
// this node's pod CIDRs (the stored node's once the view has it, else the
// ones the agent was started with). Without the cluster in the view the
// settings are nil, which the port treats as "speaker off". Pure.
func BGPFor(v *View, self *fedmeshv1.Node, routerID netip.Addr) BGPConfig {
	cidrs := self.GetPodCidrs()
	if n := v.Nodes[Key{Cluster: self.GetCluster(), Name: self.GetName()}]; n != nil && len(n.GetPodCidrs()) > 0 {
		cidrs = n.GetPodCidrs()
	}
	return BGPConfig{
		Settings: v.Clusters[self.GetCluster()].GetBgp(),
		RouterID: routerID,
		PodCIDRs: slices.Clone(cidrs),
	}
}
