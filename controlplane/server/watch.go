package server

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// watchChunk bounds the events of one WatchResponse.
const watchChunk = 1000

// watchService streams the local store. A watcher holds no queue of its
// own: it reads the shared event log after the revision it last sent, so a
// slow watcher costs no memory; when the log has moved past it, it gets a
// snapshot instead. A watcher behind by several revisions gets them in one
// response holding each changed object once, at its newest state
// (coalesce): the further behind, the less it is sent per revision.
type watchService struct {
	fedmeshv1.UnimplementedWatchServiceServer
	c *Core
}

type watchFilter struct {
	kinds     map[fedmeshv1.ResourceKind]bool
	clusters  map[string]bool
	importing string
	bgp       bgpViewer // what the caller may read of BGP objects (bgp.go)
}

func newWatchFilter(req *fedmeshv1.WatchRequest) (*watchFilter, error) {
	f := &watchFilter{importing: req.GetFilter().GetImportingCluster()}
	for _, k := range req.GetKinds() {
		if k == fedmeshv1.ResourceKind_RESOURCE_KIND_UNSPECIFIED || fedmeshv1.ResourceKind_name[int32(k)] == "" {
			return nil, status.Errorf(codes.InvalidArgument, "kinds: %v is not a resource kind", k)
		}
		if f.kinds == nil {
			f.kinds = map[fedmeshv1.ResourceKind]bool{}
		}
		f.kinds[k] = true
	}
	for _, c := range req.GetFilter().GetClusters() {
		if f.clusters == nil {
			f.clusters = map[string]bool{}
		}
		f.clusters[c] = true
	}
	return f, nil
}

// pass decides, against the current state, whether e reaches the watcher.
func (f *watchFilter) pass(st *store.State, e *fedmeshv1.Event) bool {
	var kind fedmeshv1.ResourceKind
	var owner, ns string
	scoped := false // whether the object is subject to export/import scope
	switch o := e.GetObject().(type) {
	case *fedmeshv1.Event_Cluster:
		kind = fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER
	case *fedmeshv1.Event_Node:
		kind, owner = fedmeshv1.ResourceKind_RESOURCE_KIND_NODE, o.Node.GetCluster()
	case *fedmeshv1.Event_Endpoint:
		kind, owner, ns, scoped = fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT, o.Endpoint.GetCluster(), o.Endpoint.GetNamespace(), true
	case *fedmeshv1.Event_ServiceExport:
		kind, owner, ns, scoped = fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_EXPORT, o.ServiceExport.GetCluster(), o.ServiceExport.GetNamespace(), true
	case *fedmeshv1.Event_ServiceImport:
		kind, ns = fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT, o.ServiceImport.GetNamespace()
	case *fedmeshv1.Event_Policy:
		kind, owner, ns, scoped = fedmeshv1.ResourceKind_RESOURCE_KIND_POLICY, o.Policy.GetCluster(), o.Policy.GetNamespace(), o.Policy.GetCluster() != ""
	case *fedmeshv1.Event_BgpPeer:
		kind = fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER
	case *fedmeshv1.Event_BgpFilter:
		kind = fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER
	case *fedmeshv1.Event_ClusterNetworkPolicy:
		kind, owner = fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER_NETWORK_POLICY, o.ClusterNetworkPolicy.GetCluster()
	}
	if f.kinds != nil && !f.kinds[kind] {
		return false
	}
	if f.clusters != nil && owner != "" && !f.clusters[owner] {
		return false
	}
	if f.importing == "" {
		return true
	}
	imports := st.ClusterSpec(f.importing).GetImports()
	if kind == fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT {
		return model.InScope(imports, ns)
	}
	if !scoped || owner == f.importing {
		return true
	}
	return model.InScope(st.ClusterSpec(owner).GetExports(), ns) && model.InScope(imports, ns)
}

