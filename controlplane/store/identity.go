package store

import (
	"fmt"
	"hash/maphash"
	"slices"
	"strings"

	"github.com/fedmesh/fedmesh/federation/identity"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Reserved identities: those of federation/identity, so the control plane
// and the dataplanes agree. Numbers below FirstAllocatedIdentity are never
// allocated to endpoints.
const (
	// IdentityUnknown is no identity (an address the federation does not know).
	IdentityUnknown uint32 = 0
	// IdentityHost is the local node.
	IdentityHost = identity.Host
	// IdentityWorld is any address outside the federation.
	IdentityWorld = identity.World
	// IdentityRemoteNode is another node of the federation.
	IdentityRemoteNode = identity.RemoteNode
	// FirstAllocatedIdentity is the first number given to an endpoint label set.
	FirstAllocatedIdentity = identity.MinAllocated
)

// identityFilter keeps every label: the syncer already dropped churn
// labels, and replicas must not depend on a filter that may change between
// versions.
var identityFilter = identity.NewFilter()

// LabelsOf returns the identity label set of an endpoint: its labels
// without reserved fedmesh.io/ keys, plus its cluster and namespace
// (identity.For), so a pod cannot claim another cluster's identity.
func LabelsOf(e *fedmeshv1.Endpoint) identity.Labels {
	return identity.For(e.GetCluster(), e.GetNamespace(), e.GetLabels(), identityFilter)
}

// Identities allocates numeric identities in one 32-bit space for the whole
// federation with federation/identity.Allocator (deterministic: numbers in
// log order from a cursor that only moves forward and wraps; reference
// counted), and keeps one label map per identity for its endpoints to
// share. Not safe for concurrent use: the FSM owns it.
//
// The allocator keys label sets by a canonical string and its SHA-256, which
// costs more than the rest of an endpoint upsert. Nearly every upserted
// endpoint carries a label set that already has an identity, so Identities
// answers that case from an in-memory fingerprint index (verified against
// the stored labels, so a collision only costs a lookup) and counts endpoint
// references itself: the allocator holds one reference per identity and is
// asked only to create and free numbers. The index is a cache — never
// persisted, rebuilt on demand — so it cannot make replicas disagree.
type Identities struct {
	a *identity.Allocator
	// next mirrors the allocator's cursor so Freeze need not copy every
	// entry (the allocator exposes it only through Snapshot).
	next uint32
	// labels is the stored label map of each identity's endpoints.
	labels map[uint32]map[string]string
	// refs counts the endpoints holding each identity.
	refs map[uint32]uint64
	// byFP indexes identities by fingerprint (see fingerprint); moreFP
	// holds further identities of a fingerprint already taken (collisions,
	// rare), so the common case costs one small map entry per identity.
	seed   maphash.Seed
	byFP   map[uint64]uint32
	moreFP map[uint64][]uint32
}

// NewIdentities returns an empty allocator.
func NewIdentities() *Identities {
	return newIdentities(identity.NewAllocator(), FirstAllocatedIdentity, map[uint32]map[string]string{}, map[uint32]uint64{})
}

func newIdentities(a *identity.Allocator, next uint32, labels map[uint32]map[string]string, refs map[uint32]uint64) *Identities {
	return &Identities{a: a, next: next, labels: labels, refs: refs, seed: maphash.MakeSeed(),
		byFP: map[uint64]uint32{}, moreFP: map[uint64][]uint32{}}
}

// identityLabel reports whether a pod label key counts for identity (see
// LabelsOf).
func identityLabel(k string) bool {
	return !strings.HasPrefix(k, identity.ReservedPrefix) && identityFilter.Keep(k)
}

// fingerprint hashes an identity label set given as its cluster, namespace
// and pod labels (keys that do not count are skipped), independently of the
// map's order.
func (a *Identities) fingerprint(cluster, namespace string, pod map[string]string) uint64 {
	pair := func(k, v string) uint64 {
		h := maphash.String(a.seed, k)
		return (h ^ maphash.String(a.seed, v)*0x9e3779b97f4a7c15) * 0xbf58476d1ce4e5b9
	}
	fp := pair(identity.LabelCluster, cluster) + pair(identity.LabelNamespace, namespace)
	for k, v := range pod {
		if identityLabel(k) {
			fp += pair(k, v)
		}
	}
	return fp
}

// match reports whether identity id stands for e's label set.
func (a *Identities) match(id uint32, e *fedmeshv1.Endpoint) bool {
	ls, ok := a.a.Lookup(id)
	if !ok {
		return false
	}
	if c, _ := ls.Get(identity.LabelCluster); c != e.GetCluster() {
		return false
	}
	if ns, _ := ls.Get(identity.LabelNamespace); ns != e.GetNamespace() {
		return false
	}
	stored := a.labels[id]
	n := 0
	for k, v := range e.GetLabels() {
		if !identityLabel(k) {
			continue
		}
		if sv, ok := stored[k]; !ok || sv != v {
			return false
		}
		n++
	}
	return n == len(stored)
}

// index records id under fp; id is not indexed yet (lookup indexes only
// what the index missed, and a label set has one fingerprint).
func (a *Identities) index(id uint32, fp uint64) {
	if _, taken := a.byFP[fp]; !taken {
		a.byFP[fp] = id
		return
	}
	a.moreFP[fp] = append(a.moreFP[fp], id)
}

// unindex forgets id, if indexed. Call it before the allocator releases id
// (its cluster and namespace come from there).
func (a *Identities) unindex(id uint32) {
	ls, ok := a.a.Lookup(id)
	if !ok {
		return
	}
	c, _ := ls.Get(identity.LabelCluster)
	ns, _ := ls.Get(identity.LabelNamespace)
	fp := a.fingerprint(c, ns, a.labels[id])
	more := a.moreFP[fp]
	if first, ok := a.byFP[fp]; ok && first == id {
		if len(more) == 0 {
			delete(a.byFP, fp)
			return
		}
		a.byFP[fp], more = more[0], more[1:]
	} else if i := slices.Index(more, id); i >= 0 {
		more = slices.Delete(more, i, i+1)
	}
	if len(more) == 0 {
		delete(a.moreFP, fp)
	} else {
		a.moreFP[fp] = more
	}
}

// lookup returns the identity of e's label set (e.Cluster set), if it has
// one: from the fingerprint index, else from the allocator (and indexes it).
func (a *Identities) lookup(e *fedmeshv1.Endpoint) (uint32, bool) {
	fp := a.fingerprint(e.GetCluster(), e.GetNamespace(), e.GetLabels())
	if id, ok := a.byFP[fp]; ok && a.match(id, e) {
		return id, true
	}
	for _, id := range a.moreFP[fp] {
		if a.match(id, e) {
			return id, true
		}
	}
	id, ok := a.a.LookupLabels(LabelsOf(e))
	if ok {
		a.index(id, fp)
	}
	return id, ok
}

// free is how many numbers are left to allocate.
func (a *Identities) free() uint64 {
	return uint64(identity.MaxAllocated-identity.MinAllocated) + 1 - uint64(a.a.Len())
}

// acquire returns the identity of e's label set (e.Cluster set),
// allocating one on first use, and takes a reference on it. The returned
// map is the identity's label map (shared by its endpoints). The caller has
// checked that a number is free.
//
// For a new identity, fresh gets the label set and returns the label map to
// store and the label set rebuilt over it, so the allocator's copy shares
// the map's (interned) strings instead of pinning the request's.
func (a *Identities) acquire(e *fedmeshv1.Endpoint, fresh func(identity.Labels) (map[string]string, identity.Labels)) (uint32, map[string]string, error) {
	if id, ok := a.lookup(e); ok {
		a.refs[id]++
		return id, a.labels[id], nil
	}
	labels, ls := fresh(LabelsOf(e))
	id, created, err := a.a.Acquire(ls)
	if err != nil {
		return 0, nil, err
	}
	if !created {
		// lookup just missed it: cannot happen while the allocator and
		// the index agree.
		panic(fmt.Sprintf("store: identity %d of %q exists but was not found", id, ls.String()))
	}
	a.labels[id] = labels
	a.refs[id] = 1
	a.index(id, a.fingerprint(e.GetCluster(), e.GetNamespace(), labels))
	a.next = id + 1
	if id == identity.MaxAllocated {
		a.next = identity.MinAllocated
	}
	return id, labels, nil
}

// Release drops one reference; the identity is freed with the last one.
func (a *Identities) Release(n uint32) {
	r, ok := a.refs[n]
	if !ok {
		return
	}
	if r > 1 {
		a.refs[n] = r - 1
		return
	}
	delete(a.refs, n)
	a.unindex(n)
	a.a.Release(n)
	delete(a.labels, n)
}

// Lookup returns the label set an identity stands for.
func (a *Identities) Lookup(n uint32) (identity.Labels, bool) { return a.a.Lookup(n) }

// Len is the number of identities in use.
func (a *Identities) Len() int { return a.a.Len() }

// identityRestorer rebuilds the allocator from a snapshot's endpoints.
type identityRestorer struct {
	entries map[uint32]*identity.Entry
	keys    map[uint32]string
	labels  map[uint32]map[string]string
}

func newIdentityRestorer() *identityRestorer {
	return &identityRestorer{entries: map[uint32]*identity.Entry{}, keys: map[uint32]string{}, labels: map[uint32]map[string]string{}}
}

// add counts e's reference and returns the label map to share.
func (r *identityRestorer) add(e *fedmeshv1.Endpoint) (map[string]string, error) {
	id := e.GetIdentity()
	ls := LabelsOf(e)
	if en := r.entries[id]; en != nil {
		if r.keys[id] != ls.String() {
			return nil, fmt.Errorf("endpoint %s/%s/%s has identity %d of another label set", e.GetCluster(), e.GetNamespace(), e.GetName(), id)
		}
		en.Refs++
		return r.labels[id], nil
	}
	r.entries[id] = &identity.Entry{ID: id, Labels: ls, Refs: 1}
	r.keys[id] = ls.String()
	r.labels[id] = e.GetLabels()
	return e.GetLabels(), nil
}

// finish builds the allocator with its cursor at next.
func (r *identityRestorer) finish(next uint32) (*Identities, error) {
	st := identity.State{Next: max(next, FirstAllocatedIdentity), Entries: make([]identity.Entry, 0, len(r.entries))}
	for _, id := range sortedKeys(r.entries) {
		st.Entries = append(st.Entries, *r.entries[id])
	}
	// The allocator holds one reference per identity; Identities counts
	// the endpoints.
	refs := make(map[uint32]uint64, len(st.Entries))
	for i := range st.Entries {
		refs[st.Entries[i].ID] = st.Entries[i].Refs
		st.Entries[i].Refs = 1
	}
	ids := newIdentities(identity.NewAllocator(), st.Next, r.labels, refs)
	if err := ids.a.Restore(st); err != nil {
		return nil, fmt.Errorf("restore identities (endpoints with reserved fedmesh.io/ labels under distinct identities? restore with the previous binary, remove those labels, then upgrade): %w", err)
	}
	return ids, nil
}
