package main

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"time"
)

// Profile is the shape and churn of one load run. The defaults are
// Cilium's ClusterMesh scale profile (200 clusters x 300 nodes, 15,000
// endpoints and 500 identities per cluster) divided down to what a
// 2-core machine holds, at ClusterMesh's ~325 changes/s.
type Profile struct {
	Replicas         int
	NonVoters        int // read replicas; agents prefer them
	Clusters         int
	AgentsPerCluster int // simulated agents (the agent's real sync code)
	// ClustersWithAgents limits the agents to the first clusters (0: all);
	// every agent holds the whole federation, so agents, not the control
	// plane, bound what one machine holds.
	ClustersWithAgents   int
	EndpointsPerCluster  int
	IdentitiesPerCluster int
	Namespaces           int
	PoliciesPerCluster   int
	ServicesPerCluster   int
	Rate                 float64 // changes per second, all clusters together
	Duration             time.Duration
	Drain                time.Duration // how long to wait for agents after the churn
	Warmup               time.Duration // churn not counted in the latency
	LoadBatch            int           // endpoints per write of the initial load
	Mix                  Mix
	// ReplicaOrder makes agent i prefer replica i mod replicas (the
	// configured-list-order preference): fan-out split across replicas.
	SpreadAgents bool
	// HotEndpoints, when set, makes relabels pick among the first this
	// many endpoint slots of a cluster: objects that change again and
	// again, which a watcher that is behind gets once (coalescing).
	HotEndpoints int
	// SlowAgents are the first agents, which take SlowAgentDelay over
	// every watch message (a slow node or link), so the control plane
	// finds them behind.
	SlowAgents     int
	SlowAgentDelay time.Duration
	// AgentRecvWindow, when set, is every agent's gRPC receive window in
	// bytes (fixed: no BDP growth). It bounds what a replica can queue
	// toward a slow agent; past it the replica's Send blocks and the
	// watcher falls behind in the event log, where coalescing works.
	AgentRecvWindow int32
	// MinReportInterval is each agent's agent.Config.MinReportInterval
	// (0: the agent's default; negative: none).
	MinReportInterval time.Duration
	// ControlPlaneArgs are passed to every replica (e.g. --event-log-size).
	ControlPlaneArgs []string
	// SkipCatchUp leaves out the replica added at the end: at millions of
	// endpoints a second full copy of the state may not fit beside the
	// replicas being measured.
	SkipCatchUp bool
	// SkipNewAgent leaves out the agent added at the end: at millions of
	// endpoints a second agent's copy of the federation may not fit; the
	// first agents' initial sync is then the new agent's figure.
	SkipNewAgent bool
	// RestartReplica stops the last voter after the churn (agents stopped
	// first) and starts it again on its data dir, measuring how long it
	// takes to restore its snapshot, replay the log after it and serve
	// the newest revision.
	RestartReplica bool
	// ReplicaMemLimit, when set, is every replica's GOMEMLIMIT (e.g.
	// "3GiB"); fedload's own process keeps its own.
	ReplicaMemLimit string
	// MinAvailable, when set, aborts the run (every process stopped) when
	// the machine's MemAvailable drops below it, in bytes: on a shared
	// machine a run at millions of endpoints must not take others down.
	MinAvailable uint64
}

// Mix is the share of each change kind; they need not sum to 1.
type Mix struct {
	EndpointChurn float64 // a pod goes or comes (delete, or create in a free slot)
	Relabel       float64 // a pod's labels change: a new identity for its IP
	Service       float64 // a ServiceExport's backends change
	Policy        float64 // a NetworkPolicy changes
}

// DefaultMix approximates ClusterMesh's change mix: pod churn dominates,
// identities change with it, services and policies rarely.
var DefaultMix = Mix{EndpointChurn: 0.60, Relabel: 0.25, Service: 0.10, Policy: 0.05}

// DefaultProfile is Cilium's profile divided by 10 in clusters and by 20 in
// endpoints per cluster: 20 clusters x 750 endpoints (15,000 in all) and
// 25 identities per cluster, with 2 simulated agents per cluster.
func DefaultProfile() Profile {
	return Profile{
		Replicas: 3, Clusters: 20, AgentsPerCluster: 2, EndpointsPerCluster: 750,
		IdentitiesPerCluster: 25, Namespaces: 5, PoliciesPerCluster: 10, ServicesPerCluster: 10,
		Rate: 325, Duration: 60 * time.Second, Drain: 30 * time.Second, Warmup: 5 * time.Second,
		LoadBatch: 500, Mix: DefaultMix, SpreadAgents: true,
	}
}

