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
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func shipDNS(i int) []byte {
	b, err := proto.Marshal(&fedmeshv1.DNSRecord{Time: timestamppb.Now(), Namespace: "demo", Pod: "web", Name: "api.example.com.", Type: "A", Rcode: "NOERROR", ClientPort: uint32(i)})
	if err != nil {
		panic(err)
	}
	return b
}

// Flows and DNS records offered together reach every replica, each in
// its own store, in batches that hold both; an overflowing DNS queue
// drops records without blocking the resolver, counted for every replica.
func TestShipperCarriesDNSRecordsBesideFlowsToEveryReplica(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.registerCluster(&fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}})
	rev := f.write("register node", func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewNodeServiceClient(cc).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1"}})
		return r.GetRevision(), err
	})
	if err := f.cp.WaitRevision(rev, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	client, err := agent.NewClient(f.cp.Addrs(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	// Not running: the queue fills and the rest is dropped at once.
	idle := agent.NewFlowShipper(client, "a", "n1", nil, log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 4096 + 10 {
			idle.OfferDNS(shipDNS(i))
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("OfferDNS blocked on a full queue")
	}
	if got, want := idle.DroppedDNS(), uint64(10*len(f.cp.Replicas)); got != want || idle.Dropped() != 0 {
		t.Fatalf("dropped %d DNS records (and %d flows), want %d: 10 for each replica", got, idle.Dropped(), want)
	}

	reg := prometheus.NewRegistry()
	s := agent.NewFlowShipper(client, "a", "n1", reg, log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	const n = 700 // more than one batch of flows and records together
	for i := range n {
		s.Offer(shipFlow(i))
		s.OfferDNS(shipDNS(i))
	}
	for _, r := range f.cp.Replicas {
		eventually(t, "replica "+r.ID+" stores every flow and DNS record", func() bool {
			srv := r.Server()
			return srv != nil && srv.Flows().Status().Stored == n && srv.DNS().Status().Stored == n
		})
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var shipped float64
	for _, mf := range mfs {
		if mf.GetName() == "fedmesh_agent_dns_records_shipped_total" {
			for _, m := range mf.GetMetric() {
				shipped += m.GetCounter().GetValue()
			}
		}
	}
	if shipped != 3*n || s.DroppedDNS() != 0 {
		t.Fatalf("shipped %v DNS records, dropped %d; want %d and none", shipped, s.DroppedDNS(), 3*n)
	}
}
