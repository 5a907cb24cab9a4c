package flowstore

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func wl(cluster, ns, pod, ip string) *fedmeshv1.Workload {
	return &fedmeshv1.Workload{Cluster: cluster, Namespace: ns, Pod: pod, Ip: ip, Labels: map[string]string{"app": pod}}
}

// flowAt is a flow from src to dst:port reported at t, denied by the
// policies selecting dst or allowed by rule 0 of allowPol.
func flowAt(t time.Time, src, dst *fedmeshv1.Workload, port uint32, deny bool, pol string) *fedmeshv1.Flow {
	f := &fedmeshv1.Flow{Time: timestamppb.New(t), Source: src, Destination: dst, Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW}
	f.Destination = &fedmeshv1.Workload{Cluster: dst.Cluster, Namespace: dst.Namespace, Pod: dst.Pod, Ip: dst.Ip, Labels: dst.Labels, Port: port}
	key := &fedmeshv1.PolicyKey{Cluster: dst.Cluster, Namespace: dst.Namespace, Name: pol}
	if deny {
		f.Verdict = fedmeshv1.Verdict_VERDICT_DENY
		f.Decision = &fedmeshv1.FlowDecision{Direction: fedmeshv1.PolicyType_POLICY_TYPE_INGRESS, Kind: fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NO_RULE_ALLOWS,
			SelectedBy: []*fedmeshv1.PolicyKey{key}, DataplaneReason: "deny-policy"}
	} else {
		f.Decision = &fedmeshv1.FlowDecision{Direction: fedmeshv1.PolicyType_POLICY_TYPE_INGRESS, Kind: fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE,
			Rule: &fedmeshv1.RuleRef{Policy: key, Direction: fedmeshv1.PolicyType_POLICY_TYPE_INGRESS}, SelectedBy: []*fedmeshv1.PolicyKey{key}, DataplaneReason: "allow-policy", RuleId: 1}
	}
	return f
}

var (
	webA = wl("a", "demo", "web", "10.1.1.11")
	dbB  = wl("b", "demo", "db", "10.2.1.12")
	apiB = wl("b", "shop", "api", "10.2.1.13")
	ext  = &fedmeshv1.Workload{Ip: "192.0.2.7", Identity: 2}
)

func TestFloodFromOneNodeEvictsOnlyItsOwnFlows(t *testing.T) {
	c := &clock{t0}
	s := New(Config{Capacity: 100, NodeRate: 1e9, Now: c.Now})
	for i := range 30 {
		s.Add("b", "quiet", []*fedmeshv1.Flow{flowAt(t0.Add(time.Duration(i)), apiB, dbB, 5432, false, "db")}, 0)
	}
	for i := range 10_000 {
		s.Add("a", "loud", []*fedmeshv1.Flow{flowAt(t0.Add(time.Duration(i)), webA, dbB, 80, true, "db")}, 0)
	}
	quiet := s.Query(Query{Filter: Filter{Node: "quiet"}, Limit: MaxLimit}, Scope{})
	loud := s.Query(Query{Filter: Filter{Node: "loud"}, Limit: MaxLimit}, Scope{})
	if len(quiet) != 30 {
		t.Errorf("quiet node kept %d of its 30 flows under a flood, want all", len(quiet))
	}
	st := s.Status()
	if st.Stored > 100 || len(loud) != 100-30 {
		t.Errorf("stored %d (loud %d), want the capacity 100 with the loud node holding the rest", st.Stored, len(loud))
	}
	if st.Evicted != 10_000-70 {
		t.Errorf("evicted = %d, want %d", st.Evicted, 10_000-70)
	}
	if got := loud[len(loud)-1].GetTime().AsTime(); !got.Equal(t0.Add(9999)) {
		t.Errorf("loud node's newest kept flow at %v, want its newest", got)
	}
}

