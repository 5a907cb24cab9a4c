package flowstore

import (
	"context"
	"sync"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// FollowBuffer is how many flows a follower may fall behind before it
// loses them (counted).
const FollowBuffer = 4096

// follower is one subscriber to a store's new records: every record its
// filter matches arrives on C, and lagged counts those it missed by
// reading too slowly. Flows and DNS records follow alike.
type follower[T, F any] struct {
	C      <-chan T
	c      chan T
	filter F
	scope  Scope
	lagged uint64 // guarded by the store's lock
}

// Follower receives every new flow matching its query. Read C until done;
// Lagged counts what it missed by reading too slowly.
type Follower = follower[*fedmeshv1.Flow, Filter]

// DNSFollower receives every new DNS record matching its query. Read C
// until done.
type DNSFollower = follower[*fedmeshv1.DNSRecord, DNSFilter]

// followers are a store's subscribers, guarded by the store's lock mu.
type followers[T, F any] struct {
	mu      *sync.RWMutex
	subs    map[*follower[T, F]]struct{}
	dropped uint64 // records not handed to a follower that read too slowly
}

func newFollowers[T, F any](mu *sync.RWMutex) followers[T, F] {
	return followers[T, F]{mu: mu, subs: map[*follower[T, F]]struct{}{}}
}

// follow runs query and, atomically with it, subscribes a follower of
// every matching record published afterwards: no record is missed or sent
// twice between the history and the stream. Call the returned function to
// stop it.
func (fs *followers[T, F]) follow(filter F, sc Scope, query func() []T) ([]T, *follower[T, F], func()) {
	c := make(chan T, FollowBuffer)
	f := &follower[T, F]{C: c, c: c, filter: filter, scope: sc}
	fs.mu.Lock()
	hist := query()
	fs.subs[f] = struct{}{}
	fs.mu.Unlock()
	return hist, f, func() {
		fs.mu.Lock()
		delete(fs.subs, f)
		fs.mu.Unlock()
	}
}

// laggedOf returns how many matching records f missed.
func (fs *followers[T, F]) laggedOf(f *follower[T, F]) uint64 {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	return f.lagged
}

// publish hands a just-stored record to the followers it matches, built
// by value once one does; called with the write lock held, never blocks.
func (fs *followers[T, F]) publish(match func(*F, Scope) bool, value func() T) {
	var out T
	built := false
	for f := range fs.subs {
		if !match(&f.filter, f.scope) {
			continue
		}
		if !built {
			out, built = value(), true
		}
		select {
		case f.c <- out:
		default:
			f.lagged++
			fs.dropped++
		}
	}
}

// QueryFollow is Query and, atomically with it, a follower of every
// matching flow stored afterwards: no flow is missed or sent twice between
// the history and the stream. Call the returned function to stop it.
func (s *Store) QueryFollow(q Query, sc Scope) ([]*fedmeshv1.Flow, *Follower, func()) {
	return s.fol.follow(q.Filter, sc, func() []*fedmeshv1.Flow { return s.query(q, sc) })
}

// Lagged returns how many matching flows f missed.
func (s *Store) Lagged(f *Follower) uint64 { return s.fol.laggedOf(f) }

// publish hands a just-stored flow to the followers whose filter it
// matches; called with the write lock held, never blocks.
func (s *Store) publish(r *record, fl *fedmeshv1.Flow, cluster string) {
	node := s.nodes[r.node].node
	s.fol.publish(func(f *Filter, sc Scope) bool { return matchFlow(f, sc, fl, cluster, node) },
		func() *fedmeshv1.Flow { return s.flow(r) }) // normalized as stored: workloads, reporting node
}

func matchFlow(f *Filter, sc Scope, fl *fedmeshv1.Flow, cluster, node string) bool {
	if f.Verdict != 0 && fl.GetVerdict() != f.Verdict {
		return false
	}
	if f.Node != "" && f.Node != node {
		return false
	}
	side := func(w *fedmeshv1.Workload) bool {
		return (f.Cluster == "" || w.GetCluster() == f.Cluster) &&
			(f.Namespace == "" || w.GetNamespace() == f.Namespace) &&
			(f.Pod == "" || (w.GetPod() == f.Pod && (f.PodNamespace == "" || w.GetNamespace() == f.PodNamespace)))
	}
	if !side(fl.GetSource()) && !side(fl.GetDestination()) {
		return false
	}
	if sc.Cluster != "" && fl.GetSource().GetCluster() != sc.Cluster && fl.GetDestination().GetCluster() != sc.Cluster && cluster != sc.Cluster {
		return false
	}
	if f.DNSName != "" && !policy.MatchDomainName(f.DNSName, fl.GetDnsName()) {
		return false
	}
	if f.Policy == nil {
		return true
	}
	d := fl.GetDecision()
	if d.GetRule() != nil && f.Policy.Matches(d.GetRule().GetPolicy()) {
		return true
	}
	for _, k := range d.GetSelectedBy() {
		if f.Policy.Matches(k) {
			return true
		}
	}
	return false
}

// SendBatch is how many flows one GetFlows message carries.
const SendBatch = 500

// Serve answers a GetFlows query with send: the status and the matching
// history in batches, then, following, new flows as they come (with the
// count of those a slow reader missed) until ctx ends. It returns send's
// error, or nil.
func (s *Store) Serve(ctx context.Context, q Query, sc Scope, send func(*fedmeshv1.GetFlowsResponse) error) error {
	return s.fol.serve(ctx, q.Follow, q.Filter, sc,
		func() []*fedmeshv1.Flow { return s.Query(q, sc) }, func() []*fedmeshv1.Flow { return s.query(q, sc) },
		func(batch []*fedmeshv1.Flow, first bool, lag uint64) error {
			m := &fedmeshv1.GetFlowsResponse{Flows: batch, Lagged: lag}
			if first {
				m.Status = s.StatusProto()
			}
			return send(m)
		})
}

// serve answers a query of a store: the matching history (query, which
// locks the store itself) and, following, the history (queryLocked, run
// under the store's lock) and every matching record published after it,
// as serveBatches sends them.
func (fs *followers[T, F]) serve(ctx context.Context, follow bool, filter F, sc Scope, query, queryLocked func() []T,
	send func(batch []T, first bool, lag uint64) error) error {
	if !follow {
		return serveBatches(ctx, query(), nil, func() uint64 { return 0 }, send)
	}
	hist, f, stop := fs.follow(filter, sc, queryLocked)
	defer stop()
	return serveBatches(ctx, hist, f.C, func() uint64 { return fs.laggedOf(f) }, send)
}

// sweepEvery calls sweep every interval until ctx ends: a store's Run.
func sweepEvery(ctx context.Context, interval time.Duration, sweep func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			sweep()
		}
	}
}

// serveBatches is the shape of every stored-record stream: hist in
// messages of at most SendBatch (the first one marked, to carry the
// store's status, and sent even when hist is empty), then, when c is not
// nil, what arrives on c in batches, each with how many more records a
// slow reader missed (lagged counts them all), until ctx ends. It returns
// send's error, or nil.
func serveBatches[T any](ctx context.Context, hist []T, c <-chan T, lagged func() uint64, send func(batch []T, first bool, lag uint64) error) error {
	for first := true; first || len(hist) > 0; first = false {
		n := min(len(hist), SendBatch)
		if err := send(hist[:n], first, 0); err != nil {
			return err
		}
		hist = hist[n:]
	}
	if c == nil {
		return nil
	}
	var seen uint64
	for {
		var batch []T
		select {
		case <-ctx.Done():
			return nil
		case r := <-c:
			batch = append(batch, r)
		}
	drain:
		for len(batch) < SendBatch {
			select {
			case r := <-c:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		var lag uint64
		if l := lagged(); l != seen {
			lag, seen = l-seen, l
		}
		if err := send(batch, false, lag); err != nil {
			return err
		}
	}
}
