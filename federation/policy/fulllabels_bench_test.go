package policy_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The federation of BenchmarkPolicyMakingAFilteredKeyCount, through the
// FSM: 2 clusters x 500 namespaces x 100 pods (100,000 endpoints on 100
// nodes, 1,000 each), 10 apps per namespace, each app mid-rollout (two
// pod-template-hash values, 5 pods each), so 10,000 identities while
// pod-template-hash does not count; 9 NetworkPolicies per cluster
// namespace and 2 federated ones per namespace name (10,000 policies).
const (
	fkClusters   = 2
	fkNamespaces = 500
	fkPods       = 100
	fkApps       = 10
	fkNodes      = 50 // per cluster
)

type fkFixture struct {
	st *store.State
	// node compiles one node's 1,000 endpoints, as its agent does; all
	// compiles every endpoint (all agents' work, and what Reach indexes).
	node, all *policy.Engine
	// dp is the node's in-memory dataplane, its endpoints attached, and
	// ipc the ipcache of its last revision.
	dp  *dataplane.Memory
	ipc dataplane.IPCache
}

const fkNode = "node-7"

func fkNodeEngine() *policy.Engine { return policy.NewEngine(policy.WithNode("c0", fkNode)) }

// enforce loads the node's dataplane with a revision: the ipcache of the
// last one changed by the revision's endpoint events (as the agent keeps
// it), and the node's compiled rules.
func (f *fkFixture) enforce(b *testing.B, rev uint64, evs []*fedmeshv1.Event) {
	b.Helper()
	ipc := dataplane.NewIPCacheBuilder(f.ipc)
	for _, ev := range evs {
		ep := ev.GetEndpoint()
		for _, s := range ep.GetIps() {
			a := netip.MustParseAddr(s)
			if ev.GetType() == fedmeshv1.EventType_EVENT_TYPE_DELETE {
				ipc.Delete(netip.PrefixFrom(a, a.BitLen()))
			} else {
				ipc.Set(netip.PrefixFrom(a, a.BitLen()), ep.GetIdentity())
			}
		}
	}
	f.ipc = ipc.IPCache()
	r := &dataplane.Revision{Number: rev, IPCache: f.ipc, Rules: map[string]policy.EndpointRules{}}
	for _, ep := range f.st.Endpoints("c0", "", fkNode) {
		if c, ok := f.node.Rules(epKey(ep)); ok {
			r.Rules[epKey(ep).String()] = c.Rules
		}
	}
	if err := f.dp.Apply(context.Background(), r); err != nil {
		b.Fatal(err)
	}
}

// rebuild is what a node without the incremental path would do: a new
// engine from every object of the state, compiled.
func (f *fkFixture) rebuild(b *testing.B) *policy.Engine {
	b.Helper()
	e := fkNodeEngine()
	var err error
	f.st.ForEachObject(func(ev *fedmeshv1.Event) bool {
		err = applyEvent(e, ev)
		return err == nil
	})
	if err != nil {
		b.Fatal(err)
	}
	e.Recompute()
	return e
}

var (
	fkOnce sync.Once
	fk     *fkFixture
)

func fkApp(i int) *fedmeshv1.LabelSelector {
	return &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", i%fkApps)}}
}

func fkPort(proto fedmeshv1.Protocol, n uint32) *fedmeshv1.NetworkPolicyPort {
	return &fedmeshv1.NetworkPolicyPort{Protocol: proto, Port: &fedmeshv1.NetworkPolicyPort_Number{Number: n}}
}

// fkPolicies are the NetworkPolicies of one cluster namespace: app j
// admits app j+1 on 8080; every third also admits its app from the
// namespaces of its team; every fourth limits egress to app j+2 on the
// named port http and DNS to 10.255.0.0/16.
func fkPolicies(c, n int) []*fedmeshv1.Policy {
	var out []*fedmeshv1.Policy
	for j := range 9 {
		p := &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: fmt.Sprintf("c%d", c), Namespace: fmt.Sprintf("ns-%d", n), Name: fmt.Sprintf("np-%d", j),
			Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: fkApp(j), Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{
				From: []*fedmeshv1.NetworkPolicyPeer{{PodSelector: fkApp(j + 1)}}, Ports: []*fedmeshv1.NetworkPolicyPort{fkPort(fedmeshv1.Protocol_PROTOCOL_TCP, 8080)}}}}}
		if j%3 == 0 {
			p.Spec.Ingress = append(p.Spec.Ingress, &fedmeshv1.NetworkPolicyIngressRule{From: []*fedmeshv1.NetworkPolicyPeer{{
				NamespaceSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", n%20)}}, PodSelector: fkApp(j)}}})
		}
		if j%4 == 0 {
			p.Spec.PolicyTypes = []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_INGRESS, fedmeshv1.PolicyType_POLICY_TYPE_EGRESS}
			p.Spec.Egress = []*fedmeshv1.NetworkPolicyEgressRule{
				{To: []*fedmeshv1.NetworkPolicyPeer{{PodSelector: fkApp(j + 2)}}, Ports: []*fedmeshv1.NetworkPolicyPort{{Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: &fedmeshv1.NetworkPolicyPort_Name{Name: "http"}}}},
				{To: []*fedmeshv1.NetworkPolicyPeer{{IpBlock: &fedmeshv1.IPBlock{Cidr: "10.255.0.0/16"}}}, Ports: []*fedmeshv1.NetworkPolicyPort{fkPort(fedmeshv1.Protocol_PROTOCOL_UDP, 53)}},
			}
		}
		out = append(out, p)
	}
	return out
}

func fkFederated(n int) []*fedmeshv1.Policy {
	var out []*fedmeshv1.Policy
	for j := range 2 {
		out = append(out, &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Namespace: fmt.Sprintf("ns-%d", n), Name: fmt.Sprintf("fed-%d", j),
			Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: fkApp(9 - j), Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{
				From: []*fedmeshv1.NetworkPolicyPeer{{PodSelector: fkApp(0), ClusterSelector: &fedmeshv1.LabelSelector{}}}, Ports: []*fedmeshv1.NetworkPolicyPort{fkPort(fedmeshv1.Protocol_PROTOCOL_TCP, 443)}}}}})
	}
	return out
}

