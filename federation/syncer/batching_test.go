package syncer

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// gatedControlPlane is the real control plane with a gate on endpoint
// upserts: while the gate is shut, an upsert waits (after recording its
// request) until the test opens it, so a test can hold a write in flight.
type gatedControlPlane struct {
	ControlPlane
	mu      sync.Mutex
	shut    chan struct{} // closed to open the gate; nil: open
	writes  [][]string    // endpoint names of each upsert, in order
	entered chan struct{}
}

func (g *gatedControlPlane) UpsertEndpoints(ctx context.Context, req *fedmeshv1.UpsertEndpointsRequest) (uint64, error) {
	var names []string
	for _, ep := range req.GetEndpoints() {
		names = append(names, ep.GetName())
	}
	slices.Sort(names)
	g.mu.Lock()
	g.writes = append(g.writes, names)
	gate := g.shut
	g.mu.Unlock()
	if gate != nil {
		g.entered <- struct{}{}
		select {
		case <-gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return g.ControlPlane.UpsertEndpoints(ctx, req)
}

func (g *gatedControlPlane) shutGate() {
	g.mu.Lock()
	g.shut = make(chan struct{})
	g.mu.Unlock()
}

func (g *gatedControlPlane) openGate() {
	g.mu.Lock()
	close(g.shut)
	g.shut = nil
	g.mu.Unlock()
}

// upsertsSince returns the upserts after the first n.
func (g *gatedControlPlane) upsertsSince(n int) [][]string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.writes[n:])
}

func (s *Syncer) pendingLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// A change goes out at once, alone, when no write is in flight; the changes
// that arrive while a write is in flight wait for it and then share one
// write.
func TestChangesDuringAWriteShareTheNextWrite(t *testing.T) {
	t.Parallel() // most of its time is a kube-apiserver starting
	env := startFed(t)
	east := env.join("east", "10.1.0.0/16", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := east.kube.CreateNamespace(ctx, "web", nil); err != nil {
		t.Fatal(err)
	}
	east.pod(ctx, "web", "first", map[string]string{"app": "x"}, nil, "10.1.0.1")
	gate := &gatedControlPlane{entered: make(chan struct{}, 1)}
	s, _ := east.startSyncerWith(func(c *Config) {
		gate.ControlPlane = c.ControlPlane
		c.ControlPlane = gate
	})
	env.endpointsAre("east", "web/first")
	base := len(gate.upsertsSince(0)) // the full resync's

	gate.shutGate()
	east.pod(ctx, "web", "a", map[string]string{"app": "x"}, nil, "10.1.0.2")
	select {
	case <-gate.entered:
	case <-ctx.Done():
		t.Fatal("the change of web/a was not written")
	}
	for i, name := range []string{"b", "c", "d"} {
		east.pod(ctx, "web", name, map[string]string{"app": "x"}, nil, fmt.Sprintf("10.1.0.%d", 3+i))
	}
	eventually(t, "the syncer holds b, c and d, with their IPs, while a's write is in flight", func() error {
		if n := s.pendingLen(); n != 3 {
			return fmt.Errorf("%d changes pending", n)
		}
		for _, name := range []string{"b", "c", "d"} {
			if p, err := s.pods.Pods("web").Get(name); err != nil || len(p.Status.PodIPs) == 0 {
				return fmt.Errorf("the syncer's cache lacks the IP of web/%s (%v)", name, err)
			}
		}
		if w := gate.upsertsSince(base); len(w) != 1 {
			return fmt.Errorf("writes %v while one is in flight", w)
		}
		return nil
	})
	gate.openGate()
	env.endpointsAre("east", "web/a", "web/b", "web/c", "web/d", "web/first")
	if got, want := gate.upsertsSince(base), [][]string{{"a"}, {"b", "c", "d"}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("upserts %v, want %v: a alone at once, then b, c and d together", got, want)
	}
}

// A positive MaxDelay holds changes so that those close together share
// one write.
func TestMaxDelayBatchesChangesCloseTogether(t *testing.T) {
	t.Parallel() // most of its time is a kube-apiserver starting
	env := startFed(t)
	east := env.join("east", "10.1.0.0/16", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := east.kube.CreateNamespace(ctx, "web", nil); err != nil {
		t.Fatal(err)
	}
	east.pod(ctx, "web", "first", map[string]string{"app": "x"}, nil, "10.1.0.1")
	gate := &gatedControlPlane{}
	east.startSyncerWith(func(c *Config) {
		gate.ControlPlane = c.ControlPlane
		c.ControlPlane = gate
		// Far longer than creating three pods takes.
		c.MaxDelay = 3 * time.Second
	})
	env.endpointsAre("east", "web/first")
	base := len(gate.upsertsSince(0))
	for i, name := range []string{"a", "b", "c"} {
		east.pod(ctx, "web", name, map[string]string{"app": "x"}, nil, fmt.Sprintf("10.1.0.%d", 2+i))
	}
	env.endpointsAre("east", "web/a", "web/b", "web/c", "web/first")
	if got, want := gate.upsertsSince(base), [][]string{{"a", "b", "c"}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("upserts %v, want %v in one write", got, want)
	}
}
