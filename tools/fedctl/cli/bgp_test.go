package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

const bgpManifest = `apiVersion: fedmesh.io/v1
kind: BGPFilter
metadata: {name: pods-only}
spec:
  exportV4:
  - {cidr: 10.1.0.0/16, matchOperator: In, prefixLength: {min: 24, max: 26}, action: Accept}
  - {action: Reject}
`

const bgpPeers = `apiVersion: fedmesh.io/v1
kind: BGPPeer
metadata: {name: tor-r1}
spec:
  address: 198.18.1.1
  asn: 65000
  nodeSelector: {matchLabels: {rack: r1}}
  localAsnLabel: bgp.fedmesh.io/asn
  password: {file: /etc/fedmesh/tor-r1.md5}
  filters: [pods-only]
  attributes: {communities: ["65000:100"], largeCommunities: ["65000:1:2"]}
  advertisements: [{class: PodCIDR}]
---
apiVersion: fedmesh.io/v1
kind: BGPPeer
metadata: {name: tor-r9}
spec: {address: 198.18.9.1, asn: 65000, nodeSelector: {matchLabels: {rack: r9}}}
---
apiVersion: fedmesh.io/v1
kind: BGPPeer
metadata: {name: tor-svc}
spec:
  address: 198.18.2.1
  asn: 65000
  password: {secret: {namespace: kube-system, name: bgp, key: tor-svc}}
  advertisements:
  - {class: PodCIDR}
  - {class: Service, service: {clusterIps: ServiceCIDR, loadBalancerIpCidrs: [203.0.113.0/24]}}
`

