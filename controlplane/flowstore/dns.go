package flowstore

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// DNS query records are kept beside the flows with the same bounds
// (count with per-node fairness, age, per-node rate; every loss counted)
// in a store of their own: a node's resolver answers far fewer queries
// than its dataplane sees flows, and a record carries strings (names,
// answers) worth keeping as they came, so records are held as the
// messages the agents shipped rather than interned.

// DNSConfig bounds a DNS record store.
type DNSConfig struct {
	// Capacity is the most records held (default 100,000).
	Capacity int
	// MaxAge is how long a record is kept (default 1h).
	MaxAge time.Duration
	// NodeRate and NodeBurst bound the records/s one node may add
	// (defaults 5,000/s, burst twice the rate); the excess is refused and
	// counted.
	NodeRate  float64
	NodeBurst float64
	// Replica names this store in its status.
	Replica string
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *DNSConfig) defaults() {
	if c.Capacity <= 0 {
		c.Capacity = 100_000
	}
	if c.MaxAge <= 0 {
		c.MaxAge = time.Hour
	}
	if c.NodeRate <= 0 {
		c.NodeRate = 5_000
	}
	if c.NodeBurst <= 0 {
		c.NodeBurst = 2 * c.NodeRate
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// dnsQueue is one node's records, oldest first.
type dnsQueue struct {
	recs []*fedmeshv1.DNSRecord
	head int
	// token bucket
	tokens float64
	last   time.Time
	// counters of this node
	droppedRate, agentDropped uint64
}

func (q *dnsQueue) len() int { return len(q.recs) - q.head }

func (q *dnsQueue) front() *fedmeshv1.DNSRecord { return q.recs[q.head] }

func (q *dnsQueue) pop() {
	q.recs[q.head] = nil
	q.head++
	// Compact once the popped half outweighs the live one, so a queue's
	// memory follows its length.
	if q.head > 64 && q.head > len(q.recs)/2 {
		q.recs = append(q.recs[:0:0], q.recs[q.head:]...)
		q.head = 0
	}
}

// DNSStore is the bounded store of DNS query records. It is safe for
// concurrent use: adds take its write lock, queries its read lock;
// followers receive records on a buffered channel from Add's goroutine,
// which never blocks on them.
type DNSStore struct {
	cfg DNSConfig

	mu     sync.RWMutex
	queues map[nodeKey]*dnsQueue
	total  int
	fol    followers[*fedmeshv1.DNSRecord, DNSFilter]

	evicted, droppedRate, droppedAgent uint64
}

// NewDNS returns an empty DNS record store.
func NewDNS(cfg DNSConfig) *DNSStore {
	cfg.defaults()
	s := &DNSStore{cfg: cfg, queues: map[nodeKey]*dnsQueue{}}
	s.fol = newFollowers[*fedmeshv1.DNSRecord, DNSFilter](&s.mu)
	return s
}

// Add stores a batch of one node's DNS records and takes ownership of
// them: each record's cluster and node are set to the batch's (the node
// that shipped them, whose certificate the caller checked), whatever the
// record said. agentDropped is the node's monotonic count of records lost
// before shipping (the largest value seen is kept, so a restarted agent's
// reset does not subtract). It returns how many records were stored and
// how many were refused over the node's rate.
func (s *DNSStore) Add(cluster, node string, recs []*fedmeshv1.DNSRecord, agentDropped uint64) (accepted, refused int) {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := nodeKey{cluster, node}
	q := s.queues[k]
	if q == nil {
		q = &dnsQueue{tokens: s.cfg.NodeBurst, last: now}
		s.queues[k] = q
	}
	if agentDropped > q.agentDropped {
		s.droppedAgent += agentDropped - q.agentDropped
		q.agentDropped = agentDropped
	}
	q.tokens = min(s.cfg.NodeBurst, q.tokens+now.Sub(q.last).Seconds()*s.cfg.NodeRate)
	q.last = now
	s.expire(q, now)
	share := max(1, s.cfg.Capacity/max(1, s.nonEmpty()))
	for _, r := range recs {
		if r == nil {
			continue
		}
		if q.tokens < 1 {
			refused++
			continue
		}
		q.tokens--
		r.Cluster, r.Node = cluster, node
		if r.GetTime() == nil {
			r.Time = timestamppb.New(now)
		}
		q.recs = append(q.recs, r)
		s.total++
		accepted++
		if s.total > s.cfg.Capacity {
			if q.len() > share {
				q.pop()
				s.total--
				s.evicted++
			} else {
				s.evictLargest()
			}
		}
		if len(s.fol.subs) > 0 {
			s.publish(r)
		}
	}
	q.droppedRate += uint64(refused)
	s.droppedRate += uint64(refused)
	return accepted, refused
}

func (s *DNSStore) nonEmpty() int {
	n := 0
	for _, q := range s.queues {
		if q.len() > 0 {
			n++
		}
	}
	return n
}

func (s *DNSStore) evictLargest() {
	var big *dnsQueue
	for _, q := range s.queues {
		if big == nil || q.len() > big.len() {
			big = q
		}
	}
	if big != nil && big.len() > 0 {
		big.pop()
		s.total--
		s.evicted++
	}
}

func (s *DNSStore) expire(q *dnsQueue, now time.Time) {
	cut := now.Add(-s.cfg.MaxAge)
	for q.len() > 0 && q.front().GetTime().AsTime().Before(cut) {
		q.pop()
		s.total--
		s.evicted++
	}
}

// Sweep evicts every node's records older than MaxAge and forgets nodes
// with nothing stored and nothing counted.
func (s *DNSStore) Sweep() {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, q := range s.queues {
		s.expire(q, now)
		if q.len() == 0 && q.agentDropped == 0 && q.droppedRate == 0 {
			delete(s.queues, k)
		}
	}
}

// Run sweeps every interval until ctx ends.
func (s *DNSStore) Run(ctx context.Context, interval time.Duration) {
	sweepEvery(ctx, interval, s.Sweep)
}

// Query returns the newest q.Limit stored records matching q within
// scope, oldest first.
func (s *DNSStore) Query(q DNSQuery, sc Scope) []*fedmeshv1.DNSRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.query(q, sc)
}

func (s *DNSStore) query(q DNSQuery, sc Scope) []*fedmeshv1.DNSRecord {
	var hits []*fedmeshv1.DNSRecord
	for _, qu := range s.queues {
		n := 0
		// Newest first; a node's records arrive in time order, so the walk
		// stops at the first record before the range.
		for i := len(qu.recs) - 1; i >= qu.head && n < q.Limit; i-- {
			r := qu.recs[i]
			t := r.GetTime().AsTime()
			if !q.Since.IsZero() && t.Before(q.Since) {
				break
			}
			if !q.Until.IsZero() && t.After(q.Until) {
				continue
			}
			if q.Filter.Matches(r, sc) {
				hits = append(hits, r)
				n++
			}
		}
	}
	slices.SortStableFunc(hits, func(a, b *fedmeshv1.DNSRecord) int {
		return a.GetTime().AsTime().Compare(b.GetTime().AsTime())
	})
	if len(hits) > q.Limit {
		hits = hits[len(hits)-q.Limit:]
	}
	return hits
}

// DNSStats are a DNS store's counters.
type DNSStats struct {
	Stored, Capacity            uint64
	Evicted, DroppedRate        uint64
	DroppedAgent, DroppedFollow uint64
	Nodes                       int
	MaxAge                      time.Duration
}

// Status returns the store's counters.
func (s *DNSStore) Status() DNSStats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return DNSStats{Stored: uint64(s.total), Capacity: uint64(s.cfg.Capacity), Evicted: s.evicted, DroppedRate: s.droppedRate,
		DroppedAgent: s.droppedAgent, DroppedFollow: s.fol.dropped, Nodes: len(s.queues), MaxAge: s.cfg.MaxAge}
}

