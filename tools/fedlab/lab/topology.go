// Package lab owns fedlab's multi-site federation on one machine: the plan
// of network namespaces, links and addresses (pure, tested without root),
// and the code that builds it with iproute2, starts the real daemons inside
// it and removes all of it again.
//
// Shape (underlay in 198.18.0.0/15, nothing in the root namespace):
//
//	core ns (bridge 198.18.0.0/24) ── mgmt ns 198.18.0.10 (control-plane replicas)
//	   │                         └─ tor-<c> ns 198.18.0.<c> (BIRD for cluster 1, FRR for 2)
//	tor-<c> ns (bridge 198.18.<c>.0/24, .1) ── node ns 198.18.<c>.<10+n> (agent, GoBGP, WireGuard)
//	node ns ── veth ── pod ns 10.<c>.<n>.<10+p>/32, as a routed CNI (Calico-style) sets it up
//	core ns ── outside ns 198.18.0.200, fd00:198:18::200 (the internet: unbound, servers in 198.19.0.0/24)
//
// Dual-stack: every cluster also has the ULA pod CIDR fd00:10:<c>::/48,
// every node fd00:10:<c>:<n>::/64 and every pod fd00:10:<c>:<n>::<10+p>/128.
// Each rack is dual-stack (fd00:198:18:<c>::/64) because GoBGP carries an
// IPv6 pod prefix on an IPv6 session, whose next hop the ToR installs;
// the core underlay (control plane, WireGuard endpoints) stays IPv4: the
// WireGuard tunnels carry IPv6 pod traffic inside IPv4 UDP, so no IPv6
// between sites is needed, as between sites joined over an IPv4 WAN.
package lab

import (
	"fmt"
	"net/netip"
)

// Config sizes the lab.
type Config struct {
	// Name prefixes every namespace and link so several labs (or tests) can
	// coexist; at most 6 characters.
	Name     string
	Clusters int
	Nodes    int // per cluster
	Pods     int // per node
	// BinDir holds the fedmesh binaries (make build puts them in ./bin).
	BinDir string
	// NoKube publishes endpoints without a kube-apiserver per cluster.
	NoKube bool
	// Kubelet makes every cluster a real Kubernetes cluster: kubelets and
	// containerd on the nodes, fedmesh installed with its Helm chart, the
	// demo workloads as Deployments (kubelet.go). Pods is then unused.
	Kubelet bool `json:",omitempty"`
	// ImagesDir holds the images (make images) the kubelet lab runs;
	// empty: .cache/images beside the Kubernetes binaries.
	ImagesDir string `json:",omitempty"`
}

// Topology is the whole lab as data.
type Topology struct {
	Name     string
	Core     string // namespace holding the core bridge
	Mgmt     Host
	Clusters []Cluster
	// Outside is the world beyond the clusters (outside.go): a real DNS
	// server and the servers its names resolve to, reached from the pods
	// through their ToRs, never through the root namespace.
	Outside Outside
}

// Host is a namespace with one underlay address.
type Host struct {
	NS      string
	Addr    netip.Prefix // underlay address and its subnet
	Gateway netip.Addr   // default route (invalid: none)
	// Addr6 and Gateway6 are the IPv6 rack address and default route of a
	// node (invalid elsewhere).
	Addr6    netip.Prefix
	Gateway6 netip.Addr
}

// Cluster is one member cluster: its ToR and nodes.
type Cluster struct {
	Name     string
	Index    int // 1-based
	ASN      uint32
	ToRASN   uint32
	ToRKind  string // "bird" or "frr"
	ToR      Host   // core-side address
	RackAddr netip.Prefix
	PodCIDR  netip.Prefix
	// RackAddr6 is the ToR's IPv6 rack address, its BGP address for the
	// nodes' IPv6 sessions; PodCIDR6 the cluster's IPv6 pod CIDR.
	RackAddr6 netip.Prefix
	PodCIDR6  netip.Prefix
	// CoreAddr6 is the ToR's IPv6 address on the core bridge, its next hop
	// for the outside namespace's IPv6 traffic to the cluster.
	CoreAddr6 netip.Prefix
	// DNS are the cluster's DNS service addresses (kube-dns's ClusterIPs),
	// which the pods query and the agents redirect to their resolver.
	DNS   []netip.Addr
	Nodes []Node
}

