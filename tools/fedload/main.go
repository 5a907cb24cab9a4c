// Command fedload puts a fedmesh federation under a ClusterMesh-shaped
// load on one machine and reports what it costs: it starts real
// fedmesh-controlplane replicas over mTLS on loopback, simulated clusters
// whose syncers (each its own syncer principal) write endpoints,
// identities, services and policies through the real gRPC API at a set
// churn, and simulated agents running the agent's real sync code (watch,
// view, policy compiler, ipcache, enforced-revision reports) over the
// in-memory dataplane, each with its own node principal.
//
// It reports the propagation latency of a change in one cluster until
// every agent of the other clusters reported enforcing it (p50/p90/p99),
// watch events per agent per change, status reports per agent per second,
// and per replica its RSS and CPU per watch event.
//
// Everything runs on 127.0.0.1, bounded by the profile's counts and
// --duration; every process it starts it stops by PID.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func main() {
	p := DefaultProfile()
	var bin, dir, jsonOut, cpArgs string
	var first bool
	var minAvailMiB uint64
	cmd := &cobra.Command{
		Use:          "fedload",
		Short:        "Run a ClusterMesh-shaped load against a local fedmesh federation and report propagation latency and cost",
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if bin == "" {
				return fmt.Errorf("--controlplane-bin is required: build it with 'go build -o bin/fedmesh-controlplane ./controlplane/cmd/fedmesh-controlplane'")
			}
			p.SpreadAgents = !first
			p.MinAvailable = minAvailMiB << 20
			if cpArgs != "" {
				p.ControlPlaneArgs = strings.Fields(cpArgs)
			}
			if dir == "" {
				d, err := os.MkdirTemp("", "fedload-")
				if err != nil {
					return fmt.Errorf("create work dir: %w", err)
				}
				defer os.RemoveAll(d)
				dir = d
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			res, err := Run(ctx, bin, dir, p, log)
			if err != nil {
				return err
			}
			printResult(os.Stdout, res)
			if jsonOut != "" {
				b, _ := json.MarshalIndent(res, "", "  ")
				if err := os.WriteFile(jsonOut, b, 0o644); err != nil {
					return fmt.Errorf("write %s: %w", jsonOut, err)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&bin, "controlplane-bin", "", "path of the fedmesh-controlplane binary to run")
	f.StringVar(&dir, "dir", "", "work directory for the replicas' data and logs (default: a temporary one, removed after)")
	f.StringVar(&jsonOut, "json", "", "also write the result as JSON to this file")
	f.StringVar(&cpArgs, "controlplane-args", "", "extra flags for every replica, space separated (e.g. \"--event-log-size 20000\")")
	f.IntVar(&p.Replicas, "replicas", p.Replicas, "voting control-plane replicas")
	f.IntVar(&p.NonVoters, "read-replicas", 0, "non-voting read replicas, added after the voters; agents prefer them (spread across them)")
	f.IntVar(&p.Clusters, "clusters", p.Clusters, "simulated clusters (Cilium's profile: 200)")
	f.IntVar(&p.AgentsPerCluster, "agents-per-cluster", p.AgentsPerCluster, "simulated agents per cluster (Cilium's profile: 300 nodes); 0 measures the control plane alone (no latency, no agent figures): each agent holds the whole federation, so at millions of endpoints agents do not fit beside the replicas")
	f.IntVar(&p.ClustersWithAgents, "clusters-with-agents", 0, "run agents in only the first N clusters (0: all); each agent holds the whole federation")
	f.IntVar(&p.EndpointsPerCluster, "endpoints-per-cluster", p.EndpointsPerCluster, "endpoints per cluster (Cilium's profile: 15000)")
	f.IntVar(&p.IdentitiesPerCluster, "identities-per-cluster", p.IdentitiesPerCluster, "distinct label sets per cluster (Cilium's profile: 500)")
	f.IntVar(&p.Namespaces, "namespaces", p.Namespaces, "namespaces per cluster")
	f.IntVar(&p.PoliciesPerCluster, "policies-per-cluster", p.PoliciesPerCluster, "NetworkPolicies per cluster")
	f.IntVar(&p.ServicesPerCluster, "services-per-cluster", p.ServicesPerCluster, "exported services per cluster")
	f.Float64Var(&p.Rate, "rate", p.Rate, "changes per second across all clusters (ClusterMesh's mix: ~325)")
	f.DurationVar(&p.Duration, "duration", p.Duration, "how long the churn runs")
	f.DurationVar(&p.Warmup, "warmup", p.Warmup, "churn at the start left out of the latency")
	f.DurationVar(&p.Drain, "drain", p.Drain, "how long to wait for the agents after the churn")
	f.IntVar(&p.LoadBatch, "load-batch", p.LoadBatch, "endpoints per write of the initial load")
	f.Float64Var(&p.Mix.EndpointChurn, "mix-churn", p.Mix.EndpointChurn, "share of changes that create or delete a pod")
	f.Float64Var(&p.Mix.Relabel, "mix-relabel", p.Mix.Relabel, "share of changes that relabel a pod (new identity)")
	f.Float64Var(&p.Mix.Service, "mix-service", p.Mix.Service, "share of changes to a ServiceExport")
	f.Float64Var(&p.Mix.Policy, "mix-policy", p.Mix.Policy, "share of changes to a NetworkPolicy")
	f.DurationVar(&p.MinReportInterval, "agent-min-report-interval", 0, "least time between two status reports of an agent (0: the agent's default; negative: none)")
	f.IntVar(&p.HotEndpoints, "hot-endpoints", 0, "relabels pick among the first N endpoints of a cluster (objects that change again and again); 0: any")
	f.IntVar(&p.SlowAgents, "slow-agents", 0, "the first N agents take --slow-agent-delay over every watch message")
	f.DurationVar(&p.SlowAgentDelay, "slow-agent-delay", 20*time.Millisecond, "delay of a slow agent per watch message")
	f.Int32Var(&p.AgentRecvWindow, "agent-recv-window", 0, "every agent's gRPC receive window in bytes, fixed (0: gRPC's default, growing with the bandwidth-delay product)")
	f.BoolVar(&p.SkipCatchUp, "skip-catch-up", false, "do not add a replica at the end to measure catch-up (it holds a second copy of the state)")
	f.BoolVar(&p.SkipNewAgent, "skip-new-agent", false, "do not add an agent at the end to measure a new agent's initial sync (a second copy of the federation in this process); the first agents' initial sync stands for it")
	f.BoolVar(&p.RestartReplica, "restart-replica", false, "after the churn, stop the last voter and start it again on its data dir: its restore time (snapshot plus the log after it)")
	f.StringVar(&p.ReplicaMemLimit, "replica-gomemlimit", "", "GOMEMLIMIT of every replica (e.g. 3GiB); fedload's own process keeps the environment's")
	f.Uint64Var(&minAvailMiB, "min-available-mib", 0, "abort the run, stopping every process it started, when the machine's MemAvailable drops below this many MiB (0: no guard)")
	f.BoolVar(&first, "agents-on-first-replica", false, "every agent prefers the first replica (default: agent i prefers replica i mod replicas)")
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		os.Exit(1)
	}
}

func printResult(w io.Writer, r *Result) {
	p := r.Profile
	fmt.Fprintf(w, "profile: %d replicas + %d read replicas, %d clusters x %d agents (%d agents), %d endpoints/cluster (%d), %d identities/cluster, %g changes/s for %s\n",
		p.Replicas, p.NonVoters, p.Clusters, p.AgentsPerCluster, r.Agents, p.EndpointsPerCluster, r.Endpoints, p.IdentitiesPerCluster, p.Rate, p.Duration)
	fmt.Fprintf(w, "initial load %s; initial sync of %d agents %s; agent heap %.1f KiB/agent\n",
		r.InitialLoad.Round(time.Millisecond), r.Agents, r.InitialSync.Round(time.Millisecond), float64(r.AgentHeapPerAgent)/1024)
	fmt.Fprintf(w, "churn: %d changes (%d endpoint) at %.1f/s, %d write errors, %d behind; machine load average %.1f on %d cores\n",
		r.Changes, r.EndpointChanges, r.AchievedRate, r.WriteErrors, r.GeneratorBehind, r.LoadAverage, runtime.NumCPU())
	if r.Agents == 0 {
		fmt.Fprintln(w, "no agents: the control plane alone (no propagation or watch figures)")
	} else {
		fmt.Fprintf(w, "propagation (change -> reported by every agent of the other clusters): p50 %s p90 %s p99 %s max %s over %d changes (%d unresolved)\n",
			r.P50.Round(time.Millisecond), r.P90.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond), r.Samples, r.Unresolved)
		fmt.Fprintf(w, "watch events per agent per change %.3f (endpoint events per agent per endpoint change %.3f, node-status events per agent per change %.3f); status reports per agent per second %.2f\n",
			r.EventsPerAgentChange, r.EndpointEventsPerAgentEndpointChange, r.NodeEventsPerAgentChange, r.ReportsPerAgentSecond)
	}
	if p.SlowAgents > 0 {
		fmt.Fprintf(w, "slow agents (%d, %s per message): watch events per agent per change %.3f\n", p.SlowAgents, p.SlowAgentDelay, r.EventsPerSlowAgentChange)
	}
	if r.NewAgentSync > 0 {
		fmt.Fprintf(w, "a new agent's initial sync: %s, %.1f MiB heap\n", r.NewAgentSync.Round(time.Millisecond), float64(r.NewAgentHeap)/(1<<20))
	}
	if r.Agents > 0 {
		fmt.Fprintf(w, "initial sync of the first %d agents: peak heap %.1f MiB (sampled, heap before subtracted); fedload peak RSS %.0f MiB\n",
			r.Agents, float64(r.InitialSyncPeakHeap)/(1<<20), float64(r.FedloadPeakRSS)/(1<<20))
	}
	if r.NewAgentPeakHeap > 0 {
		fmt.Fprintf(w, "a new agent's peak heap during its sync: %.1f MiB\n", float64(r.NewAgentPeakHeap)/(1<<20))
	}
	if r.NewReplicaCatchUp > 0 {
		fmt.Fprintf(w, "a new replica's catch-up (empty data dir to the newest revision): %s, peak RSS %.0f MiB\n", r.NewReplicaCatchUp.Round(time.Millisecond), float64(r.NewReplicaPeakRSS)/(1<<20))
	}
	if r.RestartRestore > 0 {
		fmt.Fprintf(w, "replica %s restarted on its data dir (snapshot restore + log) to the newest revision: %s, peak RSS %.0f MiB\n", r.RestartedReplica, r.RestartRestore.Round(time.Millisecond), float64(r.RestartPeakRSS)/(1<<20))
	}
	for _, s := range r.Snapshots {
		fmt.Fprintf(w, "snapshot by %s: %.1f MiB written in %s\n", s.Replica, float64(s.Bytes)/(1<<20), s.Write.Round(100*time.Millisecond))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "replica\tsuffrage\tRSS MiB\tpeak MiB\tsnapshot MiB\tCPU s (churn)\twatchers\tevents sent\tCPU us/event")
	for _, rr := range r.Replicas {
		suffrage := "voter"
		if rr.NonVoter {
			suffrage = "nonvoter"
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.1f\t%.2f\t%d\t%d\t%.2f\n", rr.ID, suffrage, float64(rr.RSS)/(1<<20), float64(rr.PeakRSS)/(1<<20), float64(rr.SnapshotBytes)/(1<<20), rr.CPUSeconds, rr.Watchers, rr.EventsSent, rr.CPUMicrosPerWatchEvt)
	}
	tw.Flush()
}
