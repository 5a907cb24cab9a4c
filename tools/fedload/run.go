package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/auth"
)

// Result is what one run measured.
type Result struct {
	Profile Profile

	Agents               int
	Endpoints            int
	InitialLoad          time.Duration // all clusters' objects written
	InitialSync          time.Duration // every agent reported the loaded revision
	AgentHeapPerAgent    uint64        // bytes of Go heap per simulated agent (all agents in this process)
	Changes              int           // changes written during the churn
	EndpointChanges      int
	WriteErrors          int
	GeneratorBehind      int // changes the generator could not issue in time
	AchievedRate         float64
	Samples              int // changes whose propagation was measured
	Unresolved           int // of those, not reported by every other cluster's agent before the drain ended
	P50, P90, P99, Max   time.Duration
	EventsPerAgentChange float64 // watch events each agent received per change
	// EventsPerSlowAgentChange is the same for the slow agents alone.
	EventsPerSlowAgentChange             float64
	EndpointEventsPerAgentEndpointChange float64
	NodeEventsPerAgentChange             float64
	ReportsPerAgentSecond                float64
	Replicas                             []ReplicaResult
	// LoadAverage is the machine's 1-minute load average at the end of
	// the churn: on a shared machine, what else ran.
	LoadAverage  float64
	NewAgentSync time.Duration // a late agent's initial sync at the end
	// NewReplicaCatchUp is how long a replica added at the end (empty data
	// dir, as a read replica) took to apply the newest revision.
	NewReplicaCatchUp time.Duration
	NewAgentHeap      uint64
	// NewAgentPeakHeap is the highest Go heap the late agent's sync took
	// (sampled without forcing a collection, the heap before it
	// subtracted).
	NewAgentPeakHeap uint64
	// InitialSyncPeakHeap is the same for the first agents' initial
	// sync, all of them together.
	InitialSyncPeakHeap uint64
	// FedloadPeakRSS is fedload's own peak RSS (VmHWM) after the agents'
	// initial sync: the agents, the syncers' generators and the runtime.
	FedloadPeakRSS uint64
	// Snapshots are the Raft snapshots the voters wrote during the run.
	Snapshots []snapshotTaken
	// RestartedReplica took RestartRestore, from starting its process
	// again on its data dir to serving the newest revision, and peaked
	// at RestartPeakRSS meanwhile (--restart-replica).
	RestartedReplica string
	RestartRestore   time.Duration
	RestartPeakRSS   uint64
	// NewReplicaPeakRSS is the catch-up replica's peak RSS when it had
	// caught up.
	NewReplicaPeakRSS uint64
}

// ReplicaResult is one replica's cost over the churn.
type ReplicaResult struct {
	ID                   string
	NonVoter             bool
	SnapshotBytes        int64 // the newest Raft snapshot on disk at the end (0: none taken yet)
	RSS, PeakRSS         uint64
	CPUSeconds           float64 // during the churn
	Watchers             int     // simulated agents whose watch it served
	EventsSent           int64   // watch events those agents received in the churn
	CPUMicrosPerWatchEvt float64 // CPUSeconds / EventsSent (upper bound: includes Raft and FSM work)
}

type sample struct {
	cluster int
	rev     uint64
	sent    time.Time
}

