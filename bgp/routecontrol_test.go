package bgp

// Route control against real routers: BGP peer objects and filters,
// resolved for a node (Resolve, SetPasswords reading real files) and
// applied by the speaker in the node's namespace, checked at BIRD 2 and
// FRR ToRs.

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

const podCIDR4b = "10.244.2.0/24" // a second IPv4 pod CIDR, the one filters reject

// resolveFor resolves the node's Desired from protos, as the agent's BGP
// port does, reading password files from disk.
func resolveFor(t testing.TB, cluster *fedmeshv1.Cluster, node *fedmeshv1.Node, pods []string, peers []*fedmeshv1.BGPPeerConfig, filters ...*fedmeshv1.BGPFilter) Desired {
	t.Helper()
	r, err := Resolve(NodeBGP{Cluster: cluster, Node: node, RouterID: netip.MustParseAddr(nodeV4), PodCIDRs: pods, Peers: peers, Filters: filters})
	if err != nil {
		t.Fatal(err)
	}
	d := r.Desired
	probs := SetPasswords(&d, r.PasswordFiles, nil, func(p string) (string, error) {
		b, err := os.ReadFile(p)
		return string(b), err
	})
	if all := append(r.Problems, probs...); len(all) > 0 {
		t.Fatalf("resolve: %v", all)
	}
	d.GracefulRestart = GracefulRestart{} // sessions here come and go on purpose
	return d
}

// nodeCluster is the lab node's cluster: BGP on with the node's ASN and no
// cluster-level peer; peer objects give the sessions.
func nodeCluster() *fedmeshv1.Cluster {
	return &fedmeshv1.Cluster{Name: "a", Labels: map[string]string{"site": "a"}, Bgp: &fedmeshv1.BGPSettings{Enabled: true, LocalAsn: nodeASN}}
}

func labNode(labels ...string) *fedmeshv1.Node {
	n := &fedmeshv1.Node{Cluster: "a", Name: "n1", Labels: map[string]string{}}
	for i := 0; i+1 < len(labels); i += 2 {
		n.Labels[labels[i]] = labels[i+1]
	}
	return n
}

func torPeer(name, addr string, asn uint32, mutate ...func(*fedmeshv1.BGPPeerConfig)) *fedmeshv1.BGPPeerConfig {
	p := &fedmeshv1.BGPPeerConfig{Name: name, Address: addr, Asn: asn, HoldTimeSeconds: 9}
	for _, m := range mutate {
		m(p)
	}
	return p
}

// birdSession is one BGP session of a BIRD ToR with fast timers.
func birdSession(name, local string, localAS int, neighbor string, peerAS int, extra, channel string) string {
	return fmt.Sprintf(`protocol bgp %s {
  local %s as %d;
  neighbor %s as %d;
  hold time 9;
  connect retry time 1;
  error wait time 1, 5;
%s  %s;
}
`, name, local, localAS, neighbor, peerAS, extra, channel)
}

func birdHeader(routerID string) string {
	return "router id " + routerID + ";\nprotocol device { scan time 1; }\nprotocol kernel k4 { ipv4 { export all; import none; }; }\nprotocol kernel k6 { ipv6 { export all; import none; }; }\n"
}

