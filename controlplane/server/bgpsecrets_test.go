package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// A Secret-referenced password reaches only the agents of the nodes its
// peer selects: the cluster's syncer learns which keys to push, pushes
// the value, the selected node's agent receives it (and a new value when
// it changes); an unselected node gets none, another cluster's agent and
// an admin may not watch a node's passwords, and an admin's Get, List and
// Watch of the peer show the reference only.
func TestSecretPasswordsReachOnlyTheSelectedNodesAgents(t *testing.T) {
	g := startTLSGroup(t, 1)
	lead := g.leader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	adminConn := g.conn(t, lead, auth.Admin())
	admin := fedmeshv1.NewBGPServiceClient(adminConn)
	if _, err := fedmeshv1.NewClusterServiceClient(adminConn).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
		Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []struct{ name, rack string }{{"n1", "r1"}, {"n2", "r2"}} {
		if _, err := fedmeshv1.NewNodeServiceClient(g.conn(t, lead, auth.Node("a", n.name))).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{
			Cluster: "a", Name: n.name, UnderlayIp: "198.18.0.1", Labels: map[string]string{"rack": n.rack}}}); err != nil {
			t.Fatal(err)
		}
	}
	ref := &fedmeshv1.BGPSecretKeyRef{Namespace: "kube-system", Name: "bgp", Key: "tor-r1"}
	peer := rackPeer("tor-r1", "r1")
	peer.Password = &fedmeshv1.BGPPasswordRef{Source: &fedmeshv1.BGPPasswordRef_Secret{Secret: ref}}
	if _, err := admin.ApplyBGPPeer(ctx, &fedmeshv1.ApplyBGPPeerRequest{Peer: peer}); err != nil {
		t.Fatal(err)
	}

	syncA := fedmeshv1.NewBGPServiceClient(g.conn(t, lead, auth.Syncer("a")))
	resp, err := syncA.PushBGPSecrets(ctx, &fedmeshv1.PushBGPSecretsRequest{Cluster: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if w := resp.GetWanted(); len(w) != 1 || w[0].GetKey() != "tor-r1" {
		t.Fatalf("wanted %v, want the one referenced key", w)
	}
	push := func(v string) {
		t.Helper()
		if _, err := syncA.PushBGPSecrets(ctx, &fedmeshv1.PushBGPSecretsRequest{Cluster: "a", Secrets: []*fedmeshv1.BGPSecretValue{{Ref: ref, Value: []byte(v)}}}); err != nil {
			t.Fatal(err)
		}
	}
	push("s3cret")

	watch := func(p auth.Principal, cluster, node string) fedmeshv1.BGPService_WatchBGPPasswordsClient {
		t.Helper()
		w, err := fedmeshv1.NewBGPServiceClient(g.conn(t, lead, p)).WatchBGPPasswords(ctx, &fedmeshv1.WatchBGPPasswordsRequest{Cluster: cluster, Node: node})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	n1 := watch(auth.Node("a", "n1"), "a", "n1")
	m, err := n1.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if pw := m.GetPasswords(); len(pw) != 1 || pw[0].GetPeer() != "tor-r1" || string(pw[0].GetPassword()) != "s3cret" {
		t.Fatalf("n1's passwords %v", pw)
	}
	push("n3w")
	if m, err = n1.Recv(); err != nil || string(m.GetPasswords()[0].GetPassword()) != "n3w" {
		t.Fatalf("after a change: %v %v", m, err)
	}
	if m, err := watch(auth.Node("a", "n2"), "a", "n2").Recv(); err != nil || len(m.GetPasswords()) != 0 {
		t.Fatalf("n2, which the peer does not select: %v %v", m, err)
	}
	for name, p := range map[string]auth.Principal{"another cluster's agent": auth.Node("b", "n1"), "another node's agent": auth.Node("a", "n2"), "an admin": auth.Admin(), "the syncer": auth.Syncer("a")} {
		if _, err := watch(p, "a", "n1").Recv(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s watching a/n1's passwords: %v, want PermissionDenied", name, err)
		}
	}
	// Another cluster's syncer cannot plant a value for cluster a.
	if _, err := fedmeshv1.NewBGPServiceClient(g.conn(t, lead, auth.Syncer("b"))).PushBGPSecrets(ctx, &fedmeshv1.PushBGPSecretsRequest{Cluster: "a"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("syncer b pushing for a: %v", err)
	}

	got, err := admin.GetBGPPeer(ctx, &fedmeshv1.GetBGPPeerRequest{Name: "tor-r1"})
	if err != nil {
		t.Fatal(err)
	}
	list, err := admin.ListBGPPeers(ctx, &fedmeshv1.ListBGPPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := fedmeshv1.NewWatchServiceClient(adminConn).Watch(ctx, &fedmeshv1.WatchRequest{Kinds: []fedmeshv1.ResourceKind{fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER}})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := ws.Recv()
	if err != nil {
		t.Fatal(err)
	}
	for what, m := range map[string]string{"get": prototext.Format(got), "list": prototext.Format(list), "watch": prototext.Format(snap)} {
		if !strings.Contains(m, "tor-r1") || strings.Contains(m, "n3w") || strings.Contains(m, "s3cret") {
			t.Errorf("admin %s of the peer: %s", what, m)
		}
	}
}
