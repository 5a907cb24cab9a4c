package agent

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestWireGuardPeersAreNodesOfOtherClusters(t *testing.T) {
	v := NewView()
	v.Clusters["a"], v.Clusters["b"], v.Clusters["c"] = cluster("a"), cluster("b"), cluster("c")
	for _, n := range []*fedmeshv1.Node{{Cluster: "a", Name: "n1", WireguardPublicKey: "stored"}, {Cluster: "a", Name: "n2"},
		{Cluster: "c", Name: "z"}, {Cluster: "b", Name: "m1"}} {
		v.Nodes[NodeKey{Cluster: n.Cluster, Name: n.Name}] = n
	}
	cfg := WireGuardPeers(v, &fedmeshv1.Node{Cluster: "a", Name: "n1"})
	if cfg.Local.GetWireguardPublicKey() != "stored" {
		t.Errorf("local = %v, want the stored node", cfg.Local)
	}
	var peers []string
	for _, n := range cfg.Peers {
		peers = append(peers, n.Cluster+"/"+n.Name)
	}
	if want := []string{"b/m1", "c/z"}; !slices.Equal(peers, want) {
		t.Errorf("peers = %q, want %q", peers, want)
	}
	if len(cfg.Clusters) != 3 || cfg.Clusters[0].Name != "a" {
		t.Errorf("clusters = %v", cfg.Clusters)
	}
}

func TestBGPForUsesClusterSettingsAndNodeCIDRs(t *testing.T) {
	v := NewView()
	self := &fedmeshv1.Node{Cluster: "a", Name: "n1", PodCidrs: []string{"10.0.1.0/24"}}
	if got := BGPFor(v, self, netipMust("198.18.0.1")); got.Settings != nil || !slices.Equal(got.PodCIDRs, self.PodCidrs) {
		t.Errorf("without the cluster: %+v", got)
	}
	c := cluster("a", "10.0.0.0/16")
	c.Bgp = &fedmeshv1.BGPSettings{Enabled: true, LocalAsn: 65001}
	v.Clusters["a"] = c
	v.Nodes[NodeKey{Cluster: "a", Name: "n1"}] = &fedmeshv1.Node{Cluster: "a", Name: "n1", PodCidrs: []string{"10.0.2.0/24"}}
	got := BGPFor(v, self, netipMust("198.18.0.1"))
	if got.Settings.GetLocalAsn() != 65001 || !slices.Equal(got.PodCIDRs, []string{"10.0.2.0/24"}) || got.RouterID.String() != "198.18.0.1" {
		t.Errorf("BGPFor = %+v", got)
	}
}

func TestReadinessAllowsLagThenFails(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	type op struct {
		seen, enforced uint64
		at             float64
		ready          bool
	}
	tests := []struct {
		name string
		ops  []op
	}{
		{"not ready before the first revision", []op{{seen: 5, at: 0, ready: false}, {at: 100, ready: false}}},
		{"ready when caught up, even with nothing new for long", []op{{seen: 5, at: 0}, {enforced: 5, at: 0.1, ready: true}, {at: 1000, ready: true}}},
		{"behind within the lag is ready, beyond it is not", []op{
			{seen: 5, at: 0}, {enforced: 5, at: 0, ready: true},
			{seen: 6, at: 1, ready: true}, {at: 10.9, ready: true}, {at: 11.5, ready: false},
			{enforced: 6, at: 12, ready: true}}},
		{"catching up on part keeps the time of the oldest unenforced revision", []op{
			{seen: 5, at: 0}, {enforced: 5, at: 0, ready: true},
			{seen: 6, at: 1}, {seen: 9, at: 8}, {enforced: 6, at: 9, ready: true}, {at: 17.9, ready: true}, {at: 18.5, ready: false},
			{enforced: 9, at: 19, ready: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Readiness{Lag: 10 * time.Second}
			for i, o := range tt.ops {
				if o.seen != 0 {
					r.Seen(o.seen, at(o.at))
					continue
				}
				if o.enforced != 0 {
					r.Enforced(o.enforced)
				}
				if got, why := r.Ready(at(o.at)); got != o.ready {
					t.Errorf("op %d at %vs: ready = %v (%s), want %v", i, o.at, got, why, o.ready)
				}
			}
		})
	}
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }
