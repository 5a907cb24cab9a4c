package lab

import (
	"context"
	"fmt"
	"time"
)

// clusterProcs are the lab processes that make up a cluster's control: the
// supervisor of its kube-apiserver and etcd (whose group holds the syncer)
// and every node's agent.
func clusterProcs(c Cluster) []string {
	names := []string{"kube-" + c.Name}
	for _, n := range c.Nodes {
		names = append(names, "agent-"+n.Name)
	}
	return names
}

// LoseCluster kills everything of a cluster's control at once, as a lost
// site: its kube-apiserver with etcd and its syncer, and every agent. Pods
// and their servers keep running. It returns when every process is gone.
func (l *Lab) LoseCluster(ctx context.Context, cluster string) error {
	c, ok := l.Topo.cluster(cluster)
	if !ok {
		return fmt.Errorf("lose cluster %s: no such cluster in lab %s", cluster, l.Topo.Name)
	}
	names := clusterProcs(c)
	// etcd and kube-apiserver die with the supervisor (parent-death signal).
	for _, name := range names {
		if err := l.Kill(name); err != nil {
			return fmt.Errorf("lose cluster %s: %w", cluster, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return waitFor(ctx, "cluster "+cluster+"'s processes to exit", func() error {
		for _, name := range names {
			if l.Alive(name) {
				return fmt.Errorf("%s still runs", name)
			}
		}
		return nil
	})
}

// RestoreCluster starts a lost cluster again: its API (the supervisor
// re-exports what the lab had exported there), its syncer and agents, and
// waits until every node enforces the newest revision.
func (l *Lab) RestoreCluster(ctx context.Context, cluster string, timeout time.Duration) error {
	c, ok := l.Topo.cluster(cluster)
	if !ok {
		return fmt.Errorf("restore cluster %s: no such cluster in lab %s", cluster, l.Topo.Name)
	}
	for _, name := range clusterProcs(c) {
		if l.Alive(name) {
			continue
		}
		if err := l.Restart(name); err != nil {
			return fmt.Errorf("restore cluster %s: %w", cluster, err)
		}
	}
	if _, err := l.WaitEnforced(ctx, timeout); err != nil {
		return fmt.Errorf("restore cluster %s: %w", cluster, err)
	}
	return nil
}

func (t *Topology) cluster(name string) (Cluster, bool) {
	for _, c := range t.Clusters {
		if c.Name == name {
			return c, true
		}
	}
	return Cluster{}, false
}
