package policy

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/identity"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The benchmark federation: 2 clusters x 500 namespaces (1,000 namespaces),
// 100 pods each (100,000 endpoints, 10 apps per namespace: 10,000
// identities), 9 NetworkPolicies per cluster namespace plus 2 federated
// policies per namespace name (10,000 policies). A third of the
// NetworkPolicies also admit an app from every namespace of a team, so
// peers cross namespaces as in real clusters.
const (
	benchClusters   = 2
	benchNamespaces = 500 // per cluster
	benchPods       = 100 // per namespace
	benchApps       = 10
)

type benchFixture struct {
	e         *Engine
	alloc     *identity.Allocator
	full      time.Duration // one full compile, measured in this run
	endpoints int
	policies  int
}

var (
	benchOnce sync.Once
	bench     *benchFixture
)

func benchEndpoint(alloc *identity.Allocator, c, n, p int, extra map[string]string) *fedmeshv1.Endpoint {
	cl, ns := fmt.Sprintf("c%d", c), fmt.Sprintf("ns-%d", n)
	labels := map[string]string{"app": fmt.Sprintf("app-%d", p%benchApps)}
	for k, v := range extra {
		labels[k] = v
	}
	id, _, _ := alloc.Acquire(identity.For(cl, ns, labels, nil))
	return &fedmeshv1.Endpoint{
		Cluster: cl, Namespace: ns, Name: fmt.Sprintf("pod-%d", p), Node: fmt.Sprintf("node-%d", p%50),
		Labels: labels, NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": ns, "team": fmt.Sprintf("t%d", n%20)},
		Identity: id, Ips: []string{fmt.Sprintf("10.%d.%d.%d", c*2+n/256, n%256, p+1)},
		NamedPorts: []*fedmeshv1.NamedPort{{Name: "http", Port: 8080}},
	}
}

func benchK8sPolicy(c, n, j int, port int32) *NetworkPolicy {
	app := func(i int) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", i%benchApps)}}
	}
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	p, dns, http := intstr.FromInt32(port), intstr.FromInt32(53), intstr.FromString("http")
	np := &NetworkPolicy{Cluster: fmt.Sprintf("c%d", c), Policy: networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", n), Name: fmt.Sprintf("np-%d", j)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *app(j),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: app(j + 1)}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
			}},
		},
	}}
	if j%3 == 0 {
		np.Policy.Spec.Ingress = append(np.Policy.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{
			From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", n%20)}},
				PodSelector:       app(j),
			}},
		})
	}
	if j%4 == 0 {
		np.Policy.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		np.Policy.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{
			{To: []networkingv1.NetworkPolicyPeer{{PodSelector: app(j + 2)}}, Ports: []networkingv1.NetworkPolicyPort{{Port: &http}}},
			{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.255.0.0/16"}}}, Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &dns}}},
		}
	}
	return np
}

func benchFederatedPolicy(n, j int) *NetworkPolicy {
	p := intstr.FromInt32(443)
	return &NetworkPolicy{Federated: true, Policy: networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", n), Name: fmt.Sprintf("fed-%d", j)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", 9-j)}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "app-0"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &p}},
			}},
		},
	}, IngressPeerClusters: [][]*metav1.LabelSelector{{{}}}} // every cluster
}

func benchSetup(b *testing.B) *benchFixture {
	benchOnce.Do(func() {
		f := &benchFixture{e: NewEngine(), alloc: identity.NewAllocator()}
		for c := range benchClusters {
			f.e.UpsertCluster(&fedmeshv1.Cluster{Name: fmt.Sprintf("c%d", c), Labels: map[string]string{"region": fmt.Sprintf("r%d", c)}})
			for n := range benchNamespaces {
				for j := range 9 {
					f.e.UpsertNetworkPolicy(benchK8sPolicy(c, n, j, 8080))
					f.policies++
				}
				for p := range benchPods {
					f.e.UpsertEndpoint(benchEndpoint(f.alloc, c, n, p, nil))
					f.endpoints++
				}
			}
		}
		for n := range benchNamespaces {
			for j := range 2 {
				f.e.UpsertNetworkPolicy(benchFederatedPolicy(n, j))
				f.policies++
			}
		}
		f.e.Recompute()
		// The baseline is the mean of three full compiles in this process,
		// the first of which pays for a cold cache.
		start := time.Now()
		for range 3 {
			f.e.CompileAll()
		}
		f.full = time.Since(start) / 3
		bench = f
	})
	if bench.policies != 10000 || bench.endpoints != 100000 {
		b.Fatalf("fixture has %d policies, %d endpoints", bench.policies, bench.endpoints)
	}
	return bench
}

