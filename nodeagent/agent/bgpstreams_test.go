package agent_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The agent follows its cluster's service advertisements: it gets the
// whole set at once and after each change, and when the replica it
// follows stops it moves to another and gets the current set, changes
// made meanwhile included.
func TestFollowServiceAdvertisementsSurvivesTheReplicaItFollows(t *testing.T) {
	f := startFed(t, inproc.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn := func() *grpc.ClientConn {
		cc, err := f.any()
		if err != nil {
			t.Fatal(err)
		}
		return cc
	}
	if _, err := fedmeshv1.NewClusterServiceClient(conn()).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
		Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	sync := func(ready ...string) {
		t.Helper()
		for {
			_, err := fedmeshv1.NewBGPServiceClient(conn()).SyncServiceAdvertisements(ctx, &fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a",
				Puts: []*fedmeshv1.ServiceAdvertisement{{Namespace: "shop", Name: "web", LoadBalancerIps: []string{"203.0.113.10"}, ReadyNodes: ready}}})
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // a new leader is being elected
		}
	}
	sync("n1")

	cl, err := agent.NewClient(f.cp.Addrs(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := make(chan []string, 16)
	go cl.FollowServiceAdvertisements(ctx, "a", nil, func(s []*fedmeshv1.ServiceAdvertisement) {
		for _, a := range s {
			got <- a.GetReadyNodes()
		}
	})
	want := func(nodes ...string) {
		t.Helper()
		for {
			select {
			case g := <-got:
				if slices.Equal(g, nodes) {
					return
				}
			case <-ctx.Done():
				t.Fatalf("never saw ready nodes %v", nodes)
			}
		}
	}
	want("n1")
	sync("n2")
	want("n2")
	// Stop the replica the client follows (the first address, where it
	// started); change the set while it is down.
	var followed *inproc.Replica
	for _, r := range f.cp.Replicas {
		if r.GRPCAddr == cl.Current() {
			followed = r
		}
	}
	f.cp.Stop(followed)
	sync("n1", "n3")
	want("n1", "n3")
}
