package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/server"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func endpointN(i int) *fedmeshv1.Endpoint {
	return &fedmeshv1.Endpoint{Namespace: "load", Name: fmt.Sprintf("p%04d", i), Ips: []string{fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)},
		Labels: map[string]string{"app": fmt.Sprintf("a%d", i%7)}, Node: "n1"}
}

func TestWriteThroughAFollowerIsForwardedAndReplicated(t *testing.T) {
	g := startGroup(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lead := g.leader(10 * time.Second)
	f := g.followers(lead)[0]
	resp, err := fedmeshv1.NewClusterServiceClient(f.conn).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.1.0.0/16"}}})
	if err != nil {
		t.Fatalf("write via follower %s: %v", f.id, err)
	}
	// A linearizable read on the other follower sees it at once.
	other := g.followers(lead)[1]
	lin := metadata.AppendToOutgoingContext(ctx, server.ConsistencyKey, server.ConsistencyLinearizable)
	got, err := fedmeshv1.NewClusterServiceClient(other.conn).GetCluster(lin, &fedmeshv1.GetClusterRequest{Name: "east"})
	if err != nil || got.GetRevision() < resp.GetRevision() {
		t.Fatalf("linearizable read on %s: %v %v", other.id, got, err)
	}
	// Validation errors come back through the forwarding unchanged.
	_, err = fedmeshv1.NewClusterServiceClient(f.conn).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "west", PodCidrs: []string{"10.1.2.0/24"}}})
	if err == nil {
		t.Fatal("overlapping cluster accepted via follower")
	}
	if rev := g.waitSameRevision(10 * time.Second); rev != resp.GetRevision() {
		t.Fatalf("revision %d after one write at %d", rev, resp.GetRevision())
	}
}

// eventLog collects a watch stream: every event in order, the revisions
// the stream reported, and any ordering violation.
type eventLog struct {
	mu     sync.Mutex
	events []*fedmeshv1.Event
	last   uint64
	err    error
	names  map[string]bool
}

func (l *eventLog) run(ctx context.Context, c fedmeshv1.WatchServiceClient, from uint64) {
	w, err := c.Watch(ctx, &fedmeshv1.WatchRequest{FromRevision: from})
	if err != nil {
		l.fail(err)
		return
	}
	for {
		resp, err := w.Recv()
		if err != nil {
			if ctx.Err() == nil {
				l.fail(fmt.Errorf("watch broke: %w", err))
			}
			return
		}
		l.mu.Lock()
		if resp.GetRevision() < l.last {
			l.err = fmt.Errorf("stream went back from revision %d to %d", l.last, resp.GetRevision())
		}
		for _, e := range resp.GetEvents() {
			if resp.GetType() == fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS && e.GetRevision() <= l.last && l.err == nil {
				if len(l.events) > 0 && e.GetRevision() < l.events[len(l.events)-1].GetRevision() {
					l.err = fmt.Errorf("event at revision %d after one at %d", e.GetRevision(), l.events[len(l.events)-1].GetRevision())
				}
			}
			l.events = append(l.events, e)
			if ep := e.GetEndpoint(); ep != nil {
				l.names[ep.GetName()] = true
			}
		}
		l.last = resp.GetRevision()
		l.mu.Unlock()
	}
}

func (l *eventLog) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
	}
}

// digestFrom watches a replica from revision `from` until `to` and returns
// a digest of the event stream and the revisions seen, checking they are
// gap-free.
func digestFrom(t *testing.T, r *replica, from, to uint64) [32]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w, err := fedmeshv1.NewWatchServiceClient(r.conn).Watch(ctx, &fedmeshv1.WatchRequest{FromRevision: from})
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	next := from + 1
	for next <= to {
		resp, err := w.Recv()
		if err != nil {
			t.Fatalf("watch %s: %v", r.id, err)
		}
		if resp.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS {
			t.Fatalf("%s: %v response while replaying its log from %d", r.id, resp.GetType(), from)
		}
		for _, e := range resp.GetEvents() {
			switch {
			case e.GetRevision() == next:
				next++
			case e.GetRevision() == next-1:
			default:
				t.Fatalf("%s: revision gap: event at %d, expected %d", r.id, e.GetRevision(), next)
			}
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(e)
			h.Write(b)
		}
	}
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d
}