// fedctl bgp applies peers and filters from manifests (Calico spellings of
// the enums included), lists, shows and deletes them, shows the server's
// field errors, and shows every node's sessions as its agent reported them.
func TestBGPCommandsManagePeersFiltersAndShowStatus(t *testing.T) {
	p := startTLSPlane(t)
	admin := auth.Admin()
	run := func(args ...string) string {
		t.Helper()
		out, errOut, err := p.fedctl(t, admin, args...)
		if err != nil {
			t.Fatalf("fedctl %v: %v\n%s%s", args, err, out, errOut)
		}
		return out
	}
	run("cluster", "register", "a", "--pod-cidr", "10.1.0.0/16")
	if _, err := fedmeshv1.NewNodeServiceClient(planeConn(t, p, admin)).RegisterNode(context.Background(), &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{
		Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1", PodCidrs: []string{"10.1.1.0/24"}, Labels: map[string]string{"rack": "r1"}}}); err != nil {
		t.Fatal(err)
	}

	if out := run("bgp", "filter", "apply", "-f", writeFile(t, "f.yaml", bgpManifest)); !strings.Contains(out, "BGP filter pods-only applied") {
		t.Fatalf("filter apply: %s", out)
	}
	if _, errOut, err := p.fedctl(t, admin, "bgp", "peer", "apply", "-f", writeFile(t, "f.yaml", bgpManifest)); err == nil || !strings.Contains(errOut, "apply it with 'fedctl bgp filter apply'") {
		t.Fatalf("a filter given to peer apply: %v %s", err, errOut)
	}
	out := run("bgp", "peer", "apply", "-f", writeFile(t, "p.yaml", bgpPeers))
	if !strings.Contains(out, "BGP peer tor-r1 applied at revision") || !strings.Contains(out, "(selects 1 nodes)") || !strings.Contains(out, "tor-r9 applied") {
		t.Fatalf("peer apply: %s", out)
	}
	bad := strings.Replace(bgpPeers, "asn: 65000\n", "asn: 23456\n", 1)
	if _, errOut, err := p.fedctl(t, admin, "bgp", "peer", "apply", "-f", writeFile(t, "bad.yaml", bad)); err == nil || !strings.Contains(errOut, "peer.asn") || !strings.Contains(errOut, "InvalidArgument") {
		t.Fatalf("bad ASN: %v %s", err, errOut)
	}

	list := run("bgp", "peer", "list")
	if !strings.Contains(list, "tor-r1") || !strings.Contains(list, "rack=r1") || !strings.Contains(list, "pods-only") {
		t.Fatalf("peer list:\n%s", list)
	}
	if get := run("bgp", "peer", "get", "tor-r1"); !strings.Contains(get, "file: /etc/fedmesh/tor-r1.md5") || !strings.Contains(get, "65000:1:2") {
		t.Fatalf("peer get:\n%s", get)
	}
	if get := run("bgp", "peer", "get", "tor-svc"); !strings.Contains(get, "key: tor-svc") || !strings.Contains(get, "203.0.113.0/24") {
		t.Fatalf("peer get with a Secret password and service addresses:\n%s", get)
	}
	if _, err := fedmeshv1.NewBGPServiceClient(planeConn(t, p, auth.Syncer("a"))).SyncServiceAdvertisements(context.Background(), &fedmeshv1.SyncServiceAdvertisementsRequest{
		Cluster: "a", Puts: []*fedmeshv1.ServiceAdvertisement{{Namespace: "shop", Name: "web", LoadBalancerIps: []string{"203.0.113.10"},
			ExternalTrafficPolicy: fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL, ReadyNodes: []string{"n1"}}}}); err != nil {
		t.Fatal(err)
	}
	if svcs := run("bgp", "services", "a"); !strings.Contains(svcs, "web") || !strings.Contains(svcs, "LOCAL") || !strings.Contains(svcs, "203.0.113.10") || !strings.Contains(svcs, "n1") {
		t.Fatalf("bgp services:\n%s", svcs)
	}
	if fl := run("bgp", "filter", "list"); !strings.Contains(fl, "pods-only") {
		t.Fatalf("filter list:\n%s", fl)
	}

	// The node's agent reports its sessions.
	if _, err := fedmeshv1.NewNodeServiceClient(planeConn(t, p, auth.Node("a", "n1"))).ReportNodeStatus(context.Background(), &fedmeshv1.ReportNodeStatusRequest{
		Cluster: "a", Name: "n1", Status: &fedmeshv1.NodeStatus{BgpPeers: []*fedmeshv1.BGPPeerStatus{{
			Name: "tor-r1", Address: "198.18.1.1", Asn: 65000, LocalAsn: 65101, State: fedmeshv1.BGPSessionState_BGP_SESSION_STATE_ESTABLISHED,
			Uptime: durationpb.New(90 * time.Second), PrefixesSent: 1, PrefixesReceived: 3}}}}); err != nil {
		t.Fatal(err)
	}
	st := run("bgp", "status")
	for _, want := range []string{"tor-r1", "ESTABLISHED", "1m30s", "65101", "peer tor-r9 selects no registered node"} {
		if !strings.Contains(st, want) {
			t.Fatalf("status lacks %q:\n%s", want, st)
		}
	}

	if _, errOut, err := p.fedctl(t, admin, "bgp", "filter", "delete", "pods-only"); err == nil || !strings.Contains(errOut, "FailedPrecondition") || !strings.Contains(errOut, "tor-r1") {
		t.Fatalf("delete a used filter: %v %s", err, errOut)
	}
	run("bgp", "peer", "delete", "tor-r1")
	if out := run("bgp", "filter", "delete", "pods-only"); !strings.Contains(out, "BGP filter pods-only deleted") {
		t.Fatalf("filter delete: %s", out)
	}
}

// planeConn dials the replica as principal pr, for what fedctl does not
// do (an agent's registration and status report).
func planeConn(t *testing.T, p *tlsPlane, pr auth.Principal) *grpc.ClientConn {
	t.Helper()
	certPEM, keyPEM, err := p.ca.Issue(ca.Leaf{ID: pr.URI(), Usage: ca.UsageClient, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.NewCertificate(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(p.ca.Pool(), cert))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
