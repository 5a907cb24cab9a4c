package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	"github.com/fedmesh/fedmesh/tools/fedlab/lab"
)

// BenchmarkConvergence creates 200 endpoints in cluster-a through the API,
// one write each, and times each from the write to "enforced on every node
// of cluster-b" (the agents' reported revisions, as --wait sees it). The
// baseline in the same run is a read round trip to the control plane.
func BenchmarkConvergence(b *testing.B) {
	l := useLab(b, lab.Config{Clusters: 2, Nodes: 2, Pods: 1, NoKube: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cc, err := l.Dial()
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	eps := fedmeshv1.NewEndpointServiceClient(cc)
	nodes := fedmeshv1.NewNodeServiceClient(cc)
	a, other := l.Topo.Clusters[0], l.Topo.Clusters[1]
	for i := 0; i < b.N; i++ {
		var conv, rtt []time.Duration
		for j := 0; j < 200; j++ {
			start := time.Now()
			if _, err := nodes.ListNodes(ctx, &fedmeshv1.ListNodesRequest{Cluster: other.Name}); err != nil {
				b.Fatal(err)
			}
			rtt = append(rtt, time.Since(start))
			start = time.Now()
			resp, err := eps.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: a.Name, Endpoints: []*fedmeshv1.Endpoint{{
				Namespace: "bench", Name: fmt.Sprintf("p-%d-%d", i, j), Node: a.Nodes[0].Name,
				Ips:    []string{fmt.Sprintf("10.1.%d.%d", 100+j/250, 1+j%250)},
				Labels: map[string]string{"app": "bench", "n": fmt.Sprint(j % 10)},
			}}})
			if err != nil {
				b.Fatal(err)
			}
			w, err := nodes.WaitEnforced(ctx, &fedmeshv1.WaitEnforcedRequest{Revision: resp.GetRevision(), Clusters: []string{other.Name}, Timeout: durationpb.New(10 * time.Second)})
			if err != nil || !w.GetEnforced() {
				b.Fatalf("endpoint %d not enforced: %v %v", j, w, err)
			}
			conv = append(conv, time.Since(start))
		}
		slices.Sort(conv)
		slices.Sort(rtt)
		p := func(d []time.Duration, q float64) time.Duration { return d[int(q*float64(len(d)-1))] }
		b.ReportMetric(float64(p(conv, 0.5).Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(p(conv, 0.99).Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(p(conv, 0.5))/float64(p(rtt, 0.5)), "p50-vs-read-rtt")
		b.Logf("convergence of 200 endpoints to every node of %s: p50 %s p99 %s (target p99 < 1s); read round trip p50 %s",
			other.Name, p(conv, 0.5), p(conv, 0.99), p(rtt, 0.5))
	}
}