// birdImports returns how many route updates a BIRD session has received
// in all (BIRD's "Import updates: received"): a prefix the node ever sent
// counts, even if withdrawn since.
func birdImports(t testing.TB, b *bird, proto string) int {
	t.Helper()
	out, err := b.cli("show", "protocols", "all", proto)
	if err != nil {
		t.Fatalf("birdc show protocols all %s: %v: %s", proto, err, out)
	}
	m := regexp.MustCompile(`Import updates:\s+(\d+)`).FindStringSubmatch(out)
	if m == nil {
		return 0 // no update yet: BIRD leaves the line out
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func birdEstablished(b *bird, proto string, want bool) func() string {
	return func() string {
		out, err := b.cli("show", "protocols", proto)
		if err != nil {
			return err.Error()
		}
		if strings.Contains(out, "Established") != want {
			return out
		}
		return ""
	}
}

// An export filter keeps the prefix it rejects from ever reaching the ToR
// (BIRD counts every update it received), and a filter changed while the
// session is up withdraws what it now rejects without resetting it.
func TestRejectedPrefixNeverReachesBIRDAndAFilterChangeResetsNoSession(t *testing.T) {
	l := newLab(t)
	// The node has a second IPv4 pod CIDR, routed to its pod like the first.
	l.node.run(t, "ip", "addr", "add", "10.244.2.1/24", "dev", "node-pod")
	conf := birdHeader(torV4) +
		birdSession("node4", torV4, torASN, nodeV4, nodeASN, "", "ipv4 { import all; export none; }") +
		birdSession("node6", torV6, torASN, nodeV6, nodeASN, "", "ipv6 { import all; export none; }")
	b := startBird(t, l.tor, conf)
	reject := func(cidr string) *fedmeshv1.BGPFilter {
		return &fedmeshv1.BGPFilter{Name: "pods-only", ExportV4: []*fedmeshv1.BGPFilterRule{
			{Cidr: cidr, MatchOperator: fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_IN, Action: fedmeshv1.BGPFilterAction_BGP_FILTER_ACTION_REJECT},
		}}
	}
	peers := []*fedmeshv1.BGPPeerConfig{
		torPeer("tor-v4", torV4, torASN, func(p *fedmeshv1.BGPPeerConfig) { p.Filters = []string{"pods-only"} }),
		torPeer("tor-v6", torV6, torASN),
	}
	pods := []string{podCIDR4, podCIDR4b, podCIDR6}
	sp := startSpeaker(t, l.node, resolveFor(t, nodeCluster(), labNode(), pods, peers, reject(podCIDR4b)))

	eventually(t, 30*time.Second, "sessions established", established(sp, t, torV4, torV6))
	eventually(t, 10*time.Second, "BIRD holds "+podCIDR4, birdHas(t, b, podCIDR4, true))
	eventually(t, 10*time.Second, "BIRD holds "+podCIDR6, birdHas(t, b, podCIDR6, true))
	time.Sleep(2 * time.Second) // let anything else the node would send arrive
	if got := birdImports(t, b, "node4"); got != 1 {
		t.Fatalf("BIRD received %d IPv4 updates, want 1 (%s only; %s rejected by the export filter)", got, podCIDR4, podCIDR4b)
	}
	if msg := birdHas(t, b, podCIDR4b, false)(); msg != "" {
		t.Fatal(msg)
	}
	if r := l.tor.fib(t, podCIDR4b); r != "" {
		t.Fatalf("ToR FIB routes the rejected prefix: %s", r)
	}
	if st, _ := statusOf(sp.status(t), torV4); st.PrefixesSent != 1 {
		t.Fatalf("status of %s: %+v, want 1 prefix sent", torV4, st)
	}

	// Reject the whole /16 now: the IPv4 pod CIDR is withdrawn, the
	// session stays up, and the IPv6 session is untouched.
	before, _ := statusOf(sp.status(t), torV4)
	d := resolveFor(t, nodeCluster(), labNode(), pods, peers, reject("10.244.0.0/16"))
	if r := sp.call(t, "apply", d); r.Error != "" || r.Actions != 1 {
		t.Fatalf("filter change: %+v, want one set-policy", r)
	}
	eventually(t, 10*time.Second, "BIRD drops "+podCIDR4, birdHas(t, b, podCIDR4, false))
	after, _ := statusOf(sp.status(t), torV4)
	if after.State != StateEstablished || after.Uptime < before.Uptime {
		t.Fatalf("session after the filter change: %+v (before %+v): reset", after, before)
	}
	if msg := birdHas(t, b, podCIDR6, true)(); msg != "" {
		t.Fatal(msg)
	}
}

// Communities a peer object adds (to every route, and to a prefix class)
// reach BIRD, whose import filter matches one of them to set a local
// preference; large communities arrive too.
func TestCommunitiesReachBIRDAndItsFilterMatchesThem(t *testing.T) {
	l := newLab(t)
	conf := birdHeader(torV4) + birdSession("node4", torV4, torASN, nodeV4, nodeASN, "",
		"ipv4 { import filter { if (65000,100) ~ bgp_community then bgp_local_pref = 250; accept; }; export none; }")
	b := startBird(t, l.tor, conf)
	peers := []*fedmeshv1.BGPPeerConfig{torPeer("tor", torV4, torASN, func(p *fedmeshv1.BGPPeerConfig) {
		p.Attributes = &fedmeshv1.BGPRouteAttributes{Communities: []string{"65000:100"}, LargeCommunities: []string{"65010:1:2"}}
		p.Advertisements = []*fedmeshv1.BGPAdvertisement{{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_POD_CIDR,
			Attributes: &fedmeshv1.BGPRouteAttributes{Communities: []string{"65000:200"}}}}
	})}
	sp := startSpeaker(t, l.node, resolveFor(t, nodeCluster(), labNode(), []string{podCIDR4}, peers))
	eventually(t, 30*time.Second, "session established", established(sp, t, torV4))
	eventually(t, 10*time.Second, "BIRD sees the communities and its filter matched", func() string {
		out, err := b.cli("show", "route", "all", podCIDR4)
		for _, want := range []string{"(65000,100)", "(65000,200)", "(65010, 1, 2)", "BGP.local_pref: 250"} {
			if err != nil || !strings.Contains(out, want) {
				return fmt.Sprintf("want %s: %v: %s", want, err, out)
			}
		}
		return ""
	})
}

// The same at an FRR ToR over iBGP: a rejected prefix never shows up, the
// communities do, FRR's route-map matches one, and the local preference
// the peer object sets arrives (iBGP carries it).
func TestFRRSeesOnlyAcceptedPrefixesWithCommunitiesAndLocalPreference(t *testing.T) {
	l := newLab(t)
	l.node.run(t, "ip", "addr", "add", "10.244.2.1/24", "dev", "node-pod")
	conf := "hostname tor\n!\nrouter bgp " + fmt.Sprint(nodeASN) + "\n bgp router-id 198.18.0.1\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n" +
		fmt.Sprintf(" neighbor %s remote-as %d\n neighbor %s timers 3 9\n neighbor %s timers connect 1\n", nodeV4, nodeASN, nodeV4, nodeV4) +
		fmt.Sprintf(" address-family ipv4 unicast\n  neighbor %s activate\n  neighbor %s route-reflector-client\n  neighbor %s route-map FROM-NODE in\n  neighbor %s soft-reconfiguration inbound\n exit-address-family\n", nodeV4, nodeV4, nodeV4, nodeV4) +
		"!\nbgp community-list standard RACK permit 65000:100\n!\nroute-map FROM-NODE permit 10\n match community RACK\n set metric 77\n!\nroute-map FROM-NODE permit 20\n!\n"
	f := startFRR(t, l.tor, conf)
	lp := uint32(300)
	peers := []*fedmeshv1.BGPPeerConfig{torPeer("tor", torV4, nodeASN, func(p *fedmeshv1.BGPPeerConfig) {
		p.Filters = []string{"no-second"}
		p.Attributes = &fedmeshv1.BGPRouteAttributes{Communities: []string{"65000:100"}, LargeCommunities: []string{"65010:1:2"}, LocalPreference: &lp}
	})}
	filter := &fedmeshv1.BGPFilter{Name: "no-second", ExportV4: []*fedmeshv1.BGPFilterRule{
		{Cidr: podCIDR4b, MatchOperator: fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_EQUAL, Action: fedmeshv1.BGPFilterAction_BGP_FILTER_ACTION_REJECT},
	}}
	sp := startSpeaker(t, l.node, resolveFor(t, nodeCluster(), labNode(), []string{podCIDR4, podCIDR4b}, peers, filter))
	eventually(t, 30*time.Second, "iBGP session established", established(sp, t, torV4))
	eventually(t, 10*time.Second, "FRR holds the pod CIDR with communities, local preference and its route-map's mark", func() string {
		out := frrRoute(f, "ipv4", podCIDR4)
		for _, want := range []string{"65000:100", "65010:1:2", "localpref 300", "metric 77", "best"} {
			if !strings.Contains(out, want) {
				return fmt.Sprintf("want %s: %s", want, out)
			}
		}
		return ""
	})
	time.Sleep(2 * time.Second)
	if out := frrRoute(f, "ipv4", podCIDR4b); !strings.Contains(out, "Network not in table") {
		t.Fatalf("FRR has the rejected prefix: %s", out)
	}
	// What FRR received before its own policy (soft reconfiguration keeps
	// it): the accepted prefix, never the rejected one.
	out, _ := f.vtysh(fmt.Sprintf("show bgp ipv4 unicast neighbors %s received-routes", nodeV4))
	if !strings.Contains(out, podCIDR4) || strings.Contains(out, podCIDR4b) {
		t.Fatalf("FRR received routes: %s", out)
	}
}

// twoToRLab is: ToR r1 --- node --- ToR r2, each ToR a BIRD.
type twoToRLab struct {
	tor1, tor2, node ns
}

const (
	tor1V4, node1V4 = "198.18.1.1", "198.18.1.2"
	tor2V4, node2V4 = "198.18.2.1", "198.18.2.2"
)

func newTwoToRLab(t testing.TB) *twoToRLab {
	t.Helper()
	requireRoot(t)
	tag := randomTag()
	l := &twoToRLab{tor1: newNS(t, tag, "tor1"), tor2: newNS(t, tag, "tor2"), node: newNS(t, tag, "node")}
	link(t, l.tor1, "tor1-node", []string{tor1V4 + "/30"}, l.node, "node-tor1", []string{node1V4 + "/30"})
	link(t, l.tor2, "tor2-node", []string{tor2V4 + "/30"}, l.node, "node-tor2", []string{node2V4 + "/30"})
	return l
}

func twoToRBird(t testing.TB, n ns, tor, node string, nodeAS int) *bird {
	return startBird(t, n, birdHeader(tor)+birdSession("node", tor, torASN, node, nodeAS, "", "ipv4 { import all; export none; }"))
}

// A node labelled rack=r2 peers only with ToR r2 (two ToRs in one lab);
// relabelled rack=r1 it moves to ToR r1 and leaves r2.
func TestRackR2NodePeersOnlyWithToRR2(t *testing.T) {
	l := newTwoToRLab(t)
	b1 := twoToRBird(t, l.tor1, tor1V4, node1V4, nodeASN)
	b2 := twoToRBird(t, l.tor2, tor2V4, node2V4, nodeASN)
	rack := func(r string) func(*fedmeshv1.BGPPeerConfig) {
		return func(p *fedmeshv1.BGPPeerConfig) {
			p.NodeSelector = &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"rack": r}}
		}
	}
	peers := []*fedmeshv1.BGPPeerConfig{torPeer("tor-r1", tor1V4, torASN, rack("r1")), torPeer("tor-r2", tor2V4, torASN, rack("r2"))}
	sp := startSpeaker(t, l.node, resolveFor(t, nodeCluster(), labNode("rack", "r2"), []string{podCIDR4}, peers))

	eventually(t, 30*time.Second, "session with ToR r2", established(sp, t, tor2V4))
	eventually(t, 10*time.Second, "ToR r2 holds the pod CIDR", birdHas(t, b2, podCIDR4, true))
	eventually(t, 10*time.Second, "ToR r2's FIB holds the pod CIDR", fibHas(t, l.tor2, podCIDR4, true))
	time.Sleep(3 * time.Second) // ToR r1 keeps trying to connect meanwhile
	if msg := birdEstablished(b1, "node", false)(); msg != "" {
		t.Fatalf("ToR r1 has a session with the rack r2 node: %s", msg)
	}
	if msg := birdHas(t, b1, podCIDR4, false)(); msg != "" {
		t.Fatal(msg)
	}
	if st := sp.status(t); len(st) != 1 || st[0].Name != "tor-r2" {
		t.Fatalf("speaker sessions %+v, want only tor-r2", st)
	}

	if r := sp.call(t, "apply", resolveFor(t, nodeCluster(), labNode("rack", "r1"), []string{podCIDR4}, peers)); r.Error != "" {
		t.Fatal(r.Error)
	}
	eventually(t, 30*time.Second, "session with ToR r1", established(sp, t, tor1V4))
	eventually(t, 10*time.Second, "ToR r1 holds the pod CIDR", birdHas(t, b1, podCIDR4, true))
	eventually(t, 10*time.Second, "ToR r2 lost the session", birdEstablished(b2, "node", false))
	eventually(t, 10*time.Second, "ToR r2 dropped the pod CIDR", birdHas(t, b2, podCIDR4, false))
}