// Run runs the profile against a federation of bin replicas in dir.
func Run(ctx context.Context, bin, dir string, p Profile, log *slog.Logger) (_ *Result, err error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if p.MinAvailable > 0 {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		go guardMemory(ctx, p.MinAvailable, cancel)
		// Whatever step the abort interrupted, the reason is the guard.
		defer func() {
			if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
				err = cause
			}
		}()
	}
	b, _ := p.blockBits()
	lay := layout{bits: b}
	res := &Result{Profile: p, Agents: p.agentClusters() * p.AgentsPerCluster, Endpoints: p.Clusters * p.EndpointsPerCluster}

	log.Info("starting control plane", "replicas", p.Replicas, "read_replicas", p.NonVoters)
	fed, err := startFederation(ctx, bin, dir, p.Replicas, p.NonVoters, p.ControlPlaneArgs, p.ReplicaMemLimit)
	if err != nil {
		return nil, err
	}
	defer fed.stop()
	snaps := &snapWatcher{reps: slices.Clone(fed.replicas)}
	snapCtx, stopSnaps := context.WithCancel(ctx)
	defer stopSnaps()
	go snaps.run(snapCtx)
	admin, err := fed.dial(auth.Admin(), fed.voterAddrs())
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	for c := range p.Clusters {
		if err := registerCluster(ctx, admin, lay, c); err != nil {
			return nil, err
		}
	}
	syncers := make([]*simSyncer, p.Clusters)
	for c := range p.Clusters {
		if syncers[c], err = newSyncer(fed, p, lay, c); err != nil {
			return nil, err
		}
		defer syncers[c].close()
	}

	log.Info("initial load", "clusters", p.Clusters, "endpoints", res.Endpoints)
	start := time.Now()
	var loaded atomic.Uint64
	var lwg sync.WaitGroup
	sem := make(chan struct{}, 4)
	loadErrs := make([]error, len(syncers))
	for i, s := range syncers {
		lwg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			rev, err := s.load(ctx)
			loadErrs[i] = err
			for {
				old := loaded.Load()
				if rev <= old || loaded.CompareAndSwap(old, rev) {
					break
				}
			}
		})
	}
	lwg.Wait()
	if err := errors.Join(loadErrs...); err != nil {
		return nil, err
	}
	res.InitialLoad = time.Since(start)

	log.Info("starting simulated agents", "agents", res.Agents)
	heapBefore := heapInUse()
	var agents []*simAgent
	actx, stopAgents := context.WithCancel(ctx)
	var agentsDone sync.WaitGroup
	defer func() { stopAgents(); agentsDone.Wait() }()
	for c := range p.agentClusters() {
		for i := range p.AgentsPerCluster {
			order := 0
			if p.SpreadAgents {
				order = len(agents)
			}
			a, err := newSimAgent(fed, p, lay, c, i, order)
			if err != nil {
				return nil, err
			}
			defer a.client.Close()
			if len(agents) < p.SlowAgents {
				a.slow = p.SlowAgentDelay
			}
			agents = append(agents, a)
		}
	}
	start = time.Now()
	peak := startHeapPeak()
	for _, a := range agents {
		agentsDone.Go(func() { _ = a.agent.Run(actx) })
	}
	if err := waitReported(ctx, agents, loaded.Load(), 10*time.Minute); err != nil {
		return nil, fmt.Errorf("initial sync: %w", err)
	}
	res.InitialSync = time.Since(start)
	res.InitialSyncPeakHeap = max(peak.end(), heapBefore) - heapBefore
	res.FedloadPeakRSS = selfMem().PeakRSS
	if len(agents) > 0 {
		res.AgentHeapPerAgent = (max(heapInUse(), heapBefore) - heapBefore) / uint64(len(agents))
	}

	log.Info("churn", "rate", p.Rate, "duration", p.Duration)
	mon := newMonitor(fed)
	monCtx, stopMon := context.WithCancel(ctx)
	monDone := make(chan struct{})
	go func() { mon.run(monCtx); close(monDone) }()
	defer stopMon()
	cpuStart := mon.cpu()
	evStart := snapshotCounts(agents)
	reportsStart := reportCounts(agents)
	churnStart := time.Now()
	samples, stats := churn(ctx, syncers, p)
	churnEnd := time.Now()
	res.LoadAverage = loadAverage()
	reportsEnd := reportCounts(agents)
	res.Changes, res.EndpointChanges, res.WriteErrors, res.GeneratorBehind = stats.changes, stats.endpointChanges, stats.errors, stats.behind
	res.AchievedRate = float64(stats.changes) / churnEnd.Sub(churnStart).Seconds()

	var last uint64
	for _, s := range samples {
		last = max(last, s.rev)
	}
	log.Info("draining", "revision", last)
	drainErr := waitReported(ctx, agents, last, p.Drain)
	// Events and fan-out CPU are counted until every agent caught up: an
	// agent behind at the end of the churn still has events coming.
	cpuEnd := mon.cpu()
	evEnd := snapshotCounts(agents)

	// Propagation: from sending the change to the moment the last agent of
	// every other cluster reported a revision that includes it.
	var lats []time.Duration
	for _, s := range samples {
		if len(agents) == 0 {
			break // no one to report a change enforced
		}
		if s.sent.Before(churnStart.Add(p.Warmup)) {
			continue
		}
		if !slices.ContainsFunc(agents, func(a *simAgent) bool { return a.cluster != s.cluster }) {
			continue // no agent outside the changed cluster to report it (--clusters-with-agents 1)
		}
		res.Samples++
		var worst time.Duration
		ok := true
		for _, a := range agents {
			if a.cluster == s.cluster {
				continue
			}
			at, found := a.firstReportAtLeast(s.rev)
			if !found {
				ok = false
				break
			}
			worst = max(worst, at.Sub(s.sent))
		}
		if !ok {
			res.Unresolved++
			continue
		}
		lats = append(lats, worst)
	}
	slices.Sort(lats)
	res.P50, res.P90, res.P99 = quantile(lats, 0.5), quantile(lats, 0.9), quantile(lats, 0.99)
	if len(lats) > 0 {
		res.Max = lats[len(lats)-1]
	}

	// Without agents (--agents-per-cluster 0: the control plane's own
	// cost) there is nothing to divide by.
	n := float64(len(agents))
	d := evEnd.sub(evStart)
	if stats.changes > 0 && n > 0 {
		res.EventsPerAgentChange = float64(d.events) / n / float64(stats.changes)
		res.NodeEventsPerAgentChange = float64(d.node) / n / float64(stats.changes)
	}
	if stats.endpointChanges > 0 && n > 0 {
		res.EndpointEventsPerAgentEndpointChange = float64(d.endpoint) / n / float64(stats.endpointChanges)
	}
	if p.SlowAgents > 0 && stats.changes > 0 {
		var slow int64
		for i := range min(p.SlowAgents, len(agents)) {
			slow += evEnd.perAgent[i] - evStart.perAgent[i]
		}
		res.EventsPerSlowAgentChange = float64(slow) / float64(min(p.SlowAgents, len(agents))) / float64(stats.changes)
	}
	if n > 0 {
		res.ReportsPerAgentSecond = float64(reportsEnd-reportsStart) / n / churnEnd.Sub(churnStart).Seconds()
	}

	byReplica := map[string]*ReplicaResult{}
	res.Replicas = make([]ReplicaResult, len(fed.replicas))
	for i, r := range fed.replicas {
		res.Replicas[i] = ReplicaResult{ID: r.id, NonVoter: r.nonVoter, CPUSeconds: cpuEnd[i] - cpuStart[i]}
		byReplica[r.grpcAddr] = &res.Replicas[i]
	}
	for i, a := range agents {
		a.mu.Lock()
		rr := byReplica[a.replica]
		a.mu.Unlock()
		if rr != nil {
			rr.Watchers++
			rr.EventsSent += evEnd.perAgent[i] - evStart.perAgent[i]
		}
	}

	// A late agent: the initial sync of a node joining a loaded federation.
	if p.AgentsPerCluster > 0 && !p.SkipNewAgent {
		heapBefore = heapInUse()
		peak := startHeapPeak()
		late, err := newSimAgent(fed, p, lay, 0, p.AgentsPerCluster, 0)
		if err != nil {
			return nil, err
		}
		defer late.client.Close()
		lateStart := time.Now()
		agentsDone.Go(func() { _ = late.agent.Run(actx) })
		if err := waitReported(ctx, []*simAgent{late}, last, 10*time.Minute); err == nil {
			res.NewAgentSync = time.Since(lateStart)
			res.NewAgentPeakHeap = max(peak.end(), heapBefore) - heapBefore
			res.NewAgentHeap = max(heapInUse(), heapBefore) - heapBefore
		} else {
			peak.end()
			log.Warn("new agent's initial sync", "err", err)
		}
	}
	// Nothing below involves the agents; at millions of endpoints their
	// copies of the federation would crowd out the replicas started next.
	stopAgents()
	agentsDone.Wait()
	agents = nil
	debug.FreeOSMemory()

	stopMon()
	<-monDone
	// After the monitor stopped: a restart changes a replica's process,
	// the new replica fed.replicas.
	if p.RestartReplica {
		i := p.Replicas - 1
		log.Info("restarting a replica from its snapshot", "replica", fed.replicas[i].id)
		d, peak, err := fed.restart(ctx, bin, p.ControlPlaneArgs, i, last)
		if err != nil {
			log.Warn("replica restart", "err", err)
		} else {
			res.RestartedReplica, res.RestartRestore, res.RestartPeakRSS = fed.replicas[i].id, d, peak
		}
	}
	if p.SkipCatchUp {
		// not measured
	} else if d, err := fed.catchUp(ctx, bin, p.ControlPlaneArgs, last); err != nil {
		log.Warn("new replica catch-up", "err", err)
	} else {
		res.NewReplicaCatchUp = d
		if ps, err := readProc(fed.replicas[len(fed.replicas)-1].cmd.Process.Pid); err == nil {
			res.NewReplicaPeakRSS = ps.PeakRSS
		}
	}
	stopSnaps()
	res.Snapshots = snaps.snapshots()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for i := range res.Replicas {
		res.Replicas[i].SnapshotBytes = newestSnapshot(filepath.Join(fed.replicas[i].dir, "data", "snapshots"))
		res.Replicas[i].RSS, res.Replicas[i].PeakRSS = mon.rss(i)
		if ev := res.Replicas[i].EventsSent; ev > 0 {
			res.Replicas[i].CPUMicrosPerWatchEvt = res.Replicas[i].CPUSeconds * 1e6 / float64(ev)
		}
	}
	if drainErr != nil {
		log.Warn("agents did not all catch up before the drain ended", "err", drainErr)
	}
	return res, nil
}

