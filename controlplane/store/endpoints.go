package store

import (
	"fmt"
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// checkGeneration rejects a resync generation below the owner's current one
// and returns the generation to stamp written objects with: the batch's, or
// for an incremental write the current one, so a resync in progress does not
// delete what was written during it.
func (s *State) checkGeneration(gk genKey, r *fedmeshv1.ResyncMarker) (uint64, error) {
	cur := s.gens[gk]
	g := r.GetGeneration()
	if g == 0 {
		return cur, nil
	}
	if g < cur {
		return 0, model.AsError(field.ErrorList{field.Invalid(field.NewPath("resync", "generation"), g,
			fmt.Sprintf("must not decrease: the owner is at generation %d; start a new resync with a higher one", cur))})
	}
	return g, nil
}

// applyUpsertEndpoints applies an entry of the format before 3: its
// endpoints are stored as the binaries that wrote it stored them (see
// Identities).
func (s *State) applyUpsertEndpoints(tx *txn, req *fedmeshv1.UpsertEndpointsRequest) (*Result, error) {
	for _, e := range req.GetEndpoints() {
		e.Labels = withoutReserved(e.GetLabels())
	}
	return s.upsertEndpoints(tx, req, true)
}

// applyUpsertEndpointsFull stores endpoints with every label of their pod.
func (s *State) applyUpsertEndpointsFull(tx *txn, req *fedmeshv1.UpsertEndpointsRequest) (*Result, error) {
	return s.upsertEndpoints(tx, req, false)
}

func (s *State) upsertEndpoints(tx *txn, req *fedmeshv1.UpsertEndpointsRequest, legacy bool) (*Result, error) {
	// The edge ran model.ValidateUpsertEndpoints (field syntax, duplicates
	// in the batch). Here, on every replica, only what depends on the state
	// is checked: it is the hot path, and syntax rules that change between
	// versions must not make replicas of different versions disagree.
	cluster := req.GetCluster()
	ce := s.clusters[cluster]
	if ce == nil {
		return nil, clusterNotFound(field.NewPath("cluster"), cluster)
	}
	if err := ce.checkAddrs(req); err != nil {
		return nil, err
	}
	gk := genKey{owner: cluster, kind: genEndpoints}
	stamp, err := s.checkGeneration(gk, req.GetResync())
	if err != nil {
		return nil, err
	}
	g := req.GetResync().GetGeneration()
	inBatch := make(map[nsName]bool, len(req.GetEndpoints()))
	for _, e := range req.GetEndpoints() {
		inBatch[nsName{e.GetNamespace(), e.GetName()}] = true
	}
	// An address may belong to one endpoint only. An owner rewritten by this
	// batch gives it up; an owner left over from an older resync generation
	// is a dead pod whose address Kubernetes reused, and is evicted now
	// rather than by the final batch.
	var errs field.ErrorList
	evict := map[epRef]bool{}
	for i, e := range req.GetEndpoints() {
		key := nsName{e.GetNamespace(), e.GetName()}
		for j, ip := range e.GetIps() {
			a, _ := netip.ParseAddr(ip)
			oe := s.ipOwner.get(a)
			if oe == nil {
				continue
			}
			owner := oe.ref()
			if owner.cluster == cluster && (owner.key == key || inBatch[owner.key]) {
				continue
			}
			if g > 0 && owner.cluster == cluster && oe.gen < g {
				evict[owner] = true
				continue
			}
			errs = append(errs, field.Invalid(field.NewPath("endpoints").Index(i).Child("ips").Index(j), ip,
				fmt.Sprintf("already used by endpoint %s/%s of cluster %q", owner.key.ns, owner.key.name, owner.cluster)))
		}
	}
	// Whether the identity space has room for the new label sets (counted
	// only when it could matter: encoding sets is not free).
	for _, e := range req.GetEndpoints() {
		e.Cluster = cluster
	}
	fresh := map[string]bool{}
	if s.ids.free() < uint64(len(req.GetEndpoints())) {
		for _, e := range req.GetEndpoints() {
			if !s.ids.known(e, legacy) {
				fresh[s.ids.key(e, legacy).String()] = true
			}
		}
	}
	if uint64(len(fresh)) > s.ids.free() {
		errs = append(errs, field.Forbidden(field.NewPath("endpoints"),
			fmt.Sprintf("the identity space is exhausted (%d free, %d new label sets): delete endpoints or reduce label variety", s.ids.free(), len(fresh))))
	}
	if len(errs) > 0 {
		return nil, model.AsError(errs)
	}

	// Validated: from here on nothing fails.
	refs := make([]epRef, 0, len(evict))
	for r := range evict {
		refs = append(refs, r)
	}
	slices.SortFunc(refs, func(a, b epRef) int { return cmpNsName(a.key, b.key) })
	for _, r := range refs {
		s.deleteEndpoint(tx, r)
	}
	eps := inner(s.endpoints, cluster)
	for _, e := range req.GetEndpoints() {
		key := nsName{e.GetNamespace(), e.GetName()}
		// Every label is stored; the identity counts those that matter
		// (Identities). Endpoints with equal labels share one map.
		sl := s.ids.shared.share(e.GetLabels(), s.internString)
		e.Labels = sl.m
		if e.NamespaceLabels != nil {
			// Every pod of a namespace carries its labels.
			e.NamespaceLabels = s.ids.shared.share(e.GetNamespaceLabels(), s.internString).m
		}
		id, err := s.ids.acquire(cluster, e.GetNamespace(), sl, legacy)
		if err != nil {
			// Checked above: the state would now be half-applied.
			panic(fmt.Sprintf("store: acquire identity after the free-space check: %v", err))
		}
		old := eps[key]
		if old != nil {
			s.ids.Release(old.ep.GetIdentity())
			s.dropAddrs(old)
		}
		e.Identity = id
		e.Meta = tx.meta(old.epMeta())
		en := &epEntry{ep: e, gen: stamp, legacy: legacy}
		eps[key] = en
		s.ownAddrs(en)
		tx.putEndpoint(e)
	}
	var deleted uint32
	if g > s.gens[gk] {
		s.gens[gk] = g
	}
	if req.GetResync().GetFinal() {
		for _, k := range sortedNsNames(eps) {
			if eps[k].gen < g {
				s.deleteEndpoint(tx, epRef{cluster, k})
				deleted++
			}
		}
		ce.resyncGen = g
	}
	if len(eps) == 0 {
		delete(s.endpoints, cluster)
	}
	ce.lastSync = tx.time
	return &Result{Deleted: deleted}, nil
}

// checkAddrs rejects addresses outside the cluster's current pod CIDRs. The
// edge checked their syntax; one that does not parse (no entry validated
// at the edge holds one) lies inside no CIDR.
func (ce *clusterEntry) checkAddrs(req *fedmeshv1.UpsertEndpointsRequest) error {
	var errs field.ErrorList
	for i, e := range req.GetEndpoints() {
		for j, ip := range e.GetIps() {
			a, _ := netip.ParseAddr(ip)
			if !slices.ContainsFunc(ce.podCIDRs(), func(c netip.Prefix) bool { return c.Contains(a) }) {
				p := field.NewPath("endpoints").Index(i).Child("ips").Index(j)
				errs = append(errs, field.Invalid(p, ip, ce.outside(a)))
			}
		}
	}
	return model.AsError(errs)
}

func (e *epEntry) epMeta() *fedmeshv1.ObjectMeta {
	if e == nil {
		return nil
	}
	return e.ep.GetMeta()
}

// dropAddrs forgets the addresses e owned.
func (s *State) dropAddrs(e *epEntry) {
	for _, ip := range e.ep.GetIps() {
		a, _ := netip.ParseAddr(ip)
		if s.ipOwner.get(a) == e {
			s.ipOwner.delete(a)
		}
	}
}

// ownAddrs records e as the owner of its addresses (the edge validated
// them; one that does not parse is owned by no one).
func (s *State) ownAddrs(e *epEntry) {
	for _, ip := range e.ep.GetIps() {
		if a, err := netip.ParseAddr(ip); err == nil {
			s.ipOwner.set(a, e)
		}
	}
}

// deleteEndpoint removes one endpoint, its addresses and its identity
// reference. The caller removes an emptied per-cluster map if it wants to.
func (s *State) deleteEndpoint(tx *txn, r epRef) {
	e := s.endpoints[r.cluster][r.key]
	if e == nil {
		return
	}
	s.ids.Release(e.ep.GetIdentity())
	s.dropAddrs(e)
	delete(s.endpoints[r.cluster], r.key)
	tx.delEndpoint(e.ep)
}

func (s *State) applyDeleteEndpoints(tx *txn, req *fedmeshv1.DeleteEndpointsRequest) (*Result, error) {
	cluster := req.GetCluster()
	for _, k := range req.GetKeys() {
		s.deleteEndpoint(tx, epRef{cluster, nsName{k.GetNamespace(), k.GetName()}})
	}
	if len(s.endpoints[cluster]) == 0 {
		delete(s.endpoints, cluster)
	}
	if ce := s.clusters[cluster]; ce != nil {
		ce.lastSync = tx.time
	}
	return &Result{}, nil
}