// PodCIDRs are the cluster's pod CIDRs, IPv4 first.
func (c Cluster) PodCIDRs() []netip.Prefix { return []netip.Prefix{c.PodCIDR, c.PodCIDR6} }

// Node is a node namespace with its pods.
type Node struct {
	Name    string
	Host    Host
	PodCIDR netip.Prefix
	// PodCIDR6 is the node's IPv6 pod prefix, inside its cluster's PodCIDR6.
	PodCIDR6 netip.Prefix
	WGPort   uint16
	Pods     []Pod
}

// PodCIDRs are the node's pod prefixes, IPv4 first.
func (n Node) PodCIDRs() []netip.Prefix { return []netip.Prefix{n.PodCIDR, n.PodCIDR6} }

// Pod is a pod namespace behind a veth into its node.
type Pod struct {
	Name      string
	Namespace string // Kubernetes namespace
	NS        string // network namespace
	IP        netip.Addr
	IP6       netip.Addr // the pod's IPv6 address
	HostVeth  string     // node side
	PodVeth   string     // pod side (renamed eth0 inside)
	Labels    map[string]string
}

// IPs are the pod's addresses, IPv4 first, as Kubernetes lists podIPs.
func (p Pod) IPs() []netip.Addr { return []netip.Addr{p.IP, p.IP6} }

// Addr returns the pod's address of one family (4 or 6).
func (p Pod) Addr(family int) netip.Addr {
	if family == 6 {
		return p.IP6
	}
	return p.IP
}

// v6 builds an IPv6 address from 16-bit groups, the rest zero.
func v6(groups ...uint16) netip.Addr {
	var b [16]byte
	for i, g := range groups {
		b[2*i], b[2*i+1] = byte(g>>8), byte(g)
	}
	return netip.AddrFrom16(b)
}

// v6Last is v6(groups...) with its last group set to last.
func v6Last(last uint16, groups ...uint16) netip.Addr {
	b := v6(groups...).As16()
	b[14], b[15] = byte(last>>8), byte(last)
	return netip.AddrFrom16(b)
}