// Validate rejects a profile that cannot run, naming the field.
func (p Profile) Validate() error {
	var errs []error
	check := func(ok bool, f string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(f, args...))
		}
	}
	check(p.Replicas >= 1, "--replicas %d: need at least 1", p.Replicas)
	check(p.NonVoters >= 0 && p.NonVoters <= 16, "--read-replicas %d: need 0..16", p.NonVoters)
	check(p.Clusters >= 2, "--clusters %d: need at least 2 (latency is measured across clusters)", p.Clusters)
	check(p.AgentsPerCluster >= 0, "--agents-per-cluster %d: need 0 (the control plane alone) or more", p.AgentsPerCluster)
	check(p.HotEndpoints >= 0 && p.HotEndpoints <= p.EndpointsPerCluster, "--hot-endpoints %d: need 0..endpoints-per-cluster", p.HotEndpoints)
	check(p.SlowAgents >= 0 && p.SlowAgentDelay >= 0 && p.SlowAgentDelay <= time.Second, "--slow-agents %d --slow-agent-delay %s: need >= 0 and a delay up to 1s", p.SlowAgents, p.SlowAgentDelay)
	check(p.ClustersWithAgents >= 0, "--clusters-with-agents %d: need 0 (all) or more", p.ClustersWithAgents)
	check(p.EndpointsPerCluster >= 1, "--endpoints-per-cluster %d: need at least 1", p.EndpointsPerCluster)
	check(p.IdentitiesPerCluster >= 1, "--identities-per-cluster %d: need at least 1", p.IdentitiesPerCluster)
	check(p.Namespaces >= 1 && p.Namespaces <= p.IdentitiesPerCluster, "--namespaces %d: need 1..identities-per-cluster", p.Namespaces)
	check(p.Rate > 0 && p.Rate <= 100_000, "--rate %g: need (0, 100000] changes/s", p.Rate)
	check(p.Duration > 0 && p.Duration <= time.Hour, "--duration %s: need (0, 1h]", p.Duration)
	check(p.Warmup >= 0 && p.Warmup < p.Duration, "--warmup %s: need [0, duration)", p.Warmup)
	check(p.LoadBatch >= 1 && p.LoadBatch <= 1000, "--load-batch %d: need 1..1000", p.LoadBatch)
	if _, err := p.blockBits(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// blockBits sizes each cluster's pod CIDR inside 10.0.0.0/8: room for
// twice its endpoints (churn creates into free slots) and its agents' node
// ranges.
func (p Profile) blockBits() (int, error) {
	need := 2*p.EndpointsPerCluster + 256*(p.AgentsPerCluster+1)
	b := bits.Len(uint(need))
	if p.Clusters<<b > 1<<24 {
		return 0, fmt.Errorf("%d clusters x %d endpoints do not fit in 10.0.0.0/8; lower --clusters or --endpoints-per-cluster", p.Clusters, p.EndpointsPerCluster)
	}
	return b, nil
}

// layout places clusters, endpoint slots and agent nodes in 10.0.0.0/8.
type layout struct{ bits int }

func (l layout) clusterCIDR(c int) string {
	return fmt.Sprintf("%s/%d", l.addr(c, 0), 32-l.bits)
}

func (l layout) addr(c, off int) netip.Addr {
	v := uint32(10)<<24 | uint32(c)<<l.bits | uint32(off)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// endpointIP is slot s's address; slots start after the agents' /24s
// (one more for the late agent).
func (l layout) endpointIP(c, s, agents int) string { return l.addr(c, 256*(agents+1)+s+1).String() }

// nodeCIDR is agent a's pod range: the a-th /24 of the cluster's block.
func (l layout) nodeCIDR(c, a int) string { return fmt.Sprintf("%s/24", l.addr(c, 256*a)) }

// agentClusters is how many clusters run agents.
func (p Profile) agentClusters() int {
	if p.ClustersWithAgents == 0 || p.ClustersWithAgents > p.Clusters {
		return p.Clusters
	}
	return p.ClustersWithAgents
}
