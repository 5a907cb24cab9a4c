package services

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func ep(addr, node string, ready bool) *fedmeshv1.ServiceBackend {
	return &fedmeshv1.ServiceBackend{Address: addr, Node: node, Ready: ready}
}

func cluster(name string, eps ...*fedmeshv1.ServiceBackend) *fedmeshv1.ClusterBackends {
	return &fedmeshv1.ClusterBackends{Cluster: name, Endpoints: eps}
}

func TestChooseHonoursAffinityReadinessAndLiveness(t *testing.T) {
	a := cluster("a", ep("10.1.0.1", "a1", true), ep("10.1.0.2", "a2", true), ep("10.1.0.3", "a1", false))
	b := cluster("b", ep("10.2.0.1", "b1", true))
	aDown := cluster("a", ep("10.1.0.3", "a1", false))
	legacy := &fedmeshv1.ClusterBackends{Cluster: "c", Addresses: []string{"10.3.0.1"}}
	none := Liveness{}
	tests := []struct {
		name         string
		affinity     fedmeshv1.Affinity
		clusters     []*fedmeshv1.ClusterBackends
		live         Liveness
		want         string // addr@cluster, sorted
		wantFailover bool
		wantWithdraw []string
	}{
		{"none spreads over every ready backend of every cluster", fedmeshv1.Affinity_AFFINITY_UNSPECIFIED,
			[]*fedmeshv1.ClusterBackends{a, b}, none, "10.1.0.1@a 10.1.0.2@a 10.2.0.1@b", false, nil},
		{"local keeps the importing cluster's ready backends", fedmeshv1.Affinity_AFFINITY_LOCAL,
			[]*fedmeshv1.ClusterBackends{a, b}, none, "10.1.0.1@a 10.1.0.2@a", false, nil},
		{"local fails over to remote when no own backend is ready", fedmeshv1.Affinity_AFFINITY_LOCAL,
			[]*fedmeshv1.ClusterBackends{aDown, b}, none, "10.2.0.1@b", true, nil},
		{"remote prefers the other clusters", fedmeshv1.Affinity_AFFINITY_REMOTE,
			[]*fedmeshv1.ClusterBackends{a, b}, none, "10.2.0.1@b", false, nil},
		{"remote falls back to local when the others are unreachable", fedmeshv1.Affinity_AFFINITY_REMOTE,
			[]*fedmeshv1.ClusterBackends{a, b}, Liveness{Unreachable: map[string]bool{"b": true}}, "10.1.0.1@a 10.1.0.2@a", true, []string{"b"}},
		{"an unreachable cluster's backends are withdrawn", fedmeshv1.Affinity_AFFINITY_NONE,
			[]*fedmeshv1.ClusterBackends{a, b}, Liveness{Unreachable: map[string]bool{"a": true}}, "10.2.0.1@b", false, []string{"a"}},
		{"a stale node's backends are dropped", fedmeshv1.Affinity_AFFINITY_NONE,
			[]*fedmeshv1.ClusterBackends{a, b}, Liveness{Stale: map[NodeKey]bool{{"a", "a1"}: true}}, "10.1.0.2@a 10.2.0.1@b", false, nil},
		{"local fails over when the own backends' nodes are stale", fedmeshv1.Affinity_AFFINITY_LOCAL,
			[]*fedmeshv1.ClusterBackends{a, b}, Liveness{Stale: map[NodeKey]bool{{"a", "a1"}: true, {"a", "a2"}: true}}, "10.2.0.1@b", true, nil},
		{"a stale node of the same name in another cluster does not count", fedmeshv1.Affinity_AFFINITY_NONE,
			[]*fedmeshv1.ClusterBackends{b}, Liveness{Stale: map[NodeKey]bool{{"a", "b1"}: true}}, "10.2.0.1@b", false, nil},
		{"an export without endpoint details counts its ready addresses", fedmeshv1.Affinity_AFFINITY_NONE,
			[]*fedmeshv1.ClusterBackends{legacy}, none, "10.3.0.1@c", false, nil},
		{"nothing live leaves no backend and no failover", fedmeshv1.Affinity_AFFINITY_LOCAL,
			[]*fedmeshv1.ClusterBackends{aDown}, Liveness{Unreachable: map[string]bool{"b": true}}, "", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			imp := &fedmeshv1.ServiceImport{Namespace: "shop", Name: "cart", Affinity: tt.affinity, Clusters: tt.clusters}
			ch := Choose(imp, "a", tt.live)
			var got []string
			for _, b := range ch.Backends {
				if b.Weight != 1 {
					t.Errorf("backend %v weighs %d, want 1", b.Addr, b.Weight)
				}
				got = append(got, fmt.Sprintf("%s@%s", b.Addr, b.Cluster))
			}
			if g := strings.Join(got, " "); g != tt.want {
				t.Errorf("backends = %q, want %q", g, tt.want)
			}
			if ch.FailedOver != tt.wantFailover {
				t.Errorf("FailedOver = %v, want %v", ch.FailedOver, tt.wantFailover)
			}
			if !slices.Equal(ch.Withdrawn, tt.wantWithdraw) {
				t.Errorf("Withdrawn = %v, want %v", ch.Withdrawn, tt.wantWithdraw)
			}
		})
	}
}

