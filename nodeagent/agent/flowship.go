package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/flows"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Flow shipping: the node's attributed flow records go to every
// control-plane replica over the connections (and so the mTLS node
// identity) the agent already holds. Each replica keeps what it receives in
// its own bounded store, so any replica answers GetFlows for the whole
// federation without asking its peers, and a replica that is down or
// partitioned loses only its own copy. The price is one stream per replica;
// each batch is encoded once and the same bytes go to every replica
// (preEncoded), so the extra replicas cost only the writes. The node's DNS
// query records (dnslog.go) ride the same batches (ShipFlowsRequest.dns)
// with counters of their own.

const (
	// dnsQueue bounds the DNS records waiting to be batched; beyond it
	// records are dropped and counted (backpressure never reaches the
	// resolver).
	dnsQueue  = 4096
	shipBatch = 500
	// shipBatches bounds the encoded batches waiting for one replica;
	// beyond it a replica's batches are dropped and counted (backpressure
	// never reaches the event reader).
	shipBatches = 32
	// shipLinger is how long a partial batch waits for more flows.
	shipLinger = 200 * time.Millisecond
)

// batch is one encoded ShipFlowsRequest without its dropped fields, which
// differ per replica and are sent behind it: n flows and dns records. Its
// bytes are never written once sealed (gRPC may still hold them after
// SendMsg returns).
type batch struct {
	b      []byte
	n, dns int
}

// FlowShipper ships flow records to every replica. Offer is called by the
// flow reader's goroutine and never blocks: it copies the record into the
// open batch and, when the batch is full, hands it to every replica's
// queue, so a flow costs the reader a copy and no goroutine hand-off. Run
// owns a batcher goroutine that adds the DNS records and seals a partial
// batch after shipLinger, and one goroutine per replica that writes
// batches onto a ShipFlows stream, reopening it with jittered backoff when
// it fails.
type FlowShipper struct {
	cluster, node string
	addrs         []string
	conns         []*grpc.ClientConn
	// head is the encoded ShipFlowsRequest.cluster and .node every batch
	// starts with.
	head   []byte
	dnsIn  chan []byte
	queues []chan batch

	// mu guards the open batch: its bytes, counts and when its first
	// record came (zero: no batch is open).
	mu       sync.Mutex
	open     []byte
	n, dns   int
	openedAt time.Time
	// opened tells the batcher a batch opened (its linger starts).
	opened chan struct{}

	// dropped per replica: flows that never reached it (a queue was full,
	// or they were in a batch whose stream failed). Sent with every batch,
	// so each replica counts what it missed.
	dropped []atomic.Uint64
	// dnsDropped per replica: DNS records that never reached it.
	dnsDropped []atomic.Uint64
	log        *slog.Logger

	mShipped, mDropped       *prometheus.CounterVec
	mDNSShipped, mDNSDropped *prometheus.CounterVec
}

// NewFlowShipper ships over c's replica connections.
func NewFlowShipper(c *Client, cluster, node string, reg prometheus.Registerer, log *slog.Logger) *FlowShipper {
	s := &FlowShipper{cluster: cluster, node: node, addrs: c.addrs, conns: c.conns, log: log.With("part", "flow-shipper"),
		dropped: make([]atomic.Uint64, len(c.conns)), opened: make(chan struct{}, 1),
		dnsIn: make(chan []byte, dnsQueue), dnsDropped: make([]atomic.Uint64, len(c.conns)),
		mShipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_agent_flows_shipped_total",
			Help: "Flow records sent to a control-plane replica."}, []string{"replica"}),
		mDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_agent_flows_dropped_total",
			Help: "Flow records a replica never got: a queue was full (backpressure) or its stream failed."}, []string{"replica"}),
		mDNSShipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_agent_dns_records_shipped_total",
			Help: "DNS query records sent to a control-plane replica."}, []string{"replica"}),
		mDNSDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_agent_dns_records_dropped_total",
			Help: "DNS query records a replica never got: a queue was full (backpressure) or its stream failed."}, []string{"replica"}),
	}
	s.head = protowire.AppendString(protowire.AppendTag(s.head, 1, protowire.BytesType), cluster) // ShipFlowsRequest.cluster
	s.head = protowire.AppendString(protowire.AppendTag(s.head, 2, protowire.BytesType), node)    // ShipFlowsRequest.node
	for range c.conns {
		s.queues = append(s.queues, make(chan batch, shipBatches))
	}
	if reg != nil {
		reg.MustRegister(s.mShipped, s.mDropped, s.mDNSShipped, s.mDNSDropped)
	}
	return s
}

