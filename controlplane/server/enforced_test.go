package server

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// agentKinds are the kinds a node agent watches (nodeagent/agent).
var agentKinds = []fedmeshv1.ResourceKind{
	fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER, fedmeshv1.ResourceKind_RESOURCE_KIND_NODE,
	fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT, fedmeshv1.ResourceKind_RESOURCE_KIND_POLICY,
}

func TestWatcherWhoseFilterExcludesAWriteGetsProgressAtItsRevision(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	if _, err := c.cluster.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "west", PodCidrs: []string{"10.2.0.0/16"},
		Imports: &fedmeshv1.NamespaceScope{Names: []string{"shared"}}}}); err != nil {
		t.Fatal(err)
	}
	w, err := c.watch.Watch(ctx, &fedmeshv1.WatchRequest{Kinds: agentKinds, Filter: &fedmeshv1.WatchFilter{ImportingCluster: "west"}})
	if err != nil {
		t.Fatal(err)
	}
	if r := recvWatch(t, w); r.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT {
		t.Fatalf("first message %v", r)
	}
	tests := []struct {
		name  string
		write func() uint64
	}{
		{"endpoint outside the import scope", func() uint64 {
			r, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{
				{Namespace: "private", Name: "p", Ips: []string{"10.1.0.7"}, Node: "n"}}})
			if err != nil {
				t.Fatal(err)
			}
			return r.GetRevision()
		}},
		{"kind the watcher does not ask for", func() uint64 {
			r, err := c.mcs.ExportServices(ctx, &fedmeshv1.ExportServicesRequest{Cluster: "east", Exports: []*fedmeshv1.ServiceExport{
				{Namespace: "private", Name: "s", Ports: []*fedmeshv1.ServicePort{{Name: "http", Port: 80}}}}})
			if err != nil {
				t.Fatal(err)
			}
			return r.GetRevision()
		}},
		{"policy of another cluster's private namespace", func() uint64 {
			r, err := c.policy.ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Cluster: "east", Policies: []*fedmeshv1.Policy{{
				Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "east", Namespace: "private", Name: "deny",
				Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: &fedmeshv1.LabelSelector{}}}}})
			if err != nil {
				t.Fatal(err)
			}
			return r.GetRevision()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rev := tt.write()
			start := time.Now()
			r := recvWatch(t, w)
			if r.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_PROGRESS || r.GetRevision() != rev || len(r.GetEvents()) != 0 {
				t.Fatalf("got %v, want PROGRESS at %d", r, rev)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("progress took %v", d)
			}
		})
	}
}

// An agent that reports what it enforces after every watch message lets a
// waiter on a write the agent's filter excludes finish, and its reports do
// not make revisions of their own (which would make every agent enforce and
// report again, forever).
func TestWaitEnforcedCompletesForFilteredWritesWithoutReportFeedback(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	if _, err := c.cluster.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "west", PodCidrs: []string{"10.2.0.0/16"},
		Imports: &fedmeshv1.NamespaceScope{Names: []string{"shared"}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.node.RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "west", Name: "w1", UnderlayIp: "198.18.0.2"}}); err != nil {
		t.Fatal(err)
	}
	w, err := c.watch.Watch(ctx, &fedmeshv1.WatchRequest{Kinds: agentKinds, Filter: &fedmeshv1.WatchFilter{ImportingCluster: "west"}})
	if err != nil {
		t.Fatal(err)
	}
	reports := make(chan uint64, 100)
	go func() { // the agent of west/w1
		for {
			r, err := w.Recv()
			if err != nil {
				return
			}
			if r.GetMore() {
				continue
			}
			if _, err := c.node.ReportNodeStatus(ctx, &fedmeshv1.ReportNodeStatusRequest{Cluster: "west", Name: "w1",
				Status: &fedmeshv1.NodeStatus{EnforcedRevision: r.GetRevision(), Ready: true}}); err != nil {
				return
			}
			reports <- r.GetRevision()
		}
	}()
	<-reports // the snapshot
	up, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{
		{Namespace: "private", Name: "p", Ips: []string{"10.1.0.7"}, Node: "n"}}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.node.WaitEnforced(ctx, &fedmeshv1.WaitEnforcedRequest{Revision: up.GetRevision(), Clusters: []string{"west"}, Timeout: durationpb.New(5 * time.Second)})
	if err != nil || !resp.GetEnforced() {
		t.Fatalf("wait enforced %d: %v %v", up.GetRevision(), resp, err)
	}
	time.Sleep(300 * time.Millisecond)
	st, err := c.admin.GetReplicaStatus(ctx, &fedmeshv1.GetReplicaStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetRevision() != up.GetRevision() || len(reports) > 1 {
		t.Fatalf("reports moved the revision %d -> %d (%d more reports)", up.GetRevision(), st.GetRevision(), len(reports))
	}
	n, err := c.node.GetNode(ctx, &fedmeshv1.GetNodeRequest{Cluster: "west", Name: "w1"})
	if err != nil || n.GetNode().GetStatus().GetEnforcedRevision() != up.GetRevision() {
		t.Fatalf("node status %v %v", n, err)
	}
}
