package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

type client struct {
	cc       *grpc.ClientConn
	cluster  fedmeshv1.ClusterServiceClient
	node     fedmeshv1.NodeServiceClient
	endpoint fedmeshv1.EndpointServiceClient
	mcs      fedmeshv1.MultiClusterServiceClient
	policy   fedmeshv1.PolicyServiceClient
	watch    fedmeshv1.WatchServiceClient
	reach    fedmeshv1.ReachServiceClient
	admin    fedmeshv1.ControlPlaneServiceClient
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &client{cc: cc,
		cluster: fedmeshv1.NewClusterServiceClient(cc), node: fedmeshv1.NewNodeServiceClient(cc),
		endpoint: fedmeshv1.NewEndpointServiceClient(cc), mcs: fedmeshv1.NewMultiClusterServiceClient(cc),
		policy: fedmeshv1.NewPolicyServiceClient(cc), watch: fedmeshv1.NewWatchServiceClient(cc),
		reach: fedmeshv1.NewReachServiceClient(cc), admin: fedmeshv1.NewControlPlaneServiceClient(cc)}
}

// startSingle runs a one-replica control plane in this process and waits
// until it leads.
func startSingle(t testing.TB, logSize int) (*Replica, *client) {
	t.Helper()
	raftAddr := cptest.FreeAddrs(t, 1)[0]
	r, err := Start(Config{
		NodeID: "solo", DataDir: t.TempDir(), RaftAddr: raftAddr, GRPCAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		BootstrapPeers: []Peer{{ID: "solo", RaftAddr: raftAddr}}, EventLogSize: logSize,
		RaftTimeout: 100 * time.Millisecond, Insecure: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	deadline := time.Now().Add(10 * time.Second)
	for !r.core.leaderReady.Load() {
		if time.Now().After(deadline) {
			t.Fatal("single replica did not become leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r, dial(t, r.GRPCAddr())
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func linearizable(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, ConsistencyKey, ConsistencyLinearizable)
}

func registerCluster(t testing.TB, ctx context.Context, c *client, name string, cidrs ...string) uint64 {
	t.Helper()
	resp, err := c.cluster.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: name, PodCidrs: cidrs}})
	if err != nil {
		t.Fatalf("register cluster %s: %v", name, err)
	}
	return resp.GetRevision()
}

// TestEndpointsKeepEveryPodLabel: a replica whose group applies format 3
// stores every label a syncer sends (churn and fedmesh.io/ ones too), and
// pods differing only in labels no policy selects on share an identity.
func TestEndpointsKeepEveryPodLabel(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	labels := func(hash string) map[string]string {
		return map[string]string{"app": "web", "pod-template-hash": hash, "fedmesh.io/role": "primary"}
	}
	if _, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{
		{Namespace: "web", Name: "p1", Ips: []string{"10.1.1.5"}, Labels: labels("h1"), Node: "n1"},
		{Namespace: "web", Name: "p2", Ips: []string{"10.1.1.6"}, Labels: labels("h2"), Node: "n1"},
	}}); err != nil {
		t.Fatal(err)
	}
	eps, err := c.endpoint.ListEndpoints(linearizable(ctx), &fedmeshv1.ListEndpointsRequest{Cluster: "east"})
	if err != nil || len(eps.GetEndpoints()) != 2 {
		t.Fatalf("list endpoints: %v %v", eps, err)
	}
	p1, p2 := eps.GetEndpoints()[0], eps.GetEndpoints()[1]
	if !maps.Equal(p1.GetLabels(), labels("h1")) || p1.GetIdentity() != p2.GetIdentity() {
		t.Fatalf("stored %v with identity %d (p2 %d): want every label, one identity", p1.GetLabels(), p1.GetIdentity(), p2.GetIdentity())
	}
}

