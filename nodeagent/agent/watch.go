package agent

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/watchclient"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// newWatcher builds the watch goroutine (watchclient.Watcher): it keeps
// one stream open to some replica and moves its messages to the sync
// goroutine, resuming from the last revision it delivered whole or from
// the one the sync goroutine asks for when the view could not follow the
// stream. It touches no agent state but the health tracker (what revision
// exists) and metrics.
func (a *Agent) newWatcher() *watchclient.Watcher {
	return watchclient.New(watchclient.Config{
		Open: func(ctx context.Context, from uint64) (watchclient.Stream, error) {
			return a.deps.ControlPlane.Watch(ctx, &fedmeshv1.WatchRequest{
				FromRevision: from,
				Kinds:        watchedKinds,
				Filter:       &fedmeshv1.WatchFilter{ImportingCluster: a.cfg.Cluster},
			})
		},
		BackoffBase: a.cfg.BackoffBase,
		BackoffMax:  a.cfg.BackoffMax,
		Seed:        a.deps.Seed,
		Logger:      a.log,
		OnMessage: func(resp *fedmeshv1.WatchResponse) {
			a.mu.Lock()
			a.health.Seen(resp.GetRevision(), a.deps.Now())
			a.mu.Unlock()
		},
		OnStream: func(open, reconnect bool) {
			if reconnect {
				a.m.reconnects.Inc()
			}
			a.m.connected.Set(boolGauge(open))
		},
	})
}

// watchLoop is the watch goroutine.
func (a *Agent) watchLoop(ctx context.Context) { a.watch.Run(ctx) }

// reportLoop is the report goroutine: it registers the node (once, retried
// with backoff), then sends the node's status after every newly enforced
// revision or readiness change (at most one per MinReportInterval) and
// every StatusInterval. A slow or absent control plane delays reports,
// never enforcement.
func (a *Agent) reportLoop(ctx context.Context) {
	r := rand.New(rand.NewPCG(a.deps.Seed, 2))
	for attempt := 0; ; attempt++ {
		err := a.deps.ControlPlane.RegisterNode(ctx, a.nodeSpec())
		if err == nil {
			a.log.Info("registered node")
			break
		}
		wait := watchclient.Backoff(attempt, a.cfg.BackoffBase, a.cfg.BackoffMax, r)
		a.log.Warn("register node; retrying", "retry_in", wait.Round(time.Millisecond), "err", err)
		if !watchclient.Sleep(ctx, wait) {
			return
		}
	}
	t := time.NewTicker(a.cfg.StatusInterval)
	defer t.Stop()
	attempt := 0
	for {
		err := a.deps.ControlPlane.ReportNodeStatus(ctx, a.cfg.Cluster, a.cfg.Node, a.status(ctx))
		if err != nil && ctx.Err() == nil {
			a.m.reports.WithLabelValues("error").Inc()
			wait := watchclient.Backoff(attempt, a.cfg.BackoffBase, a.cfg.BackoffMax, r)
			attempt++
			a.log.Debug("report node status; retrying", "retry_in", wait, "err", err)
			if !watchclient.Sleep(ctx, wait) {
				return
			}
			continue
		}
		if err == nil {
			a.m.reports.WithLabelValues("ok").Inc()
			attempt = 0
		}
		sent := a.deps.Now()
		select {
		case <-ctx.Done():
			return
		case <-a.reportKick:
			// Coalesce: revisions enforced while this waits go out in one
			// report, so the rate stays under 1/MinReportInterval however
			// fast revisions come.
			if wait := a.cfg.MinReportInterval - a.deps.Now().Sub(sent); wait > 0 && !watchclient.Sleep(ctx, wait) {
				return
			}
		case <-t.C:
		}
	}
}

// nodeSpec is what the agent registers: its addresses and its WireGuard
// public key, the only part of the key pair that leaves the node.
func (a *Agent) nodeSpec() *fedmeshv1.Node {
	n := &fedmeshv1.Node{
		Cluster:    a.cfg.Cluster,
		Name:       a.cfg.Node,
		UnderlayIp: a.self.GetUnderlayIp(),
		PodCidrs:   a.cfg.PodCIDRs,
		Labels:     a.cfg.Labels,
	}
	if a.deps.WireGuard != nil {
		n.WireguardPublicKey = a.deps.WireGuard.PublicKey()
		n.WireguardListenPort = a.deps.WireGuard.ListenPort()
	}
	return n
}
