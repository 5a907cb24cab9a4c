package agent_test

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// hub is a small in-memory stand-in for the control plane's replicated
// store, served over real gRPC on loopback by one or more replicas, until
// the control plane lands on main (then agent_controlplane_test.go runs the
// real one). It keeps objects, a revisioned event log that can be
// compacted, and what agents registered and reported.
type hub struct {
	mu        sync.Mutex
	rev       uint64
	objs      map[string]*fedmeshv1.Event // by kind/key, PUT events
	log       []*fedmeshv1.Event
	compacted uint64 // events at or below are gone
	changed   chan struct{}
	watches   []uint64 // from_revision of every Watch
	nodes     map[string]*fedmeshv1.Node
	statuses  []*fedmeshv1.NodeStatus
	chunk     int // snapshot chunk size
}

func newHub() *hub {
	return &hub{objs: map[string]*fedmeshv1.Event{}, changed: make(chan struct{}), nodes: map[string]*fedmeshv1.Node{}, chunk: 2}
}

func objKey(ev *fedmeshv1.Event) string {
	switch o := ev.GetObject().(type) {
	case *fedmeshv1.Event_Cluster:
		return "cluster/" + o.Cluster.GetName()
	case *fedmeshv1.Event_Node:
		return "node/" + o.Node.GetCluster() + "/" + o.Node.GetName()
	case *fedmeshv1.Event_Endpoint:
		return "endpoint/" + o.Endpoint.GetCluster() + "/" + o.Endpoint.GetNamespace() + "/" + o.Endpoint.GetName()
	case *fedmeshv1.Event_Policy:
		return "policy/" + o.Policy.GetCluster() + "/" + o.Policy.GetNamespace() + "/" + o.Policy.GetName()
	}
	return "unknown"
}

func stamp(ev *fedmeshv1.Event, rev uint64) {
	meta := &fedmeshv1.ObjectMeta{Revision: rev}
	switch o := ev.GetObject().(type) {
	case *fedmeshv1.Event_Cluster:
		o.Cluster.Meta = meta
	case *fedmeshv1.Event_Node:
		o.Node.Meta = meta
	case *fedmeshv1.Event_Endpoint:
		o.Endpoint.Meta = meta
	case *fedmeshv1.Event_Policy:
		o.Policy.Meta = meta
	}
}

// commit stores events as one revision and returns it. Events are cloned.
func (h *hub) commit(evs ...*fedmeshv1.Event) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rev++
	for _, ev := range evs {
		ev = proto.Clone(ev).(*fedmeshv1.Event)
		ev.Revision = h.rev
		stamp(ev, h.rev)
		h.log = append(h.log, ev)
		if ev.GetType() == fedmeshv1.EventType_EVENT_TYPE_DELETE {
			delete(h.objs, objKey(ev))
		} else if ev.GetObject() != nil {
			h.objs[objKey(ev)] = ev
		}
	}
	close(h.changed)
	h.changed = make(chan struct{})
	return h.rev
}

// compact drops the whole event log: watchers from an older revision get a
// snapshot.
func (h *hub) compact() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.compacted, h.log = h.rev, nil
}

func (h *hub) watchFroms() []uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.watches)
}

func (h *hub) lastStatus() *fedmeshv1.NodeStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.statuses) == 0 {
		return nil
	}
	return h.statuses[len(h.statuses)-1]
}

// replica is one gRPC server over the hub.
type replica struct {
	fedmeshv1.UnimplementedWatchServiceServer
	fedmeshv1.UnimplementedNodeServiceServer
	h    *hub
	addr string
	srv  *grpc.Server
}

func startReplica(t *testing.T, h *hub, addr string) *replica {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	r := &replica{h: h, addr: lis.Addr().String(), srv: grpc.NewServer()}
	fedmeshv1.RegisterWatchServiceServer(r.srv, r)
	fedmeshv1.RegisterNodeServiceServer(r.srv, r)
	go r.srv.Serve(lis)
	t.Cleanup(r.srv.Stop)
	return r
}

func (r *replica) stop() { r.srv.Stop() }

func (r *replica) Watch(req *fedmeshv1.WatchRequest, s grpc.ServerStreamingServer[fedmeshv1.WatchResponse]) error {
	h := r.h
	h.mu.Lock()
	h.watches = append(h.watches, req.GetFromRevision())
	from := req.GetFromRevision()
	var first []*fedmeshv1.WatchResponse
	if from == 0 || from < h.compacted {
		keys := make([]string, 0, len(h.objs))
		for k := range h.objs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i := 0; i == 0 || i < len(keys); i += h.chunk {
			var evs []*fedmeshv1.Event
			for _, k := range keys[i:min(i+h.chunk, len(keys))] {
				evs = append(evs, h.objs[k])
			}
			first = append(first, &fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT,
				Revision: h.rev, Events: evs, More: i+h.chunk < len(keys)})
		}
		from = h.rev
	}
	h.mu.Unlock()
	for _, m := range first {
		if err := s.Send(m); err != nil {
			return err
		}
	}
	for {
		h.mu.Lock()
		var evs []*fedmeshv1.Event
		for _, ev := range h.log {
			if ev.GetRevision() > from {
				evs = append(evs, ev)
			}
		}
		rev, changed := h.rev, h.changed
		h.mu.Unlock()
		// One message per revision, as a busy store sends them, so the
		// agent, not the hub, has to coalesce.
		for len(evs) > 0 {
			n := 1
			for n < len(evs) && evs[n].GetRevision() == evs[0].GetRevision() {
				n++
			}
			if err := s.Send(&fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS,
				Revision: evs[0].GetRevision(), Events: evs[:n]}); err != nil {
				return err
			}
			from, evs = evs[0].GetRevision(), evs[n:]
		}
		if rev > from {
			if err := s.Send(&fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_PROGRESS, Revision: rev}); err != nil {
				return err
			}
			from = rev
		}
		select {
		case <-changed:
		case <-s.Context().Done():
			return s.Context().Err()
		}
	}
}

func (r *replica) RegisterNode(_ context.Context, req *fedmeshv1.RegisterNodeRequest) (*fedmeshv1.RegisterNodeResponse, error) {
	n := req.GetNode()
	if n.GetCluster() == "" || n.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "node: cluster and name required")
	}
	rev := r.h.commit(&fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Object: &fedmeshv1.Event_Node{Node: proto.Clone(n).(*fedmeshv1.Node)}})
	r.h.mu.Lock()
	r.h.nodes[n.GetCluster()+"/"+n.GetName()] = n
	r.h.mu.Unlock()
	return &fedmeshv1.RegisterNodeResponse{Node: n, Revision: rev}, nil
}

func (r *replica) ReportNodeStatus(_ context.Context, req *fedmeshv1.ReportNodeStatusRequest) (*fedmeshv1.ReportNodeStatusResponse, error) {
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	if _, ok := r.h.nodes[req.GetCluster()+"/"+req.GetName()]; !ok {
		return nil, status.Error(codes.NotFound, "node not registered")
	}
	r.h.statuses = append(r.h.statuses, req.GetStatus())
	return &fedmeshv1.ReportNodeStatusResponse{}, nil
}
