package agent

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/fedmesh/fedmesh/federation/policy"
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

func compareKeys(a, b objectKey) int {
	return cmp.Or(strings.Compare(a.cluster, b.cluster), strings.Compare(a.namespace, b.namespace), strings.Compare(a.name, b.name))
}

func compareEndpointKeys(a, b policy.EndpointKey) int {
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
		return cmp.Or(cmp.Compare(ka, kb), compareKeys(a.key(), b.key()))
	})
}

// WireGuardPeers builds the WireGuard port's input: the local node (the
// stored one when the view has it, else self), every cluster, and the nodes
// of every other cluster sorted by cluster and name. Pure.
func WireGuardPeers(v *View, self *fedmeshv1.Node) WireGuardConfig {
	local := self
	if n := v.Nodes[NodeKey{Cluster: self.GetCluster(), Name: self.GetName()}]; n != nil {
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
// ones the agent was started with), with the BGP peers and filters the
// view holds and the node and cluster they are resolved against. Without
// the cluster in the view the settings are nil, which the port treats as
// "speaker off" unless a peer object selects the node. Pure.
func BGPFor(v *View, self *fedmeshv1.Node, routerID netip.Addr) BGPConfig {
	cidrs := self.GetPodCidrs()
	if n := v.Nodes[NodeKey{Cluster: self.GetCluster(), Name: self.GetName()}]; n != nil && len(n.GetPodCidrs()) > 0 {
		cidrs = n.GetPodCidrs()
	}
	node := v.Nodes[NodeKey{Cluster: self.GetCluster(), Name: self.GetName()}]
	if node == nil {
		node = self
	}
	return BGPConfig{
		Settings: v.Clusters[self.GetCluster()].GetBgp(),
		RouterID: routerID,
		PodCIDRs: slices.Clone(cidrs),
		Cluster:  v.Clusters[self.GetCluster()],
		Node:     node,
		Peers:    v.BGPPeerList(),
		Filters:  v.BGPFilterList(),
	}
}