// Offer implements flows.Sink: f is an encoded fedmesh.v1.Flow, copied
// into the open batch (the caller reuses f).
func (s *FlowShipper) Offer(f []byte) {
	s.mu.Lock()
	s.openLocked(len(f))
	s.open = flows.AppendShipped(s.open, f)
	s.n++
	if s.n+s.dns >= shipBatch {
		s.sealLocked()
	}
	s.mu.Unlock()
}

// openLocked opens a batch sized for shipBatch records like one of size
// bytes, if none is open, and starts its linger.
func (s *FlowShipper) openLocked(size int) {
	if s.open != nil {
		return
	}
	s.open = append(make([]byte, 0, len(s.head)+shipBatch*(size+3)), s.head...)
	s.openedAt = time.Now()
	select {
	case s.opened <- struct{}{}:
	default: // the batcher has been told already
	}
}

// sealLocked hands the open batch to every replica's queue; a full queue
// drops it for that replica, counted.
func (s *FlowShipper) sealLocked() {
	bt := batch{b: s.open, n: s.n, dns: s.dns}
	s.open, s.n, s.dns, s.openedAt = nil, 0, 0, time.Time{}
	for i, q := range s.queues {
		select {
		case q <- bt:
		default:
			s.drop(i, bt.n)
			s.dropDNS(i, bt.dns)
		}
	}
}

// OfferDNS queues an encoded fedmesh.v1.DNSRecord; it never blocks (a
// full queue drops the record, counted for every replica).
func (s *FlowShipper) OfferDNS(rec []byte) {
	select {
	case s.dnsIn <- rec:
	default:
		for i := range s.queues {
			s.dropDNS(i, 1)
		}
	}
}

func (s *FlowShipper) drop(i, n int) {
	if n == 0 {
		return
	}
	s.dropped[i].Add(uint64(n))
	s.mDropped.WithLabelValues(s.addrs[i]).Add(float64(n))
}

func (s *FlowShipper) dropDNS(i, n int) {
	if n == 0 {
		return
	}
	s.dnsDropped[i].Add(uint64(n))
	s.mDNSDropped.WithLabelValues(s.addrs[i]).Add(float64(n))
}

// DroppedDNS is the total of DNS records some replica never got.
func (s *FlowShipper) DroppedDNS() uint64 {
	var n uint64
	for i := range s.dnsDropped {
		n += s.dnsDropped[i].Load()
	}
	return n
}

// Dropped is the total of flows some replica never got.
func (s *FlowShipper) Dropped() uint64 {
	var n uint64
	for i := range s.dropped {
		n += s.dropped[i].Load()
	}
	return n
}

// Run ships until ctx ends.
func (s *FlowShipper) Run(ctx context.Context) {
	done := make(chan struct{})
	for i := range s.conns {
		go func() {
			defer func() { done <- struct{}{} }()
			s.runReplica(ctx, i)
		}()
	}
	s.batch(ctx)
	for range s.conns {
		<-done
	}
}

// batch adds the queued DNS records to the open batch and seals a partial
// batch once its first record has waited shipLinger.
func (s *FlowShipper) batch(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	armed := false
	// arm starts the timer for the open batch's linger, if one is open
	// and the timer is not running.
	arm := func() {
		s.mu.Lock()
		at := s.openedAt
		s.mu.Unlock()
		if !armed && !at.IsZero() {
			timer.Reset(shipLinger - time.Since(at))
			armed = true
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-s.dnsIn:
			s.mu.Lock()
			s.openLocked(len(r))
			s.open = appendShippedDNS(s.open, r)
			s.dns++
			if s.n+s.dns >= shipBatch {
				s.sealLocked()
			}
			s.mu.Unlock()
			arm()
		case <-s.opened:
			arm()
		case <-timer.C:
			armed = false
			s.mu.Lock()
			if !s.openedAt.IsZero() && time.Since(s.openedAt) >= shipLinger {
				s.sealLocked()
			}
			s.mu.Unlock()
			// A batch opened after the one the timer was for waits
			// its own linger.
			arm()
		}
	}
}

