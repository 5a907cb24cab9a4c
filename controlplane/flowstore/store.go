package flowstore

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Config bounds a store.
type Config struct {
	// Capacity is the most flows held (default 1,000,000).
	Capacity int
	// MaxAge is how long a flow is kept (default 1h).
	MaxAge time.Duration
	// NodeRate and NodeBurst bound the flows/s one node may add (defaults
	// 50,000/s, burst 100,000); the excess is refused and counted.
	NodeRate  float64
	NodeBurst float64
	// Replica names this store in Status.
	Replica string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Labels, when set, gives the labels of a federation workload whose
	// flows arrive without them (agents leave them off the wire: the
	// control plane has every endpoint's labels). Called under the store's
	// lock, once per new workload; it must not call the store.
	Labels func(cluster, namespace, pod string) map[string]string
}

func (c *Config) defaults() {
	if c.Capacity <= 0 {
		c.Capacity = 1_000_000
	}
	if c.MaxAge <= 0 {
		c.MaxAge = time.Hour
	}
	if c.NodeRate <= 0 {
		c.NodeRate = 50_000
	}
	if c.NodeBurst <= 0 {
		c.NodeBurst = 2 * c.NodeRate
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Scope narrows what a caller may read: the zero Scope reads everything;
// a Scope with a Cluster reads only flows touching that cluster (either
// workload, or the reporting node, is in it).
type Scope struct {
	Cluster string
}

// Stats are a store's counters.
type Stats struct {
	Stored, Capacity            uint64
	Evicted, DroppedRate        uint64
	DroppedAgent, DroppedFollow uint64
	BytesPerFlow                uint64
	Nodes, Workloads, Decisions int
	MaxAge                      time.Duration
}

// record is one stored flow: fixed size, no pointers, so a million of them
// cost the garbage collector nothing to scan.
type record struct {
	t                int64  // unix ns
	node             uint32 // s.nodes
	src, dst         uint32 // workload table (a workload at one address)
	decision         uint32 // decision table
	dns              uint32 // string table; 0: none
	packets, bytes   uint64
	srcPort, dstPort uint16
	proto            uint8
	verdict          uint8
}

// recordSize is the fixed cost of one stored flow.
const recordSize = uint64(unsafe.Sizeof(record{}))

// chunk is the unit a node queue grows and shrinks by.
const chunk = 256

// queue is one node's flows, oldest first, in chunks so a queue's memory
// follows its length whatever its share does.
type queue struct {
	id     uint32
	chunks [][]record
	head   int // index of the oldest record in chunks[0]
	n      int
	// token bucket
	tokens float64
	last   time.Time
	// counters of this node
	droppedRate, agentDropped uint64
}

func (q *queue) push(r record) {
	if len(q.chunks) == 0 || len(q.chunks[len(q.chunks)-1]) == chunk {
		q.chunks = append(q.chunks, make([]record, 0, chunk))
	}
	last := &q.chunks[len(q.chunks)-1]
	*last = append(*last, r)
	q.n++
}

func (q *queue) front() *record { return &q.chunks[0][q.head] }

func (q *queue) pop() {
	q.head++
	q.n--
	if q.head == len(q.chunks[0]) {
		q.chunks[0] = nil
		q.chunks = q.chunks[1:]
		q.head = 0
	}
}

// backward calls fn for every record, newest first, until fn returns false.
func (q *queue) backward(fn func(*record) bool) {
	for ci := len(q.chunks) - 1; ci >= 0; ci-- {
		c := q.chunks[ci]
		lo := 0
		if ci == 0 {
			lo = q.head
		}
		for i := len(c) - 1; i >= lo; i-- {
			if !fn(&c[i]) {
				return
			}
		}
	}
}

func (q *queue) allocated() int {
	if len(q.chunks) == 0 {
		return 0
	}
	return len(q.chunks) * chunk
}

type nodeKey struct{ cluster, node string }

// workloadKey is a workload at one address: a pod's IPv4 and IPv6 are two
// entries of one base (workloadBase), an address outside the federation an
// entry of its own.
type workloadKey struct {
	cluster, namespace, pod string
	identity                uint32
	ip                      string
}

// table interns values under a comparable key; id 0 is never used.
type table[K comparable, V any] struct {
	ids  map[K][]uint32 // several ids for one key when other parts differ (labels)
	vals []V
}

func newTable[K comparable, V any]() table[K, V] {
	var zero V
	return table[K, V]{ids: map[K][]uint32{}, vals: []V{zero}}
}

func (t *table[K, V]) intern(k K, v V, same func(a, b V) bool) uint32 {
	for _, id := range t.ids[k] {
		if same(t.vals[id], v) {
			return id
		}
	}
	id := uint32(len(t.vals))
	t.vals = append(t.vals, v)
	t.ids[k] = append(t.ids[k], id)
	return id
}

// decisionKey identifies an interned decision.
type decisionKey struct {
	dir, kind                int32
	cluster, namespace, name string
	policyKind               int32
	index, ruleID            uint32
	tier, reason, selectedBy string
}

// Store is the bounded flow store.
type Store struct {
	cfg Config

	mu        sync.RWMutex
	queues    map[nodeKey]*queue
	nodes     []nodeKey // by queue id
	total     int
	workloads table[workloadKey, *fedmeshv1.Workload]
	// bases[id] groups the workload entries of one pod (its addresses),
	// which the summary counts as one workload.
	bases     []uint32
	baseIDs   map[workloadKey]uint32
	decisions table[decisionKey, *fedmeshv1.FlowDecision]
	strs      table[string, string]
	fol       followers[*fedmeshv1.Flow, Filter]

	evicted, droppedRate, droppedAgent uint64
}

// New returns an empty store.
func New(cfg Config) *Store {
	cfg.defaults()
	s := &Store{cfg: cfg}
	s.fol = newFollowers[*fedmeshv1.Flow, Filter](&s.mu)
	s.resetTables()
	s.queues = map[nodeKey]*queue{}
	return s
}

func (s *Store) resetTables() {
	s.workloads = newTable[workloadKey, *fedmeshv1.Workload]()
	s.bases, s.baseIDs = []uint32{0}, map[workloadKey]uint32{}
	s.decisions = newTable[decisionKey, *fedmeshv1.FlowDecision]()
	s.strs = newTable[string, string]()
	s.nodes = nil
}

// Add stores a batch of one node's flows. agentDropped is the node's
// monotonic count of flows lost before shipping (the store keeps the
// largest value it saw, so a restarted agent's reset does not subtract).
// It returns how many flows were stored and how many were refused over
// the node's rate.
func (s *Store) Add(cluster, node string, flows []*fedmeshv1.Flow, agentDropped uint64) (accepted, refused int) {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := nodeKey{cluster, node}
	q := s.queues[k]
	if q == nil {
		q = &queue{id: uint32(len(s.nodes)), tokens: s.cfg.NodeBurst, last: now}
		s.nodes = append(s.nodes, k)
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
	for _, f := range flows {
		if q.tokens < 1 {
			refused++
			continue
		}
		q.tokens--
		r := s.record(q.id, f)
		q.push(r)
		s.total++
		accepted++
		if s.total > s.cfg.Capacity {
			if q.n > share {
				q.pop()
				s.total--
				s.evicted++
			} else {
				s.evictLargest()
			}
		}
		if len(s.fol.subs) > 0 {
			s.publish(&r, f, cluster)
		}
	}
	q.droppedRate += uint64(refused)
	s.droppedRate += uint64(refused)
	return accepted, refused
}

func (s *Store) nonEmpty() int {
	n := 0
	for _, q := range s.queues {
		if q.n > 0 {
			n++
		}
	}
	return n
}

func (s *Store) evictLargest() {
	var big *queue
	for _, q := range s.queues {
		if big == nil || q.n > big.n {
			big = q
		}
	}
	if big != nil && big.n > 0 {
		big.pop()
		s.total--
		s.evicted++
	}
}

func (s *Store) expire(q *queue, now time.Time) {
	cut := now.Add(-s.cfg.MaxAge).UnixNano()
	for q.n > 0 && q.front().t < cut {
		q.pop()
		s.total--
		s.evicted++
	}
}

// Sweep evicts every node's flows older than MaxAge, forgets nodes with
// nothing stored and rebuilds the intern tables when they hold more than
// twice what the live flows use.
func (s *Store) Sweep() {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range s.queues {
		s.expire(q, now)
	}
	if len(s.workloads.vals)+len(s.decisions.vals)+len(s.strs.vals) > 2*max(s.total, 4096) {
		s.compact()
	}
}

// compact re-interns every live record into fresh tables.
func (s *Store) compact() {
	oldW, oldD, oldS, oldN := s.workloads, s.decisions, s.strs, s.nodes
	s.resetTables()
	queues := s.queues
	s.queues = map[nodeKey]*queue{}
	wmap := map[uint32]uint32{}
	dmap := map[uint32]uint32{}
	smap := map[uint32]uint32{0: 0}
	remap := func(m map[uint32]uint32, id uint32, add func() uint32) uint32 {
		if n, ok := m[id]; ok {
			return n
		}
		n := add()
		m[id] = n
		return n
	}
	for _, k := range oldN {
		q := queues[k]
		if q.n == 0 && q.agentDropped == 0 && q.droppedRate == 0 {
			continue // forgotten: nothing stored, nothing counted
		}
		q.id = uint32(len(s.nodes))
		s.nodes = append(s.nodes, k)
		s.queues[k] = q
		for ci := range q.chunks {
			c := q.chunks[ci]
			lo := 0
			if ci == 0 {
				lo = q.head
			}
			for i := lo; i < len(c); i++ {
				r := &c[i]
				r.node = q.id
				r.src = remap(wmap, r.src, func() uint32 { return s.internWorkload(oldW.vals[r.src]) })
				r.dst = remap(wmap, r.dst, func() uint32 { return s.internWorkload(oldW.vals[r.dst]) })
				r.decision = remap(dmap, r.decision, func() uint32 { return s.internDecision(oldD.vals[r.decision]) })
				r.dns = remap(smap, r.dns, func() uint32 { return s.internString(oldS.vals[r.dns]) })
			}
		}
	}
}

// Run sweeps every interval until ctx ends.
func (s *Store) Run(ctx context.Context, interval time.Duration) {
	sweepEvery(ctx, interval, s.Sweep)
}

func (s *Store) internWorkload(w *fedmeshv1.Workload) uint32 {
	k := workloadKey{w.GetCluster(), w.GetNamespace(), w.GetPod(), w.GetIdentity(), w.GetIp()}
	if len(w.GetLabels()) == 0 && w.GetCluster() != "" {
		// Shipped without labels: the newest entry of the workload, or a
		// new one labelled from the control plane's view.
		if ids := s.workloads.ids[k]; len(ids) > 0 {
			return ids[len(ids)-1]
		}
		if s.cfg.Labels != nil {
			if l := s.cfg.Labels(k.cluster, k.namespace, k.pod); len(l) > 0 {
				w = &fedmeshv1.Workload{Cluster: k.cluster, Namespace: k.namespace, Pod: k.pod, Identity: k.identity, Ip: k.ip, Labels: l}
			}
		}
	}
	n := len(s.workloads.vals)
	id := s.workloads.intern(k, w, func(a, b *fedmeshv1.Workload) bool { return maps.Equal(a.GetLabels(), b.GetLabels()) })
	if len(s.workloads.vals) > n { // a new entry: find its base
		bk := k
		if bk.cluster != "" {
			bk.ip = ""
		}
		base, ok := s.baseIDs[bk]
		if !ok {
			base = uint32(len(s.baseIDs) + 1)
			s.baseIDs[bk] = base
		}
		s.bases = append(s.bases, base)
	}
	return id
}

func (s *Store) internDecision(d *fedmeshv1.FlowDecision) uint32 {
	r := d.GetRule()
	var sel strings.Builder
	for _, p := range d.GetSelectedBy() {
		sel.WriteString(p.GetCluster())
		sel.WriteByte('/')
		sel.WriteString(p.GetNamespace())
		sel.WriteByte('/')
		sel.WriteString(p.GetName())
		sel.WriteByte(0)
	}
	k := decisionKey{
		dir: int32(d.GetDirection()), kind: int32(d.GetKind()),
		cluster: r.GetPolicy().GetCluster(), namespace: r.GetPolicy().GetNamespace(), name: r.GetPolicy().GetName(),
		policyKind: int32(r.GetKind()), index: r.GetIndex(), ruleID: d.GetRuleId(),
		tier: d.GetTier(), reason: d.GetDataplaneReason(), selectedBy: sel.String(),
	}
	return s.decisions.intern(k, d, func(a, b *fedmeshv1.FlowDecision) bool { return true })
}

func (s *Store) internString(v string) uint32 {
	if v == "" {
		return 0
	}
	return s.strs.intern(v, v, func(a, b string) bool { return true })
}

// workloadOnly strips the per-flow part (the port) so one workload at one
// address is interned once.
func workloadOnly(w *fedmeshv1.Workload) *fedmeshv1.Workload {
	if w.GetPort() == 0 {
		return w
	}
	return &fedmeshv1.Workload{Cluster: w.GetCluster(), Namespace: w.GetNamespace(), Pod: w.GetPod(), Labels: w.GetLabels(), Identity: w.GetIdentity(), Ip: w.GetIp()}
}

func (s *Store) record(node uint32, f *fedmeshv1.Flow) record {
	r := record{
		t: f.GetTime().AsTime().UnixNano(), node: node,
		src: s.internWorkload(workloadOnly(f.GetSource())), dst: s.internWorkload(workloadOnly(f.GetDestination())),
		decision: s.internDecision(f.GetDecision()), dns: s.internString(f.GetDnsName()),
		packets: f.GetPackets(), bytes: f.GetBytes(),
		srcPort: uint16(f.GetSource().GetPort()), dstPort: uint16(f.GetDestination().GetPort()),
		proto: uint8(f.GetProtocol()), verdict: uint8(f.GetVerdict()),
	}
	if f.GetTime() == nil {
		r.t = s.cfg.Now().UnixNano()
	}
	return r
}

// flow rebuilds a record's proto.
func (s *Store) flow(r *record) *fedmeshv1.Flow {
	k := s.nodes[r.node]
	side := func(id uint32, port uint16) *fedmeshv1.Workload {
		w := s.workloads.vals[id]
		return &fedmeshv1.Workload{Cluster: w.GetCluster(), Namespace: w.GetNamespace(), Pod: w.GetPod(), Labels: w.GetLabels(),
			Identity: w.GetIdentity(), Ip: w.GetIp(), Port: uint32(port)}
	}
	return &fedmeshv1.Flow{
		Time: timestamppb.New(time.Unix(0, r.t)), Cluster: k.cluster, Node: k.node,
		Source:      side(r.src, r.srcPort),
		Destination: side(r.dst, r.dstPort),
		Protocol:    uint32(r.proto), Verdict: fedmeshv1.Verdict(r.verdict), Decision: s.decisions.vals[r.decision],
		Packets: r.packets, Bytes: r.bytes, DnsName: s.strs.vals[r.dns],
	}
}

// matcher is a filter compiled against the current tables: one bool per
// table entry, so a record is decided by a few indexed loads.
type matcher struct {
	since, until int64
	verdict      uint8
	nodes        []bool
	workloads    []bool // workload matches the filter's workload fields
	scope        []bool // workload touches the scope's cluster (nil: no scope)
	scopeNodes   []bool
	decisions    []bool // nil: no policy filter
	names        []bool // string table entry matches the name filter; nil: none
}

func (s *Store) compile(f Filter, since, until time.Time, sc Scope) *matcher {
	m := &matcher{since: -1 << 63, until: 1<<63 - 1, verdict: uint8(f.Verdict)}
	if !since.IsZero() {
		m.since = since.UnixNano()
	}
	if !until.IsZero() {
		m.until = until.UnixNano()
	}
	m.nodes = make([]bool, len(s.nodes))
	for i, k := range s.nodes {
		m.nodes[i] = f.Node == "" || f.Node == k.node
	}
	wl := s.workloads.vals
	m.workloads = make([]bool, len(wl))
	for i, w := range wl {
		m.workloads[i] = (f.Cluster == "" || w.GetCluster() == f.Cluster) &&
			(f.Namespace == "" || w.GetNamespace() == f.Namespace) &&
			(f.Pod == "" || (w.GetPod() == f.Pod && (f.PodNamespace == "" || w.GetNamespace() == f.PodNamespace)))
	}
	if sc.Cluster != "" {
		m.scope = make([]bool, len(wl))
		for i, w := range wl {
			m.scope[i] = w.GetCluster() == sc.Cluster
		}
		m.scopeNodes = make([]bool, len(s.nodes))
		for i, k := range s.nodes {
			m.scopeNodes[i] = k.cluster == sc.Cluster
		}
	}
	if f.DNSName != "" {
		m.names = make([]bool, len(s.strs.vals))
		for i, v := range s.strs.vals {
			m.names[i] = policy.MatchDomainName(f.DNSName, v)
		}
	}
	if f.Policy != nil {
		ds := s.decisions.vals
		m.decisions = make([]bool, len(ds))
		for i, d := range ds {
			if d == nil {
				continue
			}
			m.decisions[i] = f.Policy.Matches(d.GetRule().GetPolicy()) && d.GetRule() != nil
			for _, k := range d.GetSelectedBy() {
				m.decisions[i] = m.decisions[i] || f.Policy.Matches(k)
			}
		}
	}
	return m
}

// match decides one record. The workload fields of the filter hold on one
// side together: cluster a and pod web means the pod web of cluster a.
func (m *matcher) match(r *record) bool {
	if m.verdict != 0 && r.verdict != m.verdict {
		return false
	}
	if r.t > m.until || r.t < m.since {
		return false
	}
	if !m.workloads[r.src] && !m.workloads[r.dst] {
		return false
	}
	if !m.nodes[r.node] {
		return false
	}
	if m.scope != nil && !m.scope[r.src] && !m.scope[r.dst] && !m.scopeNodes[r.node] {
		return false
	}
	if m.names != nil && !m.names[r.dns] {
		return false
	}
	return m.decisions == nil || m.decisions[r.decision]
}

// scan appends up to limit of qu's newest matching records. A node's
// records arrive in time order, so chunks entirely after the range are
// skipped and the walk stops at the first record before it.
func (m *matcher) scan(qu *queue, hits []*record, limit int) []*record {
	n := 0
	for ci := len(qu.chunks) - 1; ci >= 0; ci-- {
		c := qu.chunks[ci]
		lo := 0
		if ci == 0 {
			lo = qu.head
		}
		if len(c) == 0 || c[lo].t > m.until {
			continue
		}
		for i := len(c) - 1; i >= lo; i-- {
			r := &c[i]
			if r.t < m.since {
				return hits
			}
			if m.match(r) {
				hits = append(hits, r)
				if n++; n == limit {
					return hits
				}
			}
		}
	}
	return hits
}

// Query returns the newest q.Limit stored flows matching q within scope,
// oldest first.
func (s *Store) Query(q Query, sc Scope) []*fedmeshv1.Flow {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.query(q, sc)
}

func (s *Store) query(q Query, sc Scope) []*fedmeshv1.Flow {
	m := s.compile(q.Filter, q.Since, q.Until, sc)
	var hits []*record
	for _, qu := range s.queues {
		hits = m.scan(qu, hits, q.Limit)
	}
	slices.SortFunc(hits, func(a, b *record) int {
		switch {
		case a.t < b.t:
			return -1
		case a.t > b.t:
			return 1
		}
		return int(a.node) - int(b.node)
	})
	if len(hits) > q.Limit {
		hits = hits[len(hits)-q.Limit:]
	}
	out := make([]*fedmeshv1.Flow, len(hits))
	for i, r := range hits {
		out[i] = s.flow(r)
	}
	return out
}

// Status returns the store's counters.
func (s *Store) Status() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := Stats{
		Stored: uint64(s.total), Capacity: uint64(s.cfg.Capacity), Evicted: s.evicted,
		DroppedRate: s.droppedRate, DroppedAgent: s.droppedAgent, DroppedFollow: s.fol.dropped,
		Nodes: len(s.queues), Workloads: len(s.workloads.vals) - 1, Decisions: len(s.decisions.vals) - 1,
		MaxAge: s.cfg.MaxAge, BytesPerFlow: recordSize,
	}
	if s.total > 0 {
		alloc := 0
		for _, q := range s.queues {
			alloc += q.allocated()
		}
		st.BytesPerFlow = uint64(alloc) * recordSize / uint64(s.total)
	}
	return st
}

// StatusProto is Status as the API sends it.
func (s *Store) StatusProto() *fedmeshv1.FlowStoreStatus {
	st := s.Status()
	return &fedmeshv1.FlowStoreStatus{
		Replica: s.cfg.Replica, Stored: st.Stored, Capacity: st.Capacity, MaxAge: durationpb.New(st.MaxAge),
		Evicted: st.Evicted, DroppedRate: st.DroppedRate, DroppedAgent: st.DroppedAgent, DroppedFollow: st.DroppedFollow,
		BytesPerFlow: st.BytesPerFlow,
	}
}

// NodeString names a node in logs: cluster/node.
func NodeString(cluster, node string) string { return cluster + "/" + node }