// heapInUse is the live Go heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// waitReported waits until every agent reported at least rev.
func waitReported(ctx context.Context, agents []*simAgent, rev uint64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		behind := 0
		var worst *simAgent
		for _, a := range agents {
			if r, _ := a.reported(); r < rev {
				behind++
				worst = a
			}
		}
		if behind == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			r, _ := worst.reported()
			return fmt.Errorf("%d of %d agents have not reported revision %d after %s (e.g. %s/%s at %d)", behind, len(agents), rev, timeout, clusterName(worst.cluster), worst.node, r)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

type eventCounts struct {
	events, endpoint, node int64
	perAgent               []int64
}

func snapshotCounts(agents []*simAgent) eventCounts {
	var c eventCounts
	for _, a := range agents {
		e := a.events.Load()
		c.events += e
		c.endpoint += a.endpointEvents.Load()
		c.node += a.nodeEvents.Load()
		c.perAgent = append(c.perAgent, e)
	}
	return c
}

func (c eventCounts) sub(o eventCounts) eventCounts {
	return eventCounts{events: c.events - o.events, endpoint: c.endpoint - o.endpoint, node: c.node - o.node}
}

func reportCounts(agents []*simAgent) int {
	n := 0
	for _, a := range agents {
		_, k := a.reported()
		n += k
	}
	return n
}

// newestSnapshot is the size of the newest Raft file snapshot under dir
// (hashicorp/raft names them term-index-time, so the greatest name is the
// newest).
func newestSnapshot(dir string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) == 0 {
		return 0
	}
	fi, err := os.Stat(filepath.Join(dir, ents[len(ents)-1].Name(), "state.bin"))
	if err != nil {
		return 0
	}
	return fi.Size()
}
