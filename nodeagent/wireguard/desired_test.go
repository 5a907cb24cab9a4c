package wireguard

import (
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func cluster(name string, enabled bool, port, mtu, keepalive uint32) *fedmeshv1.Cluster {
	return &fedmeshv1.Cluster{Name: name, Wireguard: &fedmeshv1.WireGuardSettings{
		Enabled: enabled, ListenPort: port, Mtu: mtu, PersistentKeepaliveSeconds: keepalive,
	}}
}

func node(clusterName, name, ip string, key wgtypes.Key, port uint32, cidrs ...string) *fedmeshv1.Node {
	n := &fedmeshv1.Node{Cluster: clusterName, Name: name, UnderlayIp: ip, PodCidrs: cidrs, WireguardListenPort: port}
	if key != (wgtypes.Key{}) {
		n.WireguardPublicKey = key.PublicKey().String()
	}
	return n
}

func TestDesiredPeersAreNodesOfOtherClusters(t *testing.T) {
	self := testKey(1)
	local := node("east", "e1", "198.18.0.1", self, 0, "10.1.1.0/24")
	kE2, kW1, kW2, kS1, kN1 := testKey(2), testKey(3), testKey(4), testKey(5), testKey(6)
	clusters := []*fedmeshv1.Cluster{
		cluster("east", true, 0, 0, 0),
		cluster("west", true, 51999, 1380, 0),
		cluster("south", false, 0, 0, 0),
	}
	tests := []struct {
		name        string
		clusters    []*fedmeshv1.Cluster
		nodes       []*fedmeshv1.Node
		wantPeers   []Peer
		wantSkipped []string // "cluster/node: reason substring"
		wantPort    int
		wantMTU     int
	}{
		{
			name:     "same-cluster nodes are not peers",
			clusters: clusters,
			nodes:    []*fedmeshv1.Node{local, node("east", "e2", "198.18.0.2", kE2, 0, "10.1.2.0/24")},
			wantPort: DefaultListenPort, wantMTU: DefaultMTU,
		},
		{
			name:     "remote nodes become peers with the remote cluster's default port",
			clusters: clusters,
			nodes: []*fedmeshv1.Node{
				local,
				node("west", "w1", "198.18.1.1", kW1, 0, "10.2.1.0/24", "fd00:2:1::/64"),
				node("west", "w2", "198.18.1.2", kW2, 52000, "10.2.2.7/24"),
			},
			wantPeers: []Peer{
				{PublicKey: kW1.PublicKey(), Endpoint: ap("198.18.1.1:51999"), AllowedIPs: pfxs("10.2.1.0/24", "fd00:2:1::/64"), Cluster: "west", Node: "w1"},
				{PublicKey: kW2.PublicKey(), Endpoint: ap("198.18.1.2:52000"), AllowedIPs: pfxs("10.2.2.0/24"), Cluster: "west", Node: "w2"},
			},
			wantPort: DefaultListenPort, wantMTU: DefaultMTU,
		},
		{
			name:     "clusters with wireguard disabled are left out silently",
			clusters: clusters,
			nodes:    []*fedmeshv1.Node{local, node("south", "s1", "198.18.2.1", kS1, 0, "10.3.1.0/24")},
			wantPort: DefaultListenPort, wantMTU: DefaultMTU,
		},
		{
			name:     "local cluster disabled gives a device with no peers",
			clusters: []*fedmeshv1.Cluster{cluster("east", false, 0, 0, 0), cluster("west", true, 0, 0, 0)},
			nodes:    []*fedmeshv1.Node{local, node("west", "w1", "198.18.1.1", kW1, 0, "10.2.1.0/24")},
			wantPort: DefaultListenPort, wantMTU: DefaultMTU,
		},
		{
			name:     "local settings give port, MTU and keepalive",
			clusters: []*fedmeshv1.Cluster{cluster("east", true, 40000, 1300, 15), cluster("west", true, 0, 0, 0)},
			nodes:    []*fedmeshv1.Node{local, node("west", "w1", "198.18.1.1", kW1, 0, "10.2.1.0/24")},
			wantPeers: []Peer{
				{PublicKey: kW1.PublicKey(), Endpoint: ap("198.18.1.1:51871"), AllowedIPs: pfxs("10.2.1.0/24"), PersistentKeepalive: 15 * time.Second, Cluster: "west", Node: "w1"},
			},
			wantPort: 40000, wantMTU: 1300,
		},
		{
			name:     "unusable nodes are skipped with a reason",
			clusters: clusters,
			nodes: []*fedmeshv1.Node{
				local,
				node("west", "nokey", "198.18.1.1", wgtypes.Key{}, 0, "10.2.1.0/24"),
				node("west", "badip", "nope", kW1, 0, "10.2.2.0/24"),
				node("west", "nocidr", "198.18.1.3", kW2, 0),
				node("nowhere", "n1", "198.18.3.1", kN1, 0, "10.9.0.0/24"),
				node("west", "selfkey", "198.18.1.4", self, 0, "10.2.4.0/24"),
			},
			wantSkipped: []string{
				"nowhere/n1: not registered",
				"west/badip: bad underlay IP",
				"west/nocidr: no pod CIDRs",
				"west/nokey: no WireGuard public key",
				"west/selfkey: already used by node east/e1",
			},
			wantPort: DefaultListenPort, wantMTU: DefaultMTU,
		},
		{
			name:     "a duplicate key or overlapping CIDR loses to the node sorted first",
			clusters: clusters,
			nodes: []*fedmeshv1.Node{
				local,
				node("west", "w3", "198.18.1.3", kW1, 0, "10.2.3.0/24"),
				node("west", "w1", "198.18.1.1", kW1, 0, "10.2.1.0/24"),
				node("west", "w2", "198.18.1.2", kW2, 0, "10.2.1.128/25"),
			},
			wantPeers: []Peer{
				{PublicKey: kW1.PublicKey(), Endpoint: ap("198.18.1.1:51999"), AllowedIPs: pfxs("10.2.1.0/24"), Cluster: "west", Node: "w1"},
			},
			wantSkipped: []string{
				"west/w2: overlaps 10.2.1.0/24 of node west/w1",
				"west/w3: already used by node west/w1",
			},
			wantPort: DefaultListenPort, wantMTU: DefaultMTU,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, skipped := Desired(self, local, tt.clusters, tt.nodes)
			if cfg.PrivateKey != self || cfg.ListenPort != tt.wantPort || cfg.MTU != tt.wantMTU {
				t.Errorf("device = key %v port %d mtu %d, want own key, port %d mtu %d", cfg.PrivateKey == self, cfg.ListenPort, cfg.MTU, tt.wantPort, tt.wantMTU)
			}
			want := slices.Clone(tt.wantPeers)
			sortPeers(want)
			if !slices.EqualFunc(cfg.Peers, want, func(a, b Peer) bool { return a.equalState(b) && a.Cluster == b.Cluster && a.Node == b.Node }) {
				t.Errorf("peers =\n%+v\nwant\n%+v", cfg.Peers, want)
			}
			if len(skipped) != len(tt.wantSkipped) {
				t.Fatalf("skipped = %+v, want %v", skipped, tt.wantSkipped)
			}
			for i, s := range skipped {
				id, reason, _ := strings.Cut(tt.wantSkipped[i], ": ")
				if s.Cluster+"/"+s.Node != id || !strings.Contains(s.Reason, reason) {
					t.Errorf("skipped[%d] = %s/%s %q, want %s containing %q", i, s.Cluster, s.Node, s.Reason, id, reason)
				}
			}
		})
	}
}

func TestDeviceNameIsShortStableAndDistinct(t *testing.T) {
	names := map[string]string{}
	for _, c := range []string{"east", "west"} {
		for _, n := range []string{"node-1", "node-2", "a-very-long-kubernetes-node-name.example.com", "X"} {
			got := DeviceName(c, n)
			if len(got) > 15 || len(got) < 3 {
				t.Errorf("DeviceName(%q,%q) = %q: length %d, want 3..15", c, n, got, len(got))
			}
			if got != DeviceName(c, n) {
				t.Errorf("DeviceName(%q,%q) is not stable", c, n)
			}
			if prev, dup := names[got]; dup {
				t.Errorf("DeviceName(%q,%q) = %q, same as %s", c, n, got, prev)
			}
			names[got] = c + "/" + n
		}
	}
}
