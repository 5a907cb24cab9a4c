package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/fedmesh/fedmesh/federation/services"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func svcEP(addr, node string, ready bool) *fedmeshv1.ServiceBackend {
	return &fedmeshv1.ServiceBackend{Address: addr, Node: node, Ready: ready}
}

func render(t *dataplane.ServiceTable) string {
	var lines []string
	for _, f := range t.Frontends {
		var bs []string
		for _, b := range f.Backends {
			bs = append(bs, fmt.Sprintf("%s:%d@%s/%s*%d", b.Addr, b.Port, b.Cluster, b.Node, b.Weight))
		}
		lines = append(lines, fmt.Sprintf("%s:%d/%d -> %s", f.Key.VIP, f.Key.Port, f.Key.Protocol, strings.Join(bs, ",")))
	}
	return strings.Join(lines, "\n")
}

func TestServiceTableTranslatesEachVIPAndPortToTheChosenBackendsOfItsFamily(t *testing.T) {
	redis := &fedmeshv1.ServiceImport{
		Namespace: "demo", Name: "redis", Type: fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP,
		Ips:      []string{"fd00:fed::5", "240.0.0.5"},
		Affinity: fedmeshv1.Affinity_AFFINITY_NONE,
		Ports: []*fedmeshv1.ServicePort{
			{Name: "redis", Port: 6379, Protocol: fedmeshv1.Protocol_PROTOCOL_TCP},
			{Name: "stats", Port: 9000, Protocol: fedmeshv1.Protocol_PROTOCOL_UDP, TargetPort: 9100},
		},
		Clusters: []*fedmeshv1.ClusterBackends{
			{Cluster: "a", Endpoints: []*fedmeshv1.ServiceBackend{svcEP("10.0.0.1", "n1", true), svcEP("fd00::1", "n1", true), svcEP("10.0.0.2", "n2", false)}},
			{Cluster: "b", Endpoints: []*fedmeshv1.ServiceBackend{svcEP("10.1.0.1", "m1", true)},
				Ports: []*fedmeshv1.ServicePort{{Name: "redis", Port: 6379, TargetPort: 7000}}},
		},
	}
	headless := &fedmeshv1.ServiceImport{Namespace: "demo", Name: "db", Type: fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS,
		Ports:    []*fedmeshv1.ServicePort{{Name: "pg", Port: 5432}},
		Clusters: []*fedmeshv1.ClusterBackends{{Cluster: "a", Addresses: []string{"10.0.0.9"}}}}
	noVIP := &fedmeshv1.ServiceImport{Namespace: "demo", Name: "new", Ports: []*fedmeshv1.ServicePort{{Name: "x", Port: 1}},
		Clusters: []*fedmeshv1.ClusterBackends{{Cluster: "a", Addresses: []string{"10.0.0.8"}}}}

	tests := []struct {
		name string
		live services.Liveness
		want string
	}{
		{"every ready backend of both clusters, at each cluster's target port", services.Liveness{}, strings.Join([]string{
			"240.0.0.5:6379/6 -> 10.0.0.1:6379@a/n1*1,10.1.0.1:7000@b/m1*1",
			"240.0.0.5:9000/17 -> 10.0.0.1:9100@a/n1*1,10.1.0.1:9100@b/m1*1",
			"fd00:fed::5:6379/6 -> fd00::1:6379@a/n1*1",
			"fd00:fed::5:9000/17 -> fd00::1:9100@a/n1*1",
		}, "\n")},
		{"an unreachable cluster's backends leave every frontend", services.Liveness{Unreachable: map[string]bool{"b": true}}, strings.Join([]string{
			"240.0.0.5:6379/6 -> 10.0.0.1:6379@a/n1*1",
			"240.0.0.5:9000/17 -> 10.0.0.1:9100@a/n1*1",
			"fd00:fed::5:6379/6 -> fd00::1:6379@a/n1*1",
			"fd00:fed::5:9000/17 -> fd00::1:9100@a/n1*1",
		}, "\n")},
		{"a frontend whose backends are all gone stays, empty, so connections fail instead of reaching a withdrawn backend",
			services.Liveness{Stale: map[services.NodeKey]bool{{Cluster: "a", Node: "n1"}: true}}, strings.Join([]string{
				"240.0.0.5:6379/6 -> 10.1.0.1:7000@b/m1*1",
				"240.0.0.5:9000/17 -> 10.1.0.1:9100@b/m1*1",
				"fd00:fed::5:6379/6 -> ",
				"fd00:fed::5:9000/17 -> ",
			}, "\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cat := services.BuildCatalog(42, []*fedmeshv1.ServiceImport{redis, headless, noVIP}, "a", tt.live)
			tab := ServiceTableOf(cat)
			if tab.Revision != 42 {
				t.Errorf("revision = %d, want 42", tab.Revision)
			}
			if got := render(tab); got != tt.want {
				t.Errorf("table:\n%s\nwant:\n%s", got, tt.want)
			}
			if s, ok := cat.Lookup("demo", "db"); !ok || !s.Headless || len(s.Choice.Backends) != 1 {
				t.Errorf("headless db in the catalog = %+v, %v; want it with its backend for DNS", s, ok)
			}
			view := DNSView(cat)
			db, ok := view.LookupService("demo", "db")
			if !ok || !db.Headless || len(db.Backends) != 1 || db.Backends[0].Cluster != "a" || db.Backends[0].Addr.String() != "10.0.0.9" {
				t.Errorf("DNS record of db = %+v, %v; want headless with a's backend", db, ok)
			}
			r, ok := view.LookupService("demo", "redis")
			if !ok || len(r.ClusterSetIPs) != 2 || len(r.Ports) != 2 {
				t.Fatalf("DNS record of redis = %+v, %v; want both ClusterSetIPs and both ports", r, ok)
			}
			for _, p := range r.Ports {
				want := map[string]map[string]uint16{"redis": {"b": 7000}, "stats": {"a": 9100, "b": 9100}}[p.Name]
				if len(p.TargetPorts) != len(want) || (p.Name == "redis" && p.TargetPorts["b"] != 7000) || (p.Name == "stats" && p.TargetPorts["a"] != 9100) {
					t.Errorf("port %s target ports %v, want %v", p.Name, p.TargetPorts, want)
				}
			}
		})
	}
}

func TestDNSAnswersOnlyVIPsOfAFamilyTheServiceHasBackendsOf(t *testing.T) {
	v4, v6 := netip.MustParseAddr("100.127.0.7"), netip.MustParseAddr("fd00:fed:c5e7::7")
	for _, tc := range []struct {
		name     string
		backends []*fedmeshv1.ServiceBackend
		want     []netip.Addr
	}{
		{"IPv4 only: no AAAA for the IPv6 VIP", []*fedmeshv1.ServiceBackend{{Address: "10.1.0.5", Ready: true}}, []netip.Addr{v4}},
		{"dual-stack: both", []*fedmeshv1.ServiceBackend{{Address: "10.1.0.5", Ready: true}, {Address: "fd00:10:1::5", Ready: true}}, []netip.Addr{v4, v6}},
		{"IPv6 only", []*fedmeshv1.ServiceBackend{{Address: "fd00:10:1::5"}}, []netip.Addr{v6}},
		{"every backend down keeps its family's answer", []*fedmeshv1.ServiceBackend{{Address: "10.1.0.5", Ready: false}}, []netip.Addr{v4}},
	} {
		imp := &fedmeshv1.ServiceImport{Clusters: []*fedmeshv1.ClusterBackends{{Cluster: "a", Endpoints: tc.backends}}}
		if got := answerableVIPs([]netip.Addr{v4, v6}, imp); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