// StatusProto is Status as the API sends it.
func (s *DNSStore) StatusProto() *fedmeshv1.DNSStoreStatus {
	st := s.Status()
	return &fedmeshv1.DNSStoreStatus{Replica: s.cfg.Replica, Stored: st.Stored, Capacity: st.Capacity, MaxAge: durationpb.New(st.MaxAge),
		Evicted: st.Evicted, DroppedRate: st.DroppedRate, DroppedAgent: st.DroppedAgent, DroppedFollow: st.DroppedFollow}
}

// QueryFollow is Query and, atomically with it, a follower of every
// matching record stored afterwards: none is missed or sent twice between
// the history and the stream. Call the returned function to stop it.
func (s *DNSStore) QueryFollow(q DNSQuery, sc Scope) ([]*fedmeshv1.DNSRecord, *DNSFollower, func()) {
	return s.fol.follow(q.Filter, sc, func() []*fedmeshv1.DNSRecord { return s.query(q, sc) })
}

// Lagged returns how many matching records f missed.
func (s *DNSStore) Lagged(f *DNSFollower) uint64 { return s.fol.laggedOf(f) }

// publish hands a just-stored record to the followers whose filter it
// matches; called with the write lock held, never blocks.
func (s *DNSStore) publish(r *fedmeshv1.DNSRecord) {
	s.fol.publish(func(f *DNSFilter, sc Scope) bool { return f.Matches(r, sc) },
		func() *fedmeshv1.DNSRecord { return r })
}

// Serve answers a GetDNS query with send: the status and the matching
// history in batches, then, following, new records as they come (with the
// count of those a slow reader missed) until ctx ends. It returns send's
// error, or nil. Records are sent as stored; nobody may modify them.
func (s *DNSStore) Serve(ctx context.Context, q DNSQuery, sc Scope, send func(*fedmeshv1.GetDNSResponse) error) error {
	return s.fol.serve(ctx, q.Follow, q.Filter, sc,
		func() []*fedmeshv1.DNSRecord { return s.Query(q, sc) }, func() []*fedmeshv1.DNSRecord { return s.query(q, sc) },
		func(batch []*fedmeshv1.DNSRecord, first bool, lag uint64) error {
			m := &fedmeshv1.GetDNSResponse{Records: batch, Lagged: lag}
			if first {
				m.Status = s.StatusProto()
			}
			return send(m)
		})
}

// Collectors export the DNS store's counters (read at scrape time from
// Status, so the store keeps one set of counters).
func (s *DNSStore) Collectors() []prometheus.Collector {
	stat := func(f func(DNSStats) uint64) func() float64 {
		return func() float64 { return float64(f(s.Status())) }
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fedmesh_dns_records_stored", Help: "DNS query records held in this replica's store."},
			stat(func(st DNSStats) uint64 { return st.Stored })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "fedmesh_dns_records_evicted_total", Help: "DNS query records evicted for room (per-node fair share, capacity) or age."},
			stat(func(st DNSStats) uint64 { return st.Evicted })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "fedmesh_dns_records_dropped_rate_total", Help: "DNS query records refused because their node shipped faster than its rate."},
			stat(func(st DNSStats) uint64 { return st.DroppedRate })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "fedmesh_dns_records_dropped_agent_total", Help: "DNS query records the agents reported lost before shipping (backpressure)."},
			stat(func(st DNSStats) uint64 { return st.DroppedAgent })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "fedmesh_dns_records_dropped_follow_total", Help: "DNS query records not sent to followers that read too slowly."},
			stat(func(st DNSStats) uint64 { return st.DroppedFollow })),
	}
}
