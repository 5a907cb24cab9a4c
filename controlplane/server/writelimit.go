package server

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// WriteLimit bounds one principal's writes by what they cost the Raft log
// and every watcher: objects written per second on average (Rate), up to
// Burst at once. A zero Rate is unlimited.
//
// auth's per-request limit cannot do this: one request may carry one
// endpoint or thousands, so a syncer within its request rate could still
// fill the log and every watch stream while the other clusters' changes
// wait behind it.
type WriteLimit struct {
	Rate  float64
	Burst int
}

// WriteLimits are the write limits by principal kind. Admins and replicas
// are not limited; neither is a development control plane without TLS
// (no principals to tell apart).
type WriteLimits map[auth.Kind]WriteLimit

// DefaultWriteLimits let a syncer resync a 15,000-endpoint cluster (Cilium's
// scale profile) in one burst, twice, and sustain 2,000 objects/s after,
// six times ClusterMesh's whole-mesh churn of ~325 changes/s; a node
// only reports its status.
func DefaultWriteLimits() WriteLimits {
	return WriteLimits{
		auth.KindSyncer: {Rate: 2000, Burst: 30000},
		auth.KindNode:   {Rate: 20, Burst: 40},
	}
}

// writeLimiter keeps one bucket per principal on this replica (the
// replica the client sent the write to; a client sticks to one replica,
// so a principal's share of the log is bounded by the replicas it uses
// times its limit). Safe for concurrent use.
type writeLimiter struct {
	now     func() time.Time
	limited *prometheus.CounterVec

	mu      sync.Mutex
	limits  WriteLimits
	buckets map[string]*writeBucket
	sweep   time.Time
}

type writeBucket struct {
	tokens float64 // negative: debt a large write left
	last   time.Time
}

func newWriteLimiter(l WriteLimits, now func() time.Time) *writeLimiter {
	return &writeLimiter{limits: l, now: now, buckets: map[string]*writeBucket{},
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedmesh_controlplane_writes_rate_limited_total",
			Help: "Writes refused with ResourceExhausted because their principal exceeded its write limit (objects/s), by principal kind.",
		}, []string{"kind"})}
}

// writeCost is how many objects req writes (at least 1).
func writeCost(req proto.Message) int {
	n := 0
	switch r := req.(type) {
	case *fedmeshv1.UpsertEndpointsRequest:
		n = len(r.GetEndpoints())
	case *fedmeshv1.DeleteEndpointsRequest:
		n = len(r.GetKeys())
	case *fedmeshv1.ApplyPoliciesRequest:
		n = len(r.GetPolicies())
	case *fedmeshv1.ExportServicesRequest:
		n = len(r.GetExports())
	}
	return max(n, 1)
}

// admit takes req's cost from its principal's bucket, or refuses it with
// ResourceExhausted naming the limit. A write larger than the burst is
// let through when the bucket is full and leaves a debt, so a whole
// resync is never refused for its size alone.
func (w *writeLimiter) admit(ctx context.Context, req proto.Message) error {
	p, ok := auth.PrincipalFrom(ctx)
	if !ok {
		return nil
	}
	w.mu.Lock()
	lim, ok := w.limits[p.Kind]
	if !ok || lim.Rate <= 0 {
		w.mu.Unlock()
		return nil
	}
	cost := float64(writeCost(req))
	burst := float64(max(lim.Burst, 1))
	now := w.now()
	key := p.String()
	if now.Sub(w.sweep) > time.Minute {
		w.sweep = now
		for k, b := range w.buckets {
			if b.tokens+now.Sub(b.last).Seconds()*lim.Rate >= burst {
				delete(w.buckets, k)
			}
		}
	}
	b := w.buckets[key]
	if b == nil {
		b = &writeBucket{tokens: burst, last: now}
		w.buckets[key] = b
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(burst, b.tokens+el*lim.Rate)
		b.last = now
	}
	need := math.Min(cost, burst)
	if b.tokens >= need {
		b.tokens -= cost
		w.mu.Unlock()
		return nil
	}
	wait := time.Duration((need - b.tokens) / lim.Rate * float64(time.Second))
	w.mu.Unlock()
	w.limited.WithLabelValues(p.Kind.String()).Inc()
	return status.Errorf(codes.ResourceExhausted,
		"write limit of %s exceeded: %g objects/s (burst %d) per %s; this write has %d objects; retry in %v",
		key, lim.Rate, lim.Burst, p.Kind, int(cost), wait.Round(time.Millisecond))
}

// setLimits replaces the limits (buckets keep their tokens).
func (w *writeLimiter) setLimits(l WriteLimits) {
	w.mu.Lock()
	w.limits = l
	w.mu.Unlock()
}