func TestNodeOverItsRateIsRefusedAndCounted(t *testing.T) {
	c := &clock{t0}
	s := New(Config{NodeRate: 10, NodeBurst: 10, Now: c.Now})
	batch := make([]*fedmeshv1.Flow, 25)
	for i := range batch {
		batch[i] = flowAt(t0, webA, dbB, 80, false, "db")
	}
	acc, ref := s.Add("a", "n1", batch, 0)
	if acc != 10 || ref != 15 {
		t.Fatalf("accepted %d refused %d, want 10 and 15 (burst 10)", acc, ref)
	}
	// Another node has its own budget.
	if acc, _ := s.Add("b", "n2", batch[:5], 0); acc != 5 {
		t.Fatalf("other node accepted %d of 5", acc)
	}
	c.now = c.now.Add(time.Second)
	if acc, _ := s.Add("a", "n1", batch, 0); acc != 10 {
		t.Fatalf("after 1s the node may add 10 more, got %d", acc)
	}
	if st := s.Status(); st.DroppedRate != 30 {
		t.Fatalf("dropped_rate = %d, want 30", st.DroppedRate)
	}
}

func TestFlowsOlderThanMaxAgeAreEvicted(t *testing.T) {
	c := &clock{t0}
	s := New(Config{MaxAge: time.Minute, Now: c.Now})
	s.Add("a", "n1", []*fedmeshv1.Flow{flowAt(t0, webA, dbB, 80, false, "db")}, 0)
	s.Add("b", "n2", []*fedmeshv1.Flow{flowAt(t0.Add(30*time.Second), apiB, dbB, 80, false, "db")}, 0)
	c.now = t0.Add(61 * time.Second)
	s.Sweep()
	got := s.Query(Query{Limit: 10}, Scope{})
	if len(got) != 1 || got[0].GetNode() != "n2" {
		t.Fatalf("after a minute kept %v, want only n2's younger flow", got)
	}
	if st := s.Status(); st.Evicted != 1 || st.Stored != 1 {
		t.Fatalf("status %+v", st)
	}
}

func TestAgentDropsAreCountedOnceAcrossBatches(t *testing.T) {
	s := New(Config{})
	s.Add("a", "n1", nil, 5)
	s.Add("a", "n1", nil, 7)
	s.Add("a", "n1", nil, 3) // a restarted agent counts from 0 again
	s.Add("a", "n2", nil, 4)
	if got := s.Status().DroppedAgent; got != 11 {
		t.Fatalf("dropped_agent = %d, want 7+4", got)
	}
}

func ptr(s string) *string { return &s }

func fixture(t *testing.T) *Store {
	t.Helper()
	s := New(Config{Now: (&clock{t0.Add(time.Hour)}).Now})
	s.Add("a", "a1", []*fedmeshv1.Flow{
		flowAt(t0, webA, dbB, 5432, true, "db-ingress"),
		flowAt(t0.Add(time.Second), webA, apiB, 8080, false, "api-ingress"),
		flowAt(t0.Add(2*time.Second), ext, webA, 443, false, "web-ingress"),
	}, 0)
	s.Add("b", "b1", []*fedmeshv1.Flow{
		flowAt(t0.Add(3*time.Second), apiB, dbB, 5432, false, "db-ingress"),
	}, 0)
	return s
}

func ports(fs []*fedmeshv1.Flow) []uint32 {
	var out []uint32
	for _, f := range fs {
		out = append(out, f.GetDestination().GetPort())
	}
	return out
}

