package server

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func rackPeer(name, rack string, filters ...string) *fedmeshv1.BGPPeerConfig {
	return &fedmeshv1.BGPPeerConfig{Name: name, Address: "198.18.9." + rack[1:], Asn: 65000, Filters: filters,
		NodeSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"rack": rack}}}
}

func badRequestFields(err error) []string {
	var out []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, v.GetField())
			}
		}
	}
	return out
}

func peerNames(ps []*fedmeshv1.BGPPeerConfig) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.GetName())
	}
	return out
}

// Admins write BGP peers and filters; bad input is refused naming the
// field with nothing applied; a node agent reads only the peers selecting
// its node, and its watch follows selection as peers and its own labels
// change; a syncer reads none.
func TestBGPPeersAreAdminWrittenAndNodesSeeOnlyTheirOwn(t *testing.T) {
	g := startTLSGroup(t, 1)
	lead := g.leader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := fedmeshv1.NewBGPServiceClient(g.conn(t, lead, auth.Admin()))
	n1conn := g.conn(t, lead, auth.Node("a", "n1"))
	n1 := fedmeshv1.NewBGPServiceClient(n1conn)

	if _, err := fedmeshv1.NewClusterServiceClient(g.conn(t, lead, auth.Admin())).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
		Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}, Labels: map[string]string{"site": "a"}}}); err != nil {
		t.Fatal(err)
	}
	register := func(name, rack string) {
		t.Helper()
		if _, err := fedmeshv1.NewNodeServiceClient(g.conn(t, lead, auth.Node("a", name))).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{
			Cluster: "a", Name: name, UnderlayIp: "198.18.0.1", Labels: map[string]string{"rack": rack}}}); err != nil {
			t.Fatal(err)
		}
	}
	register("n1", "r1")
	register("n2", "r2")
	if _, err := admin.ApplyBGPFilter(ctx, &fedmeshv1.ApplyBGPFilterRequest{Filter: &fedmeshv1.BGPFilter{Name: "f"}}); err != nil {
		t.Fatal(err)
	}
	var rev uint64
	for _, p := range []*fedmeshv1.BGPPeerConfig{rackPeer("tor-r1", "r1", "f"), rackPeer("tor-r2", "r2"), rackPeer("tor-r9", "r9")} {
		resp, err := admin.ApplyBGPPeer(ctx, &fedmeshv1.ApplyBGPPeerRequest{Peer: p})
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.GetRevision()
	}

	// Bad input: InvalidArgument naming the field, the revision unmoved.
	for _, tc := range []struct {
		name  string
		peer  *fedmeshv1.BGPPeerConfig
		field string
	}{
		{"AS_TRANS", &fedmeshv1.BGPPeerConfig{Name: "x", Address: "198.18.9.5", Asn: 23456}, "peer.asn"},
		{"peer address", &fedmeshv1.BGPPeerConfig{Name: "x", Address: "198.18.9", Asn: 65000}, "peer.address"},
		{"community", &fedmeshv1.BGPPeerConfig{Name: "x", Address: "198.18.9.5", Asn: 65000, Attributes: &fedmeshv1.BGPRouteAttributes{Communities: []string{"65000:70000"}}}, "peer.attributes.communities[0]"},
		{"missing filter", rackPeer("x", "r1", "f", "nope"), "peer.filters[1]"},
	} {
		_, err := admin.ApplyBGPPeer(ctx, &fedmeshv1.ApplyBGPPeerRequest{Peer: tc.peer})
		if status.Code(err) != codes.InvalidArgument || !slices.Contains(badRequestFields(err), tc.field) {
			t.Errorf("%s: %v (fields %v), want InvalidArgument naming %s", tc.name, err, badRequestFields(err), tc.field)
		}
	}
	if _, err := admin.DeleteBGPFilter(ctx, &fedmeshv1.DeleteBGPFilterRequest{Name: "f"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("delete a filter in use: %v, want FailedPrecondition", err)
	}
	if got := lead.FSM().Revision(); got != rev {
		t.Fatalf("refused writes moved the revision to %d from %d", got, rev)
	}

	// Who reads what.
	list, err := n1.ListBGPPeers(ctx, &fedmeshv1.ListBGPPeersRequest{})
	if err != nil || !slices.Equal(peerNames(list.GetPeers()), []string{"tor-r1"}) {
		t.Fatalf("node a/n1 lists %v (%v), want [tor-r1]", peerNames(list.GetPeers()), err)
	}
	if _, err := n1.GetBGPPeer(ctx, &fedmeshv1.GetBGPPeerRequest{Name: "tor-r2"}); status.Code(err) != codes.NotFound {
		t.Errorf("node a/n1 gets tor-r2 (selecting r2): %v, want NotFound", err)
	}
	if fs, err := n1.ListBGPFilters(ctx, &fedmeshv1.ListBGPFiltersRequest{}); err != nil || len(fs.GetFilters()) != 1 {
		t.Errorf("node a/n1 lists filters %v %v, want [f]", fs, err)
	}
	if _, err := n1.ApplyBGPFilter(ctx, &fedmeshv1.ApplyBGPFilterRequest{Filter: &fedmeshv1.BGPFilter{Name: "g"}}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("node writes a filter: %v, want PermissionDenied", err)
	}
	if _, err := fedmeshv1.NewBGPServiceClient(g.conn(t, lead, auth.Syncer("a"))).ListBGPPeers(ctx, &fedmeshv1.ListBGPPeersRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("syncer lists peers: %v, want PermissionDenied", err)
	}
	all, err := admin.ListBGPPeers(ctx, &fedmeshv1.ListBGPPeersRequest{})
	if err != nil || len(all.GetPeers()) != 3 {
		t.Fatalf("admin lists %v %v", peerNames(all.GetPeers()), err)
	}
	for _, p := range all.GetPeers() {
		if p.GetName() == "tor-r9" && (p.GetStatus().GetSelectedNodes() != 0 || p.GetStatus().GetMessage() == "") {
			t.Errorf("tor-r9 selects no node; status %v", p.GetStatus())
		}
		if p.GetName() == "tor-r1" && p.GetStatus().GetSelectedNodes() != 1 {
			t.Errorf("tor-r1 status %v, want 1 selected node", p.GetStatus())
		}
	}

	// A node's watch: its peers, then selection following changes.
	w, err := fedmeshv1.NewWatchServiceClient(n1conn).Watch(ctx, &fedmeshv1.WatchRequest{Kinds: []fedmeshv1.ResourceKind{
		fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER, fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER, fedmeshv1.ResourceKind_RESOURCE_KIND_NODE}})
	if err != nil {
		t.Fatal(err)
	}
	view := map[string]*fedmeshv1.BGPPeerConfig{}
	apply := func(resp *fedmeshv1.WatchResponse) {
		for _, e := range resp.GetEvents() {
			if p := e.GetBgpPeer(); p != nil {
				if e.GetType() == fedmeshv1.EventType_EVENT_TYPE_DELETE {
					delete(view, p.GetName())
				} else {
					view[p.GetName()] = p
				}
			}
		}
	}
	seen := func() []string {
		return slices.Sorted(func(yield func(string) bool) {
			for k := range view {
				if !yield(k) {
					return
				}
			}
		})
	}
	await := func(what string, want ...string) {
		t.Helper()
		for !slices.Equal(seen(), want) {
			resp, err := w.Recv()
			if err != nil {
				t.Fatalf("%s: watch: %v (node sees %v, want %v)", what, err, seen(), want)
			}
			apply(resp)
			for _, e := range resp.GetEvents() {
				if p := e.GetBgpPeer(); p != nil && e.GetType() == fedmeshv1.EventType_EVENT_TYPE_PUT && !slices.Contains(want, p.GetName()) {
					t.Fatalf("%s: node a/n1 received peer %s, which does not select it", what, p.GetName())
				}
			}
		}
	}
	await("snapshot", "tor-r1")
	if _, err := admin.ApplyBGPPeer(ctx, &fedmeshv1.ApplyBGPPeerRequest{Peer: rackPeer("tor-r2", "r1")}); err != nil {
		t.Fatal(err)
	}
	await("tor-r2 now selects rack r1", "tor-r1", "tor-r2")
	if _, err := admin.ApplyBGPPeer(ctx, &fedmeshv1.ApplyBGPPeerRequest{Peer: rackPeer("tor-r1", "r3", "f")}); err != nil {
		t.Fatal(err)
	}
	await("tor-r1 moved to rack r3", "tor-r2")
	register("n1", "r3")
	await("node a/n1 moved to rack r3", "tor-r1")

	// Status: per node, the peers selecting it and what its agent reported.
	if _, err := fedmeshv1.NewNodeServiceClient(g.conn(t, lead, auth.Node("a", "n1"))).ReportNodeStatus(ctx, &fedmeshv1.ReportNodeStatusRequest{
		Cluster: "a", Name: "n1", Status: &fedmeshv1.NodeStatus{
			BgpPeers:    []*fedmeshv1.BGPPeerStatus{{Address: "198.18.9.3", Asn: 65000, Name: "tor-r1", State: fedmeshv1.BGPSessionState_BGP_SESSION_STATE_ESTABLISHED}},
			BgpProblems: []string{"peer tor-x: password file unreadable"}}}); err != nil {
		t.Fatal(err)
	}
	st, err := admin.GetBGPStatus(ctx, &fedmeshv1.GetBGPStatusRequest{Cluster: "a"})
	if err != nil || len(st.GetNodes()) != 2 {
		t.Fatalf("status: %v %v", st, err)
	}
	got := st.GetNodes()[0]
	if got.GetNode() != "n1" || !slices.Equal(got.GetSelectedBy(), []string{"tor-r1"}) || len(got.GetSessions()) != 1 || len(got.GetProblems()) != 1 {
		t.Fatalf("status of a/n1: %v", got)
	}
	if _, err := n1.GetBGPStatus(ctx, &fedmeshv1.GetBGPStatusRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("node reads the federation's BGP status: %v, want PermissionDenied", err)
	}
}

