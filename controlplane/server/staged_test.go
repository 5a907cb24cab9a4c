package server

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func stagedNP(p *fedmeshv1.Policy) *fedmeshv1.StagedPolicy {
	return &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_NetworkPolicy{NetworkPolicy: p}}
}

// dbLockdown selects the db pods of namespace demo for ingress and allows
// only port allow (0: nothing).
func dbLockdown(allow uint32) *fedmeshv1.Policy {
	p := &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Namespace: "demo", Name: "db-lockdown",
		Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			PolicyTypes: []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_INGRESS}}}
	if allow != 0 {
		p.Spec.Ingress = []*fedmeshv1.NetworkPolicyIngressRule{{Ports: []*fedmeshv1.NetworkPolicyPort{{Port: &fedmeshv1.NetworkPolicyPort_Number{Number: allow}}}}}
	}
	return p
}

var lockdownKey = &fedmeshv1.StagedPolicyKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_NETWORK_POLICY, Namespace: "demo", Name: "db-lockdown"}

func localFlow(port uint32, v fedmeshv1.Verdict) *fedmeshv1.Flow {
	return &fedmeshv1.Flow{Time: timestamppb.Now(), Protocol: 6, Verdict: v,
		Source:      &fedmeshv1.Workload{Cluster: "a", Namespace: "demo", Pod: "web", Ip: "10.1.1.11"},
		Destination: &fedmeshv1.Workload{Cluster: "a", Namespace: "demo", Pod: "db", Ip: "10.1.1.12", Port: port}}
}

func stagedDeniedBy(f *fedmeshv1.Flow) []string {
	var out []string
	for _, k := range f.GetStaged().GetDeniedBy() {
		out = append(out, store.StagedKeyFromAPI(k).String())
	}
	return out
}