// fkCommit applies one command as a follower does: through its encoding.
func fkCommit(b *testing.B, st *store.State, c store.Command) *store.Result {
	b.Helper()
	data, err := c.Encode()
	if err != nil {
		b.Fatal(err)
	}
	d, err := store.DecodeCommand(data)
	if err != nil {
		b.Fatal(err)
	}
	r := st.Apply(d)
	if r.Err != nil {
		b.Fatal(r.Err)
	}
	return r
}

// events returns the events after revision from.
func (f *fkFixture) events(b *testing.B, from uint64) []*fedmeshv1.Event {
	b.Helper()
	batches, ok := f.st.Log().Since(from, 1<<30)
	if !ok {
		b.Fatal("event log compacted")
	}
	var out []*fedmeshv1.Event
	for _, bt := range batches {
		out = append(out, bt.Events...)
	}
	return out
}

// apply is what a watcher does with the events of a revision.
func apply(b *testing.B, e *policy.Engine, evs []*fedmeshv1.Event) {
	b.Helper()
	for _, ev := range evs {
		if err := applyEvent(e, ev); err != nil {
			b.Fatal(err)
		}
	}
}

func fkSetup(b *testing.B) *fkFixture {
	fkOnce.Do(func() {
		f := &fkFixture{st: store.NewState(1 << 21), node: fkNodeEngine(), all: policy.NewEngine(), dp: dataplane.NewMemory()}
		for c := range fkClusters {
			name := fmt.Sprintf("c%d", c)
			fkCommit(b, f.st, store.Command{Type: store.CmdRegisterCluster, Payload: &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{
				Name: name, PodCidrs: []string{fmt.Sprintf("10.%d.0.0/15", 2*c)}, Labels: map[string]string{"region": fmt.Sprintf("r%d", c)}}}})
			for n := range fkNamespaces {
				req := &fedmeshv1.UpsertEndpointsRequest{Cluster: name}
				for p := range fkPods {
					app := p % fkApps
					ns := fmt.Sprintf("ns-%d", n)
					req.Endpoints = append(req.Endpoints, &fedmeshv1.Endpoint{Namespace: ns, Name: fmt.Sprintf("app-%d-%d", app, p),
						Node: fmt.Sprintf("node-%d", p%fkNodes), Ips: []string{fmt.Sprintf("10.%d.%d.%d", 2*c+n/256, n%256, p+1)},
						Labels:          map[string]string{"app": fmt.Sprintf("app-%d", app), "pod-template-hash": fmt.Sprintf("h%d-%d", app, p/(fkPods/2))},
						NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": ns, "team": fmt.Sprintf("t%d", n%20)},
						NamedPorts:      []*fedmeshv1.NamedPort{{Name: "http", Port: 8080}}})
				}
				if err := model.ValidateUpsertEndpoints(req, nil); err != nil {
					b.Fatal(err)
				}
				fkCommit(b, f.st, store.Command{Type: store.CmdUpsertEndpointsFull, Payload: req})
				fkCommit(b, f.st, store.Command{Type: store.CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Cluster: name, Policies: fkPolicies(c, n)}})
			}
		}
		for n := range fkNamespaces {
			fkCommit(b, f.st, store.Command{Type: store.CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Policies: fkFederated(n)}})
		}
		evs := f.events(b, 0)
		apply(b, f.node, evs)
		apply(b, f.all, evs)
		f.node.Recompute()
		f.all.Recompute()
		for _, ep := range f.st.Endpoints("c0", "", fkNode) {
			if err := f.dp.Attach(context.Background(), dataplane.Endpoint{ID: epKey(ep).String(), Interface: "veth-" + ep.GetName() + ep.GetNamespace()}); err != nil {
				b.Fatal(err)
			}
		}
		f.enforce(b, f.st.Revision(), evs)
		fk = f
	})
	if n := fk.st.EndpointCount(); n != fkClusters*fkNamespaces*fkPods {
		b.Fatalf("fixture has %d endpoints", n)
	}
	return fk
}

