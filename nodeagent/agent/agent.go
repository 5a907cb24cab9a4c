package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/watchclient"
	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/federation/services"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/flows"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Config says which node the agent runs for and how it paces itself.
type Config struct {
	// Cluster and Node name this node.
	Cluster, Node string
	// UnderlayIP is the node's underlay address (WireGuard endpoint, BGP
	// router ID).
	UnderlayIP netip.Addr
	// PodCIDRs are the node's pod ranges, registered on the Node.
	PodCIDRs []string
	// Labels are the node's labels, registered on the Node (BGP peers
	// select nodes by them).
	Labels map[string]string
	// DataplaneName is reported in the node status ("ebpf", "memory").
	DataplaneName string
	// ReadyLag is how far behind the newest seen revision the enforced one
	// may be before the node is not ready (default 30s).
	ReadyLag time.Duration
	// Tick paces interface discovery, retries after failures and the
	// readiness check (default 1s).
	Tick time.Duration
	// StatusInterval is the status heartbeat (default 10s); status is also
	// sent at once after every newly enforced revision.
	StatusInterval time.Duration
	// MinReportInterval is the least time between two status reports
	// (default 100ms; negative: none). Under churn every revision is newly
	// enforced, and one report per revision made a node's report rate
	// grow with the federation's write rate (each report is a Raft write);
	// a report held back this long carries the newest enforced revision,
	// so it delays a --wait by at most this much.
	MinReportInterval time.Duration
	// BackoffBase and BackoffMax bound the jittered exponential backoff of
	// reconnects and retried reports (defaults 200ms and 10s).
	BackoffBase, BackoffMax time.Duration
}

func (c *Config) defaults() {
	if c.ReadyLag == 0 {
		c.ReadyLag = 30 * time.Second
	}
	if c.Tick == 0 {
		c.Tick = time.Second
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = 10 * time.Second
	}
	if c.MinReportInterval == 0 {
		c.MinReportInterval = 100 * time.Millisecond
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = 200 * time.Millisecond
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = 10 * time.Second
	}
}

// Deps are the agent's ports and ambient dependencies. ControlPlane and
// Dataplane are required; the rest may be nil (no compiler means
// federation/policy's Engine for this node; no resolver, WireGuard or BGP
// means that part is off).
type Deps struct {
	ControlPlane ControlPlane
	Dataplane    Dataplane
	Compiler     Compiler
	Interfaces   InterfaceResolver
	WireGuard    WireGuard
	BGP          BGP
	// Flows, when set, is told every endpoint and the enforced rules of
	// the local ones, to attribute flow records (flowship.go).
	Flows *flows.Directory
	// Services loads the ClusterSetIP translation table (nil: the
	// Dataplane when it implements Services, else no translation; the
	// catalog for DNS is kept either way).
	Services Services
	// DNS receives the services view per revision (nil: no resolver).
	DNS DNS
	// Names, when set, is policy by DNS name in the resolver's hooks: it is
	// told the local endpoints and their egress after every applied
	// revision, and forgets what deleted endpoints learned (fqdn.go).
	Names *NamePolicy
	// FlowNames, when set, is the address→name cache that names flow
	// records (dnslog.go): it drops what deleted endpoints resolved after
	// every applied revision.
	FlowNames *NameCache
	Logger    *slog.Logger
	// Registry receives the agent's metrics (default: a new registry).
	Registry *prometheus.Registry
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Seed seeds backoff jitter (default: random).
	Seed uint64
}

// watchItem is what the watch goroutine hands the sync goroutine: a
// message, or the news that a new stream started.
type watchItem = watchclient.Item

// Agent is one node's sync loop. Create it with New and start it with Run.
type Agent struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	m    *metrics
	self *fedmeshv1.Node

	watch *watchclient.Watcher
	msgs  <-chan watchItem

	// Owned by the sync goroutine.
	view    *View
	ipcache *IPCacheIndex
	// rules are the local endpoints' compiled rules by endpoint ID. A map
	// handed to the dataplane (rulesHanded) is never edited again: the
	// next change edits a copy.
	rules       map[string]policy.EndpointRules
	rulesHanded bool
	local       map[policy.EndpointKey]*Endpoint
	attached    map[policy.EndpointKey]string
	dpDirty     bool // rules or ipcache changed since the last Apply
	wgDirty     bool
	bgpDirty    bool
	svcDirty    bool // imports or liveness changed since the last table
	// svcAll: liveness may have changed (a cluster did) since the last
	// catalog, so every service is built again; else only svcChanged.
	svcAll      bool
	svcChanged  map[services.Key]struct{}
	discarding  bool      // the current stream failed; skip until the next one
	specChanged bool      // a change other than a node status report since the last report
	namePods    []NamePod // the local endpoints of the last applied revision, for Names
	lastHealthy *bool

	// Shared with the report goroutine and HTTP handlers.
	mu     sync.Mutex
	health Readiness
	// applyErr is why the dataplane refused the newest revision (a full
	// ipcache map, say), "" once a revision applies: the node's status
	// says it, so an overflow is never silent.
	applyErr   string
	lastLoop   time.Time
	reportKick chan struct{}
	nLocal     atomic.Int64
	catalog    atomic.Pointer[services.Catalog]
}

