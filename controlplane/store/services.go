package store

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/services"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Condition types and reasons the control plane sets on exports and imports
// (KEP-1645 names).
const (
	CondValid    = services.CondValid
	CondConflict = services.CondConflict

	ReasonExported             = "Exported"
	ReasonNamespaceNotExported = "NamespaceNotExported"
	ReasonNoConflicts          = services.ReasonNoConflicts
	ReasonTypeConflict         = services.ReasonTypeConflict
	ReasonPortConflict         = services.ReasonPortConflict
)

func (s *State) applyExportServices(tx *txn, req *fedmeshv1.ExportServicesRequest) (*Result, error) {
	cluster := req.GetCluster()
	ce := s.clusters[cluster]
	if ce == nil {
		return nil, clusterNotFound(field.NewPath("cluster"), cluster)
	}
	gk := genKey{owner: cluster, kind: genExports}
	stamp, err := s.checkGeneration(gk, req.GetResync())
	if err != nil {
		return nil, err
	}
	g := req.GetResync().GetGeneration()
	// The edge carries its clusterset CIDRs (log format 6): applied here,
	// in this export's revision, when they are new and fit; otherwise the
	// stored ones stay (the leader commits CmdConfigureServices, which
	// reports a misfit).
	if cidrs := req.GetClustersetCidrs(); len(cidrs) > 0 {
		if p, ok := s.clustersetFrom(cidrs); ok && !slices.Equal(p, s.clusterset) {
			s.clusterset = p
			for _, k := range sortedNsNames(s.imports) {
				s.recomputeImport(tx, k, nil)
			}
		}
	}
	xs := inner(s.exports, cluster)
	touched := map[nsName]bool{}
	for _, x := range req.GetExports() {
		key := nsName{x.GetNamespace(), x.GetName()}
		x.Cluster = cluster
		x.Conditions = nil
		var oldMeta *fedmeshv1.ObjectMeta
		if old := xs[key]; old != nil {
			oldMeta = old.x.GetMeta()
		}
		x.Meta = tx.meta(oldMeta)
		xs[key] = &exportEntry{x: x, gen: stamp}
		touched[key] = true
	}
	if g > s.gens[gk] {
		s.gens[gk] = g
	}
	var deleted uint32
	var gone []nsName
	if req.GetResync().GetFinal() {
		for _, k := range sortedNsNames(xs) {
			if xs[k].gen < g {
				tx.delExport(xs[k].x)
				delete(xs, k)
				gone = append(gone, k)
				deleted++
			}
		}
	}
	if len(xs) == 0 {
		delete(s.exports, cluster)
	}
	ce.lastSync = tx.time
	keys := append(sortedNsNames(touched), gone...)
	slices.SortFunc(keys, cmpNsName)
	for _, k := range keys {
		s.recomputeImport(tx, k, map[string]bool{cluster: touched[k]})
	}
	return &Result{Deleted: deleted}, nil
}

func (s *State) applyUnexportService(tx *txn, req *fedmeshv1.UnexportServiceRequest) (*Result, error) {
	key := nsName{req.GetNamespace(), req.GetName()}
	old := s.exports[req.GetCluster()][key]
	if old == nil {
		return nil, &NotFoundError{Kind: "service export", Key: req.GetCluster() + "/" + key.String()}
	}
	delete(s.exports[req.GetCluster()], key)
	if len(s.exports[req.GetCluster()]) == 0 {
		delete(s.exports, req.GetCluster())
	}
	tx.delExport(old.x)
	s.recomputeImport(tx, key, nil)
	return &Result{}, nil
}

