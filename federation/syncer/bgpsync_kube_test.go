package syncer

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"

	"github.com/fedmesh/fedmesh/bgp"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// startBGPSync runs the member's BGPSync against every replica; with
// shared, on an informer factory the test owns (as fedmesh-syncer hands it
// the syncer's), which BGPSync must start but never stop.
func (m *member) startBGPSync(t *testing.T, shared bool) {
	t.Helper()
	var reps []fedmeshv1.BGPServiceClient
	for _, r := range m.env.cp.Replicas {
		reps = append(reps, fedmeshv1.NewBGPServiceClient(r.Conn()))
	}
	b := &BGPSync{Cluster: m.name, Kube: m.cs, Adverts: fedmeshv1.NewBGPServiceClient(m.rep.Conn()), Replicas: reps,
		SecretInterval: 200 * time.Millisecond, Log: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if shared {
		b.Informers = informers.NewSharedInformerFactory(m.cs, 0)
		t.Cleanup(b.Informers.Shutdown) // after BGPSync stopped (cleanups run last first)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("BGPSync: %v", err)
		}
	})
}

// A LoadBalancer Service with externalTrafficPolicy Local reaches the
// control plane as an advertisement whose ready nodes follow its
// EndpointSlice's ready endpoints, and leaves it when deleted.
func TestBGPSyncPublishesServiceAdvertisementsFromServicesAndEndpointSlices(t *testing.T) {
	env := startFed(t)
	m := env.join("a", "10.1.0.0/16", nil)
	m.startBGPSync(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.kube.CreateNamespace(ctx, "shop", nil); err != nil {
		t.Fatal(err)
	}
	svc, err := m.cs.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.10"}}
	if _, err := m.cs.CoreV1().Services("shop").UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ready := func(nodes map[string]bool) {
		t.Helper()
		es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4}
		i := 0
		for _, n := range slices.Sorted(mapKeys(nodes)) {
			r := nodes[n]
			i++
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.1.0.%d", i)}, NodeName: &n, Conditions: discoveryv1.EndpointConditions{Ready: &r}})
		}
		_, err := m.cs.DiscoveryV1().EndpointSlices("shop").Update(ctx, es, metav1.UpdateOptions{})
		if err != nil {
			_, err = m.cs.DiscoveryV1().EndpointSlices("shop").Create(ctx, es, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	advertIs := func(what string, want func(*fedmeshv1.ServiceAdvertisement) bool) {
		t.Helper()
		eventually(t, what, func() error {
			r, err := fedmeshv1.NewBGPServiceClient(env.conn()).ListServiceAdvertisements(ctx, &fedmeshv1.ListServiceAdvertisementsRequest{Cluster: "a"})
			if err != nil {
				return err
			}
			var web *fedmeshv1.ServiceAdvertisement
			for _, a := range r.GetAdvertisements() {
				if a.GetNamespace() == "shop" && a.GetName() == "web" {
					web = a
				}
			}
			if !want(web) {
				return fmt.Errorf("advertisement %v", web)
			}
			return nil
		})
	}
	ready(map[string]bool{"n1": true, "n2": true, "n3": false})
	advertIs("web ready on n1 and n2", func(a *fedmeshv1.ServiceAdvertisement) bool {
		return slices.Equal(a.GetReadyNodes(), []string{"n1", "n2"}) && slices.Equal(a.GetLoadBalancerIps(), []string{"203.0.113.10"}) &&
			a.GetExternalTrafficPolicy() == fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL && len(a.GetClusterIps()) == 1
	})
	ready(map[string]bool{"n1": false, "n2": true})
	advertIs("web ready on n2 only", func(a *fedmeshv1.ServiceAdvertisement) bool { return slices.Equal(a.GetReadyNodes(), []string{"n2"}) })
	if err := m.cs.CoreV1().Services("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	advertIs("web gone", func(a *fedmeshv1.ServiceAdvertisement) bool { return a == nil })
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// The MD5 session with a real BIRD comes up with the password a Secret in
// the member cluster's kube-apiserver holds, carried by the syncer to the
// replicas (never the Raft log) and by a follower to the node's password
// stream; after the Secret changes to a value the ToR does not have, the
// node gets the new value, the session resets and stays down.
func TestMD5SessionComesUpWithTheSecretReferencedPasswordOnly(t *testing.T) {
	birdBin, err := exec.LookPath("bird")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("bird not installed (make deps); CI=true so this test must run")
		}
		t.Skip("bird not installed; run make deps")
	}
	env := startFed(t)
	m := env.join("a", "10.1.0.0/16", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	admin := fedmeshv1.NewBGPServiceClient(env.conn())
	if _, err := fedmeshv1.NewNodeServiceClient(env.conn()).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{
		Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1", PodCidrs: []string{"10.1.1.0/24"}}}); err != nil {
		t.Fatal(err)
	}
	setSecret := func(v string) {
		t.Helper()
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "bgp"}, Data: map[string][]byte{"tor": []byte(v + "\n")}}
		if _, err := m.cs.CoreV1().Secrets("kube-system").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			if _, err := m.cs.CoreV1().Secrets("kube-system").Create(ctx, s, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	setSecret("t0r-s3cret")

	// BIRD on loopback (no kernel protocol: it touches no routing table).
	torPort, nodePort := freePort(t), freePort(t)
	dir := t.TempDir()
	conf := fmt.Sprintf(`router id 127.0.0.2;
protocol device { }
protocol bgp node {
  local 127.0.0.2 port %d as 65000;
  neighbor 127.0.0.1 port %d as 65010;
  multihop 2;
  password "t0r-s3cret";
  hold time 9;
  connect retry time 1;
  error wait time 1, 5;
  ipv4 { import all; export none; };
}
`, torPort, nodePort)
	cf := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "bird.ctl")
	birdProc := exec.Command(birdBin, "-f", "-c", cf, "-s", sock, "-P", filepath.Join(dir, "bird.pid"))
	birdProc.Stderr = os.Stderr
	if err := birdProc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = birdProc.Process.Kill(); _ = birdProc.Wait() })
	birdState := func() string {
		out, _ := exec.Command("birdc", "-s", sock, "show", "protocols", "node").CombinedOutput()
		return string(out)
	}

	peer := &fedmeshv1.BGPPeerConfig{Name: "tor", Address: "127.0.0.2", Asn: 65000, Port: uint32(torPort), EbgpMultihopTtl: 2, HoldTimeSeconds: 9,
		Password: &fedmeshv1.BGPPasswordRef{Source: &fedmeshv1.BGPPasswordRef_Secret{Secret: &fedmeshv1.BGPSecretKeyRef{Namespace: "kube-system", Name: "bgp", Key: "tor"}}}}
	if _, err := admin.ApplyBGPPeer(ctx, &fedmeshv1.ApplyBGPPeerRequest{Peer: peer}); err != nil {
		t.Fatal(err)
	}
	m.startBGPSync(t, false)

	// The node: its password stream from a follower, resolved and applied
	// as the agent's BGP port does.
	sp := bgp.New()
	spCtx, spCancel := context.WithCancel(context.Background())
	spDone := make(chan struct{})
	go func() { defer close(spDone); _ = sp.Run(spCtx) }()
	t.Cleanup(func() { spCancel(); <-spDone })
	cluster := &fedmeshv1.Cluster{Name: "a", Bgp: &fedmeshv1.BGPSettings{Enabled: true, LocalAsn: 65010}}
	resolved, err := bgp.Resolve(bgp.NodeBGP{Cluster: cluster, Node: &fedmeshv1.Node{Cluster: "a", Name: "n1"}, RouterID: netip.MustParseAddr("127.0.0.1"),
		PodCIDRs: []string{"10.1.1.0/24"}, Peers: []*fedmeshv1.BGPPeerConfig{peer}})
	if err != nil {
		t.Fatal(err)
	}
	w, err := fedmeshv1.NewBGPServiceClient(m.rep.Conn()).WatchBGPPasswords(ctx, &fedmeshv1.WatchBGPPasswordsRequest{Cluster: "a", Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	var last *bgp.Desired
	applyNext := func(want string) {
		t.Helper()
		for {
			msg, err := w.Recv()
			if err != nil {
				t.Fatal(err)
			}
			pws := map[string]*fedmeshv1.BGPPeerPassword{}
			for _, p := range msg.GetPasswords() {
				pws[p.GetPeer()] = p
			}
			if p := pws["tor"]; p == nil || string(p.GetPassword()) != want {
				continue // not pushed yet, or the old value
			}
			d := resolved.Desired
			d.Peers = slices.Clone(d.Peers)
			d.ListenPort, d.ListenAddresses = uint16(nodePort), []netip.Addr{netip.MustParseAddr("127.0.0.1")}
			if probs := bgp.SetSecretPasswords(&d, resolved.PasswordSecrets, last, func(peer string) (string, error) {
				return string(pws[peer].GetPassword()), nil
			}); len(probs) > 0 {
				t.Fatal(probs)
			}
			if _, err := sp.Apply(ctx, d); err != nil {
				t.Fatal(err)
			}
			last = &d
			return
		}
	}
	applyNext("t0r-s3cret")
	eventually(t, "MD5 session up with the Secret's password", func() error {
		if s := birdState(); !strings.Contains(s, "Established") {
			return fmt.Errorf("%s", s)
		}
		return nil
	})

	setSecret("wr0ng")
	applyNext("wr0ng")
	eventually(t, "session down with the wrong password", func() error {
		if s := birdState(); strings.Contains(s, "Established") {
			return fmt.Errorf("%s", s)
		}
		return nil
	})
	time.Sleep(3 * time.Second) // BIRD retries every second meanwhile
	if s := birdState(); strings.Contains(s, "Established") {
		t.Fatalf("session up with a password the ToR does not have: %s", s)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
