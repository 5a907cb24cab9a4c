package agent

import (
	"fmt"
	"testing"

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
func step(v *View, c Compiler, msg *fedmeshv1.WatchResponse) int {
	changes, _, _ := v.Apply(msg)
	a := &Agent{deps: Deps{Compiler: c}, local: map[Key]*fedmeshv1.Endpoint{}, cfg: Config{Cluster: "c0", Node: "n0"}}
	a.feed(changes)
	up, _ := c.Recompute()
	entries, _ := BuildIPCache(v.Clusters, v.Endpoints)
	return len(up) + len(entries)
}

// BenchmarkSnapshot100kEndpoints5kPolicies: one agent takes a full snapshot.
func BenchmarkSnapshot100kEndpoints5kPolicies(b *testing.B) {
	msg := simulation(100_000, 5_000)
	b.ReportAllocs()
	for b.Loop() {
		step(NewView(), NewPolicyCompiler("c0", "n0"), msg)
	}
}

// BenchmarkIncrementalRevision: one endpoint changes labels after the
// snapshot; compare with the snapshot benchmark of the same run.
func BenchmarkIncrementalRevision(b *testing.B) {
	v, c := NewView(), NewPolicyCompiler("c0", "n0")
	step(v, c, simulation(100_000, 5_000))
	rev := uint64(3)
	b.ReportAllocs()
	for b.Loop() {
		rev++
		e := ep("c1", "ns1", "pod1", "n1", 1001, rev, "10.1.0.1")
		e.Labels = map[string]string{"app": fmt.Sprintf("app%d", rev%200)}
		step(v, c, events(rev, putEv(rev, e)))
	}
}