func (w *watchService) Watch(req *fedmeshv1.WatchRequest, stream fedmeshv1.WatchService_WatchServer) error {
	f, err := newWatchFilter(req)
	if err != nil {
		return err
	}
	f.bgp = bgpViewerOf(stream.Context())
	m := w.c.r.metrics
	m.watchers.Inc()
	defer m.watchers.Dec()
	ctx := stream.Context()
	rev := req.GetFromRevision()
	needSnapshot := rev == 0
	for {
		if needSnapshot {
			if rev, err = w.sendSnapshot(stream, f); err != nil {
				return err
			}
			needSnapshot = false
		}
		changed := w.c.fsm.Changed()
		var out []*fedmeshv1.Event
		last := rev
		compacted := false
		w.c.view(func(st *store.State) {
			batches, ok := st.Log().Since(rev, watchChunk)
			if !ok {
				compacted = true
				return
			}
			for _, b := range batches {
				for _, e := range b.Events {
					out = f.emit(st, out, e, false)
				}
				last = b.Revision
			}
		})
		if compacted {
			m.watchResets.Inc()
			needSnapshot = true
			continue
		}
		if last > rev {
			out, dropped := coalesce(out)
			m.watchCoalesced.Add(float64(dropped))
			m.watchEvents.Add(float64(len(out)))
			resp := &fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS, Revision: last, Events: out}
			if len(out) == 0 {
				resp.Type = fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_PROGRESS
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			rev = last
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

// sendSnapshot sends every matching object in chunks and returns the
// snapshot's revision. It waits for one of the replica's snapshot slots
// first (Config.MaxConcurrentSnapshots): a snapshot holds every object it
// sends until the last chunk is queued.
func (w *watchService) sendSnapshot(stream fedmeshv1.WatchService_WatchServer, f *watchFilter) (uint64, error) {
	if slots := w.c.r.snapshots; slots != nil {
		m := w.c.r.metrics
		select {
		case slots <- struct{}{}:
		default:
			m.snapshotsWaiting.Inc()
			select {
			case slots <- struct{}{}:
				m.snapshotsWaiting.Dec()
			case <-stream.Context().Done():
				m.snapshotsWaiting.Dec()
				return 0, stream.Context().Err()
			}
		}
		defer func() { <-slots }()
	}
	var objs []*fedmeshv1.Event
	var rev uint64
	w.c.view(func(st *store.State) {
		rev = st.Revision()
		st.ForEachObject(func(e *fedmeshv1.Event) bool {
			objs = f.emit(st, objs, e, true)
			return true
		})
	})
	for {
		n := min(len(objs), watchChunk)
		resp := &fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT, Revision: rev, Events: objs[:n], More: n < len(objs)}
		if err := stream.Send(resp); err != nil {
			return 0, err
		}
		objs = objs[n:]
		if len(objs) == 0 {
			return rev, nil
		}
	}
}

// coalesce keeps, of the events of one object, only the last, in the order
// of those last events, and returns how many it left out. A response
// covers whole revisions and its revision means "everything up to it":
// every object changed in the window is still in it, at its state as of
// that revision, so a watcher that applies it holds what one that applied
// every intermediate event would. Events of a kind it cannot key pass
// through untouched.
func coalesce(evs []*fedmeshv1.Event) ([]*fedmeshv1.Event, int) {
	if len(evs) < 2 {
		return evs, 0
	}
	seen := make(map[eventKey]struct{}, len(evs))
	keep := make([]bool, len(evs))
	n := 0
	for i := len(evs) - 1; i >= 0; i-- {
		k, ok := keyOf(evs[i])
		if ok {
			if _, dup := seen[k]; dup {
				continue
			}
			seen[k] = struct{}{}
		}
		keep[i] = true
		n++
	}
	if n == len(evs) {
		return evs, 0
	}
	out := make([]*fedmeshv1.Event, 0, n)
	for i, e := range evs {
		if keep[i] {
			out = append(out, e)
		}
	}
	return out, len(evs) - n
}

// eventKey names the object an event is about.
type eventKey struct {
	kind, sub                int32
	cluster, namespace, name string
}

func keyOf(e *fedmeshv1.Event) (eventKey, bool) {
	switch o := e.GetObject().(type) {
	case *fedmeshv1.Event_Cluster:
		return eventKey{kind: 1, name: o.Cluster.GetName()}, true
	case *fedmeshv1.Event_Node:
		return eventKey{kind: 2, cluster: o.Node.GetCluster(), name: o.Node.GetName()}, true
	case *fedmeshv1.Event_Endpoint:
		return eventKey{kind: 3, cluster: o.Endpoint.GetCluster(), namespace: o.Endpoint.GetNamespace(), name: o.Endpoint.GetName()}, true
	case *fedmeshv1.Event_ServiceExport:
		return eventKey{kind: 4, cluster: o.ServiceExport.GetCluster(), namespace: o.ServiceExport.GetNamespace(), name: o.ServiceExport.GetName()}, true
	case *fedmeshv1.Event_ServiceImport:
		return eventKey{kind: 5, namespace: o.ServiceImport.GetNamespace(), name: o.ServiceImport.GetName()}, true
	case *fedmeshv1.Event_Policy:
		return eventKey{kind: 6, sub: int32(o.Policy.GetKind()), cluster: o.Policy.GetCluster(), namespace: o.Policy.GetNamespace(), name: o.Policy.GetName()}, true
	case *fedmeshv1.Event_BgpPeer:
		return eventKey{kind: 7, name: o.BgpPeer.GetName()}, true
	case *fedmeshv1.Event_BgpFilter:
		return eventKey{kind: 8, name: o.BgpFilter.GetName()}, true
	}
	return eventKey{}, false
}
