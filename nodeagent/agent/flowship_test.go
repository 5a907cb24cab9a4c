package agent_test

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/flowstore"
	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/flows"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func shipFlow(i int) []byte {
	b, err := proto.Marshal(&fedmeshv1.Flow{Time: timestamppb.Now(), Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_DENY,
		Source:      &fedmeshv1.Workload{Cluster: "a", Namespace: "demo", Pod: "web", Ip: "10.1.1.11"},
		Destination: &fedmeshv1.Workload{Cluster: "a", Namespace: "demo", Pod: "db", Ip: "10.1.1.12", Port: uint32(i)}})
	if err != nil {
		panic(err)
	}
	return b
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

	// stored reports (with t.Errorf, callable from any goroutine) whether
	// the replicas came to store want flows.
	stored := func(want uint64, rs ...*inproc.Replica) bool {
		deadline := time.Now().Add(15 * time.Second)
		for _, r := range rs {
			for storedOn(r) != want {
				if time.Now().After(deadline) {
					t.Errorf("replica %s stores %d flows, want %d", r.ID, storedOn(r), want)
					return false
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		return true
	}
	wait := func(want uint64, rs ...*inproc.Replica) {
		t.Helper()
		if !stored(want, rs...) {
			t.FailNow()
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
	const more = 30_000 // over the queues of the down replica
	offered := make(chan struct{})
	go func() {
		defer close(offered)
		for i := range more {
			s.Offer(shipFlow(i))
			if i%1000 == 999 && !stored(uint64(1000+i+1), reps[0], reps[1]) { // at the pace the live replicas take
				return
			}
		}
	}()
	select {
	case <-offered:
		if t.Failed() {
			t.FailNow()
		}
	case <-time.After(60 * time.Second):
		t.Fatal("offering flows with a replica down did not finish: the shipper blocks its caller")
	}
	// Batches the stream accepted just before the replica died are lost
	// without an error (a client stream acknowledges nothing per
	// message): up to a few batches are not counted.
	if got, want := s.Dropped(), uint64(more-16384-4*500); got < want {
		t.Fatalf("dropped %d for the down replica, want at least %d of what its queue could not hold", got, want)
	}
}

type chanSink chan *fedmeshv1.Flow

func (c chanSink) Offer(b []byte) {
	var f fedmeshv1.Flow
	if err := proto.Unmarshal(b, &f); err != nil {
		panic(err)
	}
	c <- &f
}

// The agent keeps the flow directory in step with what it enforces: an
// event of the in-memory dataplane is attributed to the rule the compiler
// numbered, or to the policies selecting the endpoint, with both workloads.
func TestAgentFeedsTheFlowDirectoryWithWhatItEnforces(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.seed()
	cl, err := agent.NewClient(f.cp.Addrs(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	dp := newRecorder()
	rt := &routes{m: map[netip.Addr]string{}}
	rt.set("10.0.0.10", "cali-server")
	dir := flows.NewDirectory()
	a, err := agent.New(agent.Config{Cluster: myClust, Node: self, UnderlayIP: netip.MustParseAddr("198.18.0.1"), PodCIDRs: []string{"10.0.0.0/24"},
		DataplaneName: "memory", Tick: 20 * time.Millisecond, StatusInterval: 100 * time.Millisecond},
		agent.Deps{ControlPlane: cl, Dataplane: dp, Interfaces: rt, Flows: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	sink := make(chanSink, 16)
	rd := &flows.Reader{Cluster: myClust, Node: self, Dir: dir, Sink: sink}
	go rd.Run(ctx, dp.Events())

	f.waitRegistered() // else WaitEnforced has no node to wait for
	rev := f.applyPolicy(allowFrom("allow-client", "client", 80))
	if resp := f.waitEnforced(rev, 15*time.Second); !resp.GetEnforced() {
		t.Fatalf("not enforced: %v", resp)
	}
	eventually(t, "the server attached", func() bool {
		v, _, _, err := dp.Process("a/web/server", policy.Ingress, tcpSYN(netip.MustParseAddr("10.0.0.20"), netip.MustParseAddr("10.0.0.10"), 40000, 80))
		return err == nil && v == dataplane.Allow
	})
	var allowed, denied *fedmeshv1.Flow
	v := dp.verdict(t, "a/web/server", "10.0.0.30", "10.0.0.10", 80)
	for allowed == nil || denied == nil {
		select {
		case fl := <-sink:
			if fl.GetVerdict() == fedmeshv1.Verdict_VERDICT_DENY {
				denied = fl
			} else if fl.GetDecision().GetKind() == fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE {
				allowed = fl
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("flows: allowed %v denied %v; %d events queued, %d read, other's verdict %v", allowed, denied, len(dp.Events()), rd.Events(), v)
		}
	}
	if got := flows.Explain(allowed.GetDecision()); got != "ingress rule 0 of a/web/allow-client" || allowed.GetSource().GetPod() != "client" {
		t.Errorf("allowed flow: %q from %v", got, allowed.GetSource())
	}
	if got := flows.Explain(denied.GetDecision()); got != "ingress: selected by a/web/allow-client and no rule allowed" ||
		denied.GetSource().GetPod() != "other" || denied.GetDestination().GetPod() != "server" {
		t.Errorf("denied flow: %q %v -> %v", got, denied.GetSource(), denied.GetDestination())
	}
}

// The reader encodes every event into the same bytes and the shipper
// copies them into its batch: every replica stores each event's own flow
// (its own source port), none overwritten by a later event's record.
func TestShippedFlowsAreEachEventsOwnThoughTheReaderReusesItsBuffer(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.registerCluster(&fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.0.0.0/16"}})
	rev := f.write("register node", func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewNodeServiceClient(cc).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: self, UnderlayIp: "198.18.0.1"}})
		return r.GetRevision(), err
	})
	if err := f.cp.WaitRevision(rev, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	cl, err := agent.NewClient(f.cp.Addrs(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rules := policy.EndpointRules{Identity: 256, Ingress: policy.DirectionRules{Enforced: true,
		Identities: []policy.IdentityRule{{Peer: policy.IdentityAny, Proto: policy.ProtoAny, Ports: policy.AllPorts, Rule: 1}}}}
	dp := dataplane.NewMemory()
	defer dp.Close()
	if err := dp.Apply(ctx, &dataplane.Revision{Number: 1, Rules: map[string]policy.EndpointRules{"a/web/server": rules}}); err != nil {
		t.Fatal(err)
	}
	if err := dp.Attach(ctx, dataplane.Endpoint{ID: "a/web/server", Interface: "cali-server"}); err != nil {
		t.Fatal(err)
	}
	dir := flows.NewDirectory()
	dir.UpsertEndpoint(server)
	dir.UpsertEndpoint(client)
	s := agent.NewFlowShipper(cl, "a", self, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rd := &flows.Reader{Cluster: "a", Node: self, Dir: dir, Sink: s}
	go s.Run(ctx)
	go rd.Run(ctx, dp.Events())

	const n = 1200 // two full batches and a lingering one
	for i := range n {
		if _, _, _, err := dp.Process("a/web/server", policy.Ingress, tcpSYN(netip.MustParseAddr("10.0.0.20"), netip.MustParseAddr("10.0.0.10"), uint16(10000+i), 80)); err != nil {
			t.Fatal(err)
		}
		for rd.Events() < uint64(i+1) { // one event in the channel at a time: none dropped
			time.Sleep(10 * time.Microsecond)
		}
	}
	for _, r := range f.cp.Replicas {
		eventually(t, "replica "+r.ID+" stores every flow", func() bool { return storedOn(r) == n })
		ports := map[uint32]bool{}
		for _, fl := range r.Server().Flows().Query(flowstore.Query{Limit: 2 * n}, flowstore.Scope{}) {
			if fl.GetSource().GetPod() != "client" || fl.GetDestination().GetPod() != "server" {
				t.Fatalf("replica %s: flow %v, want client to server", r.ID, fl)
			}
			ports[fl.GetSource().GetPort()] = true
		}
		if len(ports) != n {
			t.Fatalf("replica %s stores %d distinct source ports of %d events: records were overwritten by later ones", r.ID, len(ports), n)
		}
	}
	if s.Dropped() != 0 {
		t.Fatalf("dropped %d", s.Dropped())
	}
}
