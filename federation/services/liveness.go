package services

// Liveness judgement: which clusters are reachable and which nodes are
// stale, from what the control plane's leader observed. Pure: the leader
// keeps the observations in memory (heartbeats cost no Raft write) and
// commits only the transitions this returns.
//
// Rules:
//   - A cluster whose syncer never sent a heartbeat is not judged
//     (REACHABILITY_UNSPECIFIED, treated as reachable): an older syncer,
//     or a cluster registered before its syncer started, keeps its
//     backends.
//   - A heartbeat within ClusterTimeout makes a cluster REACHABLE (first
//     judgement, or re-admission of an UNREACHABLE one).
//   - A judged cluster silent for longer than ClusterTimeout becomes
//     UNREACHABLE. Silence is counted from the later of its last heartbeat
//     and the leader's start (a new leader has seen no heartbeat yet: it
//     waits one timeout before judging anyone).
//   - A node that has reported at least once and whose last report is
//     older than NodeTimeout (counted the same way) is stale; a report
//     makes it fresh again.

import (
	"cmp"
	"slices"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// LivenessConfig are the timeouts of the judgement.
type LivenessConfig struct {
	ClusterTimeout time.Duration
	NodeTimeout    time.Duration
}

// ClusterObservation is what the leader knows of one cluster.
type ClusterObservation struct {
	Cluster string
	// Committed reachability and stale nodes (the cluster's stored status).
	Committed      fedmeshv1.Reachability
	CommittedStale []string
	// LastHeartbeat is the last heartbeat this leader received (zero: none).
	LastHeartbeat time.Time
	// Nodes that have reported at least once, with their last report time
	// as far as this replica knows (zero: unknown, e.g. after a restart).
	Nodes map[string]time.Time
}

// JudgeLiveness returns the liveness transitions to commit at now, for a
// leader that started leading at since. Clusters without a change are left
// out; the result is sorted by cluster.
func JudgeLiveness(cfg LivenessConfig, now, since time.Time, obs []ClusterObservation) []*fedmeshv1.ClusterLiveness {
	var out []*fedmeshv1.ClusterLiveness
	for _, o := range obs {
		reach := o.Committed
		last := o.LastHeartbeat
		if !last.IsZero() && now.Sub(last) <= cfg.ClusterTimeout {
			reach = fedmeshv1.Reachability_REACHABILITY_REACHABLE
		} else if o.Committed != fedmeshv1.Reachability_REACHABILITY_UNSPECIFIED && now.Sub(later(last, since)) > cfg.ClusterTimeout {
			reach = fedmeshv1.Reachability_REACHABILITY_UNREACHABLE
		}
		var stale []string
		for n, t := range o.Nodes {
			if now.Sub(later(t, since)) > cfg.NodeTimeout {
				stale = append(stale, n)
			}
		}
		slices.Sort(stale)
		committed := slices.Clone(o.CommittedStale)
		slices.Sort(committed)
		if reach == o.Committed && slices.Equal(stale, committed) {
			continue
		}
		out = append(out, &fedmeshv1.ClusterLiveness{Cluster: o.Cluster, Reachability: reach, StaleNodes: stale})
	}
	slices.SortFunc(out, func(a, b *fedmeshv1.ClusterLiveness) int { return cmp.Compare(a.GetCluster(), b.GetCluster()) })
	return out
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