// New returns an agent; it does nothing until Run.
func New(cfg Config, deps Deps) (*Agent, error) {
	cfg.defaults()
	if cfg.Cluster == "" || cfg.Node == "" {
		return nil, errors.New("new agent: cluster and node names are required")
	}
	if deps.ControlPlane == nil || deps.Dataplane == nil {
		return nil, errors.New("new agent: a control-plane client and a dataplane are required")
	}
	if deps.Compiler == nil {
		deps.Compiler = policy.NewEngine(policy.WithNode(cfg.Cluster, cfg.Node))
	}
	if s, ok := deps.Dataplane.(Services); ok && deps.Services == nil {
		// The eBPF and in-memory dataplanes translate beside enforcing.
		deps.Services = s
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Seed == 0 {
		deps.Seed = rand.Uint64()
	}
	a := &Agent{
		cfg:  cfg,
		deps: deps,
		log:  deps.Logger.With("cluster", cfg.Cluster, "node", cfg.Node),
		m:    newMetrics(deps.Registry),
		self: &fedmeshv1.Node{Cluster: cfg.Cluster, Name: cfg.Node, PodCidrs: cfg.PodCIDRs},
		// watch and msgs are set below: the watcher reports to the agent.
		view:       NewView(),
		ipcache:    NewIPCacheIndex(),
		rules:      map[string]policy.EndpointRules{},
		local:      map[policy.EndpointKey]*Endpoint{},
		attached:   map[policy.EndpointKey]string{},
		svcChanged: map[services.Key]struct{}{},
		health:     Readiness{Lag: cfg.ReadyLag},
		reportKick: make(chan struct{}, 1),
	}
	if cfg.UnderlayIP.IsValid() {
		a.self.UnderlayIp = cfg.UnderlayIP.String()
	}
	// Room for a burst (watchclient's default buffer); the sync goroutine
	// drains all of it at once.
	a.watch = a.newWatcher()
	a.msgs = a.watch.Items()
	return a, nil
}

// Registry returns the registry holding the agent's metrics.
func (a *Agent) Registry() *prometheus.Registry { return a.deps.Registry }

// Run runs the sync loop until ctx ends. It returns nil on cancellation.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { a.watchLoop(ctx) })
	wg.Go(func() { a.reportLoop(ctx) })
	defer wg.Wait()

	tick := time.NewTicker(a.cfg.Tick)
	defer tick.Stop()
	a.markLoop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case it := <-a.msgs:
			batch := []watchItem{it}
		drain:
			for len(batch) < cap(a.msgs)*4 {
				select {
				case it := <-a.msgs:
					batch = append(batch, it)
				default:
					break drain
				}
			}
			a.handleBatch(ctx, batch)
		case <-tick.C:
			a.onTick(ctx)
		}
		a.markLoop()
	}
}

func (a *Agent) markLoop() {
	a.mu.Lock()
	a.lastLoop = a.deps.Now()
	a.mu.Unlock()
}

// handleBatch applies every waiting message to the view and the compiler,
// then enforces once: the coalescing step.
func (a *Agent) handleBatch(ctx context.Context, batch []watchItem) {
	advanced := 0
	for _, it := range batch {
		if it.NewStream {
			a.view.ResetStream()
			a.discarding = false
			continue
		}
		if a.discarding {
			continue
		}
		changes, bad, err := a.view.Apply(it.Resp)
		a.reportBad(bad)
		if err != nil {
			a.log.Warn("restarting watch: stream cannot be followed", "from_revision", a.view.Revision(), "err", err)
			a.m.resyncs.Inc()
			a.discarding = true
			a.watch.Resync(a.view.Revision())
			continue
		}
		a.m.messages.Inc()
		if it.Resp.GetType() == fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_PROGRESS {
			// A write this node filters out: report the new revision at
			// once so a --wait on it returns. No loop: node status reports
			// create no revision.
			a.specChanged = true
		}
		a.feed(changes)
		if !(it.Resp.GetType() == fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT && it.Resp.GetMore()) {
			advanced++
		}
	}
	if advanced > 1 {
		a.m.coalesced.Add(float64(advanced - 1))
	}
	a.enforce(ctx)
}

