package store

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Service advertisements (ServiceAdvertisement) are what a cluster's nodes
// need to advertise its Services' addresses over BGP: written by that
// cluster's syncer, read by its agents, kept per cluster. They travel in
// no watch event: an agent's watch of them (the server's) re-reads its
// cluster's whole set whenever the set's revision (ServiceAdvertisementsRevision)
// moves. Their command arrives only in log format 7 (LogFormatServiceAdvertisements).
const CmdSyncServiceAdvertisements CommandType = 40

// recServiceAdvert is a snapshot record of one advertisement (version 7).
const recServiceAdvert recKind = 40

// SnapshotVersionServiceAdvertisements is the snapshot version that holds
// service advertisements, written only once there are some.
const SnapshotVersionServiceAdvertisements = 7

func registerServiceAdvertisements() {
	register(CmdSyncServiceAdvertisements, "SyncServiceAdvertisements", false, (*State).applySyncServiceAdvertisements)
	describe(CmdSyncServiceAdvertisements, func(r *fedmeshv1.SyncServiceAdvertisementsRequest, name func(string)) (string, int) {
		for _, p := range r.GetPuts() {
			name(p.GetNamespace() + "/" + p.GetName())
		}
		for _, d := range r.GetDeletes() {
			name(d.GetNamespace() + "/" + d.GetName())
		}
		return r.GetCluster(), len(r.GetPuts()) + len(r.GetDeletes())
	})
}

// advertState holds each cluster's advertisements and the revision its
// set last changed at. Stored objects are never mutated.
type advertState struct {
	byCluster map[string]map[nsName]*fedmeshv1.ServiceAdvertisement
	rev       map[string]uint64
}

func newAdvertState() advertState {
	return advertState{byCluster: map[string]map[nsName]*fedmeshv1.ServiceAdvertisement{}, rev: map[string]uint64{}}
}

func (a advertState) clone() advertState {
	c := advertState{byCluster: make(map[string]map[nsName]*fedmeshv1.ServiceAdvertisement, len(a.byCluster)), rev: make(map[string]uint64, len(a.rev))}
	copyInner(c.byCluster, a.byCluster)
	for k, v := range a.rev {
		c.rev[k] = v
	}
	return c
}

func (a advertState) empty() bool { return len(a.byCluster) == 0 }

func (s *State) applySyncServiceAdvertisements(tx *txn, req *fedmeshv1.SyncServiceAdvertisementsRequest) (*Result, error) {
	c := req.GetCluster()
	if s.clusters[c] == nil {
		return nil, &NotFoundError{Kind: "cluster", Key: c}
	}
	old := s.adverts.byCluster[c]
	next := make(map[nsName]*fedmeshv1.ServiceAdvertisement, len(old)+len(req.GetPuts()))
	if !req.GetReplace() {
		for k, v := range old {
			next[k] = v
		}
	}
	for _, d := range req.GetDeletes() {
		delete(next, nsName{d.GetNamespace(), d.GetName()})
	}
	for _, p := range req.GetPuts() {
		k := nsName{p.GetNamespace(), p.GetName()}
		p.Cluster = c
		prev := old[k]
		if prev != nil && proto.Equal(withoutMeta(prev), withoutMeta(p)) {
			next[k] = prev // unchanged: keeps its revision
			continue
		}
		p.Meta = tx.meta(prev.GetMeta())
		next[k] = p
	}
	if len(next) == 0 {
		delete(s.adverts.byCluster, c)
	} else {
		s.adverts.byCluster[c] = next
	}
	s.adverts.rev[c] = tx.rev
	return &Result{}, nil
}

// dropCluster removes a deleted cluster's advertisements; its set counts
// as changed (to empty), so a watcher still open sees it go.
func (a advertState) dropCluster(tx *txn, cluster string) {
	if _, ok := a.byCluster[cluster]; ok {
		delete(a.byCluster, cluster)
		a.rev[cluster] = tx.rev
	}
}

func withoutMeta(a *fedmeshv1.ServiceAdvertisement) *fedmeshv1.ServiceAdvertisement {
	c := proto.CloneOf(a)
	c.Meta = nil
	return c
}

// ServiceAdvertisements lists a cluster's advertisements sorted by
// namespace and name.
func (s *State) ServiceAdvertisements(cluster string) []*fedmeshv1.ServiceAdvertisement {
	m := s.adverts.byCluster[cluster]
	out := make([]*fedmeshv1.ServiceAdvertisement, 0, len(m))
	for _, k := range sortedNsNames(m) {
		out = append(out, m[k])
	}
	return out
}

// ServiceAdvertisementsRevision is the revision a cluster's advertisements
// last changed at (0 if never; after a snapshot restore, the snapshot's).
func (s *State) ServiceAdvertisementsRevision(cluster string) uint64 { return s.adverts.rev[cluster] }

func (a advertState) write(rw *recWriter) {
	for _, c := range sortedKeys(a.byCluster) {
		for _, k := range sortedNsNames(a.byCluster[c]) {
			rw.msg(recServiceAdvert, 0, false, a.byCluster[c][k])
		}
	}
}

// read restores one advertisement; the cluster's set counts as changed at
// the snapshot's revision (rev), so a watcher resends it once.
func (a advertState) read(kind recKind, data []byte) (bool, error) {
	if kind != recServiceAdvert {
		return false, nil
	}
	v := &fedmeshv1.ServiceAdvertisement{}
	if err := proto.Unmarshal(data, v); err != nil {
		return true, fmt.Errorf("read snapshot service advertisement: %w", err)
	}
	m := a.byCluster[v.GetCluster()]
	if m == nil {
		m = map[nsName]*fedmeshv1.ServiceAdvertisement{}
		a.byCluster[v.GetCluster()] = m
	}
	m[nsName{v.GetNamespace(), v.GetName()}] = v
	return true, nil
}

// restored marks every cluster's set as changed at rev.
func (a advertState) restored(rev uint64) {
	for c := range a.byCluster {
		a.rev[c] = rev
	}
}