// BenchmarkFullCompile compiles all 100,000 endpoints against 10,000
// policies (indexes already built): the baseline for the incremental ones.
func BenchmarkFullCompile(b *testing.B) {
	f := benchSetup(b)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		f.e.CompileAll()
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(f.e.Endpoints()), "endpoints")
	b.ReportMetric(float64(after.HeapAlloc)/(1<<20), "heap-MB")
}

// reportRatio adds how many times faster than the full compile (measured
// in this run) one incremental operation is.
func reportRatio(b *testing.B, f *benchFixture, ops int) {
	per := b.Elapsed() / time.Duration(max(ops, 1))
	if per > 0 {
		b.ReportMetric(float64(f.full)/float64(per), "x-faster-than-full")
	}
	b.ReportMetric(float64(f.full.Milliseconds()), "full-ms")
}

// BenchmarkIncrementalLabelChange relabels one pod to another existing app
// (no new identity) and recomputes.
func BenchmarkIncrementalLabelChange(b *testing.B) {
	f := benchSetup(b)
	a := benchEndpoint(f.alloc, 0, 7, 3, nil)
	c := benchEndpoint(f.alloc, 0, 7, 3, nil)
	c.Labels["app"] = "app-4"
	c.Identity, _, _ = f.alloc.Acquire(identity.For(c.Cluster, c.Namespace, c.Labels, nil))
	ops := 0
	for b.Loop() {
		if ops%2 == 0 {
			f.e.UpsertEndpoint(c)
		} else {
			f.e.UpsertEndpoint(a)
		}
		f.e.Recompute()
		ops++
	}
	reportRatio(b, f, ops)
}

// BenchmarkIncrementalLabelChangeNewIdentity adds a label to one pod, which
// gives it a new identity that peers must learn, and recomputes.
func BenchmarkIncrementalLabelChangeNewIdentity(b *testing.B) {
	f := benchSetup(b)
	a := benchEndpoint(f.alloc, 1, 42, 5, nil)
	c := benchEndpoint(f.alloc, 1, 42, 5, map[string]string{"canary": "true"})
	ops, touched := 0, 0
	for b.Loop() {
		if ops%2 == 0 {
			f.e.UpsertEndpoint(c)
		} else {
			f.e.UpsertEndpoint(a)
		}
		touched += len(f.e.Recompute().Updated)
		ops++
	}
	reportRatio(b, f, ops)
	b.ReportMetric(float64(touched)/float64(max(ops, 1)), "endpoints-changed/op")
}

// BenchmarkIncrementalPolicyChange changes one policy's port and recomputes.
func BenchmarkIncrementalPolicyChange(b *testing.B) {
	f := benchSetup(b)
	ops, touched := 0, 0
	for b.Loop() {
		port := int32(8080)
		if ops%2 == 0 {
			port = 8081
		}
		f.e.UpsertNetworkPolicy(benchK8sPolicy(1, 123, 3, port))
		touched += len(f.e.Recompute().Updated)
		ops++
	}
	reportRatio(b, f, ops)
	b.ReportMetric(float64(touched)/float64(max(ops, 1)), "endpoints-changed/op")
}

// BenchmarkExplain answers one Reach query at this scale.
func BenchmarkExplain(b *testing.B) {
	f := benchSetup(b)
	src, dst := EndpointKey{"c0", "ns-7", "pod-4"}, EndpointKey{"c0", "ns-7", "pod-3"}
	for b.Loop() {
		if _, err := f.e.Explain(Flow{Src: Target{Endpoint: &src}, Dst: Target{Endpoint: &dst}, Proto: ProtoTCP, Port: 8080}); err != nil {
			b.Fatal(err)
		}
	}
}
