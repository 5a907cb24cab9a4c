package server

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func epEvent(rev uint64, typ fedmeshv1.EventType, cluster, name string) *fedmeshv1.Event {
	return &fedmeshv1.Event{Type: typ, Revision: rev, Object: &fedmeshv1.Event_Endpoint{Endpoint: &fedmeshv1.Endpoint{Cluster: cluster, Namespace: "ns", Name: name}}}
}

const (
	put = fedmeshv1.EventType_EVENT_TYPE_PUT
	del = fedmeshv1.EventType_EVENT_TYPE_DELETE
)

func TestCoalesceKeepsTheLastEventOfEachObjectInItsOrder(t *testing.T) {
	node := func(rev uint64, name string) *fedmeshv1.Event {
		return &fedmeshv1.Event{Type: put, Revision: rev, Object: &fedmeshv1.Event_Node{Node: &fedmeshv1.Node{Cluster: "a", Name: name}}}
	}
	pol := func(rev uint64, kind fedmeshv1.PolicyKind) *fedmeshv1.Event {
		return &fedmeshv1.Event{Type: put, Revision: rev, Object: &fedmeshv1.Event_Policy{Policy: &fedmeshv1.Policy{Kind: kind, Namespace: "ns", Name: "p"}}}
	}
	unknown := func(rev uint64) *fedmeshv1.Event { return &fedmeshv1.Event{Type: put, Revision: rev} }
	tests := []struct {
		name    string
		in      []*fedmeshv1.Event
		want    []uint64 // revisions kept, in order
		dropped int
	}{
		{"empty", nil, nil, 0},
		{"one", []*fedmeshv1.Event{epEvent(1, put, "a", "x")}, []uint64{1}, 0},
		{"distinct objects all stay", []*fedmeshv1.Event{epEvent(1, put, "a", "x"), epEvent(2, put, "a", "y"), epEvent(3, put, "b", "x")}, []uint64{1, 2, 3}, 0},
		{"updates of one object become the last", []*fedmeshv1.Event{epEvent(1, put, "a", "x"), epEvent(2, put, "a", "x"), epEvent(3, put, "a", "x")}, []uint64{3}, 2},
		{"put then delete is the delete", []*fedmeshv1.Event{epEvent(1, put, "a", "x"), epEvent(2, del, "a", "x")}, []uint64{2}, 1},
		{"delete then put is the put", []*fedmeshv1.Event{epEvent(1, del, "a", "x"), epEvent(2, put, "a", "x")}, []uint64{2}, 1},
		{"order is that of the last events", []*fedmeshv1.Event{epEvent(1, put, "a", "x"), epEvent(2, put, "a", "y"), epEvent(3, put, "a", "x"), node(4, "n1")}, []uint64{2, 3, 4}, 1},
		{"kinds with the same names are apart", []*fedmeshv1.Event{epEvent(1, put, "a", "n1"), node(2, "n1")}, []uint64{1, 2}, 0},
		{"policy kinds are apart", []*fedmeshv1.Event{pol(1, fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED), pol(2, fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES), pol(3, fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED)}, []uint64{2, 3}, 1},
		{"an object it cannot key is never dropped", []*fedmeshv1.Event{unknown(1), unknown(2), epEvent(3, put, "a", "x")}, []uint64{1, 2, 3}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, dropped := coalesce(tt.in)
			var got []uint64
			for _, e := range out {
				got = append(got, e.GetRevision())
			}
			if !slices.Equal(got, tt.want) || dropped != tt.dropped {
				t.Fatalf("coalesce = revisions %v (dropped %d), want %v (dropped %d)", got, dropped, tt.want, tt.dropped)
			}
		})
	}
}

