package bgp

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/fedmesh/fedmesh/bgp/peering"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestResolveAdvertisesServiceAddressesByPolicyKindAndRange(t *testing.T) {
	svc := func(name string, local bool, ready []string, lb, ext, cluster string) *fedmeshv1.ServiceAdvertisement {
		s := &fedmeshv1.ServiceAdvertisement{Cluster: "a", Namespace: "shop", Name: name, ReadyNodes: ready}
		if local {
			s.ExternalTrafficPolicy = fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL
		}
		for _, x := range []struct {
			v   string
			dst *[]string
		}{{lb, &s.LoadBalancerIps}, {ext, &s.ExternalIps}, {cluster, &s.ClusterIps}} {
			if x.v != "" {
				*x.dst = []string{x.v}
			}
		}
		return s
	}
	services := []*fedmeshv1.ServiceAdvertisement{
		svc("local-here", true, []string{"n1"}, "203.0.113.10", "", "10.96.0.10"),
		svc("local-elsewhere", true, []string{"n2"}, "203.0.113.11", "", "10.96.0.11"),
		svc("cluster", false, nil, "203.0.113.20", "192.0.2.5", "10.96.0.20"),
		svc("outside", false, nil, "198.51.100.1", "", ""),
		svc("v6", false, nil, "2001:db8::7", "", ""),
	}
	addrs := func(s *fedmeshv1.BGPServiceAddresses) *fedmeshv1.BGPPeerConfig {
		return &fedmeshv1.BGPPeerConfig{Name: "tor", Address: "198.18.0.1", Asn: 65000, Advertisements: []*fedmeshv1.BGPAdvertisement{
			{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_POD_CIDR},
			{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_SERVICE, Service: s}}}
	}
	lbOnly := &fedmeshv1.BGPServiceAddresses{LoadBalancerIpCidrs: []string{"203.0.113.0/24", "2001:db8::/64"}}
	for _, tc := range []struct {
		name     string
		peer     *fedmeshv1.BGPPeerConfig
		want     []string // service prefixes of node n1
		problems []string // substrings, in order
	}{
		{"no SERVICE class: no service prefix", &fedmeshv1.BGPPeerConfig{Name: "tor", Address: "198.18.0.1", Asn: 65000}, nil, nil},
		{"LB ranges: Local only where ready, Cluster everywhere, outside refused", addrs(lbOnly),
			[]string{"203.0.113.10/32", "203.0.113.20/32", "2001:db8::7/128"}, []string{"198.51.100.1 is inside no peer's"}},
		{"external IPs", addrs(&fedmeshv1.BGPServiceAddresses{ExternalIpCidrs: []string{"192.0.2.0/24"}}), []string{"192.0.2.5/32"}, nil},
		{"cluster IPs per address follow the traffic policy", addrs(&fedmeshv1.BGPServiceAddresses{ClusterIps: fedmeshv1.BGPClusterIPAdvertisement_BGP_CLUSTER_IP_ADVERTISEMENT_ADDRESSES}),
			[]string{"10.96.0.10/32", "10.96.0.20/32"}, nil},
		{"service CIDR from every node plus Local host routes", addrs(&fedmeshv1.BGPServiceAddresses{ClusterIps: fedmeshv1.BGPClusterIPAdvertisement_BGP_CLUSTER_IP_ADVERTISEMENT_SERVICE_CIDR}),
			[]string{"10.96.0.0/16", "10.96.0.10/32"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Resolve(NodeBGP{
				Cluster:  &fedmeshv1.Cluster{Name: "a", ServiceCidrs: []string{"10.96.0.0/16"}, Bgp: &fedmeshv1.BGPSettings{Enabled: true, LocalAsn: 65010}},
				Node:     &fedmeshv1.Node{Cluster: "a", Name: "n1"},
				RouterID: netip.MustParseAddr("198.18.0.2"), PodCIDRs: []string{"10.244.1.0/24"},
				Peers: []*fedmeshv1.BGPPeerConfig{tc.peer}, Services: services,
			})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range r.Desired.Prefixes {
				if p.CIDR.String() != "10.244.1.0/24" {
					got = append(got, p.CIDR.String())
				}
			}
			slices.Sort(got)
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Errorf("service prefixes %v, want %v", got, want)
			}
			if len(r.Problems) != len(tc.problems) {
				t.Fatalf("problems %q, want %q", r.Problems, tc.problems)
			}
			for i, p := range tc.problems {
				if !strings.Contains(r.Problems[i], p) {
					t.Errorf("problem %q, want it to say %q", r.Problems[i], p)
				}
			}
			for _, p := range r.Desired.Prefixes {
				if k := r.Desired.Policy.serviceKindOf(p.CIDR); p.CIDR.String() != "10.244.1.0/24" && k == 0 {
					t.Errorf("%s is in no service range: the policy would send it to every peer", p.CIDR)
				}
			}
		})
	}
}

// A service kind's ranges are rejected for every peer that does not list
// the kind, before any per-peer statement could accept them.
func TestServiceKindsGoOnlyToThePeersThatListThem(t *testing.T) {
	d := Desired{Policy: Policy{
		Peers: []PeerPolicy{{Address: netip.MustParseAddr("198.18.0.1"), Advertise: []peering.Advertisement{
			{Class: peering.ClassService, Service: peering.ServiceAddresses{LoadBalancerIPCIDRs: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}}}}}},
		ServiceRanges: []ServiceRange{{Kind: peering.ServiceLoadBalancerIP, CIDR: netip.MustParsePrefix("203.0.113.0/24")}},
	}}
	req := apiPolicies(&d)
	export := req.GetPolicies()[0]
	var guard bool
	for i, s := range export.GetStatements() {
		c := s.GetConditions()
		if c.GetPrefixSet().GetName() == "fedmesh-class-svc-load-balancer-ip-v4" && c.GetNeighborSet() != nil {
			guard = c.GetNeighborSet().GetType().String() == "TYPE_INVERT" && s.GetActions().GetRouteAction().String() == "ROUTE_ACTION_REJECT"
			if i > 2 {
				t.Errorf("the guard is statement %d, after per-peer statements", i)
			}
		}
	}
	if !guard {
		t.Fatalf("no reject of the load-balancer range for peers other than 198.18.0.1: %v", export)
	}
}