func TestSingleReplicaServesWritesAndReads(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	if _, err := c.node.RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "east", Name: "n1", UnderlayIp: "198.18.0.1", PodCidrs: []string{"10.1.1.0/24"}}}); err != nil {
		t.Fatal(err)
	}
	up, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{
		{Namespace: "web", Name: "p1", Ips: []string{"10.1.1.5"}, Labels: map[string]string{"app": "web"}, Node: "n1"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.mcs.ExportServices(ctx, &fedmeshv1.ExportServicesRequest{Cluster: "east", Exports: []*fedmeshv1.ServiceExport{
		{Namespace: "web", Name: "front", Ports: []*fedmeshv1.ServicePort{{Name: "http", Port: 80}}, Backends: []string{"10.1.1.5"}},
	}}); err != nil {
		t.Fatal(err)
	}
	pol, err := c.policy.ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{{
		Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Name: "deny-all", Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: &fedmeshv1.LabelSelector{}},
	}}})
	if err != nil || len(pol.GetPolicies()) != 1 || pol.GetPolicies()[0].GetMeta().GetRevision() != pol.GetRevision() {
		t.Fatalf("apply policies: %v %v", pol, err)
	}

	eps, err := c.endpoint.ListEndpoints(linearizable(ctx), &fedmeshv1.ListEndpointsRequest{Cluster: "east"})
	if err != nil || len(eps.GetEndpoints()) != 1 || eps.GetEndpoints()[0].GetIdentity() < 256 || eps.GetRevision() < up.GetRevision() {
		t.Fatalf("list endpoints: %v %v", eps, err)
	}
	imps, err := c.mcs.ListServiceImports(ctx, &fedmeshv1.ListServiceImportsRequest{Cluster: "east"})
	if err != nil || len(imps.GetImports()) != 1 || imps.GetImports()[0].GetClusters()[0].GetAddresses()[0] != "10.1.1.5" {
		t.Fatalf("imports: %v %v", imps, err)
	}
	got, err := c.cluster.GetCluster(ctx, &fedmeshv1.GetClusterRequest{Name: "east"})
	if err != nil || got.GetCluster().GetStatus().GetEndpoints() != 1 || got.GetCluster().GetStatus().GetNodes() != 1 || got.GetCluster().GetStatus().GetLastSyncTime() == nil {
		t.Fatalf("get cluster: %v %v", got, err)
	}
	if _, err := c.cluster.GetCluster(ctx, &fedmeshv1.GetClusterRequest{Name: "west"}); status.Code(err) != codes.NotFound {
		t.Errorf("missing cluster: %v", err)
	}
	if _, err := c.cluster.ListClusters(metadata.AppendToOutgoingContext(ctx, ConsistencyKey, "eventual"), &fedmeshv1.ListClustersRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown consistency: %v", err)
	}
	if _, err := c.reach.Reach(ctx, &fedmeshv1.ReachRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("reach: %v", err)
	}
	del, err := c.cluster.DeleteCluster(ctx, &fedmeshv1.DeleteClusterRequest{Name: "east"})
	if err != nil {
		t.Fatal(err)
	}
	eps, _ = c.endpoint.ListEndpoints(ctx, &fedmeshv1.ListEndpointsRequest{})
	if len(eps.GetEndpoints()) != 0 || eps.GetRevision() != del.GetRevision() {
		t.Fatalf("after cluster delete: %v", eps)
	}
}