// Plan computes the lab's topology. It is deterministic: the same Config
// gives the same names and addresses, so `fedlab down` can find everything
// from the Config alone after a crash.
func Plan(cfg Config) (*Topology, error) {
	switch {
	case cfg.Name == "" || len(cfg.Name) > 6:
		return nil, fmt.Errorf("lab name %q: want 1 to 6 characters", cfg.Name)
	case cfg.Clusters < 1 || cfg.Clusters > 8:
		return nil, fmt.Errorf("clusters = %d: want 1 to 8", cfg.Clusters)
	case cfg.Nodes < 1 || cfg.Nodes > 32:
		return nil, fmt.Errorf("nodes = %d: want 1 to 32 per cluster", cfg.Nodes)
	case cfg.Pods < 0 || cfg.Pods > 32:
		return nil, fmt.Errorf("pods = %d: want 0 to 32 per node", cfg.Pods)
	}
	n := cfg.Name
	t := &Topology{
		Name: n,
		Core: n + "-core",
		Mgmt: Host{NS: n + "-mgmt", Addr: netip.MustParsePrefix("198.18.0.10/24")},
		Outside: Outside{Host: Host{
			NS:    n + "-out",
			Addr:  netip.MustParsePrefix("198.18.0.200/24"),
			Addr6: netip.MustParsePrefix("fd00:198:18::200/64"),
		}},
	}
	for c := 1; c <= cfg.Clusters; c++ {
		cl := Cluster{
			Name:     fmt.Sprintf("cluster-%c", 'a'+c-1),
			Index:    c,
			ASN:      uint32(64600 + c),
			ToRASN:   uint32(65000 + c),
			ToRKind:  map[bool]string{true: "bird", false: "frr"}[c%2 == 1],
			ToR:      Host{NS: fmt.Sprintf("%s-tor%d", n, c), Addr: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(c)}), 24)},
			RackAddr: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(c), 1}), 24),
			PodCIDR:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(c), 0, 0}), 16),
			// 0x198 and 0x18 echo the IPv4 underlay's 198.18.
			RackAddr6: netip.PrefixFrom(v6Last(1, 0xfd00, 0x198, 0x18, uint16(c)), 64),
			PodCIDR6:  netip.PrefixFrom(v6(0xfd00, 0x10, uint16(c)), 48),
			CoreAddr6: netip.PrefixFrom(v6Last(uint16(c), 0xfd00, 0x198, 0x18), 64),
			DNS:       ClusterDNS,
		}
		for i := 1; i <= cfg.Nodes; i++ {
			nd := Node{
				Name: fmt.Sprintf("%s-node%d", cl.Name, i),
				Host: Host{
					NS:       fmt.Sprintf("%s-c%dn%d", n, c, i),
					Addr:     netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(c), byte(10 + i)}), 24),
					Gateway:  cl.RackAddr.Addr(),
					Addr6:    netip.PrefixFrom(v6Last(uint16(10+i), 0xfd00, 0x198, 0x18, uint16(c)), 64),
					Gateway6: cl.RackAddr6.Addr(),
				},
				PodCIDR:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(c), byte(i), 0}), 24),
				PodCIDR6: netip.PrefixFrom(v6(0xfd00, 0x10, uint16(c), uint16(i)), 64),
				WGPort:   51871,
			}
			for p := 1; p <= cfg.Pods; p++ {
				app := []string{"web", "api", "db"}[(p-1)%3]
				nd.Pods = append(nd.Pods, Pod{
					Name:      fmt.Sprintf("%s-%c%d-%d", app, 'a'+c-1, i, p),
					Namespace: "demo",
					NS:        fmt.Sprintf("%s-c%dn%dp%d", n, c, i, p),
					IP:        netip.AddrFrom4([4]byte{10, byte(c), byte(i), byte(10 + p)}),
					IP6:       v6Last(uint16(10+p), 0xfd00, 0x10, uint16(c), uint16(i)),
					HostVeth:  fmt.Sprintf("%sc%dn%dp%d", n, c, i, p),
					PodVeth:   fmt.Sprintf("%sc%dn%dp%dx", n, c, i, p),
					Labels:    map[string]string{"app": app},
				})
			}
			cl.Nodes = append(cl.Nodes, nd)
		}
		t.Clusters = append(t.Clusters, cl)
	}
	return t, nil
}

// Namespaces lists every network namespace of the lab, in creation order.
func (t *Topology) Namespaces() []string {
	out := []string{t.Core, t.Mgmt.NS, t.Outside.NS}
	for _, c := range t.Clusters {
		out = append(out, c.ToR.NS)
		for _, n := range c.Nodes {
			out = append(out, n.Host.NS)
			for _, p := range n.Pods {
				out = append(out, p.NS)
			}
		}
	}
	return out
}

// Pod finds a pod by "cluster/namespace/name" or by its name alone.
func (t *Topology) Pod(ref string) (*Cluster, *Node, *Pod, bool) {
	for ci := range t.Clusters {
		c := &t.Clusters[ci]
		for ni := range c.Nodes {
			n := &c.Nodes[ni]
			for pi := range n.Pods {
				p := &n.Pods[pi]
				if ref == p.Name || ref == c.Name+"/"+p.Namespace+"/"+p.Name {
					return c, n, p, true
				}
			}
		}
	}
	return nil, nil, nil, false
}
