package server

// Cluster and node liveness, and the clusterset CIDRs (log format 6).
//
// Syncers send Heartbeat every HeartbeatInterval; any replica takes it and
// a follower forwards it to the leader (authorized as the syncer). The
// leader keeps the last heartbeat per cluster in memory, so a heartbeat
// costs no Raft write; a loop on the leader judges liveness
// (services.JudgeLiveness) and commits only transitions (CmdSetLiveness).
// A new leader has seen no heartbeat: the judgement waits one timeout from
// its start before it calls anyone silent. Node staleness comes from the
// nodes' status reports, which are already in the log (their command time).
//
// The same loop commits the clusterset CIDRs from the leader's flag
// (CmdConfigureServices) once every replica applies format 6 and services
// are exported, so ClusterSetIP imports get their VIPs.

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/services"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Defaults of the services settings.
var (
	// DefaultClustersetCIDRs are where ClusterSetIPs come from unless
	// configured: outside the RFC 1918 ranges clusters usually take pods
	// and services from, and outside the lab's underlay (198.18.0.0/15);
	// a registered cluster overlapping them is refused, and so is a
	// configured CIDR overlapping a registered cluster.
	DefaultClustersetCIDRs = []netip.Prefix{netip.MustParsePrefix("100.127.0.0/16"), netip.MustParsePrefix("fd00:fed:c5e7::/108")}
	// DefaultClusterTimeout is how long a cluster's syncer may be silent
	// before its backends are withdrawn. Syncers beat every third of it,
	// and the leader judges every sixth, so a lost cluster leaves every
	// importer's choice within about 1.4 s (issue 17's failover target is
	// p99 < 2 s) while two lost heartbeats in a row are survived.
	DefaultClusterTimeout = 1200 * time.Millisecond
	// DefaultNodeTimeout is how long a node may go without a status report
	// before its backends are withdrawn (agents report every 10s by
	// default, and at once after every enforced revision).
	DefaultNodeTimeout = 35 * time.Second
)

// ServicesConfig are the federation's service settings a replica applies
// while it leads.
type ServicesConfig struct {
	// ClustersetCIDRs, at most one per IP family (nil: the defaults).
	ClustersetCIDRs []netip.Prefix
	// ClusterTimeout (default DefaultClusterTimeout) and NodeTimeout
	// (default DefaultNodeTimeout).
	ClusterTimeout, NodeTimeout time.Duration
}

func (c *ServicesConfig) defaults() {
	if c.ClustersetCIDRs == nil {
		c.ClustersetCIDRs = DefaultClustersetCIDRs
	}
	if c.ClusterTimeout == 0 {
		c.ClusterTimeout = DefaultClusterTimeout
	}
	if c.NodeTimeout == 0 {
		c.NodeTimeout = DefaultNodeTimeout
	}
}

// liveness is the leader's memory of heartbeats. Heartbeat handlers write
// it; the liveness loop reads it.
type liveness struct {
	cfg ServicesConfig

	mu    sync.Mutex
	seen  map[string]time.Time
	since time.Time // when this replica started leading (zero: not leading)

	transitions *prometheus.CounterVec
}

// reachabilityLabel is the metric label of a reachability.
func reachabilityLabel(r fedmeshv1.Reachability) string {
	switch r {
	case fedmeshv1.Reachability_REACHABILITY_REACHABLE:
		return "reachable"
	case fedmeshv1.Reachability_REACHABILITY_UNREACHABLE:
		return "unreachable"
	}
	return "unknown"
}

func newLiveness(cfg ServicesConfig, reg prometheus.Registerer, fsm *store.FSM) *liveness {
	cfg.defaults()
	l := &liveness{cfg: cfg, seen: map[string]time.Time{},
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_controlplane_cluster_reachability_transitions_total",
			Help: "Cluster reachability transitions the leader committed, by new state (unreachable = the cluster's backends were withdrawn)."}, []string{"reachability"})}
	withdrawn := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fedmesh_controlplane_withdrawn_clusters",
		Help: "Clusters marked unreachable in this replica's state: their service backends are withdrawn from every importer."},
		func() float64 {
			n := 0
			fsm.View(func(s *store.State) {
				cs, _ := s.Clusters(nil)
				for _, c := range cs {
					if c.GetStatus().GetReachability() == fedmeshv1.Reachability_REACHABILITY_UNREACHABLE {
						n++
					}
				}
			})
			return float64(n)
		})
	reg.MustRegister(l.transitions, withdrawn)
	return l
}

func (l *liveness) beat(cluster string, now time.Time) {
	l.mu.Lock()
	l.seen[cluster] = now
	l.mu.Unlock()
}

// lead records that leadership started or ended. Ending forgets the
// heartbeats (a later term starts from nothing); starting keeps those
// already taken, which the handler took while Raft named this replica
// leader, before the loop noticed.
func (l *liveness) lead(leading bool, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.since = time.Time{}
	if leading {
		l.since = now
		return
	}
	l.seen = map[string]time.Time{}
}

