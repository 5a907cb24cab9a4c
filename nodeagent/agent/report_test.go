package agent_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
)

// Under churn every revision is newly enforced; the agent must not send a
// report (a Raft write) per revision, yet the newest revision must still
// go out promptly, so a --wait on the last write returns.
func TestStatusReportRateIsBoundedUnderChurnAndTheNewestRevisionGoesOut(t *testing.T) {
	const minInterval = time.Second
	f := startFed(t, inproc.Options{})
	f.seed()
	h := startAgent(t, f.cp.Addrs(), func(c *agent.Config) {
		c.StatusInterval = time.Minute // no heartbeat inside the window
		c.MinReportInterval = minInterval
	})
	f.waitRegistered()
	eventually(t, "the seed enforced", enforcedAt(h, f.applyPolicy(allowFrom("allow-client", "client", 80))))
	reports := func() float64 {
		return testutil.ToFloat64(mustCounterVec(t, h.a, "fedmesh_agent_status_reports_total", "ok"))
	}
	before := reports()
	start := time.Now()
	var rev uint64
	writes := 0
	// One report per minInterval, plus the one the burst's first revision
	// sent at once and the final one. Write until the writes outnumber that
	// bound three times over (so one report per revision would show), for
	// at least 3 s: a slow machine just takes longer.
	limitFor := func(window time.Duration) float64 { return float64(window/minInterval) + 2 }
	for time.Since(start) < 3*time.Second || float64(writes) < 3*limitFor(time.Since(start)) {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("only %d writes committed in %s: the control plane is too slow for this test", writes, time.Since(start))
		}
		// Remote endpoints: each changes this node's ipcache.
		rev = f.upsert("b", endpoint("b", fmt.Sprintf("churn-%d", writes), "m1", fmt.Sprintf("10.1.2.%d", writes%250+1), "remote"))
		writes++
		time.Sleep(20 * time.Millisecond)
	}
	window := time.Since(start)
	resp := f.waitEnforced(rev, 10*time.Second)
	if !resp.GetEnforced() {
		t.Fatalf("WaitEnforced(%d) after the churn = %v", rev, resp)
	}
	sent := reports() - before
	limit := limitFor(window)
	t.Logf("%d writes in %s: %v reports (limit %v)", writes, window.Round(time.Millisecond), sent, limit)
	if sent > limit {
		t.Errorf("%v status reports for %d newly enforced revisions in %s, want at most %v (one per %s)", sent, writes, window.Round(time.Millisecond), limit, minInterval)
	}
}
