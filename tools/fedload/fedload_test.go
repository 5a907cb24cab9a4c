package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
)

func TestMain(m *testing.M) { os.Exit(cptest.Main(m)) }

func smallProfile() Profile {
	p := DefaultProfile()
	p.Clusters, p.AgentsPerCluster, p.EndpointsPerCluster, p.IdentitiesPerCluster = 3, 2, 40, 6
	p.Namespaces, p.PoliciesPerCluster, p.ServicesPerCluster = 2, 2, 2
	p.Rate, p.Duration, p.Warmup, p.Drain = 30, 4*time.Second, time.Second, 20*time.Second
	return p
}

func run(t testing.TB, p Profile) *Result {
	t.Helper()
	bin, err := cptest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, bin, t.TempDir(), p, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestEveryChangeReachesEveryAgentOfTheOtherClusters runs a small profile
// end to end: real replicas over mTLS, syncer and node principals, the
// agent's real sync loop. Every measured change must be reported enforced
// by every agent of the other clusters, and each agent must have received
// each endpoint change (the default export scope shares everything).
func TestEveryChangeReachesEveryAgentOfTheOtherClusters(t *testing.T) {
	p := smallProfile()
	res := run(t, p)
	var b strings.Builder
	printResult(&b, res)
	t.Log("\n" + b.String())
	// Changes the generator could not issue in time (a starved machine)
	// are reported, not failed: they are load, not correctness.
	if res.WriteErrors != 0 {
		t.Errorf("churn: %d writes failed at %g/s, want none", res.WriteErrors, p.Rate)
	}
	if res.Samples == 0 || res.Unresolved != 0 {
		t.Fatalf("measured %d changes, %d never reported by every other cluster's agent; want some, all reported", res.Samples, res.Unresolved)
	}
	if res.P99 <= 0 || res.P99 > p.Drain || res.P50 > res.P99 {
		t.Errorf("latency p50 %s p99 %s: want 0 < p50 <= p99 <= drain %s", res.P50, res.P99, p.Drain)
	}
	// Every endpoint change is one event to every agent, unless coalesced
	// with a later change of the same endpoint (never more than one).
	if e := res.EndpointEventsPerAgentEndpointChange; e < 0.5 || e > 1.0001 {
		t.Errorf("endpoint events per agent per endpoint change = %.3f, want (0.5, 1]", e)
	}
	watchers := 0
	for _, r := range res.Replicas {
		watchers += r.Watchers
		if r.RSS == 0 {
			t.Errorf("replica %s: no RSS measured", r.ID)
		}
	}
	if watchers != res.Agents {
		t.Errorf("replicas served %d watchers, want one per agent (%d)", watchers, res.Agents)
	}
	if res.NewAgentSync <= 0 {
		t.Error("the late agent never reported the newest revision")
	}
	if res.NewReplicaCatchUp <= 0 {
		t.Error("the replica added at the end never reached the newest revision")
	}
}

// TestControlPlaneAloneMeasuresReplicas runs without agents (how the
// control plane's memory is measured at millions of endpoints, where agents
// holding the whole federation do not fit beside it): the churn and the
// replicas are measured and the result has no undefined agent figures.
func TestControlPlaneAloneMeasuresReplicas(t *testing.T) {
	p := smallProfile()
	p.AgentsPerCluster, p.Duration, p.Warmup = 0, 2*time.Second, 0
	res := run(t, p)
	if res.Agents != 0 || res.NewAgentSync != 0 || res.Samples != 0 {
		t.Errorf("agents %d, late agent sync %s, latency samples %d: want no agent figures", res.Agents, res.NewAgentSync, res.Samples)
	}
	if res.Changes == 0 || res.WriteErrors != 0 {
		t.Errorf("churn: %d changes, %d errors; want some, none", res.Changes, res.WriteErrors)
	}
	for _, r := range res.Replicas {
		if r.RSS == 0 {
			t.Errorf("replica %s: no RSS measured", r.ID)
		}
	}
	if _, err := json.Marshal(res); err != nil {
		t.Errorf("result does not encode (an undefined ratio?): %v", err)
	}
}

func TestProfileValidationNamesTheFlag(t *testing.T) {
	tests := []struct {
		name string
		mut  func(*Profile)
		want string
	}{
		{"one cluster", func(p *Profile) { p.Clusters = 1 }, "--clusters 1"},
		{"negative agents", func(p *Profile) { p.AgentsPerCluster = -1 }, "--agents-per-cluster -1"},
		{"zero rate", func(p *Profile) { p.Rate = 0 }, "--rate 0"},
		{"more namespaces than identities", func(p *Profile) { p.Namespaces = 30 }, "--namespaces 30"},
		{"too big for 10/8", func(p *Profile) { p.Clusters, p.EndpointsPerCluster = 1000, 15000 }, "do not fit in 10.0.0.0/8"},
		{"warmup past the end", func(p *Profile) { p.Warmup = p.Duration }, "--warmup"},
	}
	if err := DefaultProfile().Validate(); err != nil {
		t.Fatalf("default profile: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := DefaultProfile()
			tt.mut(&p)
			err := p.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

func TestLayoutKeepsEveryAddressInsideItsCluster(t *testing.T) {
	p := DefaultProfile()
	b, err := p.blockBits()
	if err != nil {
		t.Fatal(err)
	}
	l := layout{bits: b}
	for c := range 3 {
		own := netip.MustParsePrefix(l.clusterCIDR(c))
		next := netip.MustParsePrefix(l.clusterCIDR(c + 1))
		if own.Overlaps(next) {
			t.Fatalf("clusters %d and %d overlap: %s, %s", c, c+1, own, next)
		}
		for _, ip := range []string{l.endpointIP(c, 0, p.AgentsPerCluster), l.endpointIP(c, 2*p.EndpointsPerCluster-1, p.AgentsPerCluster)} {
			if !own.Contains(netip.MustParseAddr(ip)) {
				t.Errorf("endpoint %s outside its cluster's %s", ip, own)
			}
		}
		for a := range p.AgentsPerCluster {
			n := netip.MustParsePrefix(l.nodeCIDR(c, a))
			if !own.Contains(n.Addr()) || n.Contains(netip.MustParseAddr(l.endpointIP(c, 0, p.AgentsPerCluster))) {
				t.Errorf("node range %s: want inside %s and apart from the endpoint slots", n, own)
			}
		}
	}
}

// BenchmarkPropagation runs the small profile once per iteration and
// reports propagation latency and fan-out per agent.
func BenchmarkPropagation(b *testing.B) {
	for b.Loop() {
		res := run(b, smallProfile())
		b.ReportMetric(float64(res.P50.Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(res.P99.Microseconds())/1000, "p99-ms")
		b.ReportMetric(res.EventsPerAgentChange, "events/agent/change")
		b.ReportMetric(res.ReportsPerAgentSecond, "reports/agent/s")
	}
}

// TestRestartAndSnapshotsAreMeasured forces snapshots on a small profile,
// restarts a voter on its data dir and adds a replica: each must be
// reported, and the restarted replica must serve the newest revision.
func TestRestartAndSnapshotsAreMeasured(t *testing.T) {
	p := smallProfile()
	p.Duration, p.Warmup = 3*time.Second, 0
	p.RestartReplica, p.SkipNewAgent = true, true
	p.ControlPlaneArgs = []string{"--snapshot-interval", "200ms", "--snapshot-threshold", "16"}
	res := run(t, p)
	if res.RestartRestore <= 0 || res.RestartedReplica != "r3" || res.RestartPeakRSS == 0 {
		t.Errorf("restart: replica %q, %s, peak RSS %d; want r3 measured", res.RestartedReplica, res.RestartRestore, res.RestartPeakRSS)
	}
	if res.NewAgentSync != 0 {
		t.Errorf("new agent measured (%s) with SkipNewAgent", res.NewAgentSync)
	}
	if res.NewReplicaCatchUp <= 0 || res.NewReplicaPeakRSS == 0 {
		t.Errorf("catch-up %s, peak RSS %d: want both measured", res.NewReplicaCatchUp, res.NewReplicaPeakRSS)
	}
	if res.InitialSyncPeakHeap == 0 || res.FedloadPeakRSS == 0 {
		t.Errorf("initial sync peak heap %d, fedload peak RSS %d: want both measured", res.InitialSyncPeakHeap, res.FedloadPeakRSS)
	}
	for _, r := range res.Replicas {
		if r.SnapshotBytes == 0 {
			t.Errorf("replica %s: no snapshot on disk with a threshold of 16 entries", r.ID)
		}
	}
}

// TestSnapshotWatcherTimesTheTmpDirectory plays hashicorp/raft's file
// snapshot store: a "<name>.tmp" directory renamed to "<name>" once
// written. The watcher reports it once, with the final state.bin's size
// and at least the time the directory stayed .tmp.
func TestSnapshotWatcherTimesTheTmpDirectory(t *testing.T) {
	r := &replicaProc{id: "r1", dir: t.TempDir()}
	snaps := filepath.Join(r.dir, "data", "snapshots")
	tmp := filepath.Join(snaps, "2-100-1.tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	w := &snapWatcher{reps: []*replicaProc{r}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.run(ctx)
	// The watcher polls every 100 ms: it sees the directory at most one
	// poll late, so at least 500 - 100 ms (less scheduling jitter) of it.
	time.Sleep(500 * time.Millisecond)
	if err := os.WriteFile(filepath.Join(tmp, "state.bin"), make([]byte, 1234), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(snaps, "2-100-1")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(w.snapshots()) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a second report would land here
	got := w.snapshots()
	if len(got) != 1 {
		t.Fatalf("snapshots reported: %+v; want exactly one", got)
	}
	if got[0].Replica != "r1" || got[0].Bytes != 1234 || got[0].Write < 300*time.Millisecond {
		t.Errorf("snapshot %+v; want r1, 1234 bytes, written over >= 300ms", got[0])
	}
}

// TestMemoryGuardAbortsBelowTheFloor: a floor above any machine's memory
// cancels the run with a cause naming the flag; one of 1 byte does not.
func TestMemoryGuardAbortsBelowTheFloor(t *testing.T) {
	for _, tc := range []struct {
		name  string
		floor uint64
		abort bool
	}{
		{"floor above the machine", 1 << 62, true},
		{"floor of one byte", 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			go guardMemory(ctx, tc.floor, cancel)
			select {
			case <-ctx.Done():
				if !tc.abort {
					t.Fatalf("aborted: %v", context.Cause(ctx))
				}
				if !strings.Contains(context.Cause(ctx).Error(), "--min-available") {
					t.Errorf("cause %q does not name the flag", context.Cause(ctx))
				}
			case <-time.After(2 * time.Second):
				if tc.abort {
					t.Fatal("not aborted within 2s")
				}
			}
		})
	}
}
