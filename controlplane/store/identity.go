package store

import (
	"fmt"

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
type Identities struct {
	a *identity.Allocator
	// next mirrors the allocator's cursor so Freeze need not copy every
	// entry (the allocator exposes it only through Snapshot).
	next uint32
	// labels is the stored label map of each identity's endpoints.
	labels map[uint32]map[string]string
}

// NewIdentities returns an empty allocator.
func NewIdentities() *Identities {
	return &Identities{a: identity.NewAllocator(), next: FirstAllocatedIdentity, labels: map[uint32]map[string]string{}}
}

// free is how many numbers are left to allocate.
func (a *Identities) free() uint64 {
	return uint64(identity.MaxAllocated-identity.MinAllocated) + 1 - uint64(a.a.Len())
}

// acquire returns the identity of ls, allocating one on first use, and
// takes a reference on it. labels is the map to store for a new identity;
// the returned map is the identity's (shared by its endpoints). The caller
// has checked that a number is free.
//
// For a new identity, fresh returns the label map to store and the label
// set rebuilt over it, so the allocator's copy shares the map's (interned)
// strings instead of pinning the request's.
func (a *Identities) acquire(ls identity.Labels, fresh func() (map[string]string, identity.Labels)) (uint32, map[string]string, error) {
	if id, ok := a.a.LookupLabels(ls); ok {
		_, _, err := a.a.Acquire(ls)
		return id, a.labels[id], err
	}
	labels, ls := fresh()
	id, created, err := a.a.Acquire(ls)
	if err != nil {
		return 0, nil, err
	}
	if created {
		a.labels[id] = labels
		a.next = id + 1
		if id == identity.MaxAllocated {
			a.next = identity.MinAllocated
		}
	}
	return id, a.labels[id], nil
}

// Release drops one reference; the identity is freed with the last one.
func (a *Identities) Release(n uint32) {
	if a.a.Release(n) {
		delete(a.labels, n)
	}
}

// Lookup returns the label set an identity stands for.
func (a *Identities) Lookup(n uint32) (identity.Labels, bool) { return a.a.Lookup(n) }

// known reports whether ls has an identity.
func (a *Identities) known(ls identity.Labels) bool {
	_, ok := a.a.LookupLabels(ls)
	return ok
}

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
	ids := &Identities{a: identity.NewAllocator(), next: st.Next, labels: r.labels}
	if err := ids.a.Restore(st); err != nil {
		return nil, fmt.Errorf("restore identities (endpoints with reserved fedmesh.io/ labels under distinct identities? restore with the previous binary, remove those labels, then upgrade): %w", err)
	}
	return ids, nil
}
