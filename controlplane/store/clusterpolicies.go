package store

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	netpolicy "github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ClusterNetworkPolicies, synced (owner: the cluster they were synced
// from) and federated (owner ""), keyed by owner and name. Their commands
// arrive only in log format 5 (LogFormatClusterPolicies): the edge refuses
// them until every replica applies it. The numbers leave room below them
// for other kinds' commands.
const (
	CmdApplyClusterPolicies CommandType = 32
	CmdDeleteClusterPolicy  CommandType = 33
)

// LogFormatClusterPolicies adds the ClusterNetworkPolicy commands.
const LogFormatClusterPolicies = 5

// genClusterPolicies tracks the resync generation of an owner's
// ClusterNetworkPolicies (persisted in snapshot headers).
const genClusterPolicies genKind = 8

// recClusterPolicy is a snapshot record of one ClusterNetworkPolicy
// (snapshot version 6), with its resync generation.
const recClusterPolicy recKind = 32

// SnapshotVersionClusterPolicies is the snapshot version that adds
// recClusterPolicy records; a snapshot is written in it only when it holds
// some, so older binaries restore the others.
const SnapshotVersionClusterPolicies = 6

func registerClusterPolicies() {
	register(CmdApplyClusterPolicies, "ApplyClusterPolicies", false, (*State).applyApplyClusterPolicies)
	register(CmdDeleteClusterPolicy, "DeleteClusterPolicy", false, (*State).applyDeleteClusterPolicy)
	describe(CmdApplyClusterPolicies, func(r *fedmeshv1.ApplyClusterPoliciesRequest, name func(string)) (string, int) {
		for _, p := range r.GetPolicies()[:min(len(r.GetPolicies()), auditMaxObjects)] {
			name(p.GetName())
		}
		return r.GetCluster(), len(r.GetPolicies())
	})
	describe(CmdDeleteClusterPolicy, func(r *fedmeshv1.DeleteClusterPolicyRequest, name func(string)) (string, int) {
		name(r.GetKey().GetName())
		return r.GetKey().GetCluster(), 1
	})
}

type cnpEntry struct {
	p   *fedmeshv1.ClusterNetworkPolicy
	gen uint64
}

func (e *cnpEntry) policy() *fedmeshv1.ClusterNetworkPolicy {
	if e == nil {
		return nil
	}
	return e.p
}

// cnpState holds the ClusterNetworkPolicies by owner, then name. Stored
// objects are never mutated.
type cnpState map[string]map[string]*cnpEntry

func (c cnpState) clone() cnpState {
	out := make(cnpState, len(c))
	copyInner(out, c)
	return out
}

func (c cnpState) empty() bool { return len(c) == 0 }

func (s *State) applyApplyClusterPolicies(tx *txn, req *fedmeshv1.ApplyClusterPoliciesRequest) (*Result, error) {
	owner := req.GetCluster()
	var ce *clusterEntry
	if owner != "" {
		if ce = s.clusters[owner]; ce == nil {
			return nil, clusterNotFound(field.NewPath("cluster"), owner)
		}
	}
	gk := genKey{owner: owner, kind: genClusterPolicies}
	stamp, err := s.checkGeneration(gk, req.GetResync())
	if err != nil {
		return nil, err
	}
	g := req.GetResync().GetGeneration()
	ps := inner(s.cnp, owner)
	res := &Result{}
	for _, p := range req.GetPolicies() {
		old := ps[p.GetName()]
		p.Meta = tx.meta(old.policy().GetMeta())
		s.ids.clusterPolicyStored(old.policy(), p)
		ps[p.GetName()] = &cnpEntry{p: p, gen: stamp}
		tx.putClusterPolicy(p)
		res.ClusterPolicies = append(res.ClusterPolicies, p)
	}
	if g > s.gens[gk] {
		s.gens[gk] = g
	}
	if req.GetResync().GetFinal() {
		for _, n := range sortedKeys(ps) {
			if ps[n].gen < g {
				s.ids.clusterPolicyStored(ps[n].p, nil)
				tx.delClusterPolicy(ps[n].p)
				delete(ps, n)
				res.Deleted++
			}
		}
	}
	if len(ps) == 0 {
		delete(s.cnp, owner)
	}
	if ce != nil {
		ce.lastSync = tx.time
	}
	s.rekeyIdentities(tx)
	return res, nil
}

func (s *State) applyDeleteClusterPolicy(tx *txn, req *fedmeshv1.DeleteClusterPolicyRequest) (*Result, error) {
	k := req.GetKey()
	old := s.cnp[k.GetCluster()][k.GetName()]
	if old == nil {
		return nil, &NotFoundError{Kind: "ClusterNetworkPolicy", Key: clusterPolicyKeyString(k.GetCluster(), k.GetName())}
	}
	delete(s.cnp[k.GetCluster()], k.GetName())
	if len(s.cnp[k.GetCluster()]) == 0 {
		delete(s.cnp, k.GetCluster())
	}
	tx.delClusterPolicy(old.p)
	s.ids.clusterPolicyStored(old.p, nil)
	s.rekeyIdentities(tx)
	return &Result{}, nil
}

