package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// simulation builds a federation of n endpoints over 4 clusters (100 on
// this node) and p namespaced policies, as one snapshot message.
func simulation(n, p int) *fedmeshv1.WatchResponse {
	var evs []*fedmeshv1.Event
	for c := range 4 {
		evs = append(evs, putEv(1, cluster(fmt.Sprintf("c%d", c), fmt.Sprintf("10.%d.0.0/16", c))))
	}
	for i := range n {
		c := i % 4
		node := fmt.Sprintf("n%d", i%1000)
		e := ep(fmt.Sprintf("c%d", c), fmt.Sprintf("ns%d", i%50), fmt.Sprintf("pod%d", i), node, uint32(1000+i%5000), 2,
			fmt.Sprintf("10.%d.%d.%d", c, (i/4)/250, (i/4)%250+1))
		e.Labels = map[string]string{"app": fmt.Sprintf("app%d", i%200)}
		evs = append(evs, putEv(2, e))
	}
	for i := range p {
		evs = append(evs, putEv(3, &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: fmt.Sprintf("c%d", i%4),
			Namespace: fmt.Sprintf("ns%d", i%50), Name: fmt.Sprintf("p%d", i), Meta: &fedmeshv1.ObjectMeta{Revision: 3},
			Spec: &fedmeshv1.NetworkPolicySpec{
				PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", i%200)}},
				Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{From: []*fedmeshv1.NetworkPolicyPeer{{
					PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", (i+1)%200)}}}}}},
			}}))
	}
	return snap(3, false, evs...)
}

// step is what the sync goroutine does for one message, minus the
// dataplane: view, compiler, ipcache.
func step(a *Agent, msg *fedmeshv1.WatchResponse) int {
	changes, _, _ := a.view.Apply(msg)
	a.feed(changes)
	ch := a.deps.Compiler.Recompute()
	ipcache, _ := a.ipcache.IPCache()
	return len(ch.Updated) + ipcache.Len()
}

// newTestAgent is an agent of node c0/n0 on the in-memory dataplane, not
// connected to anything: tests feed its sync goroutine's steps directly.
func newTestAgent(tb testing.TB) *Agent {
	tb.Helper()
	a, err := New(Config{Cluster: "c0", Node: "n0", DataplaneName: "memory"},
		Deps{ControlPlane: noControlPlane{}, Dataplane: dataplane.NewMemory(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// BenchmarkSnapshot100kEndpoints5kPolicies: one agent takes a full snapshot.
func BenchmarkSnapshot100kEndpoints5kPolicies(b *testing.B) {
	msg := simulation(100_000, 5_000)
	b.ReportAllocs()
	for b.Loop() {
		step(newTestAgent(b), msg)
	}
}

// BenchmarkIncrementalRevision: one endpoint changes labels after the
// snapshot; compare with the snapshot benchmark of the same run.
func BenchmarkIncrementalRevision(b *testing.B) {
	a := newTestAgent(b)
	step(a, simulation(100_000, 5_000))
	rev := uint64(3)
	b.ReportAllocs()
	for b.Loop() {
		rev++
		e := ep("c1", "ns1", "pod1", "n1", 1001, rev, "10.1.0.1")
		e.Labels = map[string]string{"app": fmt.Sprintf("app%d", rev%200)}
		step(a, events(rev, putEv(rev, e)))
	}
}

// churnFederation is a federation of n endpoints over 4 clusters whose
// compiled policy does not depend on n: every endpoint's (cluster,
// namespace, app) is one of 4×10×20 combinations, each with its own
// identity, all present from n = 800 on; 20 endpoints run on this node
// (c0/n0) whatever n; 40 policies select by app. So only the ipcache grows
// with n.
func churnFederation(n int) *fedmeshv1.WatchResponse {
	var evs []*fedmeshv1.Event
	for c := range 4 {
		evs = append(evs, putEv(1, cluster(fmt.Sprintf("c%d", c), fmt.Sprintf("10.%d.0.0/16", c), fmt.Sprintf("fd00:%d::/64", c))))
	}
	for i := range n {
		c, ns, app := i%4, (i/4)%10, (i/40)%20
		node := fmt.Sprintf("n%d", 1+i%999)
		if c == 0 && i < 80*4 && i%4 == 0 && i/4%4 == 0 {
			node = "n0" // 20 local endpoints: i = 0, 16, 32, ..., 304
		}
		e := ep(fmt.Sprintf("c%d", c), fmt.Sprintf("ns%d", ns), fmt.Sprintf("pod%d", i), node,
			uint32(1000+c*200+ns*20+app), 2, churnIP(c, i/4))
		e.Labels = map[string]string{"app": fmt.Sprintf("app%d", app)}
		evs = append(evs, putEv(2, e))
	}
	for i := range 40 {
		evs = append(evs, putEv(3, &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED,
			Namespace: fmt.Sprintf("ns%d", i%10), Name: fmt.Sprintf("p%d", i), Meta: &fedmeshv1.ObjectMeta{Revision: 3},
			Spec: &fedmeshv1.NetworkPolicySpec{
				PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", i%20)}},
				Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{From: []*fedmeshv1.NetworkPolicyPeer{{
					NamespaceSelector: &fedmeshv1.LabelSelector{},
					PodSelector:       &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", (i+1)%20)}}}}}},
			}}))
	}
	return snap(3, false, evs...)
}

// churnIP is the j-th address of cluster c's pod CIDR.
func churnIP(c, j int) string {
	return fmt.Sprintf("10.%d.%d.%d", c, j/250, j%250+1)
}

// churnAgent is an agent that enforced churnFederation(n) on the in-memory
// dataplane, with its 20 local endpoints attached (so every Apply renders
// their rules).
func churnAgent(tb testing.TB, n int) *Agent {
	tb.Helper()
	a := newTestAgent(tb)
	snap := churnFederation(n)
	veths := vethTable{}
	for _, ev := range snap.GetEvents() {
		if e := ev.GetEndpoint(); e.GetNode() == "n0" {
			veths[netip.MustParseAddr(e.GetIps()[0])] = "veth-" + e.GetName()
		}
	}
	a.deps.Interfaces = veths
	a.handleBatch(context.Background(), []watchItem{{Resp: snap}})
	if _, ok := a.Enforced(); !ok {
		tb.Fatal("the federation was not enforced")
	}
	if len(a.attached) != len(veths) || len(veths) != 20 {
		tb.Fatalf("%d local endpoints attached, want %d (20)", len(a.attached), len(veths))
	}
	return a
}

// vethTable is an InterfaceResolver over a fixed table.
type vethTable map[netip.Addr]string

func (v vethTable) Lookup(_ context.Context, ip netip.Addr) (string, bool, error) {
	iface, ok := v[ip]
	return iface, ok, nil
}

// churnStep is one incremental revision, as the sync goroutine handles it:
// remote pod c1/ns1/churn moves between two addresses (a pod replaced), so
// the ipcache loses one entry and gains one, and the revision is applied.
func churnStep(a *Agent, rev uint64) {
	e := ep("c1", "ns1", "churn", "n7", 1000+200+20, rev, churnIP(1, 60_000+int(rev%2)))
	a.handleBatch(context.Background(), []watchItem{{Resp: events(rev, putEv(rev, e))}})
}

// BenchmarkApplyIncrementalRevision measures what one incremental revision
// (one pod replaced elsewhere in the federation) costs the sync goroutine,
// from the watch message to the dataplane's Apply, at two ipcache sizes.
// The compiled policy is the same at both sizes, so any growth in B/op or
// allocs/op from 10k to 100k is work proportional to the ipcache.
func BenchmarkApplyIncrementalRevision(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("ipcache=%dk", n/1000), func(b *testing.B) {
			a := churnAgent(b, n)
			rev := uint64(10)
			b.ReportAllocs()
			for b.Loop() {
				rev++
				churnStep(a, rev)
			}
			if got, _ := a.Enforced(); got != rev {
				b.Fatalf("enforced %d, want %d", got, rev)
			}
		})
	}
}

// noControlPlane is a ControlPlane for tests that feed the sync goroutine
// directly.
type noControlPlane struct{}

func (noControlPlane) Watch(context.Context, *fedmeshv1.WatchRequest) (WatchStream, error) {
	return nil, errors.New("no control plane")
}
func (noControlPlane) RegisterNode(context.Context, *fedmeshv1.Node) error { return nil }
func (noControlPlane) ReportNodeStatus(context.Context, string, string, *fedmeshv1.NodeStatus) error {
	return nil
}
