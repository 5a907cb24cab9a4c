package server

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/bgp/peering"
	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The BGP commands' stateless checks (bgp/peering owns the rules, which
// the agent parses by too). That a peer's filters exist, and that a
// deleted filter is unused, depend on the state: the FSM checks those.
func init() {
	validator(store.CmdApplyBGPPeer, func(r *fedmeshv1.ApplyBGPPeerRequest) error { return peering.ValidatePeer(r.GetPeer()) })
	validator(store.CmdDeleteBGPPeer, func(r *fedmeshv1.DeleteBGPPeerRequest) error {
		return peering.ValidateName(field.NewPath("name"), r.GetName())
	})
	validator(store.CmdApplyBGPFilter, func(r *fedmeshv1.ApplyBGPFilterRequest) error { return peering.ValidateFilter(r.GetFilter()) })
	validator(store.CmdDeleteBGPFilter, func(r *fedmeshv1.DeleteBGPFilterRequest) error {
		return peering.ValidateName(field.NewPath("name"), r.GetName())
	})
}

type bgpService struct {
	fedmeshv1.UnimplementedBGPServiceServer
	c       *Core
	secrets secretStore // Secret passwords, in memory only (bgpsecrets.go)
}

// bgpWritable refuses BGP writes until every replica of the configuration
// applies their commands (log format 4): an older replica would stop at
// the entry.
func (c *Core) bgpWritable() error {
	return bgpWritesAt(c.appliesFormat(store.LogFormatBGP))
}

// bgpWritesAt decides for the oldest log format of the configuration.
// Pure, for tests.
func bgpWritesAt(format uint32) error {
	if format >= store.LogFormatBGP {
		return nil
	}
	return status.Errorf(codes.FailedPrecondition,
		"not every control-plane replica applies BGP peer commands yet (log format %d, need %d): finish upgrading the replicas, then retry",
		format, store.LogFormatBGP)
}

func proposeBGP[Resp any](ctx context.Context, c *Core, t store.CommandType, req proto.Message, build func(*store.Result) Resp) (Resp, error) {
	var zero Resp
	if err := c.bgpWritable(); err != nil {
		return zero, err
	}
	return propose(ctx, c, t, req, build)
}

func (s *bgpService) ApplyBGPPeer(ctx context.Context, req *fedmeshv1.ApplyBGPPeerRequest) (*fedmeshv1.ApplyBGPPeerResponse, error) {
	return proposeBGP(ctx, s.c, store.CmdApplyBGPPeer, req, func(r *store.Result) *fedmeshv1.ApplyBGPPeerResponse {
		return &fedmeshv1.ApplyBGPPeerResponse{Peer: r.BGPPeer, Revision: r.Revision}
	})
}

func (s *bgpService) DeleteBGPPeer(ctx context.Context, req *fedmeshv1.DeleteBGPPeerRequest) (*fedmeshv1.DeleteBGPPeerResponse, error) {
	return proposeBGP(ctx, s.c, store.CmdDeleteBGPPeer, req, func(r *store.Result) *fedmeshv1.DeleteBGPPeerResponse {
		return &fedmeshv1.DeleteBGPPeerResponse{Revision: r.Revision}
	})
}

func (s *bgpService) ApplyBGPFilter(ctx context.Context, req *fedmeshv1.ApplyBGPFilterRequest) (*fedmeshv1.ApplyBGPFilterResponse, error) {
	return proposeBGP(ctx, s.c, store.CmdApplyBGPFilter, req, func(r *store.Result) *fedmeshv1.ApplyBGPFilterResponse {
		return &fedmeshv1.ApplyBGPFilterResponse{Filter: r.BGPFilter, Revision: r.Revision}
	})
}

func (s *bgpService) DeleteBGPFilter(ctx context.Context, req *fedmeshv1.DeleteBGPFilterRequest) (*fedmeshv1.DeleteBGPFilterResponse, error) {
	return proposeBGP(ctx, s.c, store.CmdDeleteBGPFilter, req, func(r *store.Result) *fedmeshv1.DeleteBGPFilterResponse {
		return &fedmeshv1.DeleteBGPFilterResponse{Revision: r.Revision}
	})
}

func (s *bgpService) GetBGPPeer(ctx context.Context, req *fedmeshv1.GetBGPPeerRequest) (*fedmeshv1.GetBGPPeerResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	v := bgpViewerOf(ctx)
	resp := &fedmeshv1.GetBGPPeerResponse{}
	s.c.view(func(st *store.State) {
		if p := st.BGPPeer(req.GetName()); p != nil && v.sees(st, p) {
			resp.Peer = p
		}
		resp.Revision = st.Revision()
	})
	if resp.Peer == nil {
		// A node agent cannot tell a peer that does not select it from
		// one that does not exist.
		return nil, notFound("BGP peer", req.GetName())
	}
	return resp, nil
}

func (s *bgpService) ListBGPPeers(ctx context.Context, _ *fedmeshv1.ListBGPPeersRequest) (*fedmeshv1.ListBGPPeersResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	v := bgpViewerOf(ctx)
	resp := &fedmeshv1.ListBGPPeersResponse{}
	s.c.view(func(st *store.State) {
		resp.Peers, resp.Revision = v.visible(st, st.BGPPeers()), st.Revision()
	})
	return resp, nil
}