func TestLivenessOfReadsClusterStatus(t *testing.T) {
	l := LivenessOf([]*fedmeshv1.Cluster{
		{Name: "a", Status: &fedmeshv1.ClusterStatus{Reachability: fedmeshv1.Reachability_REACHABILITY_UNREACHABLE}},
		{Name: "b", Status: &fedmeshv1.ClusterStatus{Reachability: fedmeshv1.Reachability_REACHABILITY_REACHABLE, StaleNodes: []string{"n1"}}},
		{Name: "c"},
	})
	if !l.Unreachable["a"] || l.Unreachable["b"] || l.Unreachable["c"] {
		t.Errorf("Unreachable = %v, want only a", l.Unreachable)
	}
	if !l.Stale[NodeKey{"b", "n1"}] || len(l.Stale) != 1 {
		t.Errorf("Stale = %v, want only b/n1", l.Stale)
	}
}

func TestAggregateKeepsPerClusterTargetPortsAndOldestAffinity(t *testing.T) {
	east := export("east", 5, setIP, []string{"10.1.0.1"}, &fedmeshv1.ServicePort{Name: "http", Port: 80, Protocol: tcp, TargetPort: 8080})
	east.Affinity = fedmeshv1.Affinity_AFFINITY_LOCAL
	west := export("west", 9, setIP, []string{"10.2.0.1"}, &fedmeshv1.ServicePort{Name: "http", Port: 80, Protocol: tcp, TargetPort: 9090})
	west.Affinity = fedmeshv1.Affinity_AFFINITY_REMOTE
	west.Endpoints = []*fedmeshv1.ServiceBackend{ep("10.2.0.1", "w1", true), ep("10.2.0.9", "w2", false)}
	imp := Aggregate([]*fedmeshv1.ServiceExport{west, east}).Import
	if imp.GetAffinity() != fedmeshv1.Affinity_AFFINITY_LOCAL {
		t.Errorf("import affinity = %v, want the oldest export's (local)", imp.GetAffinity())
	}
	p := imp.GetPorts()[0]
	if got := TargetPort(imp, "east", p); got != 8080 {
		t.Errorf("east target = %d, want 8080", got)
	}
	if got := TargetPort(imp, "west", p); got != 9090 {
		t.Errorf("west target = %d, want 9090", got)
	}
	if n := len(imp.GetClusters()[1].GetEndpoints()); n != 2 {
		t.Errorf("west carries %d endpoints, want 2 (ready and not)", n)
	}
	if got := imp.GetClusters()[1].GetAffinity(); got != fedmeshv1.Affinity_AFFINITY_REMOTE {
		t.Errorf("west's own affinity = %v, want remote", got)
	}
}

func TestAllocateVIP(t *testing.T) {
	k := Key{"shop", "cart"}
	tests := []struct {
		name  string
		cidr  string
		inUse int // how many of the CIDR's addresses are taken, from the one k hashes to
		full  bool
	}{
		{"ipv4 gets an address inside the CIDR", "240.0.0.0/16", 0, false},
		{"ipv6 gets an address inside the CIDR", "fd00:fed::/108", 0, false},
		{"a taken address probes to the next free one", "240.0.0.0/24", 3, false},
		{"a full CIDR fails", "240.0.0.0/30", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cidr := netip.MustParsePrefix(tt.cidr)
			first, ok := AllocateVIP(cidr, k, func(netip.Addr) bool { return false })
			if !ok || !cidr.Contains(first) {
				t.Fatalf("first = %v, %v; want an address in %v", first, ok, cidr)
			}
			used := map[netip.Addr]bool{}
			for a, i := first, 0; i < tt.inUse; a, i = a.Next(), i+1 {
				used[a] = true
			}
			if tt.full {
				for a := cidr.Addr(); cidr.Contains(a); a = a.Next() {
					used[a] = true
				}
			}
			got, ok := AllocateVIP(cidr, k, func(a netip.Addr) bool { return used[a] })
			if tt.full {
				if ok {
					t.Fatalf("got %v in a full CIDR", got)
				}
				return
			}
			if !ok || used[got] || !cidr.Contains(got) {
				t.Fatalf("got %v, %v; want a free address in %v", got, ok, cidr)
			}
			if cidr.Addr().Is4() && (got == cidr.Addr() || got.Next() == netip.Addr{} || !cidr.Contains(got.Next()) && cidr.Bits() < 31) {
				t.Errorf("got %v: the network or broadcast address", got)
			}
			again, _ := AllocateVIP(cidr, k, func(a netip.Addr) bool { return used[a] })
			if again != got {
				t.Errorf("not deterministic: %v then %v", got, again)
			}
		})
	}
}