// A per-node ASN override (the node's label named by the peer's
// localAsnLabel) is the ASN the ToR sees: without the label the session
// uses the cluster's ASN, which this ToR refuses; with it, it comes up and
// the route's AS path starts with the node's own ASN.
func TestPerNodeASNOverrideTakesEffectAtBIRD(t *testing.T) {
	const rackASN = 65101
	l := newLab(t)
	b := startBird(t, l.tor, birdHeader(torV4)+birdSession("node4", torV4, torASN, nodeV4, rackASN, "", "ipv4 { import all; export none; }"))
	peers := []*fedmeshv1.BGPPeerConfig{torPeer("tor", torV4, torASN, func(p *fedmeshv1.BGPPeerConfig) { p.LocalAsnLabel = "bgp.fedmesh.io/asn" })}

	sp := startSpeaker(t, l.node, resolveFor(t, nodeCluster(), labNode(), []string{podCIDR4}, peers))
	time.Sleep(4 * time.Second)
	if st, _ := statusOf(sp.status(t), torV4); st.State == StateEstablished || st.LocalASN != nodeASN {
		t.Fatalf("without the label: %+v, want a refused session with local ASN %d", st, nodeASN)
	}

	d := resolveFor(t, nodeCluster(), labNode("bgp.fedmesh.io/asn", strconv.Itoa(rackASN)), []string{podCIDR4}, peers)
	if r := sp.call(t, "apply", d); r.Error != "" {
		t.Fatal(r.Error)
	}
	eventually(t, 30*time.Second, "session with the node's own ASN", established(sp, t, torV4))
	eventually(t, 10*time.Second, "BIRD's route comes from AS 65101", func() string {
		out, err := b.cli("show", "route", "all", podCIDR4)
		if err != nil || !strings.Contains(out, fmt.Sprintf("BGP.as_path: %d", rackASN)) {
			return fmt.Sprintf("%v: %s", err, out)
		}
		return ""
	})
	if st, _ := statusOf(sp.status(t), torV4); st.LocalASN != rackASN || st.Name != "tor" {
		t.Fatalf("status %+v, want local ASN %d of peer tor", st, rackASN)
	}
}