// A watcher resuming several revisions back gets one response for them,
// each object once at its newest state, at the newest revision; applied to
// what it held, it equals the store.
func TestWatcherBehindGetsEachObjectOnceAtItsNewestState(t *testing.T) {
	r, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	ep := func(name, ip, app string) *fedmeshv1.Endpoint {
		return &fedmeshv1.Endpoint{Namespace: "a", Name: name, Ips: []string{ip}, Node: "n", Labels: map[string]string{"app": app}}
	}
	upsert := func(e *fedmeshv1.Endpoint) uint64 {
		resp, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{e}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetRevision()
	}
	from := upsert(ep("gone", "10.1.0.3", "x"))
	for i := range 20 {
		upsert(ep("moving", "10.1.0.2", fmt.Sprintf("v%d", i)))
	}
	upsert(ep("new", "10.1.0.4", "y"))
	dresp, err := c.endpoint.DeleteEndpoints(ctx, &fedmeshv1.DeleteEndpointsRequest{Cluster: "east", Keys: []*fedmeshv1.EndpointKey{{Namespace: "a", Name: "gone"}}})
	if err != nil {
		t.Fatal(err)
	}
	last := dresp.GetRevision()

	w, err := c.watch.Watch(ctx, &fedmeshv1.WatchRequest{FromRevision: from, Kinds: []fedmeshv1.ResourceKind{fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT}})
	if err != nil {
		t.Fatal(err)
	}
	resp := recvWatch(t, w)
	if resp.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS || resp.GetRevision() != last {
		t.Fatalf("resume from %d: %v at %d, want events up to %d", from, resp.GetType(), resp.GetRevision(), last)
	}
	got := map[string]*fedmeshv1.Event{}
	var prev uint64
	for _, e := range resp.GetEvents() {
		name := e.GetEndpoint().GetName()
		if got[name] != nil {
			t.Errorf("endpoint %s sent twice in one response", name)
		}
		if e.GetRevision() <= prev {
			t.Errorf("events out of revision order: %d after %d", e.GetRevision(), prev)
		}
		got[name], prev = e, e.GetRevision()
	}
	if len(got) != 3 {
		t.Fatalf("got %d events for %v, want one each for moving, new, gone", len(resp.GetEvents()), resp.GetEvents())
	}
	if app := got["moving"].GetEndpoint().GetLabels()["app"]; app != "v19" || got["moving"].GetType() != put {
		t.Errorf("moving: %v with app=%s, want its last put (app=v19)", got["moving"].GetType(), app)
	}
	if got["gone"].GetType() != del || got["new"].GetType() != put {
		t.Errorf("gone: %v, new: %v; want delete and put", got["gone"].GetType(), got["new"].GetType())
	}
	if n := testutil.ToFloat64(r.metrics.watchCoalesced); n != 19 {
		t.Errorf("coalesced events metric = %v, want 19 (20 puts of moving sent as 1)", n)
	}
}

// A watch snapshot waits for a free snapshot slot, so watchers connecting
// at once do not all hold their snapshots in memory together; it is sent
// as soon as a slot frees.
func TestWatchSnapshotWaitsForAFreeSlot(t *testing.T) {
	r, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	for range cap(r.snapshots) {
		r.snapshots <- struct{}{} // every slot busy
	}
	w, err := c.watch.Watch(ctx, &fedmeshv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *fedmeshv1.WatchResponse, 1)
	go func() {
		resp, err := w.Recv()
		if err != nil {
			t.Errorf("watch recv: %v", err)
		}
		got <- resp
	}()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(r.metrics.snapshotsWaiting) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the watcher never waited for a snapshot slot")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case resp := <-got:
		t.Fatalf("snapshot sent while every slot was busy: %v", resp.GetType())
	default:
	}
	<-r.snapshots // one slot frees
	select {
	case resp := <-got:
		if resp.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT || len(resp.GetEvents()) != 1 {
			t.Fatalf("first message after a slot freed: %v", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no snapshot after a slot freed")
	}
	if n := testutil.ToFloat64(r.metrics.snapshotsWaiting); n != 0 {
		t.Errorf("watchers waiting for a slot = %v after the snapshot, want 0", n)
	}
}
