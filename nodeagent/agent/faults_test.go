package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Scenarios where the control plane answers the agent's calls with
// failures (injected below agent.Client, so its failover runs too).

// A registration and status reports the control plane failed are sent
// again: with a heartbeat of a minute, WaitEnforced on a write only
// returns because the failed report was retried.
func TestAgentRetriesRegistrationAndReportsTheControlPlaneFailed(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.seed()
	// Before the agent's first call: every replica refuses it, twice over.
	h := startAgentFaulted(t, f.cp.Addrs(), func(c *agent.Config) { c.StatusInterval = time.Minute }, nil,
		inproc.Rule{Method: fedmeshv1.NodeService_RegisterNode_FullMethodName, Code: codes.Unavailable, Times: 6})
	f.waitRegistered()
	if n := h.faults.Calls(fedmeshv1.NodeService_RegisterNode_FullMethodName); n < 7 {
		t.Errorf("%d registration attempts, want the 6 that failed and one more", n)
	}
	eventually(t, "the first report", func() bool {
		n, err := f.node()
		return err == nil && n.GetStatus().GetEnforcedRevision() > 0
	})

	reports := fedmeshv1.NodeService_ReportNodeStatus_FullMethodName
	before := h.faults.Calls(reports)
	h.faults.Inject(inproc.Rule{Method: reports, Code: codes.Unavailable, Times: 5})
	rev := f.applyPolicy(allowFrom("allow-client", "client", 80))
	if resp := f.waitEnforced(rev, 5*time.Second); !resp.GetEnforced() {
		t.Fatalf("WaitEnforced(%d) = %v: the failed report was not sent again", rev, resp)
	}
	if n := h.faults.Calls(reports) - before; n < 6 {
		t.Errorf("%d report attempts after the write, want the 5 that failed and one more", n)
	}
	if got := testutil.ToFloat64(mustCounterVec(t, h.a, "fedmesh_agent_status_reports_total", "error")); got < 1 {
		t.Errorf("failed reports counted %v, want >= 1", got)
	}
}

// A watch stream that breaks (a reset connection) is resumed from the
// revision the agent enforces, on the next replica, without a snapshot;
// the changes after it are enforced.
func TestAgentResumesABrokenWatchWithoutASnapshot(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.seed()
	h := startAgent(t, f.cp.Addrs(), nil)
	f.waitRegistered()
	rev := f.applyPolicy(allowFrom("allow-client", "client", 80))
	eventually(t, "the policy enforced", enforcedAt(h, rev))

	snapshots := func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sum := 0.0
		for _, r := range f.cp.Replicas {
			v, err := r.Metric(ctx, "fedmesh_controlplane_watch_snapshots_total")
			if err != nil {
				t.Fatal(err)
			}
			sum += v
		}
		return sum
	}
	snaps, watches, on := snapshots(), h.logs.count(msgWatching), h.client.Current()
	if n := h.faults.BreakStreams(fedmeshv1.WatchService_Watch_FullMethodName, "", codes.Unavailable); n != 1 {
		t.Fatalf("broke %d watch streams, want the agent's one", n)
	}
	eventually(t, "the watch resumed", func() bool { return h.logs.count(msgWatching) > watches })
	froms := h.logs.uints(msgWatching, "from_revision")
	if from := froms[len(froms)-1]; from < rev {
		t.Errorf("resumed from revision %d, want at least the enforced %d", from, rev)
	}
	if now := h.client.Current(); now == on {
		t.Errorf("the agent stayed on %s after its stream there broke", on)
	}
	rev = f.applyPolicy(allowFrom("allow-client", "other", 80))
	eventually(t, "the change after the break enforced", enforcedAt(h, rev))
	if got := snapshots(); got != snaps {
		t.Errorf("snapshots sent went from %v to %v: the resumed watch needed none", snaps, got)
	}
}
