package agent

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/services"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// serviceImports are n ClusterSetIP imports (dual-stack VIPs, two ports)
// exported by three clusters with four backends each.
func serviceImports(n int) []*fedmeshv1.ServiceImport {
	out := make([]*fedmeshv1.ServiceImport, 0, n)
	for i := range n {
		imp := &fedmeshv1.ServiceImport{Namespace: fmt.Sprintf("ns%d", i%50), Name: fmt.Sprintf("svc%d", i),
			Ips:      []string{fmt.Sprintf("100.127.%d.%d", i/250, i%250+1), fmt.Sprintf("fd00:fed:c5e7::%x", i+1)},
			Affinity: fedmeshv1.Affinity_AFFINITY_LOCAL,
			Ports:    []*fedmeshv1.ServicePort{{Name: "a", Port: 80}, {Name: "b", Port: 443}}}
		for c := range 3 {
			cb := &fedmeshv1.ClusterBackends{Cluster: fmt.Sprintf("c%d", c)}
			for b := range 4 {
				cb.Endpoints = append(cb.Endpoints, &fedmeshv1.ServiceBackend{Address: fmt.Sprintf("10.%d.%d.%d", c, i%250, b+1), Node: fmt.Sprintf("n%d", b), Ready: b != 3})
			}
			imp.Clusters = append(imp.Clusters, cb)
		}
		out = append(out, imp)
	}
	return out
}

// The per-revision service work (catalog, translation table, DNS view)
// for 100 and 1000 imports: the cost per import should stay flat (ratio of
// CPU ns/import between the two sizes, reported by the larger one). CPU
// time, not wall time: the shared machine's load moves wall time by
// several times.
func BenchmarkServiceRevision(b *testing.B) {
	live := services.Liveness{Unreachable: map[string]bool{"c2": true}}
	perImport := map[int]float64{}
	for _, n := range []int{100, 1000} {
		imps := serviceImports(n)
		b.Run(fmt.Sprintf("imports=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				cat := services.BuildCatalog(7, imps, "c0", live)
				if t := ServiceTableOf(cat); len(t.Frontends) != 4*n {
					b.Fatalf("%d frontends, want %d", len(t.Frontends), 4*n)
				}
				DNSView(cat)
			}
			perImport[n] = float64(cpuTime()-cpu0) / float64(b.N) / float64(n)
			b.ReportMetric(perImport[n], "cpu-ns/import")
			if n == 1000 && perImport[100] > 0 {
				b.ReportMetric(perImport[1000]/perImport[100], "cpu-ns/import-vs-100")
			}
		})
	}
}

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
