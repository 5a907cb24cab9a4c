package agent

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// fakeReplica answers ReportNodeStatus on loopback, saying which replica
// it is; it can be stopped and started again on the same address.
type fakeReplica struct {
	fedmeshv1.UnimplementedNodeServiceServer
	name, addr string
	answered   *[]string
	mu         *sync.Mutex
	srv        *grpc.Server
}

func (f *fakeReplica) ReportNodeStatus(_ context.Context, req *fedmeshv1.ReportNodeStatusRequest) (*fedmeshv1.ReportNodeStatusResponse, error) {
	f.mu.Lock()
	*f.answered = append(*f.answered, f.name)
	f.mu.Unlock()
	if req.GetName() == "bad" {
		return nil, status.Error(codes.InvalidArgument, "name: bad")
	}
	return &fedmeshv1.ReportNodeStatusResponse{}, nil
}

func (f *fakeReplica) start(t *testing.T) {
	t.Helper()
	addr := f.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var l net.Listener
	var err error
	for range 50 { // the port of a stopped replica may take a moment to free
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	f.srv = grpc.NewServer()
	fedmeshv1.RegisterNodeServiceServer(f.srv, f)
	go f.srv.Serve(l)
	t.Cleanup(f.srv.Stop)
}

func TestClientPrefersReplicasInListOrderAndReturnsToThePreferredOne(t *testing.T) {
	var mu sync.Mutex
	var answered []string
	last := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(answered) == 0 {
			return ""
		}
		return answered[len(answered)-1]
	}
	reps := map[string]*fakeReplica{}
	var addrs []string
	for _, n := range []string{"near", "far", "farther"} {
		r := &fakeReplica{name: n, answered: &answered, mu: &mu}
		r.start(t)
		reps[n] = r
		addrs = append(addrs, r.addr)
	}
	c, err := NewClient(addrs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var clockMu sync.Mutex
	clock := time.Unix(1_000_000, 0)
	c.now = func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return clock }
	advance := func(d time.Duration) { clockMu.Lock(); clock = clock.Add(d); clockMu.Unlock() }
	c.RetryPreferredAfter = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	report := func(node string) error {
		return c.ReportNodeStatus(ctx, "a", node, &fedmeshv1.NodeStatus{})
	}

	if err := report("n1"); err != nil || last() != "near" {
		t.Fatalf("first call: %v, answered by %q; want the first listed replica", err, last())
	}
	// A request the replica rejects is not the replica's failure.
	if err := report("bad"); status.Code(err) != codes.InvalidArgument || c.Current() != reps["near"].addr {
		t.Fatalf("rejected request: %v, next call to %s; want InvalidArgument and still the first replica", err, c.Current())
	}

	// The preferred replica goes away: calls move to the next one in order
	// and stay there while the preferred one is passed over.
	reps["near"].srv.Stop()
	if err := report("n1"); err != nil || last() != "far" {
		t.Fatalf("with the first replica down: %v, answered by %q; want the second listed", err, last())
	}
	reps["near"].start(t)
	advance(30 * time.Second)
	if err := report("n1"); err != nil || last() != "far" {
		t.Fatalf("inside the retry window: %v, answered by %q; want the second replica still", err, last())
	}

	// After the window, calls go back to the preferred replica (its
	// connection may need a few attempts to come back).
	deadline := time.Now().Add(10 * time.Second)
	for {
		advance(time.Minute)
		if err := report("n1"); err != nil {
			t.Fatal(err)
		}
		if last() == "near" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first replica is back, yet calls still go to %q", last())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c.Current() != reps["near"].addr {
		t.Errorf("after the preferred replica answered, the next call goes to %s", c.Current())
	}
}

func TestClientWithEveryReplicaFailedCyclesFromTheLongestFailed(t *testing.T) {
	c := &Client{addrs: []string{"a", "b", "c"}, failedAt: make([]time.Time, 3), RetryPreferredAfter: time.Hour}
	now := time.Unix(1_000_000, 0)
	c.now = func() time.Time { return now }
	for _, tc := range []struct {
		fail int
		want string
	}{{0, "b"}, {1, "c"}, {2, "a"}, {0, "b"}} {
		c.failed(tc.fail)
		now = now.Add(time.Second)
		if got := c.Current(); got != tc.want {
			t.Fatalf("after replica %d failed: next call to %s, want %s", tc.fail, got, tc.want)
		}
	}
	now = now.Add(time.Hour)
	if got := c.Current(); got != "a" {
		t.Fatalf("after the window: next call to %s, want the first listed", got)
	}
}
