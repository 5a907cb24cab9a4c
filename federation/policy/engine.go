package policy

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Engine holds the federation's clusters, endpoints and policies, compiles
// the rules of local endpoints incrementally, and explains verdicts.
//
// Callers: the node agent's sync loop (local endpoints are those of its
// node) and the control plane's Reach handler (via the FSM's apply loop,
// with no local endpoints or all of them). An Engine is NOT safe for
// concurrent use: its owner mutates and reads it from one goroutine (the
// agent's sync loop, or the control plane's store goroutine) and hands
// EndpointRules values (which it never mutates afterwards) to others.
// Methods never block and do no I/O.
//
// Mutations (Upsert*/Delete*) only update the indexes and record which
// endpoints may have changed; Recompute compiles those that are local and
// returns the ones whose rules actually changed. Selectors match an
// endpoint's full label set (every pod label, as Kubernetes does).
// Endpoints are assumed to be validated by the API edge and their
// identities assigned by the control plane, which makes every two endpoints
// of one identity alike for every selector of every stored policy: same
// cluster, same namespace, equal values for every label key a policy
// selects on (federation/identity, PodLabelKeys). Every endpoint of a
// namespace carries the same namespace labels. Otherwise identity-level
// rules may allow a pod that Explain, looking at the pod, would not.
type Engine struct {
	local func(*fedmeshv1.Endpoint) bool

	clusters  map[string]labels.Set
	endpoints map[EndpointKey]*endpoint
	byIP      map[netip.Addr]*endpoint
	policies  map[PolicyKey]*policyState
	order     []*policyState // policies sorted by key; nil when stale

	groups            map[string]*group
	groupsByCluster   map[string]map[*group]struct{}
	groupsByClusterNS map[clusterNS]map[*group]struct{}
	groupsByNS        map[string]map[*group]struct{}
	groupsByIdentity  map[uint32]map[*group]struct{}

	// Policy indexes by the scope of pods they select.
	polByClusterNS map[clusterNS]map[*policyState]struct{} // Kubernetes
	polFedByNS     map[string]map[*policyState]struct{}    // federated, namespaced
	polFedGlobal   map[*policyState]struct{}               // federated, global
	polGlobal      map[*policyState]struct{}               // depend on every endpoint

	// Peer indexes by the scope of pods they can match.
	peersByClusterNS map[clusterNS]map[*peer]struct{} // Kubernetes, no namespaceSelector
	peersByCluster   map[string]map[*peer]struct{}    // Kubernetes, namespaceSelector
	peersFedByNS     map[string]map[*peer]struct{}    // federated namespaced, no namespaceSelector
	peersGlobal      map[*peer]struct{}               // the rest

	// tiers holds the ClusterNetworkPolicies (Admin and Baseline tiers)
	// around the NetworkPolicy layer; the engine owns it so one Updater
	// carries every policy kind to one compiler.
	tiers *Tiers
	// tierPeers caches the groups each namespaces/pods peer of a tier
	// policy matches; an entry goes when a matching group changes.
	tierPeers map[*tierPeer][]*group

	dirty map[EndpointKey]struct{}
	// dirtyPeers are peers whose identities changed since the last
	// Recompute: their users are marked once, there, however many of the
	// peer's groups changed (a policy that splits identities changes
	// thousands of groups, each matched by the same few peers).
	dirtyPeers map[peerMark]struct{}
	cache      map[EndpointKey]*Compiled
}

// Option configures an Engine.
type Option func(*Engine)

// WithLocal makes the engine compile only endpoints for which local returns
// true (an agent passes "runs on my node"). By default every endpoint is
// compiled.
func WithLocal(local func(*fedmeshv1.Endpoint) bool) Option {
	return func(e *Engine) { e.local = local }
}

// WithNode compiles only the endpoints of one node of one cluster.
func WithNode(cluster, node string) Option {
	return WithLocal(func(ep *fedmeshv1.Endpoint) bool { return ep.GetCluster() == cluster && ep.GetNode() == node })
}

