package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/flows"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Flow shipping: the node's attributed flow records go to every
// control-plane replica over the connections (and so the mTLS node
// identity) the agent already holds. Each replica keeps what it receives in
// its own bounded store, so any replica answers GetFlows for the whole
// federation without asking its peers, and a replica that is down or
// partitioned loses only its own copy. The price is one stream per replica
// (three encodings of each batch), paid in batches of up to
// shipBatch flows.

const (
	// shipQueue bounds what waits for one replica; beyond it flows are
	// dropped and counted (backpressure never reaches the event reader).
	shipQueue = 16384
	shipBatch = 500
	// shipLinger is how long a partial batch waits for more flows.
	shipLinger = 200 * time.Millisecond
)

// FlowShipper ships flow records to every replica. Offer is called by the
// flow reader's goroutine and never blocks; Run owns one goroutine per
// replica that batches its queue onto a ShipFlows stream, reopening it
// with jittered backoff when it fails.
type FlowShipper struct {
	cluster, node string
	addrs         []string
	conns         []*grpc.ClientConn
	queues        []chan *fedmeshv1.Flow
	// dropped per replica: flows that never reached it (queue full, or in
	// a batch whose stream failed). Sent on every batch, so each replica
	// counts what it missed.
	dropped []atomic.Uint64
	log     *slog.Logger

	mShipped, mDropped *prometheus.CounterVec
}

// NewFlowShipper ships over c's replica connections.
func NewFlowShipper(c *Client, cluster, node string, reg prometheus.Registerer, log *slog.Logger) *FlowShipper {
	s := &FlowShipper{cluster: cluster, node: node, addrs: c.addrs, conns: c.conns, log: log.With("part", "flow-shipper"),
		dropped: make([]atomic.Uint64, len(c.conns)),
		mShipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_agent_flows_shipped_total",
			Help: "Flow records sent to a control-plane replica."}, []string{"replica"}),
		mDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_agent_flows_dropped_total",
			Help: "Flow records a replica never got: its queue was full (backpressure) or its stream failed."}, []string{"replica"}),
	}
	for range c.conns {
		s.queues = append(s.queues, make(chan *fedmeshv1.Flow, shipQueue))
	}
	if reg != nil {
		reg.MustRegister(s.mShipped, s.mDropped)
	}
	return s
}

// Offer implements flows.Sink.
func (s *FlowShipper) Offer(f *fedmeshv1.Flow) {
	for i, q := range s.queues {
		select {
		case q <- f:
		default:
			s.drop(i, 1)
		}
	}
}

func (s *FlowShipper) drop(i, n int) {
	s.dropped[i].Add(uint64(n))
	s.mDropped.WithLabelValues(s.addrs[i]).Add(float64(n))
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
	for range s.conns {
		<-done
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

// stream sends batches on one ShipFlows stream until it fails.
func (s *FlowShipper) stream(ctx context.Context, client fedmeshv1.FlowServiceClient, i int) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.ShipFlows(sctx)
	if err != nil {
		return err
	}
	q := s.queues[i]
	batch := make([]*fedmeshv1.Flow, 0, shipBatch)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			_, _ = st.CloseAndRecv()
			return ctx.Err()
		case f := <-q:
			batch = append(batch, f)
		}
		timer.Reset(shipLinger)
	fill:
		for len(batch) < shipBatch {
			select {
			case f := <-q:
				batch = append(batch, f)
			case <-timer.C:
				break fill
			case <-ctx.Done():
				break fill
			}
		}
		req := &fedmeshv1.ShipFlowsRequest{Cluster: s.cluster, Node: s.node, Flows: batch, Dropped: s.dropped[i].Load()}
		if err := st.Send(req); err != nil {
			s.drop(i, len(batch))
			if errors.Is(err, io.EOF) { // the server ended the stream: its status says why
				_, err = st.CloseAndRecv()
			}
			return err
		}
		s.mShipped.WithLabelValues(s.addrs[i]).Add(float64(len(batch)))
	}
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