func TestQueryMatchesEveryFilterField(t *testing.T) {
	s := fixture(t)
	for _, tc := range []struct {
		name  string
		q     Query
		scope Scope
		want  []uint32
	}{
		{"everything, oldest first", Query{}, Scope{}, []uint32{5432, 8080, 443, 5432}},
		{"cluster matches either side", Query{Filter: Filter{Cluster: "a"}}, Scope{}, []uint32{5432, 8080, 443}},
		{"namespace", Query{Filter: Filter{Namespace: "shop"}}, Scope{}, []uint32{8080, 5432}},
		{"pod with namespace", Query{Filter: Filter{PodNamespace: "demo", Pod: "db"}}, Scope{}, []uint32{5432, 5432}},
		{"cluster and pod hold on one side", Query{Filter: Filter{Cluster: "a", Pod: "db"}}, Scope{}, nil},
		{"verdict deny", Query{Filter: Filter{Verdict: fedmeshv1.Verdict_VERDICT_DENY}}, Scope{}, []uint32{5432}},
		{"policy by name", Query{Filter: Filter{Policy: &PolicyRef{Name: "db-ingress"}}}, Scope{}, []uint32{5432, 5432}},
		{"policy by full key", Query{Filter: Filter{Policy: &PolicyRef{Cluster: ptr("b"), Namespace: ptr("shop"), Name: "api-ingress"}}}, Scope{}, []uint32{8080}},
		{"policy of another cluster", Query{Filter: Filter{Policy: &PolicyRef{Cluster: ptr("a"), Namespace: ptr("shop"), Name: "api-ingress"}}}, Scope{}, nil},
		{"node", Query{Filter: Filter{Node: "b1"}}, Scope{}, []uint32{5432}},
		{"time range", Query{Since: t0.Add(time.Second), Until: t0.Add(2 * time.Second)}, Scope{}, []uint32{8080, 443}},
		{"limit keeps the newest", Query{Limit: 2}, Scope{}, []uint32{443, 5432}},
		{"scope: only flows touching the cluster", Query{}, Scope{Cluster: "b"}, []uint32{5432, 8080, 5432}},
		{"scope and filter", Query{Filter: Filter{Node: "a1"}}, Scope{Cluster: "b"}, []uint32{5432, 8080}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.q.Limit == 0 {
				tc.q.Limit = DefaultLimit
			}
			got := ports(s.Query(tc.q, tc.scope))
			if !slices.Equal(got, tc.want) {
				t.Fatalf("ports %v, want %v", got, tc.want)
			}
		})
	}
}

func TestStoredFlowComesBackAsShipped(t *testing.T) {
	s := fixture(t)
	got := s.Query(Query{Filter: Filter{Node: "a1", Verdict: fedmeshv1.Verdict_VERDICT_DENY}, Limit: 1}, Scope{})
	if len(got) != 1 {
		t.Fatalf("got %d flows", len(got))
	}
	f := got[0]
	if f.GetCluster() != "a" || f.GetSource().GetIp() != "10.1.1.11" || f.GetSource().GetLabels()["app"] != "web" ||
		f.GetDestination().GetPod() != "db" || f.GetDestination().GetPort() != 5432 ||
		f.GetDecision().GetKind() != fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NO_RULE_ALLOWS ||
		f.GetDecision().GetSelectedBy()[0].GetName() != "db-ingress" || !f.GetTime().AsTime().Equal(t0) {
		t.Fatalf("flow = %v", f)
	}
	ext := s.Query(Query{Filter: Filter{Pod: "web"}, Limit: 10}, Scope{})
	if ext[len(ext)-1].GetSource().GetIp() != "192.0.2.7" {
		t.Fatalf("external source = %v", ext[len(ext)-1].GetSource())
	}
}