// feed passes view changes to the compiler and marks what they touch.
func (a *Agent) feed(changes []Change) {
	c := a.deps.Compiler
	for i, ch := range changes {
		// Drop the change (its proto) once fed: a snapshot of millions of
		// endpoints is collected as the compiler takes it, not after.
		changes[i] = Change{}
		if !ch.StatusOnly {
			a.specChanged = true
		}
		if err := policy.Apply(c, ch.policyUpdate()); err != nil {
			// policy.Apply's failure rule: the previous version stays in
			// force, here and in Reach.
			a.reportBad([]BadInput{{Reason: ReasonPolicyCompile, Object: ch.Object(), Detail: err.Error()}})
		}
		switch ch.Kind {
		case fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER:
			if ch.Delete {
				a.reportBad(a.ipcache.DeleteCluster(ch.ClusterName))
			} else {
				a.reportBad(a.ipcache.UpsertCluster(ch.Cluster))
			}
			a.wgDirty = true
			a.svcDirty, a.svcAll = true, true // reachability and stale nodes
			if ch.ClusterName == a.cfg.Cluster {
				a.bgpDirty = true
			}
		case fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER, fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER:
			a.bgpDirty = true
		case fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT:
			a.svcDirty = true
			a.svcChanged[ch.ImportKey] = struct{}{}
		case fedmeshv1.ResourceKind_RESOURCE_KIND_NODE:
			if ch.StatusOnly {
				continue
			}
			a.specChanged = true
			a.wgDirty = true
			if ch.NodeKey == (NodeKey{Cluster: a.cfg.Cluster, Name: a.cfg.Node}) {
				a.bgpDirty = true
			}
		case fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT:
			a.flowEndpoint(ch)
			if ch.Delete {
				a.reportBad(a.ipcache.DeleteEndpoint(ch.EndpointKey))
				delete(a.local, ch.EndpointKey)
			} else {
				a.reportBad(a.ipcache.UpsertEndpoint(ch.Compact))
				if ch.Compact.IsLocal(a.cfg.Cluster, a.cfg.Node) {
					a.local[ch.EndpointKey] = ch.Compact
				} else {
					delete(a.local, ch.EndpointKey)
				}
			}
		}
	}
}

// enforce brings the dataplane, WireGuard and BGP to the view's revision.
func (a *Agent) enforce(ctx context.Context) {
	if !a.view.Synced() {
		return // never apply a partial state: the old one stays in force
	}
	start := a.deps.Now()
	if ch := a.deps.Compiler.Recompute(); !ch.Empty() {
		a.dpDirty = true
		if a.rulesHanded {
			a.rules, a.rulesHanded = maps.Clone(a.rules), false
		}
		for _, k := range ch.Updated {
			if c, ok := a.deps.Compiler.Rules(k); ok {
				a.rules[k.String()] = c.Rules
				a.flowStage(k, c)
			}
		}
		for _, k := range ch.Removed {
			delete(a.rules, k.String())
			a.flowStage(k, nil)
		}
	}
	ipcache, changed := a.ipcache.IPCache()
	if changed {
		a.dpDirty = true
		a.m.ipcacheEntries.Set(float64(ipcache.Len()))
	}
	a.m.localEndpoints.Set(float64(len(a.local)))
	a.nLocal.Store(int64(len(a.local)))

	rev := a.view.Revision()
	enforced, has := a.enforcedRevision()
	if a.dpDirty || !has {
		// Nothing here is proportional to the ipcache: the revision shares
		// the index's immutable version and the rules map.
		r := &dataplane.Revision{Number: rev, IPCache: ipcache, Rules: a.rules}
		a.rulesHanded = true
		if err := a.deps.Dataplane.Apply(ctx, r); err != nil {
			a.m.applies.WithLabelValues("error").Inc()
			a.m.portErrors.WithLabelValues("dataplane").Inc()
			a.log.Error("apply revision to the dataplane; the previous revision stays in force, retrying",
				"revision", rev, "enforced", enforced, "err", err)
			a.setApplyErr(fmt.Sprintf("the dataplane refuses revision %d (revision %d stays in force): %v", rev, enforced, err))
			a.updateHealth(ctx)
			return
		}
		a.setApplyErr("")
		a.dpDirty = false
		a.flowCommit()
		a.syncNames(ctx, true)
		a.retainFlowNames()
		a.m.applies.WithLabelValues("ok").Inc()
		a.m.applySeconds.Observe(a.deps.Now().Sub(start).Seconds())
	}
	if !has {
		a.svcDirty = true // the first revision loads a table, even an empty one
	}
	if !a.syncServices(ctx) {
		a.updateHealth(ctx)
		return
	}
	// With nothing for the dataplane in the revisions since the last Apply,
	// the dataplane already enforces rev.
	if !has || rev != enforced {
		a.mu.Lock()
		a.health.Enforced(rev)
		a.mu.Unlock()
		a.m.enforcedRevision.Set(float64(rev))
		// Report at once when something to enforce changed, so a write's
		// --wait returns promptly; revisions that only carry node status
		// reports go out with the next heartbeat, or every report would
		// cause another one.
		if a.specChanged || !has {
			a.kickReport()
		}
		a.specChanged = false
	}
	a.reconcileInterfaces(ctx)
	a.syncWireGuard(ctx)
	a.syncBGP(ctx)
	a.updateHealth(ctx)
}