// The TCP-MD5 password is a file on the node that the peer object refers
// to: with the ToR's secret in it the session comes up; with a wrong one it
// does not (and BIRD learns nothing).
func TestMD5FromAReferencedFileComesUpOnlyWithTheRightSecret(t *testing.T) {
	l := newLab(t)
	b := startBird(t, l.tor, birdHeader(torV4)+birdSession("node4", torV4, torASN, nodeV4, nodeASN, "  password \"tor-secret\";\n", "ipv4 { import all; export none; }"))
	pw := filepath.Join(t.TempDir(), "tor.md5")
	peers := []*fedmeshv1.BGPPeerConfig{torPeer("tor", torV4, torASN, func(p *fedmeshv1.BGPPeerConfig) {
		p.Password = &fedmeshv1.BGPPasswordRef{Source: &fedmeshv1.BGPPasswordRef_File{File: pw}}
	})}
	if err := os.WriteFile(pw, []byte("not-the-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sp := startSpeaker(t, l.node, resolveFor(t, nodeCluster(), labNode(), []string{podCIDR4}, peers))
	time.Sleep(6 * time.Second) // several connect attempts from both sides
	if st, _ := statusOf(sp.status(t), torV4); st.State == StateEstablished {
		t.Fatalf("session with a wrong MD5 key came up: %+v", st)
	}
	if msg := birdHas(t, b, podCIDR4, false)(); msg != "" {
		t.Fatal(msg)
	}

	if err := os.WriteFile(pw, []byte("tor-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := sp.call(t, "apply", resolveFor(t, nodeCluster(), labNode(), []string{podCIDR4}, peers)); r.Error != "" || r.Actions != 1 {
		t.Fatalf("new secret: %+v, want one update-peer", r)
	}
	eventually(t, 30*time.Second, "MD5 session established", established(sp, t, torV4))
	eventually(t, 10*time.Second, "BIRD holds the pod CIDR", birdHas(t, b, podCIDR4, true))
}
