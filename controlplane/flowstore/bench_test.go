package flowstore

import (
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// fill stores n flows from 100 nodes between 5000 workloads in 50
// namespaces of 5 clusters, 1% denied.
func fill(b *testing.B, n int) *Store { return fillEgress(b, n, 0) }

// fillEgress is fill with every egressEvery-th flow (0: none) going out of
// the federation instead: to one of 400 addresses, each resolved from one
// of 100 names (four addresses a name), the way an agent reports egress.
func fillEgress(b *testing.B, n, egressEvery int) *Store {
	b.Helper()
	s := New(Config{Capacity: n, NodeRate: 1e12, NodeBurst: 1e12, MaxAge: 24 * time.Hour, Now: func() time.Time { return t0.Add(time.Hour) }})
	ws := make([]*fedmeshv1.Workload, 5000)
	for i := range ws {
		ws[i] = &fedmeshv1.Workload{Cluster: fmt.Sprintf("c%d", i%5), Namespace: fmt.Sprintf("ns%d", i%50), Pod: fmt.Sprintf("pod-%d", i),
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%200)}, Identity: uint32(1000 + i%200), Ip: fmt.Sprintf("10.%d.%d.%d", i%5, i/250, i%250)}
	}
	const batch = 500
	fs := make([]*fedmeshv1.Flow, 0, batch)
	for i := 0; i < n; i += batch {
		fs = fs[:0]
		node := fmt.Sprintf("node-%d", (i/batch)%100)
		for j := range batch {
			k := i + j
			src, dst := ws[k%len(ws)], ws[(k*7+3)%len(ws)]
			f := flowAt(t0.Add(time.Duration(k)*time.Millisecond), src, dst, uint32(80+k%20), k%100 == 0, fmt.Sprintf("pol-%d", k%300))
			if egressEvery > 0 && k%egressEvery == 0 {
				a := k / egressEvery % 400
				f.Destination = &fedmeshv1.Workload{Ip: fmt.Sprintf("192.0.%d.%d", a/250, a%250), Identity: 2, Port: 443}
				f.DnsName = fmt.Sprintf("api-%d.example.com", a%100)
			}
			fs = append(fs, f)
		}
		s.Add("c"+node[len(node)-1:], node, fs, 0)
	}
	if got := s.Status().Stored; got != uint64(n) {
		b.Fatalf("stored %d of %d", got, n)
	}
	return s
}

// BenchmarkGetFlows1M: filtered queries over 1M stored flows; reports the
// p99 latency and the heap per stored flow.
func BenchmarkGetFlows1M(b *testing.B) {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s := fill(b, 1_000_000)
	runtime.GC()
	runtime.ReadMemStats(&after)
	perFlow := float64(after.HeapAlloc-before.HeapAlloc) / 1e6
	for _, tc := range []struct {
		name string
		q    Query
	}{
		{"pod", Query{Filter: Filter{PodNamespace: "ns7", Pod: "pod-7"}, Limit: DefaultLimit}},
		{"namespace-denied", Query{Filter: Filter{Namespace: "ns3", Verdict: fedmeshv1.Verdict_VERDICT_DENY}, Limit: DefaultLimit}},
		{"policy", Query{Filter: Filter{Policy: &PolicyRef{Name: "pol-42"}}, Limit: DefaultLimit}},
		{"time-range-cluster", Query{Filter: Filter{Cluster: "c2"}, Since: t0.Add(100 * time.Second), Until: t0.Add(200 * time.Second), Limit: DefaultLimit}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var lat []time.Duration
			n := 0
			for b.Loop() {
				start := time.Now()
				n = len(s.Query(tc.q, Scope{}))
				lat = append(lat, time.Since(start))
			}
			if n == 0 {
				b.Fatal("the query matched nothing")
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(perFlow, "heap-B/flow")
			b.ReportMetric(float64(s.Status().BytesPerFlow), "record-B/flow")
		})
	}
}

// BenchmarkSummarize1M: the summary (GetFlowSummary, the graph page) over
// 1M stored flows, a tenth of them to named addresses outside the
// federation; reports the p99 latency.
func BenchmarkSummarize1M(b *testing.B) {
	s := fillEgress(b, 1_000_000, 10)
	since, until := t0, t0.Add(time.Hour)
	for _, tc := range []struct {
		name string
		q    Summary
	}{
		{"all", Summary{Since: since, Until: until, Window: time.Hour}},
		{"all-windows", Summary{Since: since, Until: until, Window: time.Minute}},
		{"namespace", Summary{Filter: Filter{Namespace: "ns3"}, Since: since, Until: until, Window: time.Hour}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var lat []time.Duration
			n := 0
			for b.Loop() {
				start := time.Now()
				n = len(s.Summarize(tc.q, Scope{}))
				lat = append(lat, time.Since(start))
			}
			if n == 0 {
				b.Fatal("the summary has no edge")
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(n), "edges")
		})
	}
}

// BenchmarkAdd: ingest cost per flow at a full store.
func BenchmarkAdd(b *testing.B) {
	s := New(Config{Capacity: 100_000, NodeRate: 1e12, NodeBurst: 1e12})
	fs := make([]*fedmeshv1.Flow, 100)
	for i := range fs {
		fs[i] = flowAt(time.Now(), webA, dbB, uint32(i), i%2 == 0, "p")
	}
	for b.Loop() {
		s.Add("a", "n1", fs, 0)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(fs)), "ns/flow")
}
