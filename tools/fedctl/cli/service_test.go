package cli

import (
	"strings"
	"testing"

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