// NewEngine returns an empty engine.
func NewEngine(opts ...Option) *Engine {
	e := &Engine{
		local:             func(*fedmeshv1.Endpoint) bool { return true },
		clusters:          map[string]labels.Set{},
		endpoints:         map[EndpointKey]*endpoint{},
		byIP:              map[netip.Addr]*endpoint{},
		policies:          map[PolicyKey]*policyState{},
		groups:            map[string]*group{},
		groupsByCluster:   map[string]map[*group]struct{}{},
		groupsByClusterNS: map[clusterNS]map[*group]struct{}{},
		groupsByNS:        map[string]map[*group]struct{}{},
		groupsByIdentity:  map[uint32]map[*group]struct{}{},
		polByClusterNS:    map[clusterNS]map[*policyState]struct{}{},
		polFedByNS:        map[string]map[*policyState]struct{}{},
		polFedGlobal:      map[*policyState]struct{}{},
		polGlobal:         map[*policyState]struct{}{},
		peersByClusterNS:  map[clusterNS]map[*peer]struct{}{},
		peersByCluster:    map[string]map[*peer]struct{}{},
		peersFedByNS:      map[string]map[*peer]struct{}{},
		peersGlobal:       map[*peer]struct{}{},
		tiers:             NewTiers(),
		tierPeers:         map[*tierPeer][]*group{},
		dirty:             map[EndpointKey]struct{}{},
		dirtyPeers:        map[peerMark]struct{}{},
		cache:             map[EndpointKey]*Compiled{},
	}
	for _, o := range opts {
		o(e)
	}
	return e
}

// Compiled is the compile result of one endpoint: the rules the dataplane
// loads and, for counters, flow logs and Explain, where each RuleID came
// from (Origins[id-1]).
type Compiled struct {
	Rules   EndpointRules
	Origins []RuleOrigin
}

// Origin returns where id came from.
func (c *Compiled) Origin(id RuleID) (RuleOrigin, bool) {
	if id == 0 || int(id) > len(c.Origins) {
		return RuleOrigin{}, false
	}
	return c.Origins[id-1], true
}