func (a *Agent) enforcedRevision() (uint64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.health.EnforcedRevision()
}

func (a *Agent) syncWireGuard(ctx context.Context) {
	if a.deps.WireGuard == nil || !a.wgDirty {
		return
	}
	if err := a.deps.WireGuard.Sync(ctx, WireGuardPeers(a.view, a.self)); err != nil {
		a.m.portErrors.WithLabelValues("wireguard").Inc()
		a.log.Error("sync WireGuard peers; retrying", "revision", a.view.Revision(), "err", err)
		return
	}
	a.wgDirty = false
}

func (a *Agent) syncBGP(ctx context.Context) {
	if a.deps.BGP == nil || !a.bgpDirty {
		return
	}
	if err := a.deps.BGP.Apply(ctx, BGPFor(a.view, a.self, a.cfg.UnderlayIP)); err != nil {
		a.m.portErrors.WithLabelValues("bgp").Inc()
		a.log.Error("apply BGP config; retrying", "revision", a.view.Revision(), "err", err)
		return
	}
	a.bgpDirty = false
}

// updateHealth recomputes readiness and tells BGP when it changed.
func (a *Agent) updateHealth(ctx context.Context) {
	a.mu.Lock()
	ready, reason := a.health.Ready(a.deps.Now())
	a.m.seenRevision.Set(float64(a.health.Newest()))
	a.mu.Unlock()
	a.m.ready.Set(boolGauge(ready))
	if a.lastHealthy != nil && *a.lastHealthy == ready {
		return
	}
	if a.lastHealthy != nil {
		a.log.Info("readiness changed", "ready", ready, "reason", reason)
		a.kickReport()
	}
	if a.deps.BGP != nil {
		if err := a.deps.BGP.SetHealthy(ctx, ready); err != nil {
			a.m.portErrors.WithLabelValues("bgp").Inc()
			a.log.Error("set BGP health; retrying", "ready", ready, "err", err)
			return
		}
	}
	a.lastHealthy = &ready
}

// onTick retries what failed and follows interfaces and time.
func (a *Agent) onTick(ctx context.Context) {
	if a.view.Synced() {
		_, has := a.enforcedRevision()
		if a.dpDirty || a.svcDirty || !has {
			a.enforce(ctx)
		} else {
			a.reconcileInterfaces(ctx)
			a.syncWireGuard(ctx)
			a.syncBGP(ctx)
			a.syncNames(ctx, false)
		}
	}
	a.updateHealth(ctx)
}