// The whole life of a staged policy through the gRPC API over mTLS: edge
// validation and authorization, never enforced while staged, flows say
// what it would deny, preview lists it, promote enforces it atomically
// (refusing an enforced key without replace), delete.
func TestStagedPolicyIsEvaluatedOnFlowsButNotEnforcedUntilPromoted(t *testing.T) {
	g := startTLSGroup(t, 1)
	lead := g.leader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := g.conn(t, lead, auth.Admin())
	if _, err := fedmeshv1.NewClusterServiceClient(admin).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := fedmeshv1.NewNodeServiceClient(g.conn(t, lead, auth.Node("a", "n1"))).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{
		Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := fedmeshv1.NewEndpointServiceClient(g.conn(t, lead, auth.Syncer("a"))).UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "a",
		Endpoints: []*fedmeshv1.Endpoint{
			{Cluster: "a", Namespace: "demo", Name: "web", Ips: []string{"10.1.1.11"}, Node: "n1", Labels: map[string]string{"app": "web"}},
			{Cluster: "a", Namespace: "demo", Name: "db", Ips: []string{"10.1.1.12"}, Node: "n1", Labels: map[string]string{"app": "db"}},
		}}); err != nil {
		t.Fatal(err)
	}
	staged := fedmeshv1.NewStagedPolicyServiceClient(admin)
	policies := fedmeshv1.NewPolicyServiceClient(admin)
	reach := func() fedmeshv1.Verdict {
		t.Helper()
		r, err := fedmeshv1.NewReachServiceClient(admin).Reach(ctx, &fedmeshv1.ReachRequest{Source: epTarget("a", "demo", "web"),
			Destination: epTarget("a", "demo", "db"), Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: 5432})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetVerdict()
	}

	// Bad input is refused at the edge naming the field; nothing is staged.
	bad := dbLockdown(0)
	bad.Spec.Ingress = []*fedmeshv1.NetworkPolicyIngressRule{{Ports: []*fedmeshv1.NetworkPolicyPort{{Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 70000}}}}}
	kube := dbLockdown(0)
	kube.Kind, kube.Cluster = fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, "a"
	for _, tc := range []struct {
		name  string
		p     *fedmeshv1.StagedPolicy
		field string
	}{
		{"port out of range", stagedNP(bad), "policy.networkPolicy.spec.ingress[0].ports[0].port"},
		{"a cluster's NetworkPolicy", stagedNP(kube), "policy.networkPolicy.kind"},
		{"a synced ClusterNetworkPolicy", &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_ClusterNetworkPolicy{ClusterNetworkPolicy: &fedmeshv1.ClusterNetworkPolicy{Cluster: "a", Name: "x"}}}, "policy.clusterNetworkPolicy.cluster"},
		{"no policy", &fedmeshv1.StagedPolicy{}, "policy"},
	} {
		_, err := staged.StagePolicy(ctx, &fedmeshv1.StagePolicyRequest{Policy: tc.p})
		if status.Code(err) != codes.InvalidArgument || !slices.Contains(badRequestFields(err), tc.field) {
			t.Errorf("%s: %v (fields %v), want InvalidArgument naming %s", tc.name, err, badRequestFields(err), tc.field)
		}
	}
	// Who cannot apply a federated policy cannot stage one.
	for _, p := range []auth.Principal{auth.Syncer("a"), auth.Node("a", "n1")} {
		_, err := fedmeshv1.NewStagedPolicyServiceClient(g.conn(t, lead, p)).StagePolicy(ctx, &fedmeshv1.StagePolicyRequest{Policy: stagedNP(dbLockdown(0))})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s stages a federated policy: %v, want PermissionDenied", p, err)
		}
		if _, err := fedmeshv1.NewStagedPolicyServiceClient(g.conn(t, lead, p)).PromotePolicy(ctx, &fedmeshv1.PromotePolicyRequest{Key: lockdownKey}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s promotes: %v, want PermissionDenied", p, err)
		}
	}
	if l, err := staged.ListStagedPolicies(ctx, &fedmeshv1.ListStagedPoliciesRequest{}); err != nil || len(l.GetPolicies()) != 0 {
		t.Fatalf("after refused writes: %v (%v), want nothing staged", l, err)
	}

	// Staged: listed as staged, not enforced. (Reach first, so its engine
	// exists and follows the event log from before the staging: a staged
	// policy in any event would reach it as agents would get it.)
	if v := reach(); v != fedmeshv1.Verdict_VERDICT_ALLOW {
		t.Fatalf("reach web->db:5432 with no policy: %v", v)
	}
	resp, err := staged.StagePolicy(ctx, &fedmeshv1.StagePolicyRequest{Policy: stagedNP(dbLockdown(0))})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPolicy().GetNetworkPolicy().GetMeta().GetUpdatedBy() != auth.Admin().URI().String() {
		t.Errorf("staged policy records %q as its writer", resp.GetPolicy().GetNetworkPolicy().GetMeta().GetUpdatedBy())
	}
	if l, err := fedmeshv1.NewStagedPolicyServiceClient(g.conn(t, lead, auth.Syncer("a"))).ListStagedPolicies(ctx, &fedmeshv1.ListStagedPoliciesRequest{}); err != nil || len(l.GetPolicies()) != 1 {
		t.Fatalf("syncer lists staged policies: %v (%v), want the one", l, err)
	}
	if l, err := policies.ListPolicies(ctx, &fedmeshv1.ListPoliciesRequest{}); err != nil || len(l.GetPolicies()) != 0 {
		t.Fatalf("enforced policies %v (%v): a staged policy must not be among them", l, err)
	}
	if v := reach(); v != fedmeshv1.Verdict_VERDICT_ALLOW {
		t.Fatalf("reach web->db:5432 with the lockdown only staged: %v, want ALLOW", v)
	}
	// Reach with staged set answers as if the staged lockdown were
	// enforced, naming it; asking enforces nothing.
	sr, err := fedmeshv1.NewReachServiceClient(admin).Reach(ctx, &fedmeshv1.ReachRequest{Source: epTarget("a", "demo", "web"),
		Destination: epTarget("a", "demo", "db"), Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: 5432, Staged: true})
	if err != nil {
		t.Fatal(err)
	}
	if sr.GetVerdict() != fedmeshv1.Verdict_VERDICT_DENY || !sr.GetStaged() || len(sr.GetStagedDeniedBy()) != 1 ||
		store.StagedKeyFromAPI(sr.GetStagedDeniedBy()[0]).String() != "federated/demo/db-lockdown" {
		t.Fatalf("reach --staged web->db:5432: %v, want DENY by staged federated/demo/db-lockdown", sr)
	}
	if v := reach(); v != fedmeshv1.Verdict_VERDICT_ALLOW {
		t.Fatalf("reach web->db:5432 after a staged reach: %v, want ALLOW (the overlay was taken back)", v)
	}

	// Flows: the allowed flow to 5432 would be denied by the staged policy.
	if _, err := ship(ctx, fedmeshv1.NewFlowServiceClient(g.conn(t, lead, auth.Node("a", "n1"))), &fedmeshv1.ShipFlowsRequest{Cluster: "a", Node: "n1",
		Flows: []*fedmeshv1.Flow{localFlow(5432, fedmeshv1.Verdict_VERDICT_ALLOW), localFlow(5432, fedmeshv1.Verdict_VERDICT_ALLOW), localFlow(9000, fedmeshv1.Verdict_VERDICT_ALLOW)}}); err != nil {
		t.Fatal(err)
	}
	fl, err := getFlows(t, ctx, fedmeshv1.NewFlowServiceClient(admin), &fedmeshv1.GetFlowsRequest{})
	if err != nil || len(fl) != 3 {
		t.Fatalf("flows %v (%v)", fl, err)
	}
	for _, f := range fl {
		if f.GetStaged().GetVerdict() != fedmeshv1.Verdict_VERDICT_DENY || !slices.Equal(stagedDeniedBy(f), []string{"federated/demo/db-lockdown"}) {
			t.Errorf("flow to %d: staged %v, want it would be denied by staged federated/demo/db-lockdown", f.GetDestination().GetPort(), f.GetStaged())
		}
		if f.GetVerdict() != fedmeshv1.Verdict_VERDICT_ALLOW {
			t.Errorf("the recorded verdict changed: %v", f.GetVerdict())
		}
	}

	// Summary: per edge, how many flows the staged policies would deny.
	if sum := stagedSummaryOf(t, ctx, fedmeshv1.NewFlowServiceClient(admin)); sum[5432] != "2 federated/demo/db-lockdown" || sum[9000] != "1 federated/demo/db-lockdown" {
		t.Errorf("summary with db-lockdown staged: %v, want :5432 2 and :9000 1 flows denied by staged federated/demo/db-lockdown", sum)
	}

	// Preview: what the staged policy would deny, per edge.
	if _, err := staged.PreviewStagedPolicy(ctx, &fedmeshv1.PreviewStagedPolicyRequest{Key: lockdownKey}); status.Code(err) != codes.InvalidArgument || !slices.Contains(badRequestFields(err), "since") {
		t.Errorf("preview without since: %v, want InvalidArgument naming since", err)
	}
	pv, err := staged.PreviewStagedPolicy(ctx, &fedmeshv1.PreviewStagedPolicyRequest{Key: lockdownKey, Since: timestamppb.New(time.Now().Add(-time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	if pv.GetEvaluated() != 3 || len(pv.GetWouldDeny()) != 2 || pv.GetWouldDeny()[0].GetFlows() != 2 || pv.GetWouldDeny()[0].GetDestination().GetPort() != 5432 || len(pv.GetWouldAllow()) != 0 {
		t.Fatalf("preview %v, want web->db:5432 (2 flows) and :9000 (1) it would deny", pv)
	}

	// A preview larger than one engine request evaluates every flow.
	many := make([]*fedmeshv1.Flow, stagedEvalChunk+100)
	for i := range many {
		many[i] = localFlow(7000, fedmeshv1.Verdict_VERDICT_ALLOW)
	}
	if r, err := ship(ctx, fedmeshv1.NewFlowServiceClient(g.conn(t, lead, auth.Node("a", "n1"))), &fedmeshv1.ShipFlowsRequest{Cluster: "a", Node: "n1", Flows: many}); err != nil || r.GetAccepted() != uint64(len(many)) {
		t.Fatalf("ship %d flows: %v (%v)", len(many), r, err)
	}
	pv, err = staged.PreviewStagedPolicy(ctx, &fedmeshv1.PreviewStagedPolicyRequest{Key: lockdownKey, Since: timestamppb.New(time.Now().Add(-time.Hour))})
	if err != nil || pv.GetEvaluated() != uint64(3+len(many)) || len(pv.GetWouldDeny()) != 3 || pv.GetWouldDeny()[0].GetFlows() != uint64(len(many)) {
		t.Fatalf("preview over %d flows: evaluated %d, rows %v (%v)", 3+len(many), pv.GetEvaluated(), pv.GetWouldDeny(), err)
	}

	// Promote refuses to replace an enforced policy of the key unless asked.
	if _, err := policies.ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{dbLockdown(5432)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := staged.PromotePolicy(ctx, &fedmeshv1.PromotePolicyRequest{Key: lockdownKey}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("promote over an enforced policy without replace: %v, want AlreadyExists", err)
	}
	if v := reach(); v != fedmeshv1.Verdict_VERDICT_ALLOW {
		t.Fatalf("after a refused promote reach says %v; the enforced version (allowing 5432) must stay", v)
	}
	// With an enforced policy allowing 5432, the preview would now deny
	// only :9000... and the staged (deny-all) version replaces it.
	pr, err := staged.PromotePolicy(ctx, &fedmeshv1.PromotePolicyRequest{Key: lockdownKey, Replace: true})
	if err != nil || !pr.GetReplaced() {
		t.Fatalf("promote with replace: %v (%v)", pr, err)
	}
	if v := reach(); v != fedmeshv1.Verdict_VERDICT_DENY {
		t.Fatalf("after the promote reach says %v, want DENY", v)
	}
	if _, err := staged.GetStagedPolicy(ctx, &fedmeshv1.GetStagedPolicyRequest{Key: lockdownKey}); status.Code(err) != codes.NotFound {
		t.Fatalf("promoted policy still staged: %v", err)
	}
	if _, err := staged.DeleteStagedPolicy(ctx, &fedmeshv1.DeleteStagedPolicyRequest{Key: lockdownKey}); status.Code(err) != codes.NotFound {
		t.Fatalf("delete of a policy no longer staged: %v, want NotFound", err)
	}
	if sum := stagedSummaryOf(t, ctx, fedmeshv1.NewFlowServiceClient(admin)); sum[5432] != "0" || sum[9000] != "0" {
		t.Errorf("summary with nothing staged: %v, want no flow counted as denied by a staged policy", sum)
	}
	fl, err = getFlows(t, ctx, fedmeshv1.NewFlowServiceClient(admin), &fedmeshv1.GetFlowsRequest{Limit: 10})
	if err != nil || len(fl) != 10 {
		t.Fatalf("flows: %d (%v)", len(fl), err)
	}
	for _, f := range fl {
		if f.GetStaged() != nil {
			t.Fatalf("with nothing staged a flow carries %v, want no staged verdict", f.GetStaged())
		}
	}
}

// A staged ClusterNetworkPolicy's Deny names it; a staged allow that
// replaces a denying enforced policy shows as newly allowed in a preview.
func TestPreviewReportsWhatAStagedPolicyWouldDenyAndNewlyAllow(t *testing.T) {
	eng, r := stagedTestEngine(t, []*fedmeshv1.Event{
		{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Object: &fedmeshv1.Event_Cluster{Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}},
		{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Object: &fedmeshv1.Event_Endpoint{Endpoint: &fedmeshv1.Endpoint{Cluster: "a", Namespace: "demo", Name: "web", Ips: []string{"10.1.1.11"}, Labels: map[string]string{"app": "web"}, Identity: 300}}},
		{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Object: &fedmeshv1.Event_Endpoint{Endpoint: &fedmeshv1.Endpoint{Cluster: "a", Namespace: "demo", Name: "db", Ips: []string{"10.1.1.12"}, Labels: map[string]string{"app": "db"}, Identity: 301}}},
		// Enforced: db admits nothing.
		{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Object: &fedmeshv1.Event_Policy{Policy: dbLockdown(0)}},
	})
	flows := []*fedmeshv1.Flow{localFlow(5432, fedmeshv1.Verdict_VERDICT_DENY), localFlow(23, fedmeshv1.Verdict_VERDICT_DENY),
		{Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW, Source: &fedmeshv1.Workload{Cluster: "a", Namespace: "demo", Pod: "gone"}, Destination: &fedmeshv1.Workload{Ip: "192.0.2.1", Port: 1}}}
	for i := range flows {
		flows[i].Time = timestamppb.New(time.Unix(int64(100+i), 0))
	}
	evalFlows := func(sp *fedmeshv1.StagedPolicy) *stagedResult {
		ev := &stagedEval{overlay: []*fedmeshv1.StagedPolicy{sp}}
		for _, f := range flows {
			ev.flows = append(ev.flows, compilerFlow(f))
		}
		return r.evalStaged(eng, ev)
	}

	// The staged version of db-lockdown allows 5432 (replacing the
	// enforced one): newly allowed, not denied.
	k := store.StagedKeyFromAPI(lockdownKey)
	pv := previewResponse(k, flows, evalFlows(stagedNP(dbLockdown(5432))), 9)
	if len(pv.GetWouldAllow()) != 1 || pv.GetWouldAllow()[0].GetDestination().GetPort() != 5432 || len(pv.GetWouldDeny()) != 0 || pv.GetUnresolved() != 1 || pv.GetEvaluated() != 2 {
		t.Fatalf("preview of a loosened db-lockdown: %v, want 5432 newly allowed, the unknown pod unresolved", pv)
	}
	// The overlay was taken back: the enforced version decides again.
	x, err := eng.Tiers().Explain(eng, compilerFlow(flows[0]))
	if err != nil || x.Allowed {
		t.Fatalf("after the evaluation the engine allows web->db:5432 (%v): the staged overlay leaked into the enforced set", err)
	}

	// A staged Admin-tier Deny on telnet, on a flow the enforced
	// policies would allow (the enforced lockdown removed first).
	del := &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_DELETE, Object: &fedmeshv1.Event_Policy{Policy: dbLockdown(0)}}
	if err := policy.ApplyEvent(eng, del); err != nil {
		t.Fatal(err)
	}
	r.shadow(del)
	cnp := &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_ClusterNetworkPolicy{ClusterNetworkPolicy: &fedmeshv1.ClusterNetworkPolicy{Name: "no-telnet",
		SpecJson: []byte(`{"tier":"Admin","priority":1,"subject":{"namespaces":{}},"ingress":[{"name":"telnet","action":"Deny","from":[{"namespaces":{}}],"protocols":[{"tcp":{"destinationPort":{"number":23}}}]}]}`)}}}
	res := evalFlows(cnp)
	if res.overlayErr != nil {
		t.Fatal(res.overlayErr)
	}
	got := stagedDeniers(res.staged[1], map[store.StagedKey]bool{store.StagedKeyOf(cnp): true})
	if len(got) != 1 || got[0].String() != "cnp/federated/no-telnet" {
		t.Fatalf("telnet flow denied by %v, want cnp/federated/no-telnet", got)
	}
	pv = previewResponse(store.StagedKeyOf(cnp), flows, res, 9)
	if len(pv.GetWouldDeny()) != 1 || pv.GetWouldDeny()[0].GetDestination().GetPort() != 23 || !res.staged[0].Allowed {
		t.Fatalf("preview of no-telnet: %v, want only the telnet flow denied", pv)
	}
}

func TestStagedWritesWaitForLogFormat8(t *testing.T) {
	if err := stagedWritesAt(store.LogFormatStaged - 1); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("format %d: %v, want FailedPrecondition", store.LogFormatStaged-1, err)
	}
	if err := stagedWritesAt(store.LogFormatStaged); err != nil {
		t.Fatal(err)
	}
}

// A file of several policies is staged in one write: one bad policy
// stages none of them and the error names it by its index; good ones are
// staged together at one revision.
func TestStagePolicyListIsAllOrNothing(t *testing.T) {
	_, c := startSingle(t, 100)
	ctx := ctxT(t)
	staged := fedmeshv1.NewStagedPolicyServiceClient(c.cc)
	other := dbLockdown(5432)
	other.Name = "db-open"
	bad := dbLockdown(0)
	bad.Spec.Ingress = []*fedmeshv1.NetworkPolicyIngressRule{{Ports: []*fedmeshv1.NetworkPolicyPort{{Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 70000}}}}}
	for _, tc := range []struct {
		name  string
		req   *fedmeshv1.StagePolicyRequest
		field string
	}{
		{"second policy bad", &fedmeshv1.StagePolicyRequest{Policies: []*fedmeshv1.StagedPolicy{stagedNP(other), stagedNP(bad)}},
			"policies[1].networkPolicy.spec.ingress[0].ports[0].port"},
		{"same key twice", &fedmeshv1.StagePolicyRequest{Policies: []*fedmeshv1.StagedPolicy{stagedNP(other), stagedNP(other)}}, "policies[1]"},
		{"policy and policies both", &fedmeshv1.StagePolicyRequest{Policy: stagedNP(other), Policies: []*fedmeshv1.StagedPolicy{stagedNP(dbLockdown(0))}}, "policies"},
	} {
		_, err := staged.StagePolicy(ctx, tc.req)
		if status.Code(err) != codes.InvalidArgument || !slices.Contains(badRequestFields(err), tc.field) {
			t.Errorf("%s: %v (fields %v), want InvalidArgument naming %s", tc.name, err, badRequestFields(err), tc.field)
		}
		if l, err := staged.ListStagedPolicies(ctx, &fedmeshv1.ListStagedPoliciesRequest{}); err != nil || len(l.GetPolicies()) != 0 {
			t.Fatalf("%s: staged %v (%v), want nothing staged", tc.name, l.GetPolicies(), err)
		}
	}

	resp, err := staged.StagePolicy(ctx, &fedmeshv1.StagePolicyRequest{Policies: []*fedmeshv1.StagedPolicy{stagedNP(other), stagedNP(dbLockdown(0))}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetPolicies()) != 2 {
		t.Fatalf("response lists %d policies, want both", len(resp.GetPolicies()))
	}
	l, err := staged.ListStagedPolicies(ctx, &fedmeshv1.ListStagedPoliciesRequest{})
	if err != nil || len(l.GetPolicies()) != 2 {
		t.Fatalf("staged %v (%v), want both", l.GetPolicies(), err)
	}
	for _, sp := range l.GetPolicies() {
		if rev := sp.GetNetworkPolicy().GetMeta().GetRevision(); rev != resp.GetRevision() {
			t.Errorf("%s staged at revision %d, want both at %d", sp.GetNetworkPolicy().GetName(), rev, resp.GetRevision())
		}
	}
	// The single field still stages one.
	one := dbLockdown(0)
	one.Name = "single"
	if r, err := staged.StagePolicy(ctx, &fedmeshv1.StagePolicyRequest{Policy: stagedNP(one)}); err != nil || r.GetPolicy().GetNetworkPolicy().GetName() != "single" {
		t.Fatalf("stage one policy: %v (%v)", r, err)
	}
}

// stagedSummaryOf maps each edge's destination port to its staged count
// and the staged policies named, as "N key...".
func stagedSummaryOf(t *testing.T, ctx context.Context, c fedmeshv1.FlowServiceClient) map[uint32]string {
	t.Helper()
	resp, err := c.GetFlowSummary(ctx, &fedmeshv1.GetFlowSummaryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint32]string{}
	for _, e := range resp.GetEdges() {
		v := fmt.Sprint(e.GetStagedDenied())
		for _, k := range e.GetStagedDeniedBy() {
			v += " " + store.StagedKeyFromAPI(k).String()
		}
		out[e.GetDestination().GetPort()] = v
	}
	return out
}

// A flow's DNS name decides staged domainNames rules: web's flow to an
// address it resolved from api.example.com is accepted by the staged Admin
// rule, the same flow without the name falls to the staged Baseline deny.
func TestStagedDomainNamesRulesDecideByTheFlowsName(t *testing.T) {
	eng, r := stagedTestEngine(t, []*fedmeshv1.Event{
		{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Object: &fedmeshv1.Event_Cluster{Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}},
		{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Object: &fedmeshv1.Event_Endpoint{Endpoint: &fedmeshv1.Endpoint{Cluster: "a", Namespace: "demo", Name: "web", Ips: []string{"10.1.1.11"}, Labels: map[string]string{"app": "web"}, Identity: 300}}},
	})
	cnp := func(name, spec string) *fedmeshv1.StagedPolicy {
		return &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_ClusterNetworkPolicy{ClusterNetworkPolicy: &fedmeshv1.ClusterNetworkPolicy{Name: name, SpecJson: []byte(spec)}}}
	}
	accept := cnp("api", `{"tier":"Admin","priority":1,"subject":{"namespaces":{}},"egress":[{"name":"api","action":"Accept","to":[{"domainNames":["api.example.com"]}],"protocols":[{"tcp":{"destinationPort":{"number":443}}}]}]}`)
	deny := cnp("default-deny", `{"tier":"Baseline","priority":1,"subject":{"namespaces":{}},"egress":[{"name":"all","action":"Deny","to":[{"networks":["0.0.0.0/0"]}]}]}`)
	flow := func(name string) *fedmeshv1.Flow {
		return &fedmeshv1.Flow{Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW, DnsName: name, Time: timestamppb.New(time.Unix(100, 0)),
			Source: &fedmeshv1.Workload{Cluster: "a", Namespace: "demo", Pod: "web", Ip: "10.1.1.11"}, Destination: &fedmeshv1.Workload{Ip: "192.0.2.7", Port: 443}}
	}
	ev := &stagedEval{overlay: []*fedmeshv1.StagedPolicy{accept, deny}}
	for _, f := range []*fedmeshv1.Flow{flow("api.example.com"), flow("")} {
		ev.flows = append(ev.flows, compilerFlow(f))
	}
	res := r.evalStaged(eng, ev)
	if res.overlayErr != nil {
		t.Fatal(res.overlayErr)
	}
	if !res.staged[0].Allowed {
		t.Errorf("web -> 192.0.2.7:443 resolved from api.example.com: staged verdict %+v, want accepted by the staged Admin rule", res.staged[0].Egress)
	}
	if res.staged[1].Allowed {
		t.Errorf("web -> 192.0.2.7:443 with no name: staged verdict allowed, want the staged Baseline deny")
	}
}

// stagedTestEngine is a compiler and a Reach engine fed events, as the
// server keeps them for staged evaluation.
func stagedTestEngine(t *testing.T, events []*fedmeshv1.Event) (*policy.Engine, *reachEngine) {
	t.Helper()
	eng := policy.NewEngine(policy.WithLocal(func(*fedmeshv1.Endpoint) bool { return false }))
	r := newReachEngine(nil, nil)
	r.fedNP, r.fedCNP = map[policy.PolicyKey]*fedmeshv1.Policy{}, map[string]*fedmeshv1.ClusterNetworkPolicy{}
	for _, e := range events {
		if err := policy.ApplyEvent(eng, e); err != nil {
			t.Fatal(err)
		}
		r.shadow(e)
	}
	eng.Recompute()
	return eng, r
}
