package bgp

// Service address advertisement against a real ToR: three nodes, each
// its own speaker in its own namespace, peer with one BIRD ToR that
// merges equal eBGP paths into ECMP kernel routes.

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

const (
	lbRange    = "203.0.113.0/24"
	lbLocal    = "203.0.113.10" // externalTrafficPolicy Local
	lbCluster  = "203.0.113.20" // externalTrafficPolicy Cluster
	svcNodeASN = nodeASN
)

// svcLab is one ToR and nodes n1..nN, node i on its own /30 to the ToR.
type svcLab struct {
	tor   ns
	nodes []ns
}

func svcNodeAddrs(i int) (tor, node string) {
	return fmt.Sprintf("198.18.10.%d", 4*i+1), fmt.Sprintf("198.18.10.%d", 4*i+2)
}

func newSvcLab(t testing.TB, n int) *svcLab {
	t.Helper()
	requireRoot(t)
	tag := randomTag()
	l := &svcLab{tor: newNS(t, tag, "tor")}
	for i := range n {
		node := newNS(t, tag, fmt.Sprintf("n%d", i+1))
		tor, addr := svcNodeAddrs(i)
		link(t, l.tor, fmt.Sprintf("tor-n%d", i+1), []string{tor + "/30"}, node, "node-tor", []string{addr + "/30"})
		l.nodes = append(l.nodes, node)
	}
	return l
}

// svcBird is the ToR: one session per node, and a kernel protocol that
// merges the equal paths of several nodes into one ECMP route.
func svcBird(t testing.TB, l *svcLab) *bird {
	conf := "router id 198.18.10.1;\nprotocol device { scan time 1; }\nprotocol kernel k4 { merge paths yes; ipv4 { export all; import none; }; }\n"
	for i := range l.nodes {
		tor, node := svcNodeAddrs(i)
		conf += birdSession(fmt.Sprintf("n%d", i+1), tor, torASN, node, svcNodeASN, "  connect delay time 1;\n", "ipv4 { import all; export none; }")
	}
	return startBird(t, l.tor, conf)
}

// svcPeer advertises pod CIDRs and load-balancer IPs in lbRange.
func svcPeer(torAddr string) *fedmeshv1.BGPPeerConfig {
	return torPeer("tor", torAddr, torASN, func(p *fedmeshv1.BGPPeerConfig) {
		p.Advertisements = []*fedmeshv1.BGPAdvertisement{
			{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_POD_CIDR},
			{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_SERVICE, Service: &fedmeshv1.BGPServiceAddresses{LoadBalancerIpCidrs: []string{lbRange}}},
		}
	})
}

func lbService(name, ip string, local bool, ready ...string) *fedmeshv1.ServiceAdvertisement {
	s := &fedmeshv1.ServiceAdvertisement{Cluster: "a", Namespace: "shop", Name: name, ClusterIps: []string{"10.96.0.10"},
		LoadBalancerIps: []string{ip}, ExternalTrafficPolicy: fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_CLUSTER, ReadyNodes: ready}
	if local {
		s.ExternalTrafficPolicy = fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL
	}
	return s
}

// svcDesired resolves node i's Desired with services, as the agent does.
func svcDesired(t testing.TB, i int, services ...*fedmeshv1.ServiceAdvertisement) Desired {
	t.Helper()
	tor, addr := svcNodeAddrs(i)
	r, err := Resolve(NodeBGP{
		Cluster:  &fedmeshv1.Cluster{Name: "a", Bgp: &fedmeshv1.BGPSettings{Enabled: true, LocalAsn: svcNodeASN}},
		Node:     &fedmeshv1.Node{Cluster: "a", Name: fmt.Sprintf("n%d", i+1)},
		RouterID: netip.MustParseAddr(addr), PodCIDRs: []string{fmt.Sprintf("10.244.%d.0/24", 10+i)},
		Peers: []*fedmeshv1.BGPPeerConfig{svcPeer(tor)}, Services: services,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Problems) > 0 {
		t.Fatalf("resolve: %v", r.Problems)
	}
	return r.Desired
}

// nextHops returns the next hops of the ToR's kernel route for a host
// address, sorted (none when there is no route).
func nextHops(t testing.TB, n ns, ip string) []string {
	t.Helper()
	out := n.run(t, "ip", "-4", "route", "show", ip+"/32")
	var hops []string
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "via" {
			hops = append(hops, f[i+1])
		}
	}
	slices.Sort(hops)
	return hops
}

func hopsAre(t testing.TB, n ns, ip string, want ...string) func() string {
	slices.Sort(want)
	return func() string {
		if got := nextHops(t, n, ip); !slices.Equal(got, want) {
			return fmt.Sprintf("ToR FIB next hops for %s: %v, want %v", ip, got, want)
		}
		return ""
	}
}