func TestInvalidRequestsAreRejectedNamingTheFieldWithoutMovingTheRevision(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	registerCluster(t, ctx, c, "west", "10.2.0.0/16", "fd00:2::/48")
	if _, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{
		{Namespace: "web", Name: "taken", Ips: []string{"10.1.1.5"}, Node: "n1"}}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		call  func() error
		field string
	}{
		{"cluster name", func() error {
			_, err := c.cluster.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "UPPER", PodCidrs: []string{"10.9.0.0/16"}}})
			return err
		}, "cluster.name"},
		{"overlapping pod CIDR (store state)", func() error {
			_, err := c.cluster.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "north", PodCidrs: []string{"10.2.5.0/24"}}})
			return err
		}, "cluster.podCIDRs[0]"},
		{"two pod CIDRs of one family", func() error {
			_, err := c.cluster.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "north", PodCidrs: []string{"10.9.0.0/16", "10.10.0.0/16"}}})
			return err
		}, "cluster.podCIDRs[1]"},
		{"v6 pod CIDR overlapping another cluster's (store state)", func() error {
			_, err := c.cluster.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "north", PodCidrs: []string{"10.9.0.0/16", "fd00:2:0:1::/64"}}})
			return err
		}, "cluster.podCIDRs[1]"},
		{"node v6 prefix outside the cluster's v6 CIDR (store state)", func() error {
			_, err := c.node.RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "west", Name: "n", UnderlayIp: "198.18.0.9", PodCidrs: []string{"10.2.1.0/24", "fd00:9::/64"}}})
			return err
		}, "node.podCIDRs[1]"},
		{"node underlay IP", func() error {
			_, err := c.node.RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "east", Name: "n", UnderlayIp: "nope"}})
			return err
		}, "node.underlayIp"},
		{"endpoint outside the cluster's pod CIDRs (store state)", func() error {
			_, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{
				{Namespace: "web", Name: "p", Ips: []string{"10.2.0.1"}, Node: "n1"}}})
			return err
		}, "endpoints[0].ips[0]"},
		{"endpoint IP owned by another (store state)", func() error {
			_, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{
				{Namespace: "web", Name: "p", Ips: []string{"10.1.1.5"}, Node: "n1"}}})
			return err
		}, "endpoints[0].ips[0]"},
		{"endpoint delete key", func() error {
			_, err := c.endpoint.DeleteEndpoints(ctx, &fedmeshv1.DeleteEndpointsRequest{Cluster: "east", Keys: []*fedmeshv1.EndpointKey{{Namespace: "", Name: "x"}}})
			return err
		}, "keys[0].namespace"},
		{"export port", func() error {
			_, err := c.mcs.ExportServices(ctx, &fedmeshv1.ExportServicesRequest{Cluster: "east", Exports: []*fedmeshv1.ServiceExport{
				{Namespace: "web", Name: "s", Ports: []*fedmeshv1.ServicePort{{Port: 70000}}}}})
			return err
		}, "exports[0].ports[0].port"},
		{"unexport without name", func() error {
			_, err := c.mcs.UnexportService(ctx, &fedmeshv1.UnexportServiceRequest{Cluster: "east", Namespace: "web"})
			return err
		}, "name"},
		{"policy kind", func() error {
			_, err := c.policy.ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{{Name: "p", Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: &fedmeshv1.LabelSelector{}}}}})
			return err
		}, "policies[0].kind"},
		{"policy key", func() error {
			_, err := c.policy.DeletePolicy(ctx, &fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Cluster: "east", Name: "p"}})
			return err
		}, "key.namespace"},
		{"node status missing", func() error {
			_, err := c.node.ReportNodeStatus(ctx, &fedmeshv1.ReportNodeStatusRequest{Cluster: "east", Name: "n1"})
			return err
		}, "status"},
		{"wait timeout", func() error {
			_, err := c.node.WaitEnforced(ctx, &fedmeshv1.WaitEnforcedRequest{Timeout: &durationpb.Duration{Seconds: -1}})
			return err
		}, "timeout"},
		{"member without id", func() error {
			_, err := c.admin.AddMember(ctx, &fedmeshv1.AddMemberRequest{RaftAddress: "127.0.0.1:1"})
			return err
		}, "id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := c.admin.GetReplicaStatus(ctx, &fedmeshv1.GetReplicaStatusRequest{})
			err := tt.call()
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("code %s, want InvalidArgument: %v", st.Code(), err)
			}
			var fields []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
					}
				}
			}
			if !strings.Contains(" "+strings.Join(fields, " ")+" ", " "+tt.field+" ") {
				t.Errorf("violations %v do not name %s (%v)", fields, tt.field, err)
			}
			after, _ := c.admin.GetReplicaStatus(ctx, &fedmeshv1.GetReplicaStatusRequest{})
			if after.GetRevision() != before.GetRevision() {
				t.Errorf("revision moved %d -> %d", before.GetRevision(), after.GetRevision())
			}
		})
	}
}