// reconcileInterfaces attaches local endpoints whose per-endpoint route
// appeared, moves those whose interface changed and detaches those that
// are gone (from the view or from the kernel).
func (a *Agent) reconcileInterfaces(ctx context.Context) {
	if a.deps.Interfaces == nil {
		return
	}
	if _, has := a.enforcedRevision(); !has {
		return // attach only once a revision the endpoints' rules are in is loaded
	}
	dp := a.deps.Dataplane
	for k, ep := range a.local {
		if len(ep.Addrs) == 0 {
			continue
		}
		// The first address's route names the interface (IPv4 and IPv6
		// lead to the same veth).
		ip := ep.Addrs[0]
		iface, found, err := a.deps.Interfaces.Lookup(ctx, ip)
		if err != nil {
			a.m.portErrors.WithLabelValues("interfaces").Inc()
			a.log.Warn("look up endpoint interface", "endpoint", k.String(), "ip", ip, "err", err)
			continue
		}
		cur, att := a.attached[k]
		if att && found && cur == iface {
			continue
		}
		if att {
			if err := dp.Detach(ctx, k.String()); err != nil {
				a.m.portErrors.WithLabelValues("dataplane").Inc()
				a.log.Error("detach endpoint", "endpoint", k.String(), "interface", cur, "err", err)
				continue
			}
			delete(a.attached, k)
			a.log.Info("detached endpoint", "endpoint", k.String(), "interface", cur)
		}
		if !found {
			continue
		}
		if err := dp.Attach(ctx, dataplane.Endpoint{ID: k.String(), Interface: iface}); err != nil {
			a.m.portErrors.WithLabelValues("dataplane").Inc()
			a.log.Error("attach endpoint", "endpoint", k.String(), "interface", iface, "err", err)
			continue
		}
		a.attached[k] = iface
		a.log.Info("attached endpoint", "endpoint", k.String(), "interface", iface)
	}
	for k, iface := range a.attached {
		if _, ok := a.local[k]; ok {
			continue
		}
		if err := dp.Detach(ctx, k.String()); err != nil {
			a.m.portErrors.WithLabelValues("dataplane").Inc()
			a.log.Error("detach endpoint", "endpoint", k.String(), "interface", iface, "err", err)
			continue
		}
		delete(a.attached, k)
		a.log.Info("detached endpoint", "endpoint", k.String(), "interface", iface)
	}
	a.m.attached.Set(float64(len(a.attached)))
}

// reportBad logs and counts bad input: skipped watch messages and objects,
// and the problems the ipcache index finds (each once, when it appears).
func (a *Agent) reportBad(bad []BadInput) {
	for _, b := range bad {
		a.m.badInput.WithLabelValues(b.Reason).Inc()
		a.log.Warn("skipped bad input from the watch stream", "reason", b.Reason, "object", b.Object, "detail", b.Detail)
	}
}

func (a *Agent) kickReport() {
	select {
	case a.reportKick <- struct{}{}:
	default:
	}
}

// Ready reports the agent's readiness now, with a reason when not ready.
func (a *Agent) Ready() (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.health.Ready(a.deps.Now())
}

// Enforced returns the revision the dataplane enforces and whether any.
func (a *Agent) Enforced() (uint64, bool) { return a.enforcedRevision() }

// Alive reports whether the sync goroutine made progress recently.
func (a *Agent) Alive() (bool, string) {
	a.mu.Lock()
	last := a.lastLoop
	a.mu.Unlock()
	limit := max(5*a.cfg.Tick, 10*time.Second)
	if since := a.deps.Now().Sub(last); last.IsZero() || since > limit {
		return false, fmt.Sprintf("sync loop stalled for %s", since.Round(time.Millisecond))
	}
	return true, ""
}

// setApplyErr records why the dataplane refused the newest revision ("":
// it applied); a change is reported at once.
func (a *Agent) setApplyErr(msg string) {
	a.mu.Lock()
	changed := a.applyErr != msg
	a.applyErr = msg
	a.mu.Unlock()
	if changed {
		a.kickReport()
	}
}

// status builds the node status the report goroutine sends.
func (a *Agent) status(ctx context.Context) *fedmeshv1.NodeStatus {
	a.mu.Lock()
	now := a.deps.Now()
	enforced, _ := a.health.EnforcedRevision()
	ready, reason := a.health.Ready(now)
	if a.applyErr != "" {
		reason = strings.TrimPrefix(reason+"; "+a.applyErr, "; ")
	}
	a.mu.Unlock()
	st := &fedmeshv1.NodeStatus{
		EnforcedRevision: enforced,
		ReportTime:       timestamppb.New(now),
		Ready:            ready,
		Dataplane:        a.cfg.DataplaneName,
		Message:          reason,
	}
	st.LocalEndpoints = uint32(a.nLocal.Load())
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if a.deps.BGP != nil {
		if ps, err := a.deps.BGP.Status(sctx); err == nil {
			st.BgpPeers = ps
		}
		st.BgpProblems = a.deps.BGP.Problems()
	}
	if a.deps.Services != nil {
		if ss, err := a.deps.Services.ServiceStatus(sctx); err == nil {
			st.ServiceProblems = serviceProblems(ss.Truncated)
		}
	}
	if a.deps.WireGuard != nil {
		if ps, err := a.deps.WireGuard.Status(sctx); err == nil {
			st.WireguardPeers = ps
		}
	}
	return st
}