// Changes lists the local endpoints whose compiled rules changed.
type Changes struct {
	// Updated endpoints have new rules (Rules returns them).
	Updated []EndpointKey
	// Removed endpoints are gone or no longer local.
	Removed []EndpointKey
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool { return len(c.Updated) == 0 && len(c.Removed) == 0 }

// ---- helpers for the set-of-pointer indexes ----

func addTo[K comparable, V comparable](m map[K]map[V]struct{}, k K, v V) {
	s := m[k]
	if s == nil {
		s = map[V]struct{}{}
		m[k] = s
	}
	s[v] = struct{}{}
}

func delFrom[K comparable, V comparable](m map[K]map[V]struct{}, k K, v V) {
	if s := m[k]; s != nil {
		delete(s, v)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

// ---- clusters ----

// ClusterNameLabel is a label every cluster carries with its own name, as
// Kubernetes gives every namespace kubernetes.io/metadata.name: a cluster
// selector can name one cluster whatever labels it was registered with.
const ClusterNameLabel = "fedmesh.io/cluster-name"

// UpsertCluster records a cluster's labels, which federated policies'
// cluster selectors match, plus ClusterNameLabel.
func (e *Engine) UpsertCluster(c *fedmeshv1.Cluster) {
	name := c.GetName()
	old, had := e.clusters[name]
	next := copySet(c.GetLabels())
	next[ClusterNameLabel] = name
	if had && labels.Equals(old, next) {
		return
	}
	e.clusters[name] = next
	e.reattachCluster(name)
}

// DeleteCluster forgets a cluster's labels; its endpoints and policies are
// deleted by their own calls (the control plane deletes them in the same
// revision).
func (e *Engine) DeleteCluster(name string) {
	if _, had := e.clusters[name]; !had {
		return
	}
	delete(e.clusters, name)
	e.reattachCluster(name)
}

// reattachCluster re-evaluates every selector over the cluster's groups.
func (e *Engine) reattachCluster(name string) {
	gs := make([]*group, 0, len(e.groupsByCluster[name]))
	for g := range e.groupsByCluster[name] {
		gs = append(gs, g)
	}
	for _, g := range gs {
		e.detachGroup(g)
		e.attachGroup(g)
	}
	// Cluster selectors of tier policies and their peers may change their
	// minds about any group of the cluster.
	if e.tiers.Len() > 0 {
		clear(e.tierPeers)
		for _, g := range gs {
			g.tiersValid = false
		}
		e.markAllLocal()
	}
}

func (e *Engine) clusterLabels(name string) labels.Set { return e.clusters[name] }

// ---- endpoints ----

// UpsertEndpoint creates or replaces an endpoint.
func (e *Engine) UpsertEndpoint(ep *fedmeshv1.Endpoint) {
	n := newEndpoint(ep)
	n.local = e.local(ep)
	old := e.endpoints[n.key]
	if old != nil && old.sameAs(n) {
		return
	}
	e.dirty[n.key] = struct{}{}
	if old != nil && labels.Equals(old.labels, n.labels) && labels.Equals(old.nsLabels, n.nsLabels) {
		// The group's key, without building it: cluster and namespace
		// are the endpoint key's. Share the old label sets.
		n.labels, n.nsLabels = old.labels, old.nsLabels
		// Same selectors: only ports, addresses, locality or the identity
		// changed. No selector is evaluated again.
		g := old.group
		e.markNamedUsers(g)
		e.unindexIPs(old)
		delete(g.eps, old)
		g.eps[n] = struct{}{}
		g.locals += locals(n) - locals(old)
		n.group = g
		if old.identity != n.identity {
			e.addID(g, n.identity)
			e.delID(g, old.identity)
		}
		e.endpoints[n.key] = n
		e.indexIPs(n)
		e.markGlobal()
		e.tierGroupChanged(g)
		return
	}
	if old != nil {
		e.removeEndpoint(old)
	}
	e.addEndpoint(n)
}

// DeleteEndpoint deletes an endpoint; deleting an unknown one is a no-op.
func (e *Engine) DeleteEndpoint(key EndpointKey) {
	old := e.endpoints[key]
	if old == nil {
		return
	}
	e.dirty[key] = struct{}{}
	e.removeEndpoint(old)
}

func (e *Engine) indexIPs(ep *endpoint) {
	for _, a := range ep.ips {
		e.byIP[a] = ep
	}
}

func (e *Engine) unindexIPs(ep *endpoint) {
	for _, a := range ep.ips {
		if e.byIP[a] == ep {
			delete(e.byIP, a)
		}
	}
}

func (e *Engine) addEndpoint(ep *endpoint) {
	e.endpoints[ep.key] = ep
	e.indexIPs(ep)
	key := ep.groupKey()
	g := e.groups[key]
	if g == nil {
		g = &group{
			key: key, cluster: ep.key.Cluster, ns: ep.key.Namespace, labels: ep.labels, nsLabels: ep.nsLabels,
			ids: map[uint32]int{}, eps: map[*endpoint]struct{}{},
			selectedBy: map[*policyState]struct{}{}, peerOf: map[*peer]struct{}{},
		}
		e.groups[key] = g
		addTo(e.groupsByCluster, g.cluster, g)
		addTo(e.groupsByClusterNS, clusterNS{g.cluster, g.ns}, g)
		addTo(e.groupsByNS, g.ns, g)
		e.attachGroup(g)
	} else {
		// Equal sets (the group key says so), never modified: one copy
		// per group, not per endpoint (an agent holds every endpoint of
		// the federation, whose own copies were a third of its heap).
		ep.labels, ep.nsLabels = g.labels, g.nsLabels
	}
	g.eps[ep] = struct{}{}
	g.locals += locals(ep)
	ep.group = g
	e.addID(g, ep.identity)
	e.markNamedUsers(g)
	e.markGlobal()
	e.tierGroupChanged(g)
}

func locals(ep *endpoint) int {
	if ep.local {
		return 1
	}
	return 0
}

// addID counts one more endpoint of identity id in g; a new identity of
// the group joins the identity sets of the peers matching it.
func (e *Engine) addID(g *group, id uint32) {
	g.ids[id]++
	if g.ids[id] > 1 {
		return
	}
	addTo(e.groupsByIdentity, id, g)
	if id == 0 {
		return
	}
	for p := range g.peerOf {
		e.peerAddID(p, g.cluster, id)
	}
}

// delID counts one endpoint of identity id less in g.
func (e *Engine) delID(g *group, id uint32) {
	g.ids[id]--
	if g.ids[id] > 0 {
		return
	}
	delete(g.ids, id)
	delFrom(e.groupsByIdentity, id, g)
	if id == 0 {
		return
	}
	for p := range g.peerOf {
		e.peerDelID(p, g.cluster, id)
	}
}

// peerAddID counts one more matched group with identity id of cluster in
// p; when the identity is new to the peer, the endpoints its policy selects
// must recompile.
func (e *Engine) peerAddID(p *peer, cluster string, id uint32) {
	ids := p.ids[cluster]
	if ids == nil {
		ids = map[uint32]int{}
		p.ids[cluster] = ids
	}
	ids[id]++
	if ids[id] == 1 {
		e.markPeerUsers(p, cluster)
	}
}

func (e *Engine) peerDelID(p *peer, cluster string, id uint32) {
	ids := p.ids[cluster]
	ids[id]--
	if ids[id] > 0 {
		return
	}
	delete(ids, id)
	if len(ids) == 0 {
		delete(p.ids, cluster)
	}
	e.markPeerUsers(p, cluster)
}

func (e *Engine) removeEndpoint(ep *endpoint) {
	delete(e.endpoints, ep.key)
	e.unindexIPs(ep)
	g := ep.group
	ep.group = nil
	delete(g.eps, ep)
	g.locals -= locals(ep)
	e.delID(g, ep.identity)
	e.markNamedUsers(g)
	e.markGlobal()
	e.tierGroupChanged(g)
	if len(g.eps) == 0 {
		e.detachGroup(g)
		delete(e.groups, g.key)
		delFrom(e.groupsByCluster, g.cluster, g)
		delFrom(e.groupsByClusterNS, clusterNS{g.cluster, g.ns}, g)
		delFrom(e.groupsByNS, g.ns, g)
	}
}

// attachGroup evaluates the policies that may select g and the peers that
// may match it.
func (e *Engine) attachGroup(g *group) {
	cl := e.clusterLabels(g.cluster)
	try := func(ps *policyState) {
		if ps.selects(g, cl) {
			e.link(ps, g)
		}
	}
	for ps := range e.polByClusterNS[clusterNS{g.cluster, g.ns}] {
		try(ps)
	}
	for ps := range e.polFedByNS[g.ns] {
		try(ps)
	}
	for ps := range e.polFedGlobal {
		try(ps)
	}
	tryPeer := func(p *peer) {
		if p.matches(g, cl) {
			e.join(p, g)
		}
	}
	for p := range e.peersByClusterNS[clusterNS{g.cluster, g.ns}] {
		tryPeer(p)
	}
	for p := range e.peersByCluster[g.cluster] {
		tryPeer(p)
	}
	for p := range e.peersFedByNS[g.ns] {
		tryPeer(p)
	}
	for p := range e.peersGlobal {
		tryPeer(p)
	}
}

func (e *Engine) detachGroup(g *group) {
	for ps := range g.selectedBy {
		e.unlink(ps, g)
	}
	for p := range g.peerOf {
		e.leave(p, g)
	}
}

// link records that ps selects g; g's endpoints must be recompiled.
func (e *Engine) link(ps *policyState, g *group) {
	addTo(ps.selected, g.cluster, g)
	g.selectedBy[ps] = struct{}{}
	e.markGroup(g)
}

func (e *Engine) unlink(ps *policyState, g *group) {
	delFrom(ps.selected, g.cluster, g)
	delete(g.selectedBy, ps)
	e.markGroup(g)
}

// join records that peer p matches g. When g brings a new identity into
// the peer's set, the endpoints the peer's policy selects must recompile;
// for a named-port rule, whenever its groups change.
func (e *Engine) join(p *peer, g *group) {
	p.groups[g] = struct{}{}
	g.peerOf[p] = struct{}{}
	for id := range g.ids {
		if id != 0 {
			e.peerAddID(p, g.cluster, id)
		}
	}
	if p.rule.named {
		e.markPeerUsers(p, g.cluster)
	}
}

func (e *Engine) leave(p *peer, g *group) {
	delete(p.groups, g)
	delete(g.peerOf, p)
	for id := range g.ids {
		if id != 0 {
			e.peerDelID(p, g.cluster, id)
		}
	}
	if p.rule.named {
		e.markPeerUsers(p, g.cluster)
	}
}

// peerMark is a peer whose users must recompile: for a same-cluster peer,
// those in cluster; otherwise all (cluster "").
type peerMark struct {
	p       *peer
	cluster string
}

// markPeerUsers records that the endpoints whose rules include p's
// identities of cluster must recompile; Recompute marks them.
func (e *Engine) markPeerUsers(p *peer, cluster string) {
	if p.mode != peerSameCluster {
		cluster = ""
	}
	e.dirtyPeers[peerMark{p, cluster}] = struct{}{}
}

// flushPeers marks the users of the peers markPeerUsers recorded: for a
// same-cluster peer only the selected endpoints of that cluster, otherwise
// all of the policy's selected endpoints. A peer of a policy removed since
// only marks endpoints that no longer need it, which costs a compile.
func (e *Engine) flushPeers() {
	for m := range e.dirtyPeers {
		e.markPeerUsersNow(m.p, m.cluster)
	}
	clear(e.dirtyPeers)
}

func (e *Engine) markPeerUsersNow(p *peer, cluster string) {
	ps := p.rule.pol
	if !ps.applies[p.rule.dir] {
		return
	}
	if p.mode == peerSameCluster {
		for g := range ps.selected[cluster] {
			e.markGroup(g)
		}
		return
	}
	e.markPolicyUsers(ps)
}

func (e *Engine) markPolicyUsers(ps *policyState) {
	for _, gs := range ps.selected {
		for g := range gs {
			e.markGroup(g)
		}
	}
}

// markGroup marks g's local endpoints for recompiling: only they have
// compiled rules (an endpoint that stops being local is marked by its
// upsert).
func (e *Engine) markGroup(g *group) {
	if g.locals == 0 {
		return
	}
	for ep := range g.eps {
		if ep.local {
			e.dirty[ep.key] = struct{}{}
		}
	}
}

// markNamedUsers marks the users of egress rules with named ports whose
// peers match g: the numbers they resolve to depend on g's endpoints.
func (e *Engine) markNamedUsers(g *group) {
	for p := range g.peerOf {
		if p.rule.named && p.rule.dir == Egress {
			e.markPeerUsers(p, g.cluster)
		}
	}
}

// markGlobal marks the users of policies that depend on every endpoint.
func (e *Engine) markGlobal() {
	for ps := range e.polGlobal {
		e.markPolicyUsers(ps)
	}
}

// ---- policies ----

// UpsertPolicy creates or replaces an API policy.
func (e *Engine) UpsertPolicy(p *fedmeshv1.Policy) error {
	np, err := FromProto(p)
	if err != nil {
		return fmt.Errorf("upsert policy: %w", err)
	}
	e.UpsertNetworkPolicy(np)
	return nil
}

// UpsertNetworkPolicy creates or replaces a policy in Kubernetes form. The
// engine keeps np; the caller must not modify it afterwards.
func (e *Engine) UpsertNetworkPolicy(np *NetworkPolicy) {
	key := np.Key()
	if old := e.policies[key]; old != nil {
		if reflect.DeepEqual(old.np, np) {
			return
		}
		e.removePolicy(old)
	}
	e.addPolicy(newPolicyState(np))
}

// UpsertClusterPolicy creates or replaces a ClusterNetworkPolicy (either
// tier, synced or federated). It fails, changing nothing, when the policy
// cannot be evaluated as written. Only the local endpoints the old or the
// new version applies to recompile.
func (e *Engine) UpsertClusterPolicy(p *ClusterPolicy) error {
	old := e.tiers.policies[p.Key()]
	if old != nil && reflect.DeepEqual(old.src, p) {
		return nil
	}
	if err := e.tiers.Upsert(p); err != nil {
		return fmt.Errorf("upsert cluster network policy: %w", err)
	}
	e.tierPolicyChanged(old, e.tiers.policies[p.Key()])
	return nil
}

// DeleteClusterPolicy deletes a ClusterNetworkPolicy; deleting an unknown
// one is a no-op.
func (e *Engine) DeleteClusterPolicy(key ClusterPolicyKey) {
	old := e.tiers.policies[key]
	if old == nil {
		return
	}
	e.tiers.Delete(key)
	e.tierPolicyChanged(old, nil)
}

// Tiers returns the ClusterNetworkPolicies the engine holds, for Explain.
func (e *Engine) Tiers() *Tiers { return e.tiers }

// markAllLocal marks every compiled endpoint for recompilation.
func (e *Engine) markAllLocal() {
	for k, ep := range e.endpoints {
		if ep.local {
			e.dirty[k] = struct{}{}
		}
	}
}

// DeletePolicy deletes a policy; deleting an unknown one is a no-op.
func (e *Engine) DeletePolicy(key PolicyKey) {
	if old := e.policies[key]; old != nil {
		e.removePolicy(old)
	}
}

func (e *Engine) addPolicy(ps *policyState) {
	e.policies[ps.key] = ps
	e.order = nil
	ns := ps.key.Namespace
	switch {
	case !ps.federated:
		addTo(e.polByClusterNS, clusterNS{ps.key.Cluster, ns}, ps)
	case ns != "":
		addTo(e.polFedByNS, ns, ps)
	default:
		e.polFedGlobal[ps] = struct{}{}
	}
	if ps.global {
		e.polGlobal[ps] = struct{}{}
	}
	for g := range e.candidateGroups(ps.federated, ps.key, ps.federated && ns == "") {
		if ps.selects(g, e.clusterLabels(g.cluster)) {
			e.link(ps, g)
		}
	}
	for _, rs := range ps.rules {
		for _, r := range rs {
			for _, p := range r.peers {
				e.indexPeer(p, true)
				wide := p.nsSel != nil || (ps.federated && ns == "")
				for g := range e.candidateGroups(ps.federated, ps.key, wide) {
					if p.matches(g, e.clusterLabels(g.cluster)) {
						e.join(p, g)
					}
				}
			}
		}
	}
}

func (e *Engine) removePolicy(ps *policyState) {
	e.markPolicyUsers(ps)
	for _, rs := range ps.rules {
		for _, r := range rs {
			for _, p := range r.peers {
				e.indexPeer(p, false)
				for g := range p.groups {
					delete(g.peerOf, p)
				}
			}
		}
	}
	for _, gs := range ps.selected {
		for g := range gs {
			delete(g.selectedBy, ps)
		}
	}
	delete(e.policies, ps.key)
	e.order = nil
	delFrom(e.polByClusterNS, clusterNS{ps.key.Cluster, ps.key.Namespace}, ps)
	delFrom(e.polFedByNS, ps.key.Namespace, ps)
	delete(e.polFedGlobal, ps)
	delete(e.polGlobal, ps)
}

// candidateGroups yields the groups a policy's selector (or a peer's, when
// wide says it looks beyond the policy's namespace) can match.
func (e *Engine) candidateGroups(federated bool, key PolicyKey, wide bool) func(func(*group) bool) {
	return func(yield func(*group) bool) {
		var src map[*group]struct{}
		switch {
		case !federated && !wide:
			src = e.groupsByClusterNS[clusterNS{key.Cluster, key.Namespace}]
		case !federated:
			src = e.groupsByCluster[key.Cluster]
		case !wide:
			src = e.groupsByNS[key.Namespace]
		default:
			for _, g := range e.groups {
				if !yield(g) {
					return
				}
			}
			return
		}
		for g := range src {
			if !yield(g) {
				return
			}
		}
	}
}

func (e *Engine) indexPeer(p *peer, add bool) {
	ps := p.rule.pol
	ns := ps.key.Namespace
	upd := func(m map[*peer]struct{}) {
		if add {
			m[p] = struct{}{}
		} else {
			delete(m, p)
		}
	}
	switch {
	case !ps.federated && p.nsSel == nil:
		if add {
			addTo(e.peersByClusterNS, clusterNS{ps.key.Cluster, ns}, p)
		} else {
			delFrom(e.peersByClusterNS, clusterNS{ps.key.Cluster, ns}, p)
		}
	case !ps.federated:
		if add {
			addTo(e.peersByCluster, ps.key.Cluster, p)
		} else {
			delFrom(e.peersByCluster, ps.key.Cluster, p)
		}
	case p.nsSel == nil && ns != "":
		if add {
			addTo(e.peersFedByNS, ns, p)
		} else {
			delFrom(e.peersFedByNS, ns, p)
		}
	default:
		upd(e.peersGlobal)
	}
}

// ---- results ----

// Recompute compiles the local endpoints that mutations since the last call
// may have changed and returns those whose rules did change.
func (e *Engine) Recompute() Changes {
	e.flushPeers()
	keys := make([]EndpointKey, 0, len(e.dirty))
	for k := range e.dirty {
		keys = append(keys, k)
	}
	clear(e.dirty)
	slices.SortFunc(keys, compareEndpointKeys)
	var ch Changes
	for _, k := range keys {
		ep := e.endpoints[k]
		if ep == nil || !ep.local {
			if _, had := e.cache[k]; had {
				delete(e.cache, k)
				ch.Removed = append(ch.Removed, k)
			}
			continue
		}
		c := e.compile(ep)
		if old, ok := e.cache[k]; ok && reflect.DeepEqual(old, c) {
			continue
		}
		e.cache[k] = c
		ch.Updated = append(ch.Updated, k)
	}
	return ch
}

// Rules returns the rules of a local endpoint as of the last Recompute.
// The result is shared: callers must not modify it.
func (e *Engine) Rules(key EndpointKey) (*Compiled, bool) {
	c, ok := e.cache[key]
	return c, ok
}

// Compile compiles any known endpoint now, local or not, without touching
// the cache.
func (e *Engine) Compile(key EndpointKey) (*Compiled, bool) {
	ep := e.endpoints[key]
	if ep == nil {
		return nil, false
	}
	return e.compile(ep), true
}

// CompileAll recompiles every local endpoint from scratch into the cache:
// the baseline the incremental path is measured against.
func (e *Engine) CompileAll() int {
	clear(e.dirty)
	clear(e.dirtyPeers)
	clear(e.cache)
	n := 0
	for k, ep := range e.endpoints {
		if ep.local {
			e.cache[k] = e.compile(ep)
			n++
		}
	}
	return n
}

// Endpoints returns the number of known endpoints.
func (e *Engine) Endpoints() int { return len(e.endpoints) }

// sortedPolicies returns every policy sorted by key.
func (e *Engine) sortedPolicies() []*policyState {
	if e.order == nil {
		e.order = make([]*policyState, 0, len(e.policies))
		for _, ps := range e.policies {
			e.order = append(e.order, ps)
		}
		slices.SortFunc(e.order, func(a, b *policyState) int { return comparePolicyKeys(a.key, b.key) })
	}
	return e.order
}
