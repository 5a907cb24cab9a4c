package server

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// A cluster's syncer writes its service advertisements; its agents list
// and watch them (the watch resends the whole set when it changes);
// another cluster's agent and syncer are refused; bad input names the
// field and applies nothing.
func TestServiceAdvertisementsAreSyncedByTheClusterAndReadOnlyByItsParts(t *testing.T) {
	g := startTLSGroup(t, 1)
	lead := g.leader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range []string{"a", "b"} {
		cidr := map[string]string{"a": "10.1.0.0/16", "b": "10.2.0.0/16"}[c]
		if _, err := fedmeshv1.NewClusterServiceClient(g.conn(t, lead, auth.Admin())).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
			Cluster: &fedmeshv1.Cluster{Name: c, PodCidrs: []string{cidr}}}); err != nil {
			t.Fatal(err)
		}
	}
	syncA := fedmeshv1.NewBGPServiceClient(g.conn(t, lead, auth.Syncer("a")))
	nodeA := fedmeshv1.NewBGPServiceClient(g.conn(t, lead, auth.Node("a", "n1")))
	nodeB := fedmeshv1.NewBGPServiceClient(g.conn(t, lead, auth.Node("b", "n1")))
	syncB := fedmeshv1.NewBGPServiceClient(g.conn(t, lead, auth.Syncer("b")))

	lb := func(ready ...string) *fedmeshv1.ServiceAdvertisement {
		return &fedmeshv1.ServiceAdvertisement{Namespace: "shop", Name: "lb", LoadBalancerIps: []string{"203.0.113.10"},
			ExternalTrafficPolicy: fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL, ReadyNodes: ready}
	}
	if _, err := syncA.SyncServiceAdvertisements(ctx, &fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Replace: true, Puts: []*fedmeshv1.ServiceAdvertisement{lb("n1")}}); err != nil {
		t.Fatal(err)
	}
	watch, err := nodeA.WatchServiceAdvertisements(ctx, &fedmeshv1.WatchServiceAdvertisementsRequest{Cluster: "a"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if a := first.GetAdvertisements(); len(a) != 1 || !slices.Equal(a[0].GetReadyNodes(), []string{"n1"}) || a[0].GetCluster() != "a" {
		t.Fatalf("watch start: %v", a)
	}
	if _, err := syncA.SyncServiceAdvertisements(ctx, &fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Puts: []*fedmeshv1.ServiceAdvertisement{lb()}}); err != nil {
		t.Fatal(err)
	}
	next, err := watch.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if a := next.GetAdvertisements(); len(a) != 1 || len(a[0].GetReadyNodes()) != 0 {
		t.Fatalf("watch after the backend left: %v", a)
	}
	list, err := nodeA.ListServiceAdvertisements(ctx, &fedmeshv1.ListServiceAdvertisementsRequest{Cluster: "a"})
	if err != nil || len(list.GetAdvertisements()) != 1 {
		t.Fatalf("list by a's agent: %v %v", list, err)
	}

	for name, call := range map[string]func() error{
		"b's agent lists a": func() error {
			_, err := nodeB.ListServiceAdvertisements(ctx, &fedmeshv1.ListServiceAdvertisementsRequest{Cluster: "a"})
			return err
		},
		"b's agent watches a": func() error {
			w, err := nodeB.WatchServiceAdvertisements(ctx, &fedmeshv1.WatchServiceAdvertisementsRequest{Cluster: "a"})
			if err != nil {
				return err
			}
			_, err = w.Recv()
			return err
		},
		"b's syncer writes a": func() error {
			_, err := syncB.SyncServiceAdvertisements(ctx, &fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a"})
			return err
		},
		"a's agent writes": func() error {
			_, err := nodeA.SyncServiceAdvertisements(ctx, &fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a"})
			return err
		},
	} {
		if status.Code(call()) != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", name, call())
		}
	}

	bad := lb("n1")
	bad.LoadBalancerIps = []string{"203.0.113.300"}
	_, err = syncA.SyncServiceAdvertisements(ctx, &fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Puts: []*fedmeshv1.ServiceAdvertisement{bad}})
	if status.Code(err) != codes.InvalidArgument || !slices.Contains(badRequestFields(err), "puts[0].loadBalancerIps[0]") {
		t.Fatalf("bad IP: %v (fields %v)", err, badRequestFields(err))
	}
	list, _ = nodeA.ListServiceAdvertisements(ctx, &fedmeshv1.ListServiceAdvertisementsRequest{Cluster: "a"})
	if len(list.GetAdvertisements()[0].GetReadyNodes()) != 0 {
		t.Fatal("a refused write changed the advertisement")
	}
}

func TestServiceAdvertisementWritesWaitForEveryReplicaToApplyThem(t *testing.T) {
	at := func(id string, f uint32) *fedmeshv1.Member { return &fedmeshv1.Member{Id: id, LogFormat: f} }
	for _, tc := range []struct {
		name    string
		members map[string]*fedmeshv1.Member
		allowed bool
	}{
		{"every replica at format 7", map[string]*fedmeshv1.Member{"a": at("a", 7), "b": at("b", 7), "c": at("c", 7)}, true},
		{"one replica at format 5 (applies BGP peers, not advertisements)", map[string]*fedmeshv1.Member{"a": at("a", 7), "b": at("b", 5), "c": at("c", 7)}, false},
		{"one replica not published", map[string]*fedmeshv1.Member{"a": at("a", 7), "c": at("c", 7)}, false},
	} {
		err := advertWritesAt(clusterLogFormat(servers("a", "b", "c"), tc.members, ""))
		if (err == nil) != tc.allowed || (err != nil && status.Code(err) != codes.FailedPrecondition) {
			t.Errorf("%s: %v, allowed want %v", tc.name, err, tc.allowed)
		}
	}
	if store.LogFormat < store.LogFormatServiceAdvertisements {
		t.Fatal("this binary does not apply the advertisement commands it serves")
	}
}