func (s *FlowShipper) runReplica(ctx context.Context, i int) {
	client := fedmeshv1.NewFlowServiceClient(s.conns[i])
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := s.stream(ctx, client, i)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			backoff = 200 * time.Millisecond
		}
		s.log.Warn("flow stream to replica ended; reopening", "replica", s.addrs[i], "err", err, "retry", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff/2 + rand.N(backoff)):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// stream writes batches on one ShipFlows stream until it fails.
func (s *FlowShipper) stream(ctx context.Context, client fedmeshv1.FlowServiceClient, i int) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.ShipFlows(sctx, grpc.ForceCodecV2(preEncodedCodec{encoding.GetCodecV2(protoenc.Name)}))
	if err != nil {
		return err
	}
	for {
		var bt batch
		select {
		case <-ctx.Done():
			_, _ = st.CloseAndRecv()
			return ctx.Err()
		case bt = <-s.queues[i]:
		}
		// Fields 4 and 6 (dropped, dns_dropped) follow the batch's bytes
		// as a buffer of their own, so the shared batch is neither copied
		// nor written: a later occurrence of a scalar field is the one a
		// decoder keeps, and the batch has none.
		tail := protowire.AppendVarint(protowire.AppendTag(make([]byte, 0, 24), 4, protowire.VarintType), s.dropped[i].Load())
		tail = protowire.AppendVarint(protowire.AppendTag(tail, 6, protowire.VarintType), s.dnsDropped[i].Load())
		if err := st.SendMsg(preEncoded{bt.b, tail}); err != nil {
			s.drop(i, bt.n)
			s.dropDNS(i, bt.dns)
			if errors.Is(err, io.EOF) { // the server ended the stream: its status says why
				_, err = st.CloseAndRecv()
			}
			return err
		}
		s.mShipped.WithLabelValues(s.addrs[i]).Add(float64(bt.n))
		s.mDNSShipped.WithLabelValues(s.addrs[i]).Add(float64(bt.dns))
	}
}

// preEncoded is a message already in protobuf wire form: the
// concatenation of its parts.
type preEncoded [][]byte

// preEncodedCodec sends preEncoded bytes as they are and everything else
// as gRPC's protobuf codec does; its name is "proto", so the server reads
// the stream with its usual codec.
type preEncodedCodec struct{ encoding.CodecV2 }

func (c preEncodedCodec) Marshal(v any) (mem.BufferSlice, error) {
	if parts, ok := v.(preEncoded); ok {
		out := make(mem.BufferSlice, len(parts))
		for i, p := range parts {
			out[i] = mem.SliceBuffer(p)
		}
		return out, nil
	}
	return c.CodecV2.Marshal(v)
}

// The sync goroutine's hooks into the flow directory (Deps.Flows): every
// endpoint of the federation by address, and the local endpoints' rules
// once the dataplane enforces them. No-ops without a directory.

func (a *Agent) flowEndpoint(ch Change) {
	if a.deps.Flows == nil {
		return
	}
	if ch.Delete {
		a.deps.Flows.DeleteEndpoint(ch.EndpointKey)
	} else {
		a.deps.Flows.UpsertEndpoint(ch.Endpoint)
	}
}

func (a *Agent) flowStage(k policy.EndpointKey, c *policy.Compiled) {
	if a.deps.Flows != nil {
		a.deps.Flows.Stage(k.String(), c)
	}
}

func (a *Agent) flowCommit() {
	if a.deps.Flows != nil {
		a.deps.Flows.Commit()
	}
}

var _ flows.Sink = (*FlowShipper)(nil)
