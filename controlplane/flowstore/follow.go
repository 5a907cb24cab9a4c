package flowstore

import (
	"context"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// FollowBuffer is how many flows a follower may fall behind before it
// loses them (counted).
const FollowBuffer = 4096

// Follower receives every new flow matching its query. Read C until done;
// Lagged counts what it missed by reading too slowly.
type Follower struct {
	C      <-chan *fedmeshv1.Flow
	c      chan *fedmeshv1.Flow
	filter Filter
	scope  Scope
	lagged uint64 // guarded by the store's lock
}

// QueryFollow is Query and, atomically with it, a follower of every
// matching flow stored afterwards: no flow is missed or sent twice between
// the history and the stream. Call the returned function to stop it.
func (s *Store) QueryFollow(q Query, sc Scope) ([]*fedmeshv1.Flow, *Follower, func()) {
	c := make(chan *fedmeshv1.Flow, FollowBuffer)
	f := &Follower{C: c, c: c, filter: q.Filter, scope: sc}
	s.mu.Lock()
	hist := s.query(q, sc)
	s.subs[f] = struct{}{}
	s.mu.Unlock()
	return hist, f, func() {
		s.mu.Lock()
		delete(s.subs, f)
		s.mu.Unlock()
	}
}

// Lagged returns how many matching flows f missed.
func (s *Store) Lagged(f *Follower) uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return f.lagged
}

// publish hands a just-stored flow to the followers whose filter it
// matches; called with the write lock held, never blocks.
func (s *Store) publish(r *record, fl *fedmeshv1.Flow, cluster string) {
	var out *fedmeshv1.Flow
	for f := range s.subs {
		if !matchFlow(&f.filter, f.scope, fl, cluster, s.nodes[r.node].node) {
			continue
		}
		if out == nil {
			out = s.flow(r) // normalized as stored: workloads, reporting node
		}
		select {
		case f.c <- out:
		default:
			f.lagged++
			s.droppedFollow++
		}
	}
}

// matchFlow is the matcher's rule on one flow as shipped.
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
	var fol *Follower
	var hist []*fedmeshv1.Flow
	if q.Follow {
		var stop func()
		hist, fol, stop = s.QueryFollow(q, sc)
		defer stop()
	} else {
		hist = s.Query(q, sc)
	}
	var c <-chan *fedmeshv1.Flow
	lagged := func() uint64 { return 0 }
	if fol != nil {
		c, lagged = fol.C, func() uint64 { return s.Lagged(fol) }
	}
	return serveBatches(ctx, hist, c, lagged, func(batch []*fedmeshv1.Flow, first bool, lag uint64) error {
		m := &fedmeshv1.GetFlowsResponse{Flows: batch, Lagged: lag}
		if first {
			m.Status = s.StatusProto()
		}
		return send(m)
	})
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