func TestFollowerGetsMatchingFlowsAndCountsWhatItMissed(t *testing.T) {
	s := New(Config{NodeRate: 1e9})
	s.Add("a", "a1", []*fedmeshv1.Flow{flowAt(t0, webA, dbB, 9, true, "p")}, 0)
	hist, f, stop := s.QueryFollow(Query{Filter: Filter{Verdict: fedmeshv1.Verdict_VERDICT_DENY}, Limit: 10}, Scope{Cluster: "b"})
	if len(hist) != 1 || hist[0].GetDestination().GetPort() != 9 {
		t.Fatalf("history %v, want the one earlier denied flow", hist)
	}
	defer stop()
	s.Add("a", "a1", []*fedmeshv1.Flow{flowAt(t0, webA, dbB, 1, true, "p"), flowAt(t0, webA, dbB, 2, false, "p"), flowAt(t0, webA, wl("a", "x", "y", "10.1.1.9"), 3, true, "p")}, 0)
	select {
	case got := <-f.C:
		if got.GetDestination().GetPort() != 1 || got.GetNode() != "a1" {
			t.Fatalf("followed %v", got)
		}
	default:
		t.Fatal("no flow followed")
	}
	if len(f.C) != 0 {
		t.Fatalf("%d more flows followed, want none (allowed, or outside the scope)", len(f.C))
	}
	many := make([]*fedmeshv1.Flow, FollowBuffer+10)
	for i := range many {
		many[i] = flowAt(t0, webA, dbB, 1, true, "p")
	}
	s.Add("a", "a1", many, 0)
	if s.Lagged(f) != 10 || s.Status().DroppedFollow != 10 {
		t.Fatalf("lagged %d dropped_follow %d, want 10", s.Lagged(f), s.Status().DroppedFollow)
	}
}

func TestSummaryCountsPerEdgeAndWindow(t *testing.T) {
	s := New(Config{NodeRate: 1e9, Now: (&clock{t0.Add(time.Hour)}).Now})
	var fs []*fedmeshv1.Flow
	for i := range 5 {
		fs = append(fs, flowAt(t0.Add(time.Duration(i)*20*time.Second), webA, dbB, 5432, i%2 == 0, "db-ingress"))
	}
	fs = append(fs, flowAt(t0, ext, webA, 443, true, "web"), flowAt(t0, wl("", "", "", "192.0.2.8"), webA, 443, true, "web"))
	s.Add("a", "a1", fs, 0)
	edges := s.Summarize(Summary{Since: t0, Until: t0.Add(2 * time.Minute), Window: time.Minute}, Scope{})
	if len(edges) != 3 {
		t.Fatalf("%d edges, want web->db:5432 and one per external address: %v", len(edges), edges)
	}
	var db *fedmeshv1.FlowEdge
	for _, e := range edges {
		if e.GetDestination().GetPod() == "db" {
			db = e
		}
	}
	if db.GetAllowed() != 2 || db.GetDenied() != 3 || len(db.GetWindows()) != 2 ||
		db.GetWindows()[0].GetDenied() != 2 || db.GetWindows()[0].GetAllowed() != 1 || db.GetWindows()[1].GetDenied() != 1 ||
		db.GetDestination().GetPort() != 5432 || len(db.GetDeniedBy()) != 1 || db.GetDeniedBy()[0].GetName() != "db-ingress" {
		t.Fatalf("edge = %v", db)
	}
}

func TestCompactKeepsFlowsAndShrinksTables(t *testing.T) {
	c := &clock{t0}
	s := New(Config{MaxAge: time.Minute, NodeRate: 1e9, Now: c.Now})
	for i := range 10_000 {
		s.Add("a", "a1", []*fedmeshv1.Flow{flowAt(t0, wl("a", "demo", fmt.Sprintf("pod-%d", i), "10.1.1.1"), dbB, 80, false, "db")}, 0)
	}
	c.now = t0.Add(2 * time.Minute)
	s.Add("a", "a1", []*fedmeshv1.Flow{flowAt(c.now, webA, dbB, 81, true, "db")}, 0)
	s.Sweep()
	if st := s.Status(); st.Workloads > 4 || st.Stored != 1 {
		t.Fatalf("after compaction %+v, want the one live flow and its two workloads", st)
	}
	got := s.Query(Query{Limit: 10}, Scope{})
	if len(got) != 1 || got[0].GetSource().GetPod() != "web" || got[0].GetDecision().GetSelectedBy()[0].GetName() != "db" {
		t.Fatalf("flow after compaction = %v", got)
	}
}