func TestLeaderKilledDuringWritesLosesNoAcknowledgedWrite(t *testing.T) {
	g := startGroup(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lead := g.leader(10 * time.Second)
	watched := g.followers(lead)[0]
	clusters := fedmeshv1.NewClusterServiceClient(lead.conn)
	if _, err := clusters.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wl := &eventLog{names: map[string]bool{}}
	go wl.run(wctx, fedmeshv1.NewWatchServiceClient(watched.conn), 0)

	const writes = 1000
	acked := map[int]uint64{}
	killAt := 300
	victim := lead
	for i := 0; i < writes; i++ {
		if i == killAt {
			g.kill(victim)
			t.Logf("killed leader %s after %d acknowledged writes", victim.id, i)
		}
		req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{endpointN(i)}}
		for attempt := 0; ; attempt++ {
			r := g.reps[(i+attempt)%len(g.reps)]
			if !g.alive(r) {
				continue
			}
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			resp, err := fedmeshv1.NewEndpointServiceClient(r.conn).UpsertEndpoints(cctx, req)
			ccancel()
			if err == nil {
				acked[i] = resp.GetRevision()
				break
			}
			if !retryable(err) || attempt > 200 {
				t.Fatalf("write %d via %s: %v", i, r.id, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	newLead := g.leader(10 * time.Second)
	if newLead == victim {
		t.Fatal("killed replica still leader")
	}
	final := g.waitSameRevision(20 * time.Second)

	// Every acknowledged write is on every live replica.
	for _, r := range g.reps {
		if !g.alive(r) {
			continue
		}
		eps, err := fedmeshv1.NewEndpointServiceClient(r.conn).ListEndpoints(ctx, &fedmeshv1.ListEndpointsRequest{Cluster: "east"})
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, e := range eps.GetEndpoints() {
			have[e.GetName()] = true
		}
		for i := range acked {
			if !have[endpointN(i).GetName()] {
				t.Fatalf("%s lost acknowledged write %d", r.id, i)
			}
		}
	}
	// Revisions are gap-free and identical on the live replicas.
	var digests [][32]byte
	for _, r := range g.reps {
		if g.alive(r) {
			digests = append(digests, digestFrom(t, r, 1, final))
		}
	}
	if digests[0] != digests[1] {
		t.Fatal("live replicas hold different event histories")
	}

	// The killed replica restarts from its own data dir and catches up.
	if fi, err := os.Stat(filepath.Join(victim.dataDir, "raft.db")); err != nil || fi.Size() == 0 {
		t.Fatalf("killed replica has no raft log on disk: %v", err)
	}
	g.start(victim)
	if rev := g.waitSameRevision(30 * time.Second); rev != final {
		t.Fatalf("after restart revision %d, want %d", rev, final)
	}
	if d := digestFrom(t, victim, 1, final); d != digests[0] {
		t.Fatal("restarted replica holds a different event history")
	}

	// The follower's watcher saw every acknowledged write, in order, across
	// the leader change.
	deadline := time.Now().Add(10 * time.Second)
	for {
		wl.mu.Lock()
		n, err := len(wl.names), wl.err
		wl.mu.Unlock()
		if err != nil {
			t.Fatalf("watcher on %s: %v", watched.id, err)
		}
		if n >= writes || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	wl.mu.Lock()
	defer wl.mu.Unlock()
	for i := range acked {
		if !wl.names[endpointN(i).GetName()] {
			t.Fatalf("watcher on %s missed write %d", watched.id, i)
		}
	}
	var prev uint64
	for _, e := range wl.events {
		if e.GetRevision() < prev {
			t.Fatalf("watcher saw revision %d after %d", e.GetRevision(), prev)
		}
		prev = e.GetRevision()
	}
}

func TestReplicaRestartsFromItsSnapshotAndCatchesUp(t *testing.T) {
	g := startGroup(t, 3, "--snapshot-threshold", "50", "--snapshot-interval", "100ms")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lead := g.leader(10 * time.Second)
	if _, err := fedmeshv1.NewClusterServiceClient(lead.conn).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	write := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := fedmeshv1.NewEndpointServiceClient(lead.conn).UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{endpointN(i)}}); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
		}
	}
	write(0, 300)
	f := g.followers(lead)[0]
	deadline := time.Now().Add(20 * time.Second)
	for {
		snaps, _ := filepath.Glob(filepath.Join(f.dataDir, "snapshots", "*", "state.bin"))
		if len(snaps) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("follower took no snapshot")
		}
		time.Sleep(100 * time.Millisecond)
	}
	g.kill(f)
	write(300, 500) // the leader compacts its log past what f has
	time.Sleep(500 * time.Millisecond)
	g.start(f)
	rev := g.waitSameRevision(30 * time.Second)
	want, err := fedmeshv1.NewEndpointServiceClient(lead.conn).ListEndpoints(ctx, &fedmeshv1.ListEndpointsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := fedmeshv1.NewEndpointServiceClient(f.conn).ListEndpoints(ctx, &fedmeshv1.ListEndpointsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetEndpoints()) != 500 || !proto.Equal(got, want) || got.GetRevision() != rev {
		t.Fatalf("restarted replica: %d endpoints at %d, leader %d at %d", len(got.GetEndpoints()), got.GetRevision(), len(want.GetEndpoints()), want.GetRevision())
	}
	// A watcher from before the snapshot gets a snapshot, not a gap.
	w, err := fedmeshv1.NewWatchServiceClient(f.conn).Watch(ctx, &fedmeshv1.WatchRequest{FromRevision: 2})
	if err != nil {
		t.Fatal(err)
	}
	first, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT {
		t.Fatalf("resume from a compacted revision: %v", first.GetType())
	}
}

// Followers forward concurrent writes over one stream, several to a
// message: each write must still get its own result, a write the store
// rejects must not affect the others, and the rejection must arrive with
// its details (the field it names) as on the leader.
func TestConcurrentForwardedWritesEachGetTheirOwnResult(t *testing.T) {
	g := startGroup(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lead := g.leader(10 * time.Second)
	if _, err := fedmeshv1.NewClusterServiceClient(lead.conn).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
		Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	f := g.followers(lead)[0]
	eps := fedmeshv1.NewEndpointServiceClient(f.conn)
	const writes = 96
	revs := make([]uint64, writes)
	errs := make([]error, writes)
	var wg sync.WaitGroup
	for i := range writes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cluster := "east"
			if i%4 == 3 {
				cluster = "ghost" // not registered: the store rejects it
			}
			resp, err := eps.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: cluster, Endpoints: []*fedmeshv1.Endpoint{endpointN(i)}})
			revs[i], errs[i] = resp.GetRevision(), err
		}()
	}
	wg.Wait()
	seen := map[uint64]int{}
	for i := range writes {
		if i%4 != 3 {
			if errs[i] != nil {
				t.Fatalf("write %d via follower %s: %v", i, f.id, errs[i])
			}
			if j, dup := seen[revs[i]]; dup {
				t.Fatalf("writes %d and %d both report revision %d", j, i, revs[i])
			}
			seen[revs[i]] = i
			continue
		}
		st := status.Convert(errs[i])
		if errs[i] == nil || st.Code() == codes.Unavailable || !strings.Contains(st.Message(), "ghost") {
			t.Fatalf("write %d to an unregistered cluster: %v, want the store's rejection naming it", i, errs[i])
		}
		var field string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
				field = br.GetFieldViolations()[0].GetField()
			}
		}
		if field != "cluster" {
			t.Fatalf("write %d: rejection details %v name field %q, want \"cluster\"", i, st.Details(), field)
		}
	}
	lin := metadata.AppendToOutgoingContext(ctx, server.ConsistencyKey, server.ConsistencyLinearizable)
	list, err := eps.ListEndpoints(lin, &fedmeshv1.ListEndpointsRequest{Cluster: "east"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetEndpoints()) != len(seen) {
		t.Fatalf("%d endpoints stored after %d acknowledged writes", len(list.GetEndpoints()), len(seen))
	}
}
