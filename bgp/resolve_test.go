package bgp

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/bgp/peering"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

var (
	routerID = netip.MustParseAddr("198.18.0.11")
	podCIDRs = []string{"10.244.1.0/24", "fd00:244:1::/64"}
	tor1     = netip.MustParseAddr("198.18.1.1")
	tor2     = netip.MustParseAddr("198.18.2.1")
)

// clusterA has cluster-level BGP as before peer objects existed: one ToR.
func clusterA() *fedmeshv1.Cluster {
	return &fedmeshv1.Cluster{Name: "a", Labels: map[string]string{"site": "a"}, Bgp: &fedmeshv1.BGPSettings{
		Enabled: true, LocalAsn: 65010, GracefulRestartSeconds: 120, UnhealthyCommunity: "65000:666",
		Peers: []*fedmeshv1.BGPPeer{{Address: tor1.String(), Asn: 65000, HoldTimeSeconds: 9, KeepaliveSeconds: 3}},
	}}
}

func nodeIn(rack string, labels ...string) *fedmeshv1.Node {
	n := &fedmeshv1.Node{Cluster: "a", Name: "n1", Labels: map[string]string{"rack": rack}}
	for i := 0; i+1 < len(labels); i += 2 {
		n.Labels[labels[i]] = labels[i+1]
	}
	return n
}

func peerObj(name string, addr netip.Addr, rack string, mutate ...func(*fedmeshv1.BGPPeerConfig)) *fedmeshv1.BGPPeerConfig {
	p := &fedmeshv1.BGPPeerConfig{Name: name, Address: addr.String(), Asn: 65000}
	if rack != "" {
		p.NodeSelector = &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"rack": rack}}
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func rejectFilter(name, cidr string) *fedmeshv1.BGPFilter {
	return &fedmeshv1.BGPFilter{Name: name, ExportV4: []*fedmeshv1.BGPFilterRule{
		{Cidr: cidr, MatchOperator: fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_IN, Action: fedmeshv1.BGPFilterAction_BGP_FILTER_ACTION_REJECT},
	}, ImportV4: []*fedmeshv1.BGPFilterRule{{Action: fedmeshv1.BGPFilterAction_BGP_FILTER_ACTION_REJECT}}}
}

func peerAddrs(d Desired) []string {
	var out []string
	for _, p := range normalize(&d).Peers {
		out = append(out, p.Address.String())
	}
	return out
}

