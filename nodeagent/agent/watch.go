package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Backoff returns the wait before retry number attempt (0-based): an
// exponential step from base, capped at max, with "equal jitter" (half
// fixed, half random) so a fleet of agents that lost the same replica does
// not reconnect in lockstep. Pure given r.
func Backoff(attempt int, base, max time.Duration, r *rand.Rand) time.Duration {
	d := base
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	half := d / 2
	return half + time.Duration(r.Int64N(int64(half)+1))
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// watchLoop is the watch goroutine: it keeps one stream open to some
// replica and moves its messages to the sync goroutine. It resumes from the
// last revision it delivered whole (a completed snapshot or an events or
// progress message), or from the revision the sync goroutine asks for when
// the view could not follow the stream. It touches no agent state but the
// health tracker (what revision exists) and metrics.
func (a *Agent) watchLoop(ctx context.Context) {
	r := rand.New(rand.NewPCG(a.deps.Seed, 1))
	var from uint64
	attempt, streams := 0, 0
	for ctx.Err() == nil {
		select {
		case rev := <-a.resync:
			from = rev
		default:
		}
		sctx, cancel := context.WithCancel(ctx)
		req := &fedmeshv1.WatchRequest{
			FromRevision: from,
			Kinds:        watchedKinds,
			Filter:       &fedmeshv1.WatchFilter{ImportingCluster: a.cfg.Cluster},
		}
		stream, err := a.deps.ControlPlane.Watch(sctx, req)
		resynced := false
		if err == nil {
			if streams > 0 {
				a.m.reconnects.Inc()
			}
			streams++
			a.m.connected.Set(1)
			a.log.Info("watching the control plane", "from_revision", from)
			var got bool
			got, resynced, err = a.pump(sctx, cancel, stream, &from)
			a.m.connected.Set(0)
			if got {
				attempt = 0
			}
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		if resynced {
			continue // the sync goroutine asked for a new stream: no wait
		}
		wait := Backoff(attempt, a.cfg.BackoffBase, a.cfg.BackoffMax, r)
		attempt++
		a.log.Warn("control plane unreachable; enforcing the last revision, retrying",
			"from_revision", from, "retry_in", wait.Round(time.Millisecond), "err", err)
		if !sleep(ctx, wait) {
			return
		}
	}
}

// pump receives one stream until it fails or the sync goroutine asks for
// a resync (which cancels the stream and sets *from). got says whether any
// message arrived (a healthy replica: backoff starts over).
func (a *Agent) pump(ctx context.Context, cancel context.CancelFunc, stream WatchStream, from *uint64) (got, resynced bool, err error) {
	resyncTo := make(chan uint64, 1)
	go func() {
		select {
		case rev := <-a.resync:
			resyncTo <- rev
			cancel()
		case <-ctx.Done():
		}
	}()
	defer func() {
		select {
		case rev := <-resyncTo:
			*from, resynced = rev, true
		default:
		}
	}()
	if !a.deliver(ctx, watchItem{newStream: true}) {
		return false, false, ctx.Err()
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				err = errors.Join(err, ctx.Err())
			}
			return got, false, err
		}
		got = true
		a.mu.Lock()
		a.health.Seen(resp.GetRevision(), a.deps.Now())
		a.mu.Unlock()
		if !a.deliver(ctx, watchItem{resp: resp}) {
			return got, false, ctx.Err()
		}
		if !(resp.GetType() == fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT && resp.GetMore()) && resp.GetRevision() > *from {
			*from = resp.GetRevision()
		}
	}
}

func (a *Agent) deliver(ctx context.Context, it watchItem) bool {
	select {
	case a.msgs <- it:
		return true
	case <-ctx.Done():
		return false
	}
}

// reportLoop is the report goroutine: it registers the node (once, retried
// with backoff), then sends the node's status after every newly enforced
// revision or readiness change and every StatusInterval. A slow or absent
// control plane delays reports, never enforcement.
func (a *Agent) reportLoop(ctx context.Context) {
	r := rand.New(rand.NewPCG(a.deps.Seed, 2))
	for attempt := 0; ; attempt++ {
		err := a.deps.ControlPlane.RegisterNode(ctx, a.nodeSpec())
		if err == nil {
			a.log.Info("registered node")
			break
		}
		wait := Backoff(attempt, a.cfg.BackoffBase, a.cfg.BackoffMax, r)
		a.log.Warn("register node; retrying", "retry_in", wait.Round(time.Millisecond), "err", err)
		if !sleep(ctx, wait) {
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
			wait := Backoff(attempt, a.cfg.BackoffBase, a.cfg.BackoffMax, r)
			attempt++
			a.log.Debug("report node status; retrying", "retry_in", wait, "err", err)
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		if err == nil {
			a.m.reports.WithLabelValues("ok").Inc()
			attempt = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-a.reportKick:
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
	}
	if a.deps.WireGuard != nil {
		n.WireguardPublicKey = a.deps.WireGuard.PublicKey()
		n.WireguardListenPort = a.deps.WireGuard.ListenPort()
	}
	return n
}