// A replica that does not apply the BGP commands yet would stop at one:
// the edge refuses BGP writes until every replica publishes log format 4.
func TestBGPWritesWaitForEveryReplicaToApplyThem(t *testing.T) {
	at := func(id string, f uint32) *fedmeshv1.Member { return &fedmeshv1.Member{Id: id, LogFormat: f} }
	for _, tc := range []struct {
		name    string
		members map[string]*fedmeshv1.Member
		allowed bool
	}{
		{"every replica at format 4", map[string]*fedmeshv1.Member{"a": at("a", 4), "b": at("b", 4), "c": at("c", 4)}, true},
		{"one replica at format 3", map[string]*fedmeshv1.Member{"a": at("a", 4), "b": at("b", 3), "c": at("c", 4)}, false},
		{"one replica not published", map[string]*fedmeshv1.Member{"a": at("a", 4), "c": at("c", 4)}, false},
	} {
		err := bgpWritesAt(clusterLogFormat(servers("a", "b", "c"), tc.members, ""))
		if (err == nil) != tc.allowed || (err != nil && status.Code(err) != codes.FailedPrecondition) {
			t.Errorf("%s: %v, allowed want %v", tc.name, err, tc.allowed)
		}
	}
	if store.LogFormat < store.LogFormatBGP {
		t.Fatal("this binary does not apply the BGP commands it serves")
	}
}