func TestBadRequestsNameTheField(t *testing.T) {
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	for _, tc := range []struct {
		name  string
		req   *fedmeshv1.GetFlowsRequest
		field string
	}{
		{"cluster not a label", &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Cluster: "A_B"}}, "filter.cluster"},
		{"namespace too long", &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Namespace: string(make([]byte, 64))}}, "filter.namespace"},
		{"pod with bad namespace", &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Pod: "Bad/web"}}, "filter.pod"},
		{"pod namespace contradicts", &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Namespace: "demo", Pod: "shop/web"}}, "filter.pod"},
		{"unknown verdict", &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Verdict: 7}}, "filter.verdict"},
		{"policy of four parts", &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Policy: "a/b/c/d"}}, "filter.policy"},
		{"policy with empty name", &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Policy: "demo/"}}, "filter.policy"},
		{"node", &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Node: "-x"}}, "filter.node"},
		{"dns name with an empty label", &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{DnsName: "api..example.com"}}, "filter.dnsName"},
		{"dns name with an inner wildcard", &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{DnsName: "api.*.com"}}, "filter.dnsName"},
		{"until before since", &fedmeshv1.GetFlowsRequest{Since: ts(time.Hour), Until: ts(0)}, "until"},
		{"since out of range", &fedmeshv1.GetFlowsRequest{Since: &timestamppb.Timestamp{Seconds: -1 << 62}}, "since"},
		{"until with follow", &fedmeshv1.GetFlowsRequest{Until: ts(0), Follow: true}, "until"},
		{"limit", &fedmeshv1.GetFlowsRequest{Limit: MaxLimit + 1}, "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseQuery(tc.req)
			fields := fieldsOf(err)
			if !slices.Contains(fields, tc.field) {
				t.Fatalf("error %v names %v, want %s", err, fields, tc.field)
			}
		})
	}
	for _, tc := range []struct {
		name  string
		req   *fedmeshv1.GetFlowSummaryRequest
		field string
	}{
		{"window too small", &fedmeshv1.GetFlowSummaryRequest{Window: durationpb.New(time.Millisecond)}, "window"},
		{"too many windows", &fedmeshv1.GetFlowSummaryRequest{Window: durationpb.New(time.Second)}, "window"},
		{"since after now", &fedmeshv1.GetFlowSummaryRequest{Since: ts(2 * time.Hour)}, "since"},
		{"bad filter", &fedmeshv1.GetFlowSummaryRequest{Filter: &fedmeshv1.FlowFilter{Cluster: "x y"}}, "filter.cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSummary(tc.req, t0)
			if fields := fieldsOf(err); !slices.Contains(fields, tc.field) {
				t.Fatalf("error %v names %v, want %s", err, fields, tc.field)
			}
		})
	}
	if _, err := ParseQuery(&fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Cluster: "a", Namespace: "demo", Pod: "demo/web", Policy: "//allow-dns", Verdict: fedmeshv1.Verdict_VERDICT_DENY}, Since: ts(0), Follow: true}); err != nil {
		t.Fatalf("a good request refused: %v", err)
	}
}

func fieldsOf(err error) []string {
	var out []string
	for _, fe := range model.FieldErrors(err) {
		out = append(out, fe.Field)
	}
	return out
}