// heartbeatInterval is what syncers are told: a third of the timeout, so
// one lost heartbeat does not withdraw a cluster.
func (l *liveness) heartbeatInterval() time.Duration { return l.cfg.ClusterTimeout / 3 }

// Heartbeat records the calling syncer's cluster as alive on the leader.
func (s *clusterService) Heartbeat(ctx context.Context, req *fedmeshv1.HeartbeatRequest) (*fedmeshv1.HeartbeatResponse, error) {
	if req.GetCluster() == "" {
		return nil, status.Error(codes.InvalidArgument, "cluster: required; name the syncer's own cluster")
	}
	c := s.c
	var reach fedmeshv1.Reachability
	found := false
	c.view(func(st *store.State) {
		if cl := st.Cluster(req.GetCluster()); cl != nil {
			found, reach = true, cl.GetStatus().GetReachability()
		}
	})
	if !found {
		return nil, notFound("cluster", req.GetCluster())
	}
	cc, err := c.leaderConn(ctx)
	if err != nil {
		return nil, err
	}
	if cc != nil {
		if forwardedBy(ctx) != "" {
			return nil, notLeaderStatus(c.self)
		}
		return fedmeshv1.NewClusterServiceClient(cc).Heartbeat(c.forwardContext(ctx), req)
	}
	c.live.beat(req.GetCluster(), time.Now())
	return &fedmeshv1.HeartbeatResponse{Reachability: reach, IntervalSeconds: c.live.heartbeatInterval().Seconds()}, nil
}

// livenessLoop runs on every replica and acts while it leads: it judges
// liveness every sixth of the timeout and commits transitions, and commits the
// clusterset CIDRs when they differ from the flag.
func (c *Core) livenessLoop(ctx context.Context) {
	tick := max(min(c.live.cfg.ClusterTimeout, c.live.cfg.NodeTimeout)/6, 20*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	leading := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		isLeader := c.raft.State() == raft.Leader && c.leaderReady.Load()
		if isLeader != leading {
			c.live.lead(isLeader, now)
			leading = isLeader
		}
		if !leading || c.appliesFormat(store.LogFormatServices) < store.LogFormatServices {
			continue
		}
		c.configureServices(ctx)
		c.judgeLiveness(ctx, now)
	}
}

func (c *Core) configureServices(ctx context.Context) {
	var stored []netip.Prefix
	exported := false
	c.view(func(st *store.State) {
		stored = st.ClustersetCIDRs()
		exported = len(st.Exports("")) > 0
	})
	want := c.live.cfg.ClustersetCIDRs
	if !exported || slices.Equal(stored, want) {
		return
	}
	req := &fedmeshv1.ConfigureServicesRequest{}
	for _, p := range want {
		req.ClustersetCidrs = append(req.ClustersetCidrs, p.String())
	}
	if _, err := c.applyLocal(c.asSelf(ctx), store.CmdConfigureServices, req); err != nil {
		// A rejection (a cluster overlaps the flag's CIDRs) repeats until
		// the flag or the cluster changes; say so, not once per tick.
		c.log.Warn("commit clusterset CIDRs; ClusterSetIP imports get no VIP until fixed", "cidrs", req.GetClustersetCidrs(), "err", err)
	}
}

func (c *Core) judgeLiveness(ctx context.Context, now time.Time) {
	var obs []services.ClusterObservation
	c.live.mu.Lock()
	since := c.live.since
	seen := make(map[string]time.Time, len(c.live.seen))
	for k, v := range c.live.seen {
		seen[k] = v
	}
	c.live.mu.Unlock()
	c.view(func(st *store.State) {
		cs, _ := st.Clusters(nil)
		for _, cl := range cs {
			o := services.ClusterObservation{Cluster: cl.GetName(), Committed: cl.GetStatus().GetReachability(),
				CommittedStale: cl.GetStatus().GetStaleNodes(), LastHeartbeat: seen[cl.GetName()], Nodes: map[string]time.Time{}}
			for n, t := range st.ReportedNodes(cl.GetName()) {
				if t != 0 {
					o.Nodes[n] = time.Unix(0, t)
				} else {
					o.Nodes[n] = time.Time{}
				}
			}
			obs = append(obs, o)
		}
	})
	ts := services.JudgeLiveness(services.LivenessConfig{ClusterTimeout: c.live.cfg.ClusterTimeout, NodeTimeout: c.live.cfg.NodeTimeout}, now, since, obs)
	if len(ts) == 0 {
		return
	}
	if _, err := c.applyLocal(c.asSelf(ctx), store.CmdSetLiveness, &fedmeshv1.SetLivenessRequest{Clusters: ts}); err != nil {
		c.log.Warn("commit liveness transitions; retrying", "err", err)
		return
	}
	for _, t := range ts {
		c.live.transitions.WithLabelValues(reachabilityLabel(t.GetReachability())).Inc()
		c.log.Info("cluster liveness changed", "cluster", t.GetCluster(), "reachability", t.GetReachability().String(), "stale_nodes", t.GetStaleNodes())
	}
}
