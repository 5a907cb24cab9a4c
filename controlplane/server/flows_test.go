package server

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func testFlow(srcCluster, dstCluster string, port uint32, deny bool) *fedmeshv1.Flow {
	f := &fedmeshv1.Flow{Time: timestamppb.Now(), Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW,
		Source:      &fedmeshv1.Workload{Cluster: srcCluster, Namespace: "demo", Pod: "web", Ip: "10.1.1.11"},
		Destination: &fedmeshv1.Workload{Cluster: dstCluster, Namespace: "demo", Pod: "db", Ip: "10.2.1.12", Port: port},
		Decision:    &fedmeshv1.FlowDecision{Direction: fedmeshv1.PolicyType_POLICY_TYPE_EGRESS, Kind: fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NOT_SELECTED}}
	if deny {
		f.Verdict = fedmeshv1.Verdict_VERDICT_DENY
		f.Decision = &fedmeshv1.FlowDecision{Direction: fedmeshv1.PolicyType_POLICY_TYPE_EGRESS, Kind: fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NO_RULE_ALLOWS,
			SelectedBy: []*fedmeshv1.PolicyKey{{Cluster: srcCluster, Namespace: "demo", Name: "deny-all"}}}
	}
	return f
}

func ship(ctx context.Context, c fedmeshv1.FlowServiceClient, reqs ...*fedmeshv1.ShipFlowsRequest) (*fedmeshv1.ShipFlowsResponse, error) {
	s, err := c.ShipFlows(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range reqs {
		if err := s.Send(r); err != nil {
			break // the server ended the stream; CloseAndRecv says why
		}
	}
	return s.CloseAndRecv()
}

func getFlows(t *testing.T, ctx context.Context, c fedmeshv1.FlowServiceClient, req *fedmeshv1.GetFlowsRequest) ([]*fedmeshv1.Flow, error) {
	t.Helper()
	s, err := c.GetFlows(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*fedmeshv1.Flow
	for {
		m, err := s.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, err
		}
		out = append(out, m.GetFlows()...)
	}
}

func destPorts(fs []*fedmeshv1.Flow) []uint32 {
	var out []uint32
	for _, f := range fs {
		out = append(out, f.GetDestination().GetPort())
	}
	return out
}

// Agents ship only their own node's flows over their node certificate;
// a node the federation does not know is refused; admins read every flow,
// a cluster's principals only the flows touching their cluster; bad
// filters are refused naming the field; followers get new flows live.
func TestFlowServiceAuthorizesShippingAndScopesReads(t *testing.T) {
	g := startTLSGroup(t, 1)
	lead := g.leader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	adminConn := g.conn(t, lead, auth.Admin())
	clusters := fedmeshv1.NewClusterServiceClient(adminConn)
	for name, cidr := range map[string]string{"a": "10.1.0.0/16", "b": "10.2.0.0/16", "c": "10.3.0.0/16"} {
		if _, err := clusters.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: name, PodCidrs: []string{cidr}}}); err != nil {
			t.Fatal(err)
		}
	}
	flowsAs := func(p auth.Principal) fedmeshv1.FlowServiceClient {
		return fedmeshv1.NewFlowServiceClient(g.conn(t, lead, p))
	}
	for _, n := range []auth.Principal{auth.Node("a", "n1"), auth.Node("c", "n1")} {
		if _, err := fedmeshv1.NewNodeServiceClient(g.conn(t, lead, n)).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{
			Cluster: n.Cluster, Name: n.Node, UnderlayIp: "198.18.0.1"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := fedmeshv1.NewEndpointServiceClient(g.conn(t, lead, auth.Syncer("a"))).UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "a",
		Endpoints: []*fedmeshv1.Endpoint{{Cluster: "a", Namespace: "demo", Name: "web", Ips: []string{"10.1.1.11"}, Node: "n1", Labels: map[string]string{"app": "web"}}}}); err != nil {
		t.Fatal(err)
	}
	admin := flowsAs(auth.Admin())
	follow, err := admin.GetFlows(ctx, &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Verdict: fedmeshv1.Verdict_VERDICT_DENY}, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := follow.Recv(); err != nil || m.GetStatus().GetReplica() != lead.cfg.NodeID {
		t.Fatalf("first follow message %v (%v), want the store status", m, err)
	}

	an1 := flowsAs(auth.Node("a", "n1"))
	resp, err := ship(ctx, an1, &fedmeshv1.ShipFlowsRequest{Cluster: "a", Node: "n1", Dropped: 3,
		Flows: []*fedmeshv1.Flow{testFlow("a", "b", 5432, true), testFlow("a", "a", 80, false)}})
	if err != nil || resp.GetAccepted() != 2 {
		t.Fatalf("a/n1 ships its flows: %v (%v), want 2 accepted", resp, err)
	}
	if _, err := ship(ctx, flowsAs(auth.Node("c", "n1")), &fedmeshv1.ShipFlowsRequest{Cluster: "c", Node: "n1", Flows: []*fedmeshv1.Flow{testFlow("c", "c", 53, false)}}); err != nil {
		t.Fatalf("c/n1 ships: %v", err)
	}
	for _, tc := range []struct {
		name string
		c    fedmeshv1.FlowServiceClient
		req  *fedmeshv1.ShipFlowsRequest
		code codes.Code
	}{
		{"another node's flows", an1, &fedmeshv1.ShipFlowsRequest{Cluster: "a", Node: "n2", Flows: []*fedmeshv1.Flow{testFlow("a", "a", 1, true)}}, codes.PermissionDenied},
		{"a node the federation does not know", flowsAs(auth.Node("a", "ghost")), &fedmeshv1.ShipFlowsRequest{Cluster: "a", Node: "ghost", Flows: []*fedmeshv1.Flow{testFlow("a", "a", 1, true)}}, codes.PermissionDenied},
		{"an admin", admin, &fedmeshv1.ShipFlowsRequest{Cluster: "a", Node: "n1"}, codes.PermissionDenied},
		{"a syncer", flowsAs(auth.Syncer("a")), &fedmeshv1.ShipFlowsRequest{Cluster: "a", Node: "n1"}, codes.PermissionDenied},
	} {
		if _, err := ship(ctx, tc.c, tc.req); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.code)
		}
	}

	for _, tc := range []struct {
		name string
		p    auth.Principal
		want []uint32
	}{
		{"admin reads everything", auth.Admin(), []uint32{5432, 80, 53}},
		{"syncer of b reads the flow into b", auth.Syncer("b"), []uint32{5432}},
		{"node of a reads the flows of a", auth.Node("a", "n1"), []uint32{5432, 80}},
		{"node of c reads only c", auth.Node("c", "n1"), []uint32{53}},
	} {
		got, err := getFlows(t, ctx, flowsAs(tc.p), &fedmeshv1.GetFlowsRequest{})
		if err != nil || !slices.Equal(destPorts(got), tc.want) {
			t.Errorf("%s: %v (%v), want ports %v", tc.name, destPorts(got), err, tc.want)
		}
	}

	// Agents ship no labels; the replica adds the endpoint's from its view.
	all, err := getFlows(t, ctx, admin, &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Cluster: "a"}})
	if err != nil || len(all) != 2 || all[0].GetSource().GetLabels()["app"] != "web" || len(all[0].GetDestination().GetLabels()) != 0 {
		t.Errorf("flows of a: %v (%v), want the source's labels from the control plane and none for an endpoint it does not know", all, err)
	}

	_, err = getFlows(t, ctx, admin, &fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{Policy: "a/b/c/d"}})
	if status.Code(err) != codes.InvalidArgument || !slices.Contains(badRequestFields(err), "filter.policy") {
		t.Errorf("bad policy filter: %v (fields %v), want InvalidArgument naming filter.policy", err, badRequestFields(err))
	}
	if _, err := admin.GetFlowSummary(ctx, &fedmeshv1.GetFlowSummaryRequest{Window: durationpb.New(5)}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("summary with a 5ns window: %v, want InvalidArgument", err)
	}

	m, err := follow.Recv()
	if err != nil || len(m.GetFlows()) != 1 || m.GetFlows()[0].GetDestination().GetPort() != 5432 || m.GetFlows()[0].GetNode() != "n1" {
		t.Fatalf("followed %v (%v), want the denied flow a/n1 shipped", m, err)
	}
	sum, err := flowsAs(auth.Syncer("a")).GetFlowSummary(ctx, &fedmeshv1.GetFlowSummaryRequest{})
	if err != nil || len(sum.GetEdges()) != 2 || sum.GetStatus().GetDroppedAgent() != 3 || sum.GetStatus().GetStored() != 3 {
		t.Fatalf("summary for syncer a: %v (%v), want its two edges and the store's counts", sum, err)
	}
}
