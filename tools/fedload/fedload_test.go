package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
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