// BenchmarkPolicyMakingAFilteredKeyCount commits, at 100,000 endpoints, a
// policy whose peer selects on pod-template-hash, which no policy selected
// on before: the FSM splits the identity of every app mid-rollout (10,000
// identities become 20,000; 50,000 endpoints change identity) in that
// policy's revision. One node (its agent's engine and its in-memory
// dataplane) applies the revision; so does an engine compiling every
// endpoint. The policy's delete (the merge back) follows each commit.
//
// Reported, per commit:
//   - fsm-ms: applying the entry (every replica pays it); fsm-merge-ms for
//     the delete;
//   - node-incremental-ms: the node applies the revision's events and
//     recompiles what changed; node-dataplane-ms: it updates its ipcache of
//     100,000 endpoints with the revision's changes and loads it with its
//     1,000 endpoints' rules into the in-memory dataplane; enforced-ms =
//     fsm + both: until every
//     node (they work in parallel) enforces it, watch delivery aside;
//   - beside them, measured in the same run: node-full-ms, a full compile
//     of the node's endpoints on the same engine, and node-rebuild-ms, a
//     new engine built from the whole state and compiled (what a node
//     without the incremental path pays);
//   - all-incremental-ms against all-full-ms for the engine of every
//     endpoint.
func BenchmarkPolicyMakingAFilteredKeyCount(b *testing.B) {
	f := fkSetup(b)
	split := &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "c0", Namespace: "ns-7", Name: "from-new-app-4",
		Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: fkApp(3), Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{
			From:  []*fedmeshv1.NetworkPolicyPeer{{PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"pod-template-hash": "h4-1"}}}},
			Ports: []*fedmeshv1.NetworkPolicyPort{fkPort(fedmeshv1.Protocol_PROTOCOL_TCP, 8080)}}}}}
	var fsm, merge, nodeInc, nodeDP, nodeFull, nodeRebuild, allInc, allFull time.Duration
	var idsBefore, idsAfter, moved, recompiled int
	ops := 0
	for b.Loop() {
		idsBefore = f.st.Identities().Len()
		start := time.Now()
		r := fkCommit(b, f.st, store.Command{Type: store.CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Cluster: "c0", Policies: []*fedmeshv1.Policy{split}}})
		fsm += time.Since(start)
		idsAfter = f.st.Identities().Len()
		evs := f.events(b, r.Revision-1)
		moved = len(evs) - 1 // all but the policy's

		start = time.Now()
		apply(b, f.node, evs)
		recompiled = len(f.node.Recompute().Updated)
		nodeInc += time.Since(start)
		start = time.Now()
		f.enforce(b, r.Revision, evs)
		nodeDP += time.Since(start)
		start = time.Now()
		f.node.CompileAll()
		nodeFull += time.Since(start)
		start = time.Now()
		f.rebuild(b)
		nodeRebuild += time.Since(start)

		start = time.Now()
		apply(b, f.all, evs)
		f.all.Recompute()
		allInc += time.Since(start)
		start = time.Now()
		f.all.CompileAll()
		allFull += time.Since(start)

		start = time.Now()
		r = fkCommit(b, f.st, store.Command{Type: store.CmdDeletePolicy, Payload: &fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Cluster: "c0", Namespace: "ns-7", Name: split.GetName()}}})
		merge += time.Since(start)
		evs = f.events(b, r.Revision-1)
		apply(b, f.node, evs)
		apply(b, f.all, evs)
		f.node.Recompute()
		f.all.Recompute()
		f.enforce(b, r.Revision, evs)
		ops++
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(ops) }
	b.ReportMetric(ms(fsm), "fsm-ms")
	b.ReportMetric(ms(merge), "fsm-merge-ms")
	b.ReportMetric(ms(nodeInc), "node-incremental-ms")
	b.ReportMetric(ms(nodeDP), "node-dataplane-ms")
	b.ReportMetric(ms(fsm+nodeInc+nodeDP), "enforced-ms")
	b.ReportMetric(ms(nodeFull), "node-full-ms")
	b.ReportMetric(ms(nodeRebuild), "node-rebuild-ms")
	b.ReportMetric(float64(nodeRebuild)/float64(nodeInc), "node-rebuild/incremental")
	b.ReportMetric(ms(allInc), "all-incremental-ms")
	b.ReportMetric(ms(allFull), "all-full-ms")
	b.ReportMetric(float64(allFull)/float64(allInc), "all-full/incremental")
	b.ReportMetric(float64(idsBefore), "identities-before")
	b.ReportMetric(float64(idsAfter), "identities-after")
	b.ReportMetric(float64(moved), "endpoints-rekeyed")
	b.ReportMetric(float64(recompiled), "node-endpoints-recompiled")
}
