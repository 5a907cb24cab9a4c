package store

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// NotFoundError is a command or read naming an object that does not exist.
type NotFoundError struct {
	Kind string
	Key  string
}

func (e *NotFoundError) Error() string { return fmt.Sprintf("%s %q not found", e.Kind, e.Key) }

// GRPCStatus maps the error to NotFound.
func (e *NotFoundError) GRPCStatus() *status.Status { return status.New(codes.NotFound, e.Error()) }

// nsName keys objects inside one owner.
type nsName struct{ ns, name string }

func (k nsName) String() string { return k.ns + "/" + k.name }

func cmpNsName(a, b nsName) int {
	if c := cmp.Compare(a.ns, b.ns); c != 0 {
		return c
	}
	return cmp.Compare(a.name, b.name)
}

// resource kinds a resync generation is tracked for.
type genKind uint8

const (
	genEndpoints genKind = iota + 1
	genExports
	genPolicies
)

type genKey struct {
	owner string // cluster; "" for federated policies
	kind  genKind
}

type clusterEntry struct {
	spec      *fedmeshv1.Cluster // status: only liveness (clusterset.go); the rest is computed on read
	pods      []netip.Prefix     // parsed spec.PodCidrs, filled on first use
	resyncGen uint64             // last completed endpoint resync
	lastSync  int64              // command time of the last syncer write
}

func (ce *clusterEntry) podCIDRs() []netip.Prefix {
	if ce.pods == nil {
		ce.pods = []netip.Prefix{}
		for _, c := range ce.spec.GetPodCidrs() {
			if p, err := netip.ParsePrefix(c); err == nil {
				ce.pods = append(ce.pods, p)
			}
		}
	}
	return ce.pods
}

type epEntry struct {
	ep  *fedmeshv1.Endpoint
	gen uint64
	// legacy: written by CmdUpsertEndpoints (see Identities).
	legacy bool
}

type exportEntry struct {
	x   *fedmeshv1.ServiceExport
	gen uint64
}

type policyEntry struct {
	p   *fedmeshv1.Policy
	gen uint64
}

// State is the federation as of one revision. Stored protos are never
// mutated once stored (a change stores a new object), so readers may hold
// them after releasing the FSM's lock. Not safe for concurrent use.
type State struct {
	rev       uint64
	clusters  map[string]*clusterEntry
	nodes     map[string]map[string]*fedmeshv1.Node // cluster -> name
	endpoints map[string]map[nsName]*epEntry        // cluster -> ns/name
	// ipOwner is the endpoint owning each address: its entry, not an
	// epRef, because at millions of endpoints a (cluster, ns, name) value
	// per address is 40 bytes more per endpoint than a pointer.
	ipOwner  addrIndex
	exports  map[string]map[nsName]*exportEntry // cluster -> ns/name
	imports  map[nsName]*fedmeshv1.ServiceImport
	policies map[string]map[nsName]*policyEntry // owner cluster ("" federated) -> ns/name
	gens     map[genKey]uint64
	ids      *Identities
	members  map[string]*fedmeshv1.Member
	// usedTokens are consumed join tokens by id, with their expiry (Unix
	// nanoseconds).
	usedTokens map[[16]byte]int64
	log        *EventLog
	audit      *AuditLog
	bgp        bgpState
	cnp        cnpState    // ClusterNetworkPolicies (clusterpolicies.go)
	adverts    advertState // svcadverts.go
	staged     stagedState // staged.go
	// clusterset are the CIDRs ClusterSetIPs come from (log format 6).
	clusterset []netip.Prefix
	// reported is when each node last reported its status (command time).
	// Only the leader's liveness judgement reads it; it is not part of
	// snapshots (after a restore a node's time is unknown until it reports
	// again, which the judgement allows for).
	reported map[string]map[string]int64
	// frozenEps are the endpoints of a Frozen copy, by cluster, unsorted
	// (endpoints is nil there): a slice of entries is 8 bytes per endpoint
	// where a copy of the maps was ~100, a quarter of a 3M-endpoint
	// replica's heap again for the length of every snapshot.
	frozenEps map[string][]*epEntry
	// intern deduplicates label strings of new identities. Only memory
	// depends on it, so it may be dropped at any time (see internString).
	intern map[string]string
}

type epRef struct {
	cluster string
	key     nsName
}

// ref is where e is stored.
func (e *epEntry) ref() epRef {
	return epRef{e.ep.GetCluster(), nsName{e.ep.GetNamespace(), e.ep.GetName()}}
}

// NewState returns an empty state whose event log holds about logSize events.
func NewState(logSize int) *State {
	return &State{
		clusters:   map[string]*clusterEntry{},
		nodes:      map[string]map[string]*fedmeshv1.Node{},
		endpoints:  map[string]map[nsName]*epEntry{},
		ipOwner:    newAddrIndex(),
		exports:    map[string]map[nsName]*exportEntry{},
		imports:    map[nsName]*fedmeshv1.ServiceImport{},
		policies:   map[string]map[nsName]*policyEntry{},
		gens:       map[genKey]uint64{},
		ids:        NewIdentities(),
		members:    map[string]*fedmeshv1.Member{},
		usedTokens: map[[16]byte]int64{},
		log:        NewEventLog(logSize, 0),
		audit:      &AuditLog{},
		bgp:        newBGPState(),
		cnp:        cnpState{},
		adverts:    newAdvertState(),
		staged:     stagedState{},
		intern:     map[string]string{},
		reported:   map[string]map[string]int64{},
	}
}

// internString returns the stored copy of v. The table is dropped when it
// outgrows the live identities, so label values of departed pods do not
// pile up.
func (s *State) internString(v string) string {
	if x, ok := s.intern[v]; ok {
		return x
	}
	if len(s.intern) >= max(1<<16, 32*s.ids.Len()) {
		s.intern = map[string]string{}
	}
	s.intern[v] = v
	return v
}

// Revision is the revision of the last applied change.
func (s *State) Revision() uint64 { return s.rev }

// Log is the event log watchers read.
func (s *State) Log() *EventLog { return s.log }

// Identities is the identity allocator (read-only for callers).
func (s *State) Identities() *Identities { return s.ids }

// Apply applies one command. A rejected command (Result.Err set) changes
// nothing, not even the revision.
func (s *State) Apply(c Command) *Result {
	h, ok := handlers[c.Type]
	if !ok {
		return &Result{Revision: s.rev, Err: fmt.Errorf("apply command %d: %w", c.Type, ErrUnknownCommand)}
	}
	tx := &txn{rev: s.rev + 1, time: c.Time, audited: c.Audited, principal: c.Principal}
	if h.internal {
		tx.rev = s.rev
	}
	res, err := h.apply(s, tx, c.Payload)
	if err != nil {
		return &Result{Revision: s.rev, Err: err}
	}
	if !h.internal {
		s.rev = tx.rev
		s.log.Append(Batch{Revision: tx.rev, Events: tx.events})
		if c.Audited {
			s.recordAudit(c, tx, res)
		}
	}
	res.Revision = s.rev
	return res
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func sortedNsNames[V any](m map[nsName]V) []nsName {
	ks := make([]nsName, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, cmpNsName)
	return ks
}

func inner[K comparable, V any](m map[string]map[K]V, owner string) map[K]V {
	in, ok := m[owner]
	if !ok {
		in = map[K]V{}
		m[owner] = in
	}
	return in
}
