package policy

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/identity"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// The tiered benchmark federation: the benchmark federation of
// bench_test.go (100,000 endpoints, 10,000 NetworkPolicies) plus 1,000
// ClusterNetworkPolicies, two per namespace name (federated, every
// cluster): an Admin one guarding one app of the namespace (Pass from the
// same app in its team's namespaces, Deny from it in the next team's on
// its port) and a
// Baseline one (Deny egress to a network, Accept ingress from the
// namespace on the named port http), priorities repeating so equal ones
// are common.
var (
	tierBenchOnce sync.Once
	tierBench     *benchFixture
)

func benchClusterPolicy(n, j int, port int32) *ClusterPolicy {
	team, other := fmt.Sprintf("t%d", n%20), fmt.Sprintf("t%d", (n+1)%20)
	ns, app := fmt.Sprintf("ns-%d", n), fmt.Sprintf("app-%d", (n+j)%benchApps)
	p := &ClusterPolicy{Name: fmt.Sprintf("cnp-%d-%d", n, j)}
	s := &p.Spec
	s.Subject.Pods = &cnpv1.NamespacedPod{
		NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
		PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
	}
	teamApp := func(t string) []cnpv1.ClusterNetworkPolicyIngressPeer {
		return []cnpv1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1.NamespacedPod{
			NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"team": t}},
			PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}}}}
	}
	s.Priority = int32(n % 50)
	if j == 0 {
		s.Tier = cnpv1.AdminTier
		s.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
			{Name: "same-team", Action: cnpv1.ClusterNetworkPolicyRuleActionPass, From: teamApp(team)},
			{Name: "next-team", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny, From: teamApp(other),
				Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: port}}}}},
		}
		return p
	}
	s.Tier = cnpv1.BaselineTier
	s.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "ns-http", Action: cnpv1.ClusterNetworkPolicyRuleActionAccept,
		From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1.NamespacedPod{
			NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
			PodSelector:       metav1.LabelSelector{}}}},
		Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: "http"}}}}
	s.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Name: "no-metadata", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
		To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"169.254.0.0/16"}}}}}
	return p
}

func tierBenchSetup(b *testing.B) *benchFixture {
	tierBenchOnce.Do(func() {
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
				if err := f.e.UpsertClusterPolicy(benchClusterPolicy(n, j, 8080)); err != nil {
					panic(err)
				}
			}
		}
		f.e.Recompute()
		start := time.Now()
		for range 3 {
			f.e.CompileAll()
		}
		f.full = time.Since(start) / 3
		tierBench = f
	})
	if tierBench.policies != 10000 || tierBench.endpoints != 100000 || tierBench.e.Tiers().Len() != 1000 {
		b.Fatalf("fixture has %d policies, %d endpoints, %d cluster policies", tierBench.policies, tierBench.endpoints, tierBench.e.Tiers().Len())
	}
	return tierBench
}

// BenchmarkTiersFullCompile compiles all 100,000 endpoints against 10,000
// NetworkPolicies and 1,000 ClusterNetworkPolicies: the baseline of
// BenchmarkTiersIncrementalClusterPolicyChange, with the memory it holds.
func BenchmarkTiersFullCompile(b *testing.B) {
	f := tierBenchSetup(b)
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

// BenchmarkTiersIncrementalClusterPolicyChange changes one
// ClusterNetworkPolicy's port at that scale and recomputes: only the
// endpoints its subject selects recompile.
func BenchmarkTiersIncrementalClusterPolicyChange(b *testing.B) {
	f := tierBenchSetup(b)
	ops, touched := 0, 0
	for b.Loop() {
		port := int32(8080)
		if ops%2 == 0 {
			port = 8081
		}
		if err := f.e.UpsertClusterPolicy(benchClusterPolicy(123, 0, port)); err != nil {
			b.Fatal(err)
		}
		touched += len(f.e.Recompute().Updated)
		ops++
	}
	if touched == 0 {
		b.Fatal("the change recompiled nothing")
	}
	reportRatio(b, f, ops)
	b.ReportMetric(float64(touched)/float64(max(ops, 1)), "endpoints-changed/op")
}

// BenchmarkTiersIncrementalLabelChangeNewIdentity adds a label to one pod
// (a new identity its peers must learn) with the ClusterNetworkPolicies
// loaded: the cost tiers add to endpoint churn.
func BenchmarkTiersIncrementalLabelChangeNewIdentity(b *testing.B) {
	f := tierBenchSetup(b)
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
