package server

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/flowstore"
	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// FlowConfig bounds a replica's flow store (zero values: flowstore's
// defaults: 1M flows, 1h, 50k flows/s per node).
type FlowConfig struct {
	Capacity  int
	MaxAge    time.Duration
	NodeRate  float64
	NodeBurst float64
	// DNSCapacity and DNSMaxAge bound the DNS record store (zero:
	// flowstore's defaults, 100k records, 1h).
	DNSCapacity int
	DNSMaxAge   time.Duration
}

// startFlows creates the replica's flow store, exports its counters and
// sweeps it until the replica stops. The flow service is a role of every
// replica: agents ship to every replica they know, so each replica answers
// for the whole federation from memory, with no fan-out and nothing in the
// Raft log.
func (r *Replica) startFlows(ctx context.Context) {
	fc := r.cfg.Flows
	r.flows = flowstore.New(flowstore.Config{Capacity: fc.Capacity, MaxAge: fc.MaxAge, NodeRate: fc.NodeRate, NodeBurst: fc.NodeBurst, Replica: r.cfg.NodeID,
		Labels: func(cluster, namespace, pod string) (l map[string]string) {
			r.fsm.View(func(s *store.State) { l = s.Endpoint(cluster, namespace, pod).GetLabels() })
			return l
		}})
	r.metrics.reg.MustRegister(r.flows.Collectors()...)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.flows.Run(ctx, 5*time.Second)
	}()
}

// Flows is the replica's flow store.
func (r *Replica) Flows() *flowstore.Store { return r.flows }

type flowService struct {
	fedmeshv1.UnimplementedFlowServiceServer
	c *Core
}

// flowScope is what the caller may read; without mTLS (a development
// setup) there is no principal and everything is readable.
func flowScope(ctx context.Context) flowstore.Scope {
	p, ok := auth.PrincipalFrom(ctx)
	if !ok {
		return flowstore.Scope{}
	}
	return flowstore.Scope{Cluster: auth.FlowScope(p)}
}

func (s *flowService) GetFlows(req *fedmeshv1.GetFlowsRequest, stream grpc.ServerStreamingServer[fedmeshv1.GetFlowsResponse]) error {
	q, err := flowstore.ParseQuery(req)
	if err != nil {
		return err
	}
	ctx := stream.Context()
	// Each batch is evaluated against the staged policies as they are
	// when it is sent (staged_eval.go): records say what would be denied
	// were the staged policies enforced.
	return s.c.r.flows.Serve(ctx, q, flowScope(ctx), func(m *fedmeshv1.GetFlowsResponse) error {
		fl, err := s.c.stagedFlows(ctx, m.GetFlows())
		if err != nil {
			return err
		}
		m.Flows = fl
		return stream.Send(m)
	})
}

func (s *flowService) GetFlowSummary(ctx context.Context, req *fedmeshv1.GetFlowSummaryRequest) (*fedmeshv1.GetFlowSummaryResponse, error) {
	st := s.c.r.flows
	q, err := flowstore.ParseSummary(req, time.Now())
	if err != nil {
		return nil, err
	}
	edges := st.Summarize(q, flowScope(ctx))
	// Count what the staged policies as they are now would deny
	// (staged_eval.go).
	if err := s.c.stagedSummary(ctx, edges); err != nil {
		return nil, err
	}
	return &fedmeshv1.GetFlowSummaryResponse{Edges: edges, Status: st.StatusProto()}, nil
}

// ShipFlows stores an agent's batches. The guard already refused every
// batch not of the caller's own node; here a node the federation does not
// know (never registered, or deleted: its certificate is as good as
// revoked) is refused too, so a stale certificate cannot fill the store.
func (s *flowService) ShipFlows(stream grpc.ClientStreamingServer[fedmeshv1.ShipFlowsRequest, fedmeshv1.ShipFlowsResponse]) error {
	st := s.c.r.flows
	var resp fedmeshv1.ShipFlowsResponse
	checked := false
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&resp)
		}
		if err != nil {
			return err
		}
		if req.GetCluster() == "" || req.GetNode() == "" {
			return status.Error(codes.InvalidArgument, "cluster and node: both are required on every batch")
		}
		if !checked {
			var known bool
			s.c.view(func(s *store.State) { known = s.Node(req.GetCluster(), req.GetNode()) != nil })
			if !known {
				return status.Errorf(codes.PermissionDenied, "node %q of cluster %q is not registered in the federation (deleted?); its flows are refused", req.GetNode(), req.GetCluster())
			}
			checked = true
		}
		acc, ref := st.Add(req.GetCluster(), req.GetNode(), req.GetFlows(), req.GetDropped())
		resp.Accepted += uint64(acc)
		resp.DroppedRate += uint64(ref)
		if len(req.GetDns()) > 0 || req.GetDnsDropped() > 0 {
			acc, ref := s.c.r.dns.Add(req.GetCluster(), req.GetNode(), req.GetDns(), req.GetDnsDropped())
			resp.DnsAccepted += uint64(acc)
			resp.DnsDroppedRate += uint64(ref)
		}
	}
}