// recomputeImport re-derives the import of key from the exports and
// publishes what changed: the import, and every export whose conditions
// changed or that this command wrote (fresh[cluster]).
func (s *State) recomputeImport(tx *txn, key nsName, fresh map[string]bool) {
	var exps []*fedmeshv1.ServiceExport
	for _, c := range sortedKeys(s.exports) {
		if e := s.exports[c][key]; e != nil {
			exps = append(exps, e.x)
		}
	}
	exported := func(cluster string) bool {
		ce := s.clusters[cluster]
		return ce != nil && model.InScope(ce.spec.GetExports(), key.ns)
	}
	imp, conds := DeriveImport(key.ns, key.name, exps, exported)

	for _, x := range exps {
		c := x.GetCluster()
		if fresh[c] {
			x.Conditions = conds[c]
			tx.putExport(x)
			continue
		}
		if conditionsEqual(x.GetConditions(), conds[c]) {
			continue
		}
		nx := proto.CloneOf(x)
		nx.Conditions = conds[c]
		nx.Meta = tx.meta(x.GetMeta())
		s.exports[c][key] = &exportEntry{x: nx, gen: s.exports[c][key].gen}
		tx.putExport(nx)
	}

	old := s.imports[key]
	if imp != nil {
		s.decorateImport(imp, old)
	}
	switch {
	case imp == nil && old != nil:
		delete(s.imports, key)
		tx.delImport(old)
	case imp != nil:
		if old != nil {
			imp.Meta = old.GetMeta()
			if proto.Equal(old, imp) {
				return
			}
		}
		imp.Meta = tx.meta(old.GetMeta())
		shareClusterBackends(imp, old)
		s.imports[key] = imp
		tx.putImport(imp)
	}
}

// shareClusterBackends makes imp hold old's entry for every cluster whose
// backends did not change. An import is re-derived whole when one cluster's
// export changes, and the event log keeps every version: with hundreds of
// clusters exporting a service, unshared copies of the others' backends
// were a quarter of a replica's heap under churn. Stored objects are never
// mutated, so sharing them is safe. Both lists are sorted by cluster.
func shareClusterBackends(imp, old *fedmeshv1.ServiceImport) {
	prev := old.GetClusters()
	j := 0
	for i, cb := range imp.GetClusters() {
		for j < len(prev) && prev[j].GetCluster() < cb.GetCluster() {
			j++
		}
		if j < len(prev) && prev[j].GetCluster() == cb.GetCluster() && proto.Equal(prev[j], cb) {
			imp.Clusters[i] = prev[j]
		}
	}
}

func conditionsEqual(a, b []*fedmeshv1.ServiceCondition) bool {
	return slices.EqualFunc(a, b, func(x, y *fedmeshv1.ServiceCondition) bool { return proto.Equal(x, y) })
}

func cond(t string, ok bool, reason, msg string) *fedmeshv1.ServiceCondition {
	st := "False"
	if ok {
		st = "True"
	}
	return &fedmeshv1.ServiceCondition{Type: t, Status: st, Reason: reason, Message: msg}
}

// DeriveImport aggregates the exports of one namespace/name and returns the
// import (nil when no export counts) and the conditions of every export, by
// cluster. An export whose namespace its cluster does not export is not
// Valid and does not count; the others are aggregated under the MCS
// (KEP-1645) conflict rules of federation/services, so the FSM and a syncer
// agree on them.
func DeriveImport(ns, name string, exps []*fedmeshv1.ServiceExport, exported func(cluster string) bool) (*fedmeshv1.ServiceImport, map[string][]*fedmeshv1.ServiceCondition) {
	conds := map[string][]*fedmeshv1.ServiceCondition{}
	var eligible []*fedmeshv1.ServiceExport
	for _, x := range exps {
		c := x.GetCluster()
		if !exported(c) {
			conds[c] = []*fedmeshv1.ServiceCondition{
				cond(CondValid, false, ReasonNamespaceNotExported, fmt.Sprintf("cluster %q does not export namespace %q", c, ns)),
			}
			continue
		}
		eligible = append(eligible, x)
	}
	agg := services.Aggregate(eligible)
	for _, x := range eligible {
		c := x.GetCluster()
		conds[c] = []*fedmeshv1.ServiceCondition{cond(CondValid, true, ReasonExported, ""), agg.Conflicts[c]}
	}
	return agg.Import, conds
}