// deleteClusterPolicies removes a deleted cluster's synced policies and
// their resync generation.
func (s *State) deleteClusterPolicies(tx *txn, cluster string) {
	for _, n := range sortedKeys(s.cnp[cluster]) {
		p := s.cnp[cluster][n].p
		tx.delClusterPolicy(p)
		s.ids.clusterPolicyStored(p, nil)
	}
	delete(s.cnp, cluster)
	delete(s.gens, genKey{owner: cluster, kind: genClusterPolicies})
}

func clusterPolicyKeyString(cluster, name string) string {
	if cluster == "" {
		return "federated/" + name
	}
	return cluster + "/" + name
}

// clusterPolicyStored is policyStored for a ClusterNetworkPolicy: the pod
// label keys its selectors read count for identity while it is stored.
func (a *Identities) clusterPolicyStored(old, p *fedmeshv1.ClusterNetworkPolicy) {
	if p != nil {
		for _, k := range a.rel.Select(netpolicy.ClusterPolicyPodLabelKeys(p)) {
			a.markChanged(k)
		}
	}
	if old != nil {
		for _, k := range a.rel.Unselect(netpolicy.ClusterPolicyPodLabelKeys(old)) {
			a.markChanged(k)
		}
	}
}

func (tx *txn) putClusterPolicy(x *fedmeshv1.ClusterNetworkPolicy) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_PUT, func(e *fedmeshv1.Event) {
		e.Object = &fedmeshv1.Event_ClusterNetworkPolicy{ClusterNetworkPolicy: x}
	})
}

func (tx *txn) delClusterPolicy(x *fedmeshv1.ClusterNetworkPolicy) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_DELETE, func(e *fedmeshv1.Event) {
		e.Object = &fedmeshv1.Event_ClusterNetworkPolicy{ClusterNetworkPolicy: x}
	})
}

// ClusterPolicy returns one ClusterNetworkPolicy, or nil.
func (s *State) ClusterPolicy(cluster, name string) *fedmeshv1.ClusterNetworkPolicy {
	return s.cnp[cluster][name].policy()
}

// ClusterPolicies lists ClusterNetworkPolicies sorted by owner (federated
// first), then name: with federated, only those; else those synced from
// cluster ("" for every source).
func (s *State) ClusterPolicies(source fedmeshv1.ClusterPolicySource, cluster string) []*fedmeshv1.ClusterNetworkPolicy {
	var out []*fedmeshv1.ClusterNetworkPolicy
	for _, owner := range sortedKeys(s.cnp) {
		switch {
		case source == fedmeshv1.ClusterPolicySource_CLUSTER_POLICY_SOURCE_FEDERATED && owner != "",
			source == fedmeshv1.ClusterPolicySource_CLUSTER_POLICY_SOURCE_SYNCED && owner == "",
			cluster != "" && owner != cluster:
			continue
		}
		for _, n := range sortedKeys(s.cnp[owner]) {
			out = append(out, s.cnp[owner][n].p)
		}
	}
	return out
}

// forEachClusterPolicy calls put for every ClusterNetworkPolicy until it
// returns false.
func (s *State) forEachClusterPolicy(put func(set func(e *fedmeshv1.Event)) bool) bool {
	for _, p := range s.ClusterPolicies(fedmeshv1.ClusterPolicySource_CLUSTER_POLICY_SOURCE_UNSPECIFIED, "") {
		if !put(func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_ClusterNetworkPolicy{ClusterNetworkPolicy: p} }) {
			return false
		}
	}
	return true
}

// write writes the ClusterNetworkPolicy records of a snapshot.
func (c cnpState) write(rw *recWriter) {
	for _, owner := range sortedKeys(c) {
		for _, n := range sortedKeys(c[owner]) {
			e := c[owner][n]
			rw.msg(recClusterPolicy, e.gen, true, e.p)
		}
	}
}

// read restores one record of a snapshot; false for a kind it does not
// own.
func (c cnpState) read(kind recKind, data []byte) (bool, error) {
	if kind != recClusterPolicy {
		return false, nil
	}
	p := &fedmeshv1.ClusterNetworkPolicy{}
	gen, err := unmarshalWithGen(data, p)
	if err != nil {
		return true, fmt.Errorf("read snapshot ClusterNetworkPolicy: %w", err)
	}
	inner(c, p.GetCluster())[p.GetName()] = &cnpEntry{p: p, gen: gen}
	return true, nil
}

// restoreIdentityRelevance counts, after a snapshot restore, the pod label
// keys the restored ClusterNetworkPolicies read.
func (c cnpState) restoreIdentityRelevance(ids *Identities) {
	for _, owner := range sortedKeys(c) {
		for _, n := range sortedKeys(c[owner]) {
			ids.rel.Select(netpolicy.ClusterPolicyPodLabelKeys(c[owner][n].p))
		}
	}
}

var _ proto.Message = (*fedmeshv1.ClusterNetworkPolicy)(nil)
