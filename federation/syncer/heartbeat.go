package syncer

import (
	"context"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/watchclient"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Heartbeats keep this cluster reachable in the federation: the control
// plane withdraws the service backends of a cluster whose syncer stays
// silent for its cluster timeout. They start once the first full resync
// has committed, so a cluster that comes back is re-admitted with its
// current backends, not those it had when it went silent.

// defaultHeartbeat is the interval until the control plane names one.
const defaultHeartbeat = time.Second

// heartbeatLoop sends heartbeats until ctx ends. It runs in its own
// goroutine and touches nothing of the syncer but the control-plane client
// (whose Heartbeat is safe beside the publisher loop's calls) and its log.
func (s *Syncer) heartbeatLoop(ctx context.Context, resynced <-chan struct{}) {
	select {
	case <-ctx.Done():
		return
	case <-resynced:
	}
	interval := defaultHeartbeat
	retry := watchclient.NewRetry(retryBase, interval, 0)
	failing := false
	for {
		hctx, cancel := context.WithTimeout(ctx, max(interval, time.Second))
		resp, err := s.cfg.ControlPlane.Heartbeat(hctx, &fedmeshv1.HeartbeatRequest{Cluster: s.cfg.Cluster})
		cancel()
		wait := interval
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.metrics.heartbeatErrors.Inc()
			if !failing {
				s.log.Warn("heartbeat failed; the federation withdraws this cluster's service backends if it lasts", "err", err)
			}
			failing = true
			wait = retry.Next()
		default:
			if failing {
				s.log.Info("heartbeats are answered again", "reachability", resp.GetReachability().String())
			}
			failing = false
			retry.Reset()
			if sec := resp.GetIntervalSeconds(); sec > 0 {
				interval = min(max(time.Duration(sec*float64(time.Second)), 50*time.Millisecond), 10*time.Second)
			}
			wait = interval
		}
		if !watchclient.Sleep(ctx, wait) {
			return
		}
	}
}
