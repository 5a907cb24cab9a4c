package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/federation/services"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestServiceGetShowsBackendsReachabilityAffinityAndTheChoice(t *testing.T) {
	imp := &fedmeshv1.ServiceImport{Namespace: "demo", Name: "redis", Affinity: fedmeshv1.Affinity_AFFINITY_LOCAL,
		Clusters: []*fedmeshv1.ClusterBackends{
			{Cluster: "a", Reachability: fedmeshv1.Reachability_REACHABILITY_REACHABLE, Endpoints: []*fedmeshv1.ServiceBackend{
				{Address: "10.1.0.5", Node: "a1", Ready: true}, {Address: "10.1.0.6", Node: "a2"}}},
			{Cluster: "b", Reachability: fedmeshv1.Reachability_REACHABILITY_UNREACHABLE, Addresses: []string{"10.2.0.5"}},
		}}
	tests := []struct {
		name     string
		importer string
		live     services.Liveness
		want     []string
	}{
		{"without an importer: every backend, no choice", "", services.Liveness{}, []string{
			"a yes local 10.1.0.5 a1 true yes",
			"a yes local 10.1.0.6 a2 false yes",
			"b no local 10.2.0.5 - true yes",
		}},
		{"importer a with local affinity chooses its own ready backend", "a", services.Liveness{Unreachable: map[string]bool{"b": true}}, []string{
			"a yes local 10.1.0.5 a1 true yes true",
			"a yes local 10.1.0.6 a2 false yes false",
			"b no local 10.2.0.5 - true yes false",
		}},
		{"a stale node's backend is shown as such and not chosen", "a", services.Liveness{Stale: map[services.NodeKey]bool{{Cluster: "a", Node: "a1"}: true}}, []string{
			"a yes local 10.1.0.5 a1 true no (stale) false",
			"a yes local 10.1.0.6 a2 false yes false",
			"b no local 10.2.0.5 - true yes true",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := serviceBackendsTable(imp, tt.importer, tt.live)
			var got []string
			for _, r := range tab.rows {
				got = append(got, strings.Join(r, " "))
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
	if got := clusterBackendsSummary(imp.GetClusters()[0]); got != "a(1/2)" {
		t.Errorf("summary of a = %q, want a(1/2)", got)
	}
	if got := clusterBackendsSummary(imp.GetClusters()[1]); got != "b(1/1)!unreachable" {
		t.Errorf("summary of b = %q, want b(1/1)!unreachable", got)
	}
}

// Over mTLS against a real replica: a syncer exports with affinity and
// heartbeats (as itself), and fedctl shows the import's ClusterSetIPs,
// affinity and backends, the cluster's reachability, and the choice.
func TestServiceCommandsShowImportsReachabilityAndTheChoice(t *testing.T) {
	p := startTLSPlane(t)
	if _, errOut, err := p.fedctl(t, auth.Admin(), "cluster", "register", "cluster-a", "--pod-cidr", "10.1.0.0/16"); err != nil {
		t.Fatalf("register: %v\n%s", err, errOut)
	}
	cc := planeConn(t, p, auth.Syncer("cluster-a"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := fedmeshv1.NewMultiClusterServiceClient(cc).ExportServices(ctx, &fedmeshv1.ExportServicesRequest{Cluster: "cluster-a",
		Exports: []*fedmeshv1.ServiceExport{{Namespace: "demo", Name: "redis", Affinity: fedmeshv1.Affinity_AFFINITY_LOCAL,
			Ports: []*fedmeshv1.ServicePort{{Name: "redis", Port: 6379}}, Backends: []string{"10.1.0.5"},
			Endpoints: []*fedmeshv1.ServiceBackend{{Address: "10.1.0.5", Node: "n1", Ready: true}, {Address: "10.1.0.6", Node: "n2"}}}}}); err != nil {
		t.Fatalf("export as the syncer: %v", err)
	}
	if _, err := fedmeshv1.NewClusterServiceClient(cc).Heartbeat(ctx, &fedmeshv1.HeartbeatRequest{Cluster: "cluster-a"}); err != nil {
		t.Fatalf("heartbeat as the syncer: %v", err)
	}
	go func() { // keep beating, as a syncer does, until the test ends
		for ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
			_, _ = fedmeshv1.NewClusterServiceClient(cc).Heartbeat(ctx, &fedmeshv1.HeartbeatRequest{Cluster: "cluster-a"})
		}
	}()
	if _, err := fedmeshv1.NewClusterServiceClient(planeConn(t, p, auth.Syncer("cluster-b"))).Heartbeat(ctx, &fedmeshv1.HeartbeatRequest{Cluster: "cluster-a"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("another cluster's syncer heartbeats for cluster-a: %v, want PermissionDenied", err)
	}
	waitOut := func(args []string, want ...string) string {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			out, errOut, err := p.fedctl(t, auth.Admin(), args...)
			ok := err == nil
			for _, w := range want {
				ok = ok && strings.Contains(out, w)
			}
			if ok {
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("fedctl %v: %v\n%s%s\nwant %q", args, err, out, errOut, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitOut([]string{"cluster", "list"}, "REACHABLE", " yes ")
	waitOut([]string{"service", "imports"}, "CLUSTERSET IPS", "100.127.", "fd00:fed:c5e7::", " local ", "cluster-a(1/2)")
	out := waitOut([]string{"service", "get", "demo/redis", "--cluster", "cluster-a"}, "CHOSEN")
	for _, w := range []string{"cluster-a  yes        local     10.1.0.5  n1    true   yes        true", "10.1.0.6  n2    false  yes        false"} {
		if !strings.Contains(out, w) {
			t.Errorf("service get:\n%s\nwant a row with %q", out, w)
		}
	}
	if _, errOut, err := p.fedctl(t, auth.Admin(), "service", "get", "demo/nope"); err == nil || !strings.Contains(errOut, "no service import demo/nope") {
		t.Errorf("get of a missing import: %v %s", err, errOut)
	}
}
