package agent_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func shipFlow(i int) *fedmeshv1.Flow {
	return &fedmeshv1.Flow{Time: timestamppb.Now(), Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_DENY,
		Source:      &fedmeshv1.Workload{Cluster: "a", Namespace: "demo", Pod: "web", Ip: "10.1.1.11"},
		Destination: &fedmeshv1.Workload{Cluster: "a", Namespace: "demo", Pod: "db", Ip: "10.1.1.12", Port: uint32(i)}}
}

func storedOn(r *inproc.Replica) uint64 {
	if s := r.Server(); s != nil {
		return s.Flows().Status().Stored
	}
	return 0
}

// The shipper sends every flow to every replica; a replica that is down
// loses its copy only, counted as dropped, while the others keep getting
// everything, and the shipper never blocks its caller.
func TestShipperSendsEveryFlowToEveryReplicaAndCountsWhatADownReplicaMisses(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.registerCluster(&fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}})
	rev := f.write("register node", func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewNodeServiceClient(cc).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1"}})
		return r.GetRevision(), err
	})
	client, err := agent.NewClient(f.cp.Addrs(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	reg := prometheus.NewRegistry()
	s := agent.NewFlowShipper(client, "a", "n1", reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	// Every replica has applied the node's registration before flows come.
	if err := f.cp.WaitRevision(rev, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	wait := func(want uint64, rs ...*inproc.Replica) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for _, r := range rs {
			for storedOn(r) != want {
				if time.Now().After(deadline) {
					t.Fatalf("replica %s stores %d flows, want %d", r.ID, storedOn(r), want)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	for i := range 1000 {
		s.Offer(shipFlow(i))
	}
	reps := f.cp.Replicas
	wait(1000, reps...)
	if s.Dropped() != 0 {
		t.Fatalf("dropped %d with every replica up", s.Dropped())
	}

	down := reps[2]
	f.cp.Stop(down)
	const more = 30_000 // over the queue of the down replica
	var slowest time.Duration
	for i := range more {
		start := time.Now()
		s.Offer(shipFlow(i))
		slowest = max(slowest, time.Since(start))
		if i%1000 == 999 { // at the pace the live replicas take
			wait(uint64(1000+i+1), reps[0], reps[1])
		}
	}
	if slowest > 100*time.Millisecond {
		t.Fatalf("an offer took %v with a replica down: the shipper blocked its caller", slowest)
	}
	if got := s.Dropped(); got < more-16384 {
		t.Fatalf("dropped %d for the down replica, want at least the %d its queue could not hold", got, more-16384)
	}
}