func recvWatch(t testing.TB, s fedmeshv1.WatchService_WatchClient) *fedmeshv1.WatchResponse {
	t.Helper()
	r, err := s.Recv()
	if err != nil {
		t.Fatalf("watch recv: %v", err)
	}
	return r
}

func TestWatchSendsSnapshotThenEventsAndASnapshotWhenCompacted(t *testing.T) {
	_, c := startSingle(t, 4)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	w, err := c.watch.Watch(ctx, &fedmeshv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	snap := recvWatch(t, w)
	if snap.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT || snap.GetMore() || len(snap.GetEvents()) != 1 {
		t.Fatalf("first message: %v", snap)
	}
	up, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{{Namespace: "a", Name: "p", Ips: []string{"10.1.0.9"}, Node: "n"}}})
	if err != nil {
		t.Fatal(err)
	}
	ev := recvWatch(t, w)
	if ev.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS || ev.GetRevision() != up.GetRevision() || ev.GetEvents()[0].GetEndpoint().GetName() != "p" {
		t.Fatalf("event: %v", ev)
	}
	// Move the log past a resumed watcher's revision: it must get a snapshot.
	for i := range 8 {
		if _, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{{Namespace: "a", Name: fmt.Sprintf("q%d", i), Ips: []string{fmt.Sprintf("10.1.1.%d", i+1)}, Node: "n"}}}); err != nil {
			t.Fatal(err)
		}
	}
	old, err := c.watch.Watch(ctx, &fedmeshv1.WatchRequest{FromRevision: up.GetRevision(), Kinds: []fedmeshv1.ResourceKind{fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT}})
	if err != nil {
		t.Fatal(err)
	}
	first := recvWatch(t, old)
	if first.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT || len(first.GetEvents()) != 9 {
		t.Fatalf("compacted resume: %v events of type %v", len(first.GetEvents()), first.GetType())
	}
	// A recent revision resumes from the log without a snapshot.
	recent, err := c.watch.Watch(ctx, &fedmeshv1.WatchRequest{FromRevision: first.GetRevision() - 1})
	if err != nil {
		t.Fatal(err)
	}
	if r := recvWatch(t, recent); r.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS || r.GetRevision() != first.GetRevision() {
		t.Fatalf("recent resume: %v", r)
	}
}

