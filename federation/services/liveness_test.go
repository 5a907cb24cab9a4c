package services

import (
	"fmt"
	"strings"
	"testing"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestJudgeLiveness(t *testing.T) {
	cfg := LivenessConfig{ClusterTimeout: 5 * time.Second, NodeTimeout: 30 * time.Second}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const (
		unspec = fedmeshv1.Reachability_REACHABILITY_UNSPECIFIED
		up     = fedmeshv1.Reachability_REACHABILITY_REACHABLE
		down   = fedmeshv1.Reachability_REACHABILITY_UNREACHABLE
	)
	tests := []struct {
		name  string
		now   time.Duration // after t0
		since time.Duration // leadership start after t0
		obs   ClusterObservation
		want  string // "" for no transition
	}{
		{"a cluster that never sent a heartbeat is not judged", 60 * time.Second, 0,
			ClusterObservation{Cluster: "a", Committed: unspec}, ""},
		{"the first heartbeat makes a cluster reachable", 10 * time.Second, 0,
			ClusterObservation{Cluster: "a", Committed: unspec, LastHeartbeat: t0.Add(9 * time.Second)}, "a=REACHABLE[]"},
		{"a heartbeat within the timeout keeps it reachable", 10 * time.Second, 0,
			ClusterObservation{Cluster: "a", Committed: up, LastHeartbeat: t0.Add(6 * time.Second)}, ""},
		{"silence longer than the timeout makes it unreachable", 12 * time.Second, 0,
			ClusterObservation{Cluster: "a", Committed: up, LastHeartbeat: t0.Add(6 * time.Second)}, "a=UNREACHABLE[]"},
		{"a new leader waits one timeout before judging", 8 * time.Second, 4 * time.Second,
			ClusterObservation{Cluster: "a", Committed: up}, ""},
		{"a new leader judges a silent cluster after the timeout", 10 * time.Second, 4 * time.Second,
			ClusterObservation{Cluster: "a", Committed: up}, "a=UNREACHABLE[]"},
		{"a heartbeat re-admits an unreachable cluster", 30 * time.Second, 0,
			ClusterObservation{Cluster: "a", Committed: down, LastHeartbeat: t0.Add(29 * time.Second)}, "a=REACHABLE[]"},
		{"a node silent past its timeout is stale", 40 * time.Second, 0,
			ClusterObservation{Cluster: "a", Committed: up, LastHeartbeat: t0.Add(39 * time.Second),
				Nodes: map[string]time.Time{"n1": t0.Add(5 * time.Second), "n2": t0.Add(35 * time.Second)}}, "a=REACHABLE[n1]"},
		{"a node whose report time is unknown counts from the leader's start", 40 * time.Second, 20 * time.Second,
			ClusterObservation{Cluster: "a", Committed: up, LastHeartbeat: t0.Add(39 * time.Second),
				Nodes: map[string]time.Time{"n1": {}}}, ""},
		{"a stale node that reports again is fresh", 40 * time.Second, 0,
			ClusterObservation{Cluster: "a", Committed: up, CommittedStale: []string{"n1"}, LastHeartbeat: t0.Add(39 * time.Second),
				Nodes: map[string]time.Time{"n1": t0.Add(38 * time.Second)}}, "a=REACHABLE[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := JudgeLiveness(cfg, t0.Add(tt.now), t0.Add(tt.since), []ClusterObservation{tt.obs})
			var s []string
			for _, l := range got {
				s = append(s, fmt.Sprintf("%s=%s%v", l.GetCluster(), strings.TrimPrefix(l.GetReachability().String(), "REACHABILITY_"), l.GetStaleNodes()))
			}
			if g := strings.Join(s, " "); g != tt.want {
				t.Errorf("transitions = %q, want %q", g, tt.want)
			}
		})
	}
}
