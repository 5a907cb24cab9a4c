package store

import (
	"cmp"
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"strings"

	"github.com/fedmesh/fedmesh/federation/identity"
	netpolicy "github.com/fedmesh/fedmesh/federation/policy"
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

// Identities is the FSM's side of federation/identity. Endpoints are stored
// with every label of their pod; what their identity stands for is derived
// here, in log order:
//
//   - the allocator gives each identity.Key a number and counts the
//     endpoints holding it (the one reference count);
//   - the relevance says which label keys count: the default filter's, plus
//     each filtered key some stored policy selects on (PodLabelKeys of
//     federation/policy). It is derived from the stored policies, so
//     snapshots need not carry it;
//   - when a command changes which keys count, rekey moves the endpoints
//     carrying them to the identities of their new Keys in the same
//     revision (identity.Allocator.Rekey; the package doc of
//     federation/identity says which number each Key keeps).
//
// Legacy endpoints. Binaries before log format 3 stored an endpoint without
// its fedmesh.io/ labels and counted every other label it was given for
// identity (their syncers dropped the churn labels first). Entries of that
// format (CmdUpsertEndpoints) are applied the same way, so replicas of two
// versions agree during a rolling upgrade and an old log replays to the
// same state: their endpoints are legacy (epEntry.legacy, kept by
// snapshots), their Key holds every stored label and does not depend on
// the relevance. A replica writes that format until every replica applies
// format 3; a legacy endpoint becomes a full one when its syncer writes it
// again.
//
// Not safe for concurrent use: the FSM owns it.
type Identities struct {
	a   *identity.Allocator
	rel *identity.Relevance
	// changed are the filtered keys that started or stopped counting in
	// the command being applied; rekeyIdentities settles them.
	changed map[string]bool
	// epoch counts changes of which keys count, so cached label subsets
	// derived under an older relevance are recomputed.
	epoch uint64
	// shared lets endpoints with equal labels share one map (a cache: only
	// memory and speed depend on it).
	shared labelMaps
}

// NewIdentities returns an empty allocator under the default filter.
func NewIdentities() *Identities {
	return &Identities{a: identity.NewAllocator(), rel: identity.NewRelevance(nil), shared: newLabelMaps()}
}

// key is the identity Key of e (e.Cluster set), a legacy endpoint or not.
func (a *Identities) key(e *fedmeshv1.Endpoint, legacy bool) identity.Key {
	if legacy {
		return identity.Key{Cluster: e.GetCluster(), Namespace: e.GetNamespace(), Labels: identity.New(e.GetLabels())}
	}
	return a.rel.Key(e.GetCluster(), e.GetNamespace(), e.GetLabels())
}

// keyOf is the identity Key of a stored endpoint.
func (a *Identities) keyOf(e *epEntry) identity.Key { return a.key(e.ep, e.legacy) }

// known reports whether e's Key has an identity.
func (a *Identities) known(e *fedmeshv1.Endpoint, legacy bool) bool {
	_, ok := a.a.LookupKey(a.key(e, legacy))
	return ok
}

// withoutReserved returns labels without fedmesh.io/ keys: what binaries
// before log format 3 stored (labels itself when it has none).
func withoutReserved(labels map[string]string) map[string]string {
	n := 0
	for k := range labels {
		if strings.HasPrefix(k, identity.ReservedPrefix) {
			n++
		}
	}
	if n == 0 {
		return labels
	}
	out := make(map[string]string, len(labels)-n)
	for k, v := range labels {
		if !strings.HasPrefix(k, identity.ReservedPrefix) {
			out[k] = v
		}
	}
	return out
}

// free is how many numbers are left to allocate.
func (a *Identities) free() uint64 { return a.a.Free() }

// acquire returns the identity of the labels sl of an endpoint of cluster
// and namespace, allocating one on first use, and takes a reference on it.
// The caller has checked that a number is free.
//
// Nearly every upserted endpoint carries labels that other endpoints
// already have: the labels that count, and the identity they last had, are
// remembered with the shared map, so the common case neither filters nor
// hashes the labels.
func (a *Identities) acquire(cluster, namespace string, sl *sharedLabels, legacy bool) (uint32, error) {
	var counted identity.Labels
	if legacy {
		if sl.all == nil {
			sl.all = identity.New(sl.m)
		}
		counted = sl.all
	} else {
		if sl.epoch != a.epoch || sl.counted == nil {
			sl.counted = a.rel.Key("", "", sl.m).Labels
			sl.epoch = a.epoch
		}
		counted = sl.counted
	}
	k := identity.Key{Cluster: cluster, Namespace: namespace, Labels: counted}
	id, _, err := a.a.AcquireHinted(k, sl.hint)
	sl.hint = id
	return id, err
}

// Release drops one reference; the identity is freed with the last one.
func (a *Identities) Release(n uint32) { a.a.Release(n) }

// Lookup returns the Key an identity stands for.
func (a *Identities) Lookup(n uint32) (identity.Key, bool) { return a.a.Lookup(n) }

// Len is the number of identities in use.
func (a *Identities) Len() int { return a.a.Len() }

// Relevant returns, sorted, the filtered label keys that count for
// identity because a stored policy selects on them.
func (a *Identities) Relevant() []string { return a.rel.Selected() }

// frozen is a copy holding only the cursor, which is all a snapshot
// records of the allocator (identities are rebuilt from the endpoints).
func (a *Identities) frozen() *Identities {
	c := identity.NewAllocator()
	if err := c.Restore(identity.State{Next: a.a.Next()}); err != nil {
		panic(fmt.Sprintf("store: freeze identity cursor: %v", err))
	}
	return &Identities{a: c}
}

// policyStored records that old (nil: none) was replaced by p (nil:
// deleted): the keys their selectors read start or stop counting.
func (a *Identities) policyStored(old, p *fedmeshv1.Policy) {
	for _, k := range a.rel.Select(netpolicy.PodLabelKeys(p)) {
		a.markChanged(k)
	}
	if old != nil {
		for _, k := range a.rel.Unselect(netpolicy.PodLabelKeys(old)) {
			a.markChanged(k)
		}
	}
}

func (a *Identities) markChanged(k string) {
	if a.changed == nil {
		a.changed = map[string]bool{}
	}
	a.epoch++
	a.changed[k] = !a.changed[k]
	if !a.changed[k] {
		// Started and stopped within one command: nothing to do.
		delete(a.changed, k)
	}
}

// rekeyIdentities moves the endpoints whose Key changed with the keys that
// started or stopped counting in this command to their new identities, and
// emits each changed endpoint. Every policy write calls it last, so the
// split or merge lands in the revision of the policy that caused it.
func (s *State) rekeyIdentities(tx *txn) {
	changed := s.ids.changed
	s.ids.changed = nil
	if len(changed) == 0 {
		return
	}
	// Only full endpoints' Keys depend on the relevance.
	carries := func(e *epEntry) bool {
		if e.legacy {
			return false
		}
		labels := e.ep.GetLabels()
		for k := range changed {
			if _, ok := labels[k]; ok {
				return true
			}
		}
		return false
	}
	// Every endpoint of an identity moves together (Rekey needs each
	// identity's holders whole, legacy ones too), so collect the
	// identities first.
	affected := map[uint32]bool{}
	for _, eps := range s.endpoints {
		for _, e := range eps {
			if carries(e) {
				affected[e.ep.GetIdentity()] = true
			}
		}
	}
	if len(affected) == 0 {
		return
	}
	var refs []epRef
	for c, eps := range s.endpoints {
		for k, e := range eps {
			if affected[e.ep.GetIdentity()] {
				refs = append(refs, epRef{c, k})
			}
		}
	}
	slices.SortFunc(refs, cmpEpRef)
	holders := make([]identity.Holder, len(refs))
	for i, r := range refs {
		e := s.endpoints[r.cluster][r.key]
		holders[i] = identity.Holder{ID: e.ep.GetIdentity(), Key: s.ids.keyOf(e)}
	}
	ids, err := s.ids.a.Rekey(holders)
	if err != nil {
		// Rekey fails only on a partial holder list (a bug) or when more
		// Keys than numbers exist, and there is at most one Key per
		// endpoint: the state would diverge from the log.
		panic(fmt.Sprintf("store: rekey identities for label keys %v: %v", sortedKeys(changed), err))
	}
	for i, r := range refs {
		old := s.endpoints[r.cluster][r.key]
		if ids[i] == old.ep.GetIdentity() {
			continue
		}
		// A new object: stored ones are immutable (readers and frozen
		// snapshots hold them).
		e := withIdentity(old.ep, ids[i], tx.meta(old.ep.GetMeta()))
		en := &epEntry{ep: e, gen: old.gen, legacy: old.legacy}
		s.endpoints[r.cluster][r.key] = en
		s.dropAddrs(old)
		s.ownAddrs(en)
		tx.putEndpoint(e)
	}
}

func cmpEpRef(a, b epRef) int {
	if c := cmp.Compare(a.cluster, b.cluster); c != 0 {
		return c
	}
	return cmpNsName(a.key, b.key)
}

// withIdentity returns e with another identity and meta, sharing every
// other field with e (stored endpoints are never mutated).
// TestWithIdentityCopiesEveryField fails when Endpoint gains a field this
// does not copy.
func withIdentity(e *fedmeshv1.Endpoint, id uint32, meta *fedmeshv1.ObjectMeta) *fedmeshv1.Endpoint {
	return &fedmeshv1.Endpoint{
		Cluster:         e.GetCluster(),
		Namespace:       e.GetNamespace(),
		Name:            e.GetName(),
		Ips:             e.GetIps(),
		Labels:          e.GetLabels(),
		NamespaceLabels: e.GetNamespaceLabels(),
		NamedPorts:      e.GetNamedPorts(),
		Node:            e.GetNode(),
		Identity:        id,
		Meta:            meta,
	}
}

// labelMaps lets endpoints with equal labels share one map: the pods of a
// workload (of one rollout) carry equal labels, and a map per endpoint
// would be a good part of the FSM's memory. Maps are found by a
// fingerprint and compared, so a collision only costs sharing. Never
// persisted and dropped whole when it outgrows its bound, so it cannot make
// replicas disagree.
type labelMaps struct {
	seed maphash.Seed
	m    map[uint64]*sharedLabels
}

// sharedLabels is one shared label map with what Identities.acquire
// remembers about it.
type sharedLabels struct {
	m map[string]string
	// counted are the labels that count for identity, as of epoch (nil:
	// not derived yet); all are all of them, for legacy endpoints.
	counted, all identity.Labels
	epoch        uint64
	// hint is the identity these labels last got (in some cluster and
	// namespace); the allocator checks it.
	hint uint32
}

// maxSharedLabelMaps bounds labelMaps: distinct label sets (one per
// StatefulSet pod, say) beyond it are not shared until the next reset.
const maxSharedLabelMaps = 1 << 17

func newLabelMaps() labelMaps {
	return labelMaps{seed: maphash.MakeSeed(), m: map[uint64]*sharedLabels{}}
}

// share returns the stored entry of a map equal to m, or stores copy(m)
// (its strings through intern) and returns that.
func (c *labelMaps) share(m map[string]string, intern func(string) string) *sharedLabels {
	var fp uint64
	for k, v := range m {
		h := maphash.String(c.seed, k)
		fp += (h ^ maphash.String(c.seed, v)*0x9e3779b97f4a7c15) * 0xbf58476d1ce4e5b9
	}
	if x, ok := c.m[fp]; ok && maps.Equal(x.m, m) {
		return x
	}
	if len(c.m) >= maxSharedLabelMaps {
		c.m = map[uint64]*sharedLabels{}
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[intern(k)] = intern(v)
	}
	sl := &sharedLabels{m: out}
	c.m[fp] = sl
	return sl
}

// identityRestorer rebuilds the identities from a snapshot: the numbers
// its endpoints carry, checked against their Keys under the relevance of
// the snapshot's policies (read after the endpoints).
type identityRestorer struct {
	eps []*epEntry
}

func newIdentityRestorer() *identityRestorer { return &identityRestorer{} }

// add records e (its labels are shared later, in finish).
func (r *identityRestorer) add(e *epEntry) { r.eps = append(r.eps, e) }

// finish builds s's identities with the cursor at next, once every
// endpoint and policy of the snapshot is in s. A snapshot this binary
// wrote keeps every number; one whose numbers disagree with the Keys (an
// older binary counted other labels) is regrouped deterministically
// (identity.Allocator.Rebuild), each changed endpoint restored with its
// new number.
func (r *identityRestorer) finish(s *State, next uint32) error {
	ids := NewIdentities()
	for _, owner := range sortedKeys(s.policies) {
		for _, k := range sortedNsNames(s.policies[owner]) {
			ids.rel.Select(netpolicy.PodLabelKeys(s.policies[owner][k].p))
		}
	}
	s.cnp.restoreIdentityRelevance(ids)
	holders := make([]identity.Holder, len(r.eps))
	for i, e := range r.eps {
		e.ep.Labels = ids.shared.share(e.ep.GetLabels(), s.internString).m
		if e.ep.NamespaceLabels != nil {
			e.ep.NamespaceLabels = ids.shared.share(e.ep.GetNamespaceLabels(), s.internString).m
		}
		holders[i] = identity.Holder{ID: e.ep.GetIdentity(), Key: ids.keyOf(e)}
	}
	got, err := ids.a.Rebuild(max(next, FirstAllocatedIdentity), holders)
	if err != nil {
		return fmt.Errorf("restore identities: %w", err)
	}
	for i, e := range r.eps {
		e.ep.Identity = got[i]
	}
	s.ids = ids
	return nil
}

// policy is the stored policy, nil for no entry.
func (e *policyEntry) policy() *fedmeshv1.Policy {
	if e == nil {
		return nil
	}
	return e.p
}

// fullEndpoints reports whether some endpoint is not legacy (the snapshot
// then needs version 4).
func (s *State) fullEndpoints() bool {
	for _, eps := range s.endpoints {
		for _, e := range eps {
			if !e.legacy {
				return true
			}
		}
	}
	for _, eps := range s.frozenEps {
		for _, e := range eps {
			if !e.legacy {
				return true
			}
		}
	}
	return false
}