func TestWatchFilterAppliesImportScope(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	if _, err := c.cluster.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "west", PodCidrs: []string{"10.2.0.0/16"},
		Imports: &fedmeshv1.NamespaceScope{Names: []string{"shared"}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{
		{Namespace: "shared", Name: "a", Ips: []string{"10.1.0.1"}, Node: "n"}, {Namespace: "private", Name: "b", Ips: []string{"10.1.0.2"}, Node: "n"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "west", Endpoints: []*fedmeshv1.Endpoint{
		{Namespace: "private", Name: "own", Ips: []string{"10.2.0.1"}, Node: "n"}}}); err != nil {
		t.Fatal(err)
	}
	w, err := c.watch.Watch(ctx, &fedmeshv1.WatchRequest{Kinds: []fedmeshv1.ResourceKind{fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT},
		Filter: &fedmeshv1.WatchFilter{ImportingCluster: "west"}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range recvWatch(t, w).GetEvents() {
		names = append(names, e.GetEndpoint().GetCluster()+"/"+e.GetEndpoint().GetName())
	}
	if strings.Join(names, " ") != "east/a west/own" {
		t.Fatalf("west sees %v", names)
	}
}

func TestWaitEnforcedReturnsWhenNodesReportAndNamesLaggards(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	rev := registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	if _, err := c.node.RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "east", Name: "n1", UnderlayIp: "198.18.0.1"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := c.node.WaitEnforced(ctx, &fedmeshv1.WaitEnforcedRequest{Revision: rev, Timeout: durationpb.New(50 * time.Millisecond)})
	if err != nil || resp.GetEnforced() || len(resp.GetLagging()) != 1 {
		t.Fatalf("before report: %v %v", resp, err)
	}
	done := make(chan *fedmeshv1.WaitEnforcedResponse, 1)
	go func() {
		r, _ := c.node.WaitEnforced(ctx, &fedmeshv1.WaitEnforcedRequest{Revision: rev, Timeout: durationpb.New(10 * time.Second)})
		done <- r
	}()
	if _, err := c.node.ReportNodeStatus(ctx, &fedmeshv1.ReportNodeStatusRequest{Cluster: "east", Name: "n1", Status: &fedmeshv1.NodeStatus{EnforcedRevision: rev, Ready: true}}); err != nil {
		t.Fatal(err)
	}
	if r := <-done; !r.GetEnforced() {
		t.Fatalf("after report: %v", r)
	}
}

func TestHealthReflectionAndMetricsAreServed(t *testing.T) {
	r, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	h, err := healthpb.NewHealthClient(c.cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}
	rs, err := reflectionpb.NewServerReflectionClient(c.cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	lr, err := rs.Recv()
	if err != nil || !strings.Contains(fmt.Sprint(lr.GetListServicesResponse()), "fedmesh.v1.WatchService") {
		t.Fatalf("reflection: %v %v", lr, err)
	}
	resp, err := http.Get("http://" + r.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, m := range []string{"fedmesh_controlplane_raft_state 2", "fedmesh_controlplane_commit_latency_seconds_bucket", "fedmesh_controlplane_revision 1",
		"fedmesh_controlplane_watchers", "fedmesh_controlplane_events_dropped_total"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}
}

func TestSlowWatcherGetsASnapshotInsteadOfAnUnboundedQueue(t *testing.T) {
	_, c := startSingle(t, 4)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	w, err := c.watch.Watch(ctx, &fedmeshv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	recvWatch(t, w) // initial snapshot; then the watcher stops reading
	pad := strings.Repeat("x", 60)
	var last uint64
	const n = 400 // ~1 KiB events: more than the stream's flow-control window
	for i := range n {
		labels := map[string]string{}
		for j := range 14 {
			labels[fmt.Sprintf("example.com/k%02d", j)] = pad
		}
		resp, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{
			{Namespace: "a", Name: fmt.Sprintf("p%d", i), Ips: []string{fmt.Sprintf("10.1.%d.%d", i/200, i%200+1)}, Labels: labels, Node: "n"}}})
		if err != nil {
			t.Fatal(err)
		}
		last = resp.GetRevision()
	}
	// The watcher catches up; it must have been reset with a snapshot, and
	// what it ends with is the whole state.
	state := map[string]bool{}
	snapshots := 0
	inSnapshot := false
	for rev := uint64(0); rev < last; {
		r := recvWatch(t, w)
		switch r.GetType() {
		case fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT:
			if !inSnapshot {
				state = map[string]bool{}
				snapshots++
			}
			inSnapshot = r.GetMore()
		}
		for _, e := range r.GetEvents() {
			if ep := e.GetEndpoint(); ep != nil {
				state[ep.GetName()] = e.GetType() == fedmeshv1.EventType_EVENT_TYPE_PUT
			}
		}
		rev = r.GetRevision()
	}
	if snapshots == 0 {
		t.Error("a watcher that fell behind the event log was not sent a snapshot")
	}
	if len(state) != n {
		t.Fatalf("watcher ends with %d endpoints, want %d", len(state), n)
	}
}
