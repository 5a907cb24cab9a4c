package adapters

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/bgp"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func freePort(t *testing.T) uint32 {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint32(l.Addr().(*net.TCPAddr).Port)
}

// The port resolves the peer objects selecting the node, reads the
// password files they name, reports what it could not resolve, and the
// speaker's status names each session's peer object and local ASN.
func TestBGPPortResolvesPeerObjectsAndReportsProblems(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sp := bgp.New(bgp.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sp.Run(runCtx) }()
	defer func() { stop(); <-done }()

	pwFile := filepath.Join(t.TempDir(), "tor-r1")
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var read []string
	port := &BGP{Speaker: sp, ReadPassword: func(p string) (string, error) {
		read = append(read, p)
		if p == pwFile {
			return readPasswordFile(p)
		}
		return "", errors.New("no such file")
	}}
	peer := func(name, addr string, pw string) *fedmeshv1.BGPPeerConfig {
		p := &fedmeshv1.BGPPeerConfig{Name: name, Address: addr, Asn: 65000, Port: freePort(t), LocalAsnLabel: "asn",
			NodeSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"rack": "r1"}}}
		if pw != "" {
			p.Password = &fedmeshv1.BGPPasswordRef{Source: &fedmeshv1.BGPPasswordRef_File{File: pw}}
		}
		return p
	}
	cluster := &fedmeshv1.Cluster{Name: "a", Bgp: &fedmeshv1.BGPSettings{Enabled: true, LocalAsn: 65010}}
	cfg := agent.BGPConfig{
		Settings: cluster.GetBgp(), Cluster: cluster, RouterID: netip.MustParseAddr("198.18.0.2"), PodCIDRs: []string{"10.244.1.0/24"},
		Node:  &fedmeshv1.Node{Cluster: "a", Name: "n1", Labels: map[string]string{"rack": "r1", "asn": "65101"}},
		Peers: []*fedmeshv1.BGPPeerConfig{peer("tor-r1", "127.0.0.1", pwFile), peer("tor-r2", "127.0.0.2", "/missing"), peer("tor-r3", "127.0.0.3", "")},
	}
	if err := port.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if probs := port.Problems(); len(probs) != 1 || !strings.Contains(probs[0], "peer tor-r2: password file /missing") {
		t.Fatalf("problems %v", probs)
	}
	st, err := port.Status(ctx)
	if err != nil || len(st) != 2 {
		t.Fatalf("status %v %v, want tor-r1 and tor-r3", st, err)
	}
	for _, s := range st {
		if s.GetLocalAsn() != 65101 || (s.GetName() != "tor-r1" && s.GetName() != "tor-r3") {
			t.Errorf("session %v, want local ASN 65101 from the node label", s)
		}
	}
	if len(read) != 2 {
		t.Errorf("password files read %v, want each referenced file once", read)
	}
}

// Secret passwords and service advertisements arrive after the first
// Apply and re-apply it: a peer whose Secret password has not arrived is
// left out (a problem), comes up once it arrives, and keeps that password
// when a later push carries an error; a Local service's address is in the
// speaker's state only while the node has a ready backend.
func TestBGPPortTakesSecretPasswordsAndServicesLater(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sp := bgp.New(bgp.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sp.Run(runCtx) }()
	defer func() { stop(); <-done }()
	port := &BGP{Speaker: sp}
	cluster := &fedmeshv1.Cluster{Name: "a", Bgp: &fedmeshv1.BGPSettings{Enabled: true, LocalAsn: 65010}}
	peer := &fedmeshv1.BGPPeerConfig{Name: "tor", Address: "127.0.0.1", Asn: 65000, Port: freePort(t),
		Password: &fedmeshv1.BGPPasswordRef{Source: &fedmeshv1.BGPPasswordRef_Secret{Secret: &fedmeshv1.BGPSecretKeyRef{Namespace: "kube-system", Name: "bgp", Key: "tor"}}},
		Advertisements: []*fedmeshv1.BGPAdvertisement{{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_SERVICE,
			Service: &fedmeshv1.BGPServiceAddresses{LoadBalancerIpCidrs: []string{"203.0.113.0/24"}}}}}
	cfg := agent.BGPConfig{Settings: cluster.GetBgp(), Cluster: cluster, RouterID: netip.MustParseAddr("198.18.0.2"), PodCIDRs: []string{"10.244.1.0/24"},
		Node: &fedmeshv1.Node{Cluster: "a", Name: "n1"}, Peers: []*fedmeshv1.BGPPeerConfig{peer}}
	if err := port.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	sessions := func() int {
		st, err := port.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(st)
	}
	if probs := port.Problems(); sessions() != 0 || len(probs) != 1 || !strings.Contains(probs[0], "not received from the control plane yet") {
		t.Fatalf("before the password: %d sessions, problems %v", sessions(), probs)
	}
	if err := port.SetPasswords(ctx, []*fedmeshv1.BGPPeerPassword{{Peer: "tor", Password: []byte("s3cret")}}); err != nil {
		t.Fatal(err)
	}
	if sessions() != 1 || len(port.Problems()) != 0 || port.last.Peers[0].Password != "s3cret" {
		t.Fatalf("with the password: %d sessions, problems %v", sessions(), port.Problems())
	}
	if err := port.SetPasswords(ctx, []*fedmeshv1.BGPPeerPassword{{Peer: "tor", Error: "Secret kube-system/bgp: forbidden"}}); err != nil {
		t.Fatal(err)
	}
	if probs := port.Problems(); sessions() != 1 || port.last.Peers[0].Password != "s3cret" || len(probs) != 1 || !strings.Contains(probs[0], "keeping the password") {
		t.Fatalf("after a failed fetch: %d sessions, password kept %v, problems %v", sessions(), port.last.Peers[0].Password == "s3cret", probs)
	}
	svc := func(ready ...string) []*fedmeshv1.ServiceAdvertisement {
		return []*fedmeshv1.ServiceAdvertisement{{Cluster: "a", Namespace: "shop", Name: "web", LoadBalancerIps: []string{"203.0.113.10"},
			ExternalTrafficPolicy: fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL, ReadyNodes: ready}}
	}
	advertised := func() bool {
		for _, p := range port.last.Prefixes {
			if p.CIDR == netip.MustParsePrefix("203.0.113.10/32") {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		ready []string
		want  bool
	}{{[]string{"n1"}, true}, {[]string{"n2"}, false}, {nil, false}, {[]string{"n1", "n2"}, true}} {
		if err := port.SetServices(ctx, svc(tc.ready...)); err != nil {
			t.Fatal(err)
		}
		if advertised() != tc.want {
			t.Errorf("ready on %v: advertised %v, want %v", tc.ready, advertised(), tc.want)
		}
	}
}
