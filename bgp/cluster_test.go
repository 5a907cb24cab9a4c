package bgp

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestFromClusterBuildsDesired(t *testing.T) {
	s := &fedmeshv1.BGPSettings{
		Enabled:  true,
		LocalAsn: 65010,
		Peers: []*fedmeshv1.BGPPeer{
			{Address: "198.18.0.1", Asn: 65000, Password: "pw", HoldTimeSeconds: 9, KeepaliveSeconds: 3},
			{Address: "fd18::1", Asn: 65010, Port: 1179},
		},
		GracefulRestartSeconds: 120,
		UnhealthyCommunity:     "65000:666",
	}
	d, err := FromCluster(s, netip.MustParseAddr("198.18.0.2"), []string{"10.244.1.0/24", "fd00:244:1::/64"})
	if err != nil {
		t.Fatal(err)
	}
	if d.LocalASN != 65010 || d.RouterID.String() != "198.18.0.2" || d.GracefulRestart.RestartTime != 120*time.Second {
		t.Errorf("global fields: %+v", d)
	}
	if *d.UnhealthyCommunity != 65000<<16|666 {
		t.Errorf("unhealthy community = %v", d.UnhealthyCommunity)
	}
	wantPeers := []Peer{
		{Address: netip.MustParseAddr("198.18.0.1"), ASN: 65000, Password: "pw", HoldTime: 9 * time.Second, Keepalive: 3 * time.Second},
		{Address: netip.MustParseAddr("fd18::1"), ASN: 65010, Port: 1179},
	}
	for i, p := range wantPeers {
		if d.Peers[i] != p {
			t.Errorf("peer %d = %+v, want %+v", i, d.Peers[i], p)
		}
	}
	if len(d.Prefixes) != 2 || d.Prefixes[0].CIDR.String() != "10.244.1.0/24" || d.Prefixes[1].CIDR.String() != "fd00:244:1::/64" {
		t.Errorf("prefixes = %+v", d.Prefixes)
	}
}

func TestFromClusterDisabledIsOff(t *testing.T) {
	for _, s := range []*fedmeshv1.BGPSettings{nil, {Enabled: false, LocalAsn: 65010}} {
		d, err := FromCluster(s, netip.MustParseAddr("198.18.0.2"), []string{"10.244.1.0/24"})
		if err != nil || d.Enabled() {
			t.Errorf("FromCluster(%v) = %+v, %v; want off", s, d, err)
		}
	}
}

func TestFromClusterNamesTheBadField(t *testing.T) {
	good := func() *fedmeshv1.BGPSettings {
		return &fedmeshv1.BGPSettings{Enabled: true, LocalAsn: 65010, Peers: []*fedmeshv1.BGPPeer{{Address: "198.18.0.1", Asn: 65000}}}
	}
	tests := []struct {
		name     string
		mutate   func(*fedmeshv1.BGPSettings)
		routerID string
		cidrs    []string
		field    string
	}{
		{"bad peer address", func(s *fedmeshv1.BGPSettings) { s.Peers[0].Address = "tor-1" }, "198.18.0.2", nil, "bgp.peers[0].address"},
		{"bad community", func(s *fedmeshv1.BGPSettings) { s.UnhealthyCommunity = "666" }, "198.18.0.2", nil, "bgp.unhealthyCommunity"},
		{"bad port", func(s *fedmeshv1.BGPSettings) { s.Peers[0].Port = 70000 }, "198.18.0.2", nil, "bgp.peers[0].port"},
		{"bad pod CIDR", func(*fedmeshv1.BGPSettings) {}, "198.18.0.2", []string{"10.244.1.0"}, "node.podCIDRs[0]"},
		{"invalid ASN", func(s *fedmeshv1.BGPSettings) { s.LocalAsn = 4294967295 }, "198.18.0.2", nil, "localASN"},
		{"duplicate peers", func(s *fedmeshv1.BGPSettings) { s.Peers = append(s.Peers, s.Peers[0]) }, "198.18.0.2", nil, "peers[1].address"},
		{"IPv6 router ID", func(*fedmeshv1.BGPSettings) {}, "fd18::2", nil, "routerID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good()
			tt.mutate(s)
			rid, _ := netip.ParseAddr(tt.routerID)
			_, err := FromCluster(s, rid, tt.cidrs)
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("FromCluster() = %v, want field %q", err, tt.field)
			}
		})
	}
}