func TestFlowsShippedWithoutLabelsGetThemFromTheControlPlane(t *testing.T) {
	calls := 0
	s := New(Config{NodeRate: 1e9, Now: (&clock{t0}).Now, Labels: func(c, ns, pod string) map[string]string {
		calls++
		return map[string]string{"app": pod, "cluster": c}
	}})
	bare := func(pod string) *fedmeshv1.Workload {
		return &fedmeshv1.Workload{Cluster: "a", Namespace: "demo", Pod: pod, Ip: "10.1.1.1"}
	}
	for range 3 {
		s.Add("a", "n1", []*fedmeshv1.Flow{flowAt(t0, bare("web"), bare("db"), 80, false, "p"), flowAt(t0, ext, bare("db"), 80, true, "p")}, 0)
	}
	got := s.Query(Query{Limit: 10}, Scope{})
	if len(got) != 6 {
		t.Fatalf("%d flows, want 6", len(got))
	}
	for _, f := range got {
		if f.GetDestination().GetLabels()["app"] != "db" || f.GetDestination().GetLabels()["cluster"] != "a" ||
			(f.GetSource().GetPod() == "web") != (f.GetSource().GetLabels()["app"] == "web") || (f.GetSource().GetCluster() == "" && len(f.GetSource().GetLabels()) != 0) {
			t.Fatalf("flow %v: labels not filled from the control plane (or given to an external address)", f)
		}
	}
	if calls != 2 {
		t.Fatalf("labels looked up %d times, want once per workload", calls)
	}
}

func TestServeSendsHistoryInBatchesThenFollows(t *testing.T) {
	s := New(Config{NodeRate: 1e9, Now: (&clock{t0}).Now})
	many := make([]*fedmeshv1.Flow, 2*SendBatch+200)
	for i := range many {
		many[i] = flowAt(t0, webA, dbB, uint32(i), false, "p")
	}
	s.Add("a", "a1", many, 0)
	ctx, cancel := context.WithCancel(context.Background())
	msgs := make(chan *fedmeshv1.GetFlowsResponse, 16)
	done := make(chan error, 1)
	go func() {
		done <- s.Serve(ctx, Query{Follow: true, Limit: MaxLimit}, Scope{}, func(m *fedmeshv1.GetFlowsResponse) error { msgs <- m; return nil })
	}()
	var sizes []int
	for range 3 {
		m := <-msgs
		sizes = append(sizes, len(m.GetFlows()))
		if (m.GetStatus() != nil) != (len(sizes) == 1) {
			t.Fatalf("message %d carries status %v; only the first should", len(sizes), m.GetStatus())
		}
	}
	if !slices.Equal(sizes, []int{SendBatch, SendBatch, 200}) {
		t.Fatalf("history in messages of %v", sizes)
	}
	s.Add("a", "a1", []*fedmeshv1.Flow{flowAt(t0, webA, dbB, 7, true, "p")}, 0)
	if m := <-msgs; len(m.GetFlows()) != 1 || m.GetFlows()[0].GetDestination().GetPort() != 7 {
		t.Fatalf("followed %v", m)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve ended with %v", err)
	}
}

func TestSummaryCountsADualStackPodAsOneWorkload(t *testing.T) {
	s := New(Config{NodeRate: 1e9, Now: (&clock{t0.Add(time.Minute)}).Now})
	web6, db6 := wl("a", "demo", "web", "fd00::11"), wl("b", "demo", "db", "fd00::12")
	s.Add("a", "a1", []*fedmeshv1.Flow{flowAt(t0, webA, dbB, 5432, false, "p"), flowAt(t0, web6, db6, 5432, true, "p")}, 0)
	edges := s.Summarize(Summary{Since: t0, Until: t0.Add(time.Minute), Window: time.Minute}, Scope{})
	if len(edges) != 1 || edges[0].GetAllowed() != 1 || edges[0].GetDenied() != 1 || edges[0].GetSource().GetIp() != "" {
		t.Fatalf("edges %v, want one web -> db:5432 edge over both families", edges)
	}
	got := s.Query(Query{Limit: 10}, Scope{})
	ips := []string{got[0].GetSource().GetIp(), got[1].GetSource().GetIp()}
	slices.Sort(ips)
	if !slices.Equal(ips, []string{"10.1.1.11", "fd00::11"}) {
		t.Fatalf("flows keep their own addresses: %v", ips)
	}
}
