package wireguard

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Defaults the control plane's WireGuardSettings document for zero values.
const (
	DefaultListenPort = 51871
	DefaultMTU        = 1420
)

// Config is the state a node's device should have: its key, where it
// listens, and its peers. Peers are sorted by public key; routes are implied
// (every peer's AllowedIPs is routed through the device).
type Config struct {
	PrivateKey wgtypes.Key
	ListenPort int
	MTU        int
	Peers      []Peer
}

// Peer is one remote node the device tunnels to.
type Peer struct {
	PublicKey wgtypes.Key
	// Endpoint is the remote node's underlay address and WireGuard port.
	Endpoint netip.AddrPort
	// AllowedIPs are the remote node's pod CIDRs: what may come from the peer
	// and what is sent to it. Sorted and masked.
	AllowedIPs []netip.Prefix
	// PersistentKeepalive is 0 (off) unless the cluster asks for it.
	PersistentKeepalive time.Duration
	// Cluster and Node name the remote node; they are for logs and status
	// only and are not part of the device state.
	Cluster, Node string
}

// equalState reports whether p and o configure the device identically
// (ignoring the names, which the device does not store).
func (p Peer) equalState(o Peer) bool {
	return p.PublicKey == o.PublicKey && p.Endpoint == o.Endpoint &&
		p.PersistentKeepalive == o.PersistentKeepalive && slices.Equal(p.AllowedIPs, o.AllowedIPs)
}

// Skipped says why a node did not become a peer, so the agent can log it and
// count it instead of failing the whole revision.
type Skipped struct {
	Cluster, Node string
	Reason        string
}

// Desired computes the device config of the local node from the
// federation's clusters and nodes: its peers are the nodes of every other
// cluster that has WireGuard enabled and has published a key, each with its
// pod CIDRs as AllowedIPs. A node that cannot be a peer (no key yet, bad
// address, a key or CIDR another peer already has) is skipped and reported.
// When the local cluster has WireGuard disabled the config has no peers.
// Pure: the same input always gives the same Config.
func Desired(key wgtypes.Key, local *fedmeshv1.Node, clusters []*fedmeshv1.Cluster, nodes []*fedmeshv1.Node) (Config, []Skipped) {
	byName := make(map[string]*fedmeshv1.Cluster, len(clusters))
	for _, c := range clusters {
		byName[c.GetName()] = c
	}
	localWG := byName[local.GetCluster()].GetWireguard()
	cfg := Config{
		PrivateKey: key,
		ListenPort: listenPort(local, localWG),
		MTU:        int(cmp.Or(localWG.GetMtu(), DefaultMTU)),
	}

	if !localWG.GetEnabled() {
		return cfg, nil // the local cluster does not tunnel: a device with no peers
	}
	sorted := slices.Clone(nodes)
	slices.SortFunc(sorted, func(a, b *fedmeshv1.Node) int {
		return cmp.Or(cmp.Compare(a.GetCluster(), b.GetCluster()), cmp.Compare(a.GetName(), b.GetName()))
	})
	var skipped []Skipped
	skip := func(n *fedmeshv1.Node, format string, args ...any) {
		skipped = append(skipped, Skipped{Cluster: n.GetCluster(), Node: n.GetName(), Reason: fmt.Sprintf(format, args...)})
	}
	seenKeys := map[wgtypes.Key]string{key.PublicKey(): local.GetCluster() + "/" + local.GetName()}
	var claimed []netip.Prefix
	owner := map[netip.Prefix]string{}
	for _, n := range sorted {
		if n.GetCluster() == local.GetCluster() {
			continue
		}
		c, ok := byName[n.GetCluster()]
		if !ok {
			skip(n, "cluster %q is not registered", n.GetCluster())
			continue
		}
		if !c.GetWireguard().GetEnabled() {
			continue // the remote cluster does not tunnel; not an error
		}
		if n.GetWireguardPublicKey() == "" {
			skip(n, "no WireGuard public key published yet")
			continue
		}
		pub, err := wgtypes.ParseKey(n.GetWireguardPublicKey())
		if err != nil {
			skip(n, "bad WireGuard public key: %v", err)
			continue
		}
		name := n.GetCluster() + "/" + n.GetName()
		if other, dup := seenKeys[pub]; dup {
			skip(n, "public key already used by node %s", other)
			continue
		}
		ip, err := netip.ParseAddr(n.GetUnderlayIp())
		if err != nil {
			skip(n, "bad underlay IP %q: %v", n.GetUnderlayIp(), err)
			continue
		}
		allowed, reason := podCIDRs(n, claimed, owner)
		if reason != "" {
			skip(n, "%s", reason)
			continue
		}
		seenKeys[pub] = name
		for _, p := range allowed {
			claimed = append(claimed, p)
			owner[p] = name
		}
		cfg.Peers = append(cfg.Peers, Peer{
			PublicKey:           pub,
			Endpoint:            netip.AddrPortFrom(ip.Unmap(), uint16(listenPort(n, c.GetWireguard()))),
			AllowedIPs:          allowed,
			PersistentKeepalive: time.Duration(localWG.GetPersistentKeepaliveSeconds()) * time.Second,
			Cluster:             n.GetCluster(),
			Node:                n.GetName(),
		})
	}
	sortPeers(cfg.Peers)
	return cfg, skipped
}

// podCIDRs parses a node's pod CIDRs and checks that none overlaps a CIDR a
// previous peer claimed: WireGuard routes each address to one peer only.
func podCIDRs(n *fedmeshv1.Node, claimed []netip.Prefix, owner map[netip.Prefix]string) ([]netip.Prefix, string) {
	if len(n.GetPodCidrs()) == 0 {
		return nil, "no pod CIDRs"
	}
	var out []netip.Prefix
	for _, s := range n.GetPodCidrs() {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Sprintf("bad pod CIDR %q: %v", s, err)
		}
		p = p.Masked()
		for _, c := range claimed {
			if c.Overlaps(p) {
				return nil, fmt.Sprintf("pod CIDR %s overlaps %s of node %s", p, c, owner[c])
			}
		}
		out = append(out, p)
	}
	sortPrefixes(out)
	return slices.Compact(out), ""
}

func listenPort(n *fedmeshv1.Node, wg *fedmeshv1.WireGuardSettings) int {
	return int(cmp.Or(n.GetWireguardListenPort(), wg.GetListenPort(), DefaultListenPort))
}

func sortPeers(ps []Peer) {
	slices.SortFunc(ps, func(a, b Peer) int { return strings.Compare(string(a.PublicKey[:]), string(b.PublicKey[:])) })
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

func sortPrefixes(ps []netip.Prefix) { slices.SortFunc(ps, comparePrefix) }

// DeviceName derives the name of a node's device: "fm" plus the start of the
// node name plus a hash of cluster and node, at most 15 bytes (IFNAMSIZ-1).
// The hash keeps names unique across clusters and network namespaces, which
// matters because wireguard-go's UAPI socket path is machine-wide.
func DeviceName(cluster, node string) string {
	sum := sha256.Sum256([]byte(cluster + "/" + node))
	h := hex.EncodeToString(sum[:])[:8]
	var b strings.Builder
	for _, r := range node {
		if b.Len() == 4 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
	}
	return "fm" + b.String() + "-" + h
}