func TestResolvePicksTheNodesPeersAndTheirSettings(t *testing.T) {
	tests := []struct {
		name    string
		cluster *fedmeshv1.Cluster
		node    *fedmeshv1.Node
		peers   []*fedmeshv1.BGPPeerConfig
		filters []*fedmeshv1.BGPFilter
		check   func(t *testing.T, r Resolved)
	}{
		{
			name: "a rack r2 node peers only with ToR r2", cluster: clusterA(), node: nodeIn("r2"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-r1", tor1, "r1"), peerObj("tor-r2", tor2, "r2")},
			check: func(t *testing.T, r Resolved) {
				// tor1 is also the cluster-level peer: it stays, as before.
				if got := peerAddrs(r.Desired); !slices.Equal(got, []string{tor1.String(), tor2.String()}) {
					t.Fatalf("peers %v", got)
				}
				for _, p := range r.Desired.Peers {
					if p.Address == tor2 && p.Name != "tor-r2" {
						t.Fatalf("tor2 comes from %q", p.Name)
					}
					if p.Address == tor1 && p.Name != "" {
						t.Fatalf("tor1 is the cluster's, got %q (tor-r1 selects rack r1)", p.Name)
					}
				}
			},
		},
		{
			name: "a peer of another cluster is not selected", cluster: clusterA(), node: nodeIn("r1"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-b", tor2, "", func(p *fedmeshv1.BGPPeerConfig) {
				p.ClusterSelector = &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"site": "b"}}
			})},
			check: func(t *testing.T, r Resolved) {
				if got := peerAddrs(r.Desired); !slices.Equal(got, []string{tor1.String()}) {
					t.Fatalf("peers %v, want only the cluster's", got)
				}
			},
		},
		{
			name: "the node's ASN label overrides the session's local ASN", cluster: clusterA(), node: nodeIn("r2", "bgp.fedmesh.io/asn", "65102"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-r2", tor2, "r2", func(p *fedmeshv1.BGPPeerConfig) {
				p.LocalAsn, p.LocalAsnLabel = 65100, "bgp.fedmesh.io/asn"
			})},
			check: func(t *testing.T, r Resolved) {
				p := findPeer(t, r.Desired, tor2)
				if p.LocalASN != 65102 || r.Desired.LocalASN != 65010 {
					t.Fatalf("session local ASN %d (speaker %d), want 65102 (65010)", p.LocalASN, r.Desired.LocalASN)
				}
			},
		},
		{
			name: "without the label the peer's local ASN applies", cluster: clusterA(), node: nodeIn("r2"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-r2", tor2, "r2", func(p *fedmeshv1.BGPPeerConfig) {
				p.LocalAsn, p.LocalAsnLabel = 65100, "bgp.fedmesh.io/asn"
			})},
			check: func(t *testing.T, r Resolved) {
				if p := findPeer(t, r.Desired, tor2); p.LocalASN != 65100 {
					t.Fatalf("session local ASN %d, want 65100", p.LocalASN)
				}
			},
		},
		{
			name: "an ASN label that is not an ASN leaves the session out", cluster: clusterA(), node: nodeIn("r2", "asn", "23456"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-r2", tor2, "r2", func(p *fedmeshv1.BGPPeerConfig) { p.LocalAsnLabel = "asn" })},
			check: func(t *testing.T, r Resolved) {
				if got := peerAddrs(r.Desired); !slices.Equal(got, []string{tor1.String()}) || !hasProblem(r, `asn="23456" is not an ASN`) {
					t.Fatalf("peers %v problems %v", got, r.Problems)
				}
			},
		},
		{
			name: "without cluster BGP the speaker takes the first peer's local ASN", cluster: &fedmeshv1.Cluster{Name: "a"}, node: nodeIn("r1"),
			peers: []*fedmeshv1.BGPPeerConfig{
				peerObj("tor-b", tor2, "", func(p *fedmeshv1.BGPPeerConfig) { p.LocalAsn = 65200 }),
				peerObj("tor-a", tor1, "", func(p *fedmeshv1.BGPPeerConfig) { p.LocalAsn = 65100 }),
			},
			check: func(t *testing.T, r Resolved) {
				if !r.Desired.Enabled() || r.Desired.LocalASN != 65100 || len(r.Desired.Prefixes) != 2 {
					t.Fatalf("speaker %+v, want on with ASN 65100 advertising the pod CIDRs", r.Desired)
				}
				if a, b := findPeer(t, r.Desired, tor1), findPeer(t, r.Desired, tor2); a.LocalASN != 0 || b.LocalASN != 65200 {
					t.Fatalf("session local ASNs %d, %d; want the speaker's and 65200", a.LocalASN, b.LocalASN)
				}
			},
		},
		{
			name: "no local ASN anywhere: a problem, the speaker stays off", cluster: &fedmeshv1.Cluster{Name: "a"}, node: nodeIn("r1"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-a", tor1, "")},
			check: func(t *testing.T, r Resolved) {
				if r.Desired.Enabled() || !hasProblem(r, "no local ASN") {
					t.Fatalf("speaker %+v problems %v", r.Desired, r.Problems)
				}
			},
		},
		{
			name: "a peer object replaces the cluster-level peer of its address", cluster: clusterA(), node: nodeIn("r1"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-r1", tor1, "r1", func(p *fedmeshv1.BGPPeerConfig) { p.Asn = 65001 })},
			check: func(t *testing.T, r Resolved) {
				if p := findPeer(t, r.Desired, tor1); len(r.Desired.Peers) != 1 || p.ASN != 65001 || p.Name != "tor-r1" {
					t.Fatalf("peers %+v", r.Desired.Peers)
				}
			},
		},
		{
			name: "two peer objects with one address: the first by name wins", cluster: clusterA(), node: nodeIn("r1"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-z", tor2, ""), peerObj("tor-a", tor2, "", func(p *fedmeshv1.BGPPeerConfig) { p.Asn = 65002 })},
			check: func(t *testing.T, r Resolved) {
				if p := findPeer(t, r.Desired, tor2); p.Name != "tor-a" || p.ASN != 65002 || !hasProblem(r, "peer tor-z: address 198.18.2.1 is already peer tor-a's") {
					t.Fatalf("peer %+v problems %v", p, r.Problems)
				}
			},
		},
		{
			name: "a filter the node does not know leaves the session out", cluster: clusterA(), node: nodeIn("r2"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-r2", tor2, "r2", func(p *fedmeshv1.BGPPeerConfig) { p.Filters = []string{"nope"} })},
			check: func(t *testing.T, r Resolved) {
				if got := peerAddrs(r.Desired); !slices.Equal(got, []string{tor1.String()}) || !hasProblem(r, "filter nope is not known") {
					t.Fatalf("peers %v problems %v", got, r.Problems)
				}
			},
		},
		{
			name: "filters, attributes and advertisements become the peer's policy", cluster: clusterA(), node: nodeIn("r2"),
			filters: []*fedmeshv1.BGPFilter{rejectFilter("f1", "10.244.0.0/16"), rejectFilter("f2", "10.0.0.0/8")},
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-r2", tor2, "r2", func(p *fedmeshv1.BGPPeerConfig) {
				lp := uint32(300)
				p.Filters = []string{"f2", "f1"}
				p.Attributes = &fedmeshv1.BGPRouteAttributes{Communities: []string{"65000:100"}, LocalPreference: &lp}
				p.Advertisements = []*fedmeshv1.BGPAdvertisement{{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_POD_CIDR,
					Attributes: &fedmeshv1.BGPRouteAttributes{LargeCommunities: []string{"65000:1:2"}}}}
			})},
			check: func(t *testing.T, r Resolved) {
				if len(r.Desired.Policy.Peers) != 1 {
					t.Fatalf("policy %+v", r.Desired.Policy)
				}
				pp := r.Desired.Policy.Peers[0]
				if pp.Address != tor2 || len(pp.Export) != 2 || pp.Export[0].CIDR.String() != "10.0.0.0/8" || pp.Export[1].CIDR.String() != "10.244.0.0/16" {
					t.Fatalf("export rules %v, want f2's then f1's", pp.Export)
				}
				if len(pp.Import) != 2 || pp.Attributes.LocalPref != 300 || pp.Attributes.Communities[0] != 65000<<16|100 {
					t.Fatalf("policy %+v", pp)
				}
				if len(pp.Advertise) != 1 || pp.Advertise[0].Class != peering.ClassPodCIDR || len(pp.Advertise[0].Attributes.LargeCommunities) != 1 {
					t.Fatalf("advertise %+v", pp.Advertise)
				}
			},
		},
		{
			name: "a password reference is a file to read, never a password", cluster: clusterA(), node: nodeIn("r2"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-r2", tor2, "r2", func(p *fedmeshv1.BGPPeerConfig) {
				p.Password = &fedmeshv1.BGPPasswordRef{Source: &fedmeshv1.BGPPasswordRef_File{File: "/etc/fedmesh/tor-r2"}}
			})},
			check: func(t *testing.T, r Resolved) {
				if p := findPeer(t, r.Desired, tor2); p.Password != "" || r.PasswordFiles[tor2] != "/etc/fedmesh/tor-r2" {
					t.Fatalf("peer %+v files %v", p, r.PasswordFiles)
				}
			},
		},
		{
			name: "a route-reflector client on eBGP is left out", cluster: clusterA(), node: nodeIn("r2"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-r2", tor2, "r2", func(p *fedmeshv1.BGPPeerConfig) { p.RouteReflectorClient = true })},
			check: func(t *testing.T, r Resolved) {
				if !hasProblem(r, "route-reflector client must be iBGP") || len(r.Desired.Peers) != 1 {
					t.Fatalf("peers %+v problems %v", r.Desired.Peers, r.Problems)
				}
			},
		},
		{
			name: "per-peer timers, multihop and graceful restart", cluster: clusterA(), node: nodeIn("r2"),
			peers: []*fedmeshv1.BGPPeerConfig{peerObj("tor-r2", tor2, "r2", func(p *fedmeshv1.BGPPeerConfig) {
				p.HoldTimeSeconds, p.KeepaliveSeconds, p.EbgpMultihopTtl, p.Port = 30, 10, 3, 1179
				p.GracefulRestart = &fedmeshv1.BGPGracefulRestart{}
			})},
			check: func(t *testing.T, r Resolved) {
				p := findPeer(t, r.Desired, tor2)
				if p.HoldTime != 30*time.Second || p.Keepalive != 10*time.Second || p.MultihopTTL != 3 || p.Port != 1179 ||
					p.GracefulRestart == nil || p.GracefulRestart.Enabled() {
					t.Fatalf("peer %+v", p)
				}
				if p.gracefulRestart(r.Desired.GracefulRestart).Enabled() {
					t.Fatal("graceful restart is on for a session that turned it off")
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Resolve(NodeBGP{Cluster: tt.cluster, Node: tt.node, RouterID: routerID, PodCIDRs: podCIDRs, Peers: tt.peers, Filters: tt.filters})
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, r)
		})
	}
}