// A LoadBalancer IP of a Service with externalTrafficPolicy Local is in
// the ToR's FIB with one ECMP next hop per node that has a ready backend,
// loses a node's next hop when that node's last backend goes, and leaves
// the FIB with the last one; a Cluster-policy Service's IP has every node
// as next hop throughout.
func TestLoadBalancerIPAtBIRDWithECMPFromNodesWithLocalBackends(t *testing.T) {
	l := newSvcLab(t, 3)
	tor := svcBird(t, l)
	addr := func(i int) string { _, a := svcNodeAddrs(i); return a }
	services := func(ready ...string) []*fedmeshv1.ServiceAdvertisement {
		return []*fedmeshv1.ServiceAdvertisement{lbService("local", lbLocal, true, ready...), lbService("cluster", lbCluster, false)}
	}
	var sps []*speakerProc
	for i, n := range l.nodes {
		sps = append(sps, startSpeaker(t, n, svcDesired(t, i, services("n1", "n2")...)))
	}
	for i, sp := range sps {
		tor, _ := svcNodeAddrs(i)
		eventually(t, 30*time.Second, fmt.Sprintf("n%d's session", i+1), established(sp, t, tor))
	}
	eventually(t, 15*time.Second, "Local LB IP via n1 and n2", hopsAre(t, l.tor, lbLocal, addr(0), addr(1)))
	eventually(t, 15*time.Second, "Cluster LB IP via every node", hopsAre(t, l.tor, lbCluster, addr(0), addr(1), addr(2)))
	// The cluster IP is in no range a peer advertises: never sent.
	if msg := birdHas(t, tor, "10.96.0.10/32", false)(); msg != "" {
		t.Fatal(msg)
	}

	// n1's last backend goes: every node learns it, n1 withdraws.
	for i, sp := range sps {
		if r := sp.call(t, "apply", svcDesired(t, i, services("n2")...)); r.Error != "" {
			t.Fatal(r.Error)
		}
	}
	eventually(t, 15*time.Second, "Local LB IP via n2 only", hopsAre(t, l.tor, lbLocal, addr(1)))
	// The last local backend goes: the route leaves the ToR.
	for i, sp := range sps {
		if r := sp.call(t, "apply", svcDesired(t, i, services()...)); r.Error != "" {
			t.Fatal(r.Error)
		}
	}
	eventually(t, 15*time.Second, "Local LB IP withdrawn", hopsAre(t, l.tor, lbLocal))
	if msg := hopsAre(t, l.tor, lbCluster, addr(0), addr(1), addr(2))(); msg != "" {
		t.Fatal(msg)
	}
}

// The same at an FRR ToR (eBGP, maximum-paths 8, zebra installs the
// multipath route): ECMP next hops from the nodes with a ready local
// backend, one fewer when a node's last backend goes, none after the last.
func TestLoadBalancerIPAtFRRWithECMPFromNodesWithLocalBackends(t *testing.T) {
	l := newSvcLab(t, 3)
	conf := "hostname tor\n!\nrouter bgp " + fmt.Sprint(torASN) + "\n bgp router-id 198.18.10.1\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n bgp bestpath as-path multipath-relax\n"
	af := " address-family ipv4 unicast\n  maximum-paths 8\n"
	for i := range l.nodes {
		_, node := svcNodeAddrs(i)
		conf += fmt.Sprintf(" neighbor %s remote-as %d\n neighbor %s timers 3 9\n neighbor %s timers connect 1\n", node, svcNodeASN, node, node)
		af += fmt.Sprintf("  neighbor %s activate\n", node)
	}
	startFRR(t, l.tor, conf+af+" exit-address-family\n!\n")
	addr := func(i int) string { _, a := svcNodeAddrs(i); return a }
	var sps []*speakerProc
	for i, n := range l.nodes {
		sps = append(sps, startSpeaker(t, n, svcDesired(t, i, lbService("local", lbLocal, true, "n1", "n2", "n3"))))
	}
	eventually(t, 30*time.Second, "Local LB IP via every node with a backend", hopsAre(t, l.tor, lbLocal, addr(0), addr(1), addr(2)))
	for _, step := range []struct {
		ready []string
		hops  []string
	}{{[]string{"n2", "n3"}, []string{addr(1), addr(2)}}, {[]string{"n3"}, []string{addr(2)}}, {nil, nil}} {
		for i, sp := range sps {
			if r := sp.call(t, "apply", svcDesired(t, i, lbService("local", lbLocal, true, step.ready...))); r.Error != "" {
				t.Fatal(r.Error)
			}
		}
		eventually(t, 15*time.Second, fmt.Sprintf("Local LB IP via %v", step.ready), hopsAre(t, l.tor, lbLocal, step.hops...))
	}
}

// Service addresses go only to the peers whose advertisements list the
// SERVICE class: of a node's two ToRs, the one that lists it learns the
// LoadBalancer /32, the other (pod CIDRs only) learns the pod CIDR and
// never receives the /32 (BIRD counts every update it received).
func TestServiceAddressesReachOnlyThePeersThatListTheClass(t *testing.T) {
	l := newTwoToRLab(t)
	b1 := twoToRBird(t, l.tor1, tor1V4, node1V4, nodeASN)
	b2 := twoToRBird(t, l.tor2, tor2V4, node2V4, nodeASN)
	withSvc := svcPeer(tor1V4)
	withSvc.Name = "tor-r1"
	podsOnly := torPeer("tor-r2", tor2V4, torASN)
	r, err := Resolve(NodeBGP{Cluster: nodeCluster(), Node: labNode(), RouterID: netip.MustParseAddr(node1V4), PodCIDRs: []string{podCIDR4},
		Peers: []*fedmeshv1.BGPPeerConfig{withSvc, podsOnly}, Services: []*fedmeshv1.ServiceAdvertisement{lbService("web", lbCluster, false)}})
	if err != nil || len(r.Problems) > 0 {
		t.Fatalf("resolve: %v %v", err, r.Problems)
	}
	sp := startSpeaker(t, l.node, r.Desired)
	eventually(t, 30*time.Second, "both sessions", established(sp, t, tor1V4, tor2V4))
	eventually(t, 10*time.Second, "ToR r1 learns the LB /32", birdHas(t, b1, lbCluster+"/32", true))
	eventually(t, 10*time.Second, "ToR r2 learns the pod CIDR", birdHas(t, b2, podCIDR4, true))
	time.Sleep(2 * time.Second) // anything else would have arrived by now
	if n := birdImports(t, b2, "node"); n != 1 {
		t.Fatalf("ToR r2 (pod CIDRs only) received %d updates, want only the pod CIDR's", n)
	}
}
