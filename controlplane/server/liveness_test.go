package server

import (
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// A ClusterSetIP import gets one VIP per family from the default clusterset
// CIDRs; a cluster whose syncer heartbeats is reachable, becomes
// unreachable (in its status and in the imports it contributes to) when
// the heartbeats stop for the timeout, and is re-admitted by the next one.
func TestClusterSetIPsAndLivenessFollowHeartbeats(t *testing.T) {
	r, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "a", "10.1.0.0/16", "fd00:1::/48")
	if _, err := c.mcs.ExportServices(ctx, &fedmeshv1.ExportServicesRequest{Cluster: "a", Exports: []*fedmeshv1.ServiceExport{{
		Namespace: "demo", Name: "redis", Affinity: fedmeshv1.Affinity_AFFINITY_LOCAL,
		Ports:     []*fedmeshv1.ServicePort{{Name: "redis", Port: 6379}},
		Backends:  []string{"10.1.0.5"},
		Endpoints: []*fedmeshv1.ServiceBackend{{Address: "10.1.0.5", Node: "n1", Ready: true}},
	}}}); err != nil {
		t.Fatal(err)
	}
	imports := func() *fedmeshv1.ServiceImport {
		resp, err := c.mcs.ListServiceImports(linearizable(ctx), &fedmeshv1.ListServiceImportsRequest{})
		if err != nil || len(resp.GetImports()) != 1 {
			t.Fatalf("list imports: %v, %v", resp, err)
		}
		return resp.GetImports()[0]
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("ClusterSetIPs", func() bool { return len(imports().GetIps()) == 2 })
	imp := imports()
	for i, want := range DefaultClustersetCIDRs {
		if a, err := netip.ParseAddr(imp.GetIps()[i]); err != nil || !want.Contains(a) {
			t.Errorf("ip %d = %q, want one inside %s", i, imp.GetIps()[i], want)
		}
	}
	if imp.GetAffinity() != fedmeshv1.Affinity_AFFINITY_LOCAL || len(imp.GetClusters()[0].GetEndpoints()) != 1 {
		t.Errorf("import = %v; want affinity local and the backend with its node", imp)
	}

	reach := func() fedmeshv1.Reachability {
		resp, err := c.cluster.GetCluster(linearizable(ctx), &fedmeshv1.GetClusterRequest{Name: "a"})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetCluster().GetStatus().GetReachability()
	}
	if got := reach(); got != fedmeshv1.Reachability_REACHABILITY_UNSPECIFIED {
		t.Fatalf("before any heartbeat: %v, want unspecified (not judged)", got)
	}
	beat := func() {
		resp, err := c.cluster.Heartbeat(ctx, &fedmeshv1.HeartbeatRequest{Cluster: "a"})
		if err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
		if resp.GetIntervalSeconds() <= 0 {
			t.Fatalf("heartbeat interval %v", resp.GetIntervalSeconds())
		}
	}
	silentFrom := time.Now()
	beat()
	waitFor("reachable", func() bool { return reach() == fedmeshv1.Reachability_REACHABILITY_REACHABLE })
	waitFor("unreachable", func() bool { return reach() == fedmeshv1.Reachability_REACHABILITY_UNREACHABLE })
	if d := time.Since(silentFrom); d < DefaultClusterTimeout {
		t.Errorf("unreachable after %v of silence, before the %v timeout", d, DefaultClusterTimeout)
	}
	if got := imports().GetClusters()[0].GetReachability(); got != fedmeshv1.Reachability_REACHABILITY_UNREACHABLE {
		t.Errorf("the import's entry for a says %v, want unreachable", got)
	}
	if got := testutil.ToFloat64(r.core.live.transitions.WithLabelValues("unreachable")); got != 1 {
		t.Errorf("unreachable transitions = %v, want 1", got)
	}
	beat()
	waitFor("re-admitted", func() bool { return reach() == fedmeshv1.Reachability_REACHABILITY_REACHABLE })
	if got := imports().GetIps(); len(got) != 2 || got[0] != imp.GetIps()[0] {
		t.Errorf("VIPs changed across liveness transitions: %v, was %v", got, imp.GetIps())
	}

	if _, err := c.cluster.Heartbeat(ctx, &fedmeshv1.HeartbeatRequest{Cluster: "nope"}); err == nil {
		t.Error("heartbeat of an unknown cluster accepted")
	}
}

// A node that stopped reporting is marked stale in its cluster's status
// (its backends leave every importer's choice) and fresh again when it
// reports; a node that never reported is not judged.
func TestNodesThatStopReportingBecomeStale(t *testing.T) {
	raftAddr := cptest.FreeAddrs(t, 1)[0]
	r, err := Start(Config{
		NodeID: "solo", DataDir: t.TempDir(), RaftAddr: raftAddr, GRPCAddr: "127.0.0.1:0",
		BootstrapPeers: []Peer{{ID: "solo", RaftAddr: raftAddr}}, RaftTimeout: 100 * time.Millisecond, Insecure: true,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Services: ServicesConfig{ClusterTimeout: time.Second, NodeTimeout: 800 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	c := dial(t, r.GRPCAddr())
	ctx := ctxT(t)
	for deadline := time.Now().Add(10 * time.Second); !r.core.leaderReady.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
	}
	registerCluster(t, ctx, c, "a", "10.1.0.0/16")
	for _, n := range []string{"n1", "n2"} {
		if _, err := c.node.RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: n, UnderlayIp: "198.18.0.1"}}); err != nil {
			t.Fatal(err)
		}
	}
	report := func() {
		if _, err := c.node.ReportNodeStatus(ctx, &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "n1", Status: &fedmeshv1.NodeStatus{Ready: true}}); err != nil {
			t.Fatal(err)
		}
	}
	stale := func() []string {
		resp, err := c.cluster.GetCluster(linearizable(ctx), &fedmeshv1.GetClusterRequest{Name: "a"})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetCluster().GetStatus().GetStaleNodes()
	}
	report()
	deadline := time.Now().Add(15 * time.Second)
	for !slices.Equal(stale(), []string{"n1"}) {
		if time.Now().After(deadline) {
			t.Fatalf("stale nodes %v, want [n1] (n2 never reported: not judged)", stale())
		}
		time.Sleep(50 * time.Millisecond)
	}
	report()
	for len(stale()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("stale nodes %v after n1 reported again, want none", stale())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