func findPeer(t *testing.T, d Desired, a netip.Addr) Peer {
	t.Helper()
	for _, p := range d.Peers {
		if p.Address == a {
			return p
		}
	}
	t.Fatalf("no peer %s in %+v", a, d.Peers)
	return Peer{}
}

func hasProblem(r Resolved, s string) bool {
	return slices.ContainsFunc(r.Problems, func(p string) bool { return strings.Contains(p, s) })
}

// A rolling upgrade must not drop sessions: an agent that resolves peer
// objects, for a node whose peers equal what the cluster settings gave,
// plans no session change against what the old agent applied.
func TestUpgradeToPeerObjectsResetsNoSession(t *testing.T) {
	old, err := FromCluster(clusterA().GetBgp(), routerID, podCIDRs)
	if err != nil {
		t.Fatal(err)
	}
	applied := Effective(old, true)
	sameAsCluster := peerObj("tor-r1", tor1, "", func(p *fedmeshv1.BGPPeerConfig) { p.HoldTimeSeconds, p.KeepaliveSeconds = 9, 3 })
	tests := []struct {
		name       string
		peers      []*fedmeshv1.BGPPeerConfig
		filters    []*fedmeshv1.BGPFilter
		wantPolicy bool
	}{
		{"no peer objects", nil, nil, false},
		{"a peer object selecting another rack", []*fedmeshv1.BGPPeerConfig{peerObj("tor-r2", tor2, "r2")}, nil, false},
		{"the cluster's peer moved to a peer object", []*fedmeshv1.BGPPeerConfig{sameAsCluster}, nil, false},
		{"moved, and given a filter", []*fedmeshv1.BGPPeerConfig{peerObj("tor-r1", tor1, "", func(p *fedmeshv1.BGPPeerConfig) {
			p.HoldTimeSeconds, p.KeepaliveSeconds, p.Filters = 9, 3, []string{"f"}
		})}, []*fedmeshv1.BGPFilter{rejectFilter("f", "10.0.0.0/8")}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Resolve(NodeBGP{Cluster: clusterA(), Node: nodeIn("r1"), RouterID: routerID, PodCIDRs: podCIDRs, Peers: tt.peers, Filters: tt.filters})
			if err != nil {
				t.Fatal(err)
			}
			if len(tt.peers) == 0 && !reflect.DeepEqual(r.Desired, old) {
				t.Fatalf("without peer objects Resolve differs from FromCluster:\n%+v\n%+v", r.Desired, old)
			}
			var kinds []ActionKind
			for _, a := range Diff(&applied, ptr(Effective(r.Desired, true))) {
				kinds = append(kinds, a.Kind)
			}
			want := []ActionKind(nil)
			if tt.wantPolicy {
				want = []ActionKind{ActionSetPolicy}
			}
			if !slices.Equal(kinds, want) {
				t.Fatalf("plan %v, want %v (no session change)", kinds, want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestSetPasswordsReadsFilesAndKeepsAPasswordOverAFailedRead(t *testing.T) {
	files := map[netip.Addr]string{tor1: "/pw/tor1", tor2: "/pw/tor2"}
	base := Desired{LocalASN: 65010, RouterID: routerID, Peers: []Peer{
		{Address: tor1, ASN: 65000, Name: "t1"}, {Address: tor2, ASN: 65000, Name: "t2"}, {Address: netip.MustParseAddr("198.18.3.1"), ASN: 65000},
	}, Policy: Policy{Peers: []PeerPolicy{{Address: tor2, Import: []peering.Rule{{Family: peering.IPv4, Action: peering.Reject}}}}}}
	clone := func() Desired {
		d := base
		d.Peers = slices.Clone(base.Peers)
		d.Policy.Peers = slices.Clone(base.Policy.Peers)
		return d
	}
	errGone := errors.New("no such file")

	d := clone()
	probs := SetPasswords(&d, files, nil, func(p string) (string, error) {
		if p == "/pw/tor1" {
			return "s3cret\n", nil
		}
		return "", errGone
	})
	if findPeer(t, d, tor1).Password != "s3cret" || len(d.Peers) != 2 || len(d.Policy.Peers) != 0 || len(probs) != 1 || !strings.Contains(probs[0], "session left out") {
		t.Fatalf("first read: peers %+v policy %+v problems %v", d.Peers, d.Policy, probs)
	}
	prev := d
	d = clone()
	probs = SetPasswords(&d, files, &prev, func(string) (string, error) { return "", errGone })
	if findPeer(t, d, tor1).Password != "s3cret" || len(probs) != 2 || !strings.Contains(probs[0], "keeping the password read before") {
		t.Fatalf("failed re-read: peers %+v problems %v", d.Peers, probs)
	}
	d = clone()
	if probs = SetPasswords(&d, files, nil, func(string) (string, error) { return strings.Repeat("k", 81), nil }); len(probs) != 2 || len(d.Peers) != 1 {
		t.Fatalf("over-long key: peers %+v problems %v", d.Peers, probs)
	}
}