func (s *bgpService) GetBGPFilter(ctx context.Context, req *fedmeshv1.GetBGPFilterRequest) (*fedmeshv1.GetBGPFilterResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.GetBGPFilterResponse{}
	s.c.view(func(st *store.State) { resp.Filter, resp.Revision = st.BGPFilter(req.GetName()), st.Revision() })
	if resp.Filter == nil {
		return nil, notFound("BGP filter", req.GetName())
	}
	return resp, nil
}

func (s *bgpService) ListBGPFilters(ctx context.Context, _ *fedmeshv1.ListBGPFiltersRequest) (*fedmeshv1.ListBGPFiltersResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.ListBGPFiltersResponse{}
	s.c.view(func(st *store.State) { resp.Filters, resp.Revision = st.BGPFilters(), st.Revision() })
	return resp, nil
}

func (s *bgpService) GetBGPStatus(ctx context.Context, req *fedmeshv1.GetBGPStatusRequest) (*fedmeshv1.GetBGPStatusResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	v := bgpViewerOf(ctx)
	resp := &fedmeshv1.GetBGPStatusResponse{}
	s.c.view(func(st *store.State) {
		resp.Revision = st.Revision()
		resp.Peers = v.visible(st, st.BGPPeers())
		for _, n := range st.Nodes(req.GetCluster()) {
			if v.node != nil && (n.GetCluster() != v.node.Cluster || n.GetName() != v.node.Node) {
				continue
			}
			resp.Nodes = append(resp.Nodes, &fedmeshv1.BGPNodeStatus{
				Cluster:    n.GetCluster(),
				Node:       n.GetName(),
				SelectedBy: st.BGPPeersSelecting(n),
				Sessions:   n.GetStatus().GetBgpPeers(),
				Problems:   n.GetStatus().GetBgpProblems(),
				ReportTime: n.GetStatus().GetReportTime(),
			})
		}
	})
	return resp, nil
}

// bgpViewer is what one caller may read of the BGP objects: all of them
// (an admin, or no authentication), the peers that select its own node and
// every filter (a node agent), or nothing (anyone else, e.g. a syncer
// watching every kind).
type bgpViewer struct {
	node    *auth.Principal // a node agent's principal
	nothing bool
}

func bgpViewerOf(ctx context.Context) bgpViewer {
	p, ok := auth.PrincipalFrom(ctx)
	switch {
	case !ok || p.Kind == auth.KindAdmin:
		return bgpViewer{}
	case p.Kind == auth.KindNode:
		return bgpViewer{node: &p}
	}
	return bgpViewer{nothing: true}
}

// sees reports whether the viewer may read peer p, as the state is now.
func (v bgpViewer) sees(st *store.State, p *fedmeshv1.BGPPeerConfig) bool {
	switch {
	case v.nothing:
		return false
	case v.node == nil:
		return true
	}
	n := st.Node(v.node.Cluster, v.node.Node)
	return n != nil && st.BGPPeerSelects(p, n)
}

func (v bgpViewer) visible(st *store.State, peers []*fedmeshv1.BGPPeerConfig) []*fedmeshv1.BGPPeerConfig {
	out := peers[:0:0]
	for _, p := range peers {
		if v.sees(st, p) {
			out = append(out, p)
		}
	}
	return out
}

// emit appends what event e of the log (or of a snapshot) becomes for this
// watcher: nothing when the filter drops it; for a node agent, a peer that
// does not select its node as a DELETE (it may have selected it before),
// or, in a snapshot, nothing; and after a change of the agent's own node
// or cluster (labels decide selection) every peer again, as a PUT when it
// selects the node and a DELETE otherwise.
func (f *watchFilter) emit(st *store.State, out []*fedmeshv1.Event, e *fedmeshv1.Event, snapshot bool) []*fedmeshv1.Event {
	if f.pass(st, e) {
		switch o := e.GetObject().(type) {
		case *fedmeshv1.Event_BgpPeer:
			switch {
			case f.bgp.nothing:
			case e.GetType() == fedmeshv1.EventType_EVENT_TYPE_DELETE || f.bgp.sees(st, o.BgpPeer):
				out = append(out, e)
			case !snapshot:
				out = append(out, peerDeleteEvent(e.GetRevision(), o.BgpPeer))
			}
		case *fedmeshv1.Event_BgpFilter:
			if !f.bgp.nothing {
				out = append(out, e)
			}
		default:
			out = append(out, e)
		}
	}
	if snapshot || f.bgp.node == nil || (f.kinds != nil && !f.kinds[fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER]) {
		return out
	}
	me := f.bgp.node
	switch o := e.GetObject().(type) {
	case *fedmeshv1.Event_Node:
		if o.Node.GetCluster() != me.Cluster || o.Node.GetName() != me.Node {
			return out
		}
	case *fedmeshv1.Event_Cluster:
		if o.Cluster.GetName() != me.Cluster {
			return out
		}
	default:
		return out
	}
	for _, p := range st.BGPPeerSpecs() {
		if f.bgp.sees(st, p) {
			out = append(out, &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Revision: e.GetRevision(), Object: &fedmeshv1.Event_BgpPeer{BgpPeer: p}})
		} else {
			out = append(out, peerDeleteEvent(e.GetRevision(), p))
		}
	}
	return out
}

// peerDeleteEvent is the DELETE a node agent gets for a peer it may not
// read: the key only.
func peerDeleteEvent(rev uint64, p *fedmeshv1.BGPPeerConfig) *fedmeshv1.Event {
	return &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_DELETE, Revision: rev,
		Object: &fedmeshv1.Event_BgpPeer{BgpPeer: &fedmeshv1.BGPPeerConfig{Name: p.GetName()}}}
}
