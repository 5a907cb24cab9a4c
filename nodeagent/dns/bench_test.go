package dns

import (
	"context"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BenchmarkForwardLatency asks the upstream (the cluster DNS stand-in, a
// miekg/dns server on loopback) directly and through the resolver,
// alternating, in the same run, each over one connected UDP socket as a
// pod's stub resolver would, and reports both latency distributions and
// their ratios. The resolver's own cost per forwarded query is a read, a
// decode, a fresh upstream socket (a random source port per query), the
// exchange, an encode and a write.
//
// Two upstreams: the miekg/dns stand-in every unit test uses, and a real
// Unbound answering from local-data (skipped where unbound is not
// installed).
func BenchmarkForwardLatency(b *testing.B) {
	b.Run("upstream=miekg", func(b *testing.B) {
		benchForward(b, startUpstream(b).addr, "example.org.")
	})
	b.Run("upstream=unbound", func(b *testing.B) {
		benchForward(b, startUnbound(b), "www.fedmesh.test.")
	})
}

func benchForward(b *testing.B, upstream, name string) {
	r := startResolver(b, Config{Upstream: upstream}, Deps{Logger: discard()})
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	direct, err := c.Dial(upstream)
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	via, err := c.Dial(r.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer via.Close()
	q := question(name, dns.TypeA)
	ask := func(conn *dns.Conn) time.Duration {
		start := time.Now()
		resp, _, err := c.ExchangeWithConn(q, conn)
		if err != nil || len(resp.Answer) != 1 {
			b.Fatalf("exchange: %v %v", resp, err)
		}
		return time.Since(start)
	}
	var d, v []time.Duration
	for b.Loop() {
		d = append(d, ask(direct))
		v = append(v, ask(via))
	}
	dp50, dp99 := percentile(d, 50), percentile(d, 99)
	vp50, vp99 := percentile(v, 50), percentile(v, 99)
	b.ReportMetric(us(dp50), "direct-p50-µs")
	b.ReportMetric(us(dp99), "direct-p99-µs")
	b.ReportMetric(us(vp50), "resolver-p50-µs")
	b.ReportMetric(us(vp99), "resolver-p99-µs")
	b.ReportMetric(float64(vp50)/float64(dp50), "p50-ratio")
	b.ReportMetric(float64(vp99)/float64(dp99), "p99-ratio")
	b.ReportMetric(us(vp99-dp99), "p99-added-µs")
}

// BenchmarkZoneQueries is the resolver's work for one in-zone query
// (decode, validate, answer from the View, encode) on one goroutine, so
// queries/s is what one core answers without the sockets; queries/cpu-s
// is the same from the CPU time used, which holds on a busy machine.
func BenchmarkZoneQueries(b *testing.B) {
	for _, tc := range []struct {
		name  string
		qname string
		qtype uint16
	}{
		{"ClusterSetIP-A", "redis.demo.svc.clusterset.local.", dns.TypeA},
		{"headless-A", "db.demo.svc.clusterset.local.", dns.TypeA},
		{"SRV", "_pg._tcp.db.demo.svc.clusterset.local.", dns.TypeSRV},
		{"NXDOMAIN", "nope.demo.svc.clusterset.local.", dns.TypeA},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := New(Config{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:1"}, Deps{View: testServices(), Logger: discard()})
			if err != nil {
				b.Fatal(err)
			}
			raw := pack(b, question(tc.qname, tc.qtype))
			client := netip.MustParseAddrPort("127.0.0.1:5353")
			ctx := context.Background()
			cpu0 := cpuTime(b)
			for b.Loop() {
				if s.Handle(ctx, raw, client, UDP) == nil {
					b.Fatal("no answer")
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
			b.ReportMetric(float64(b.N)/(cpuTime(b)-cpu0).Seconds(), "queries/cpu-s")
		})
	}
}

// BenchmarkZoneQueriesUDP is in-zone queries/s over the resolver's real
// UDP socket, clients included. Run with -cpu 1 for the one-core figure
// (GOMAXPROCS=1: the resolver and its clients share that core, so it is a
// lower bound for the resolver alone); SetParallelism keeps enough queries
// in flight to keep the core busy. queries/cpu-s divides by the CPU time
// the process used (resolver and clients), which holds on a busy machine
// where wall-clock queries/s does not.
func BenchmarkZoneQueriesUDP(b *testing.B) {
	r := startResolver(b, Config{Upstream: "127.0.0.1:1"}, Deps{View: testServices(), Logger: discard()})
	q := question("redis.demo.svc.clusterset.local.", dns.TypeA)
	b.SetParallelism(8)
	cpu0 := cpuTime(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
		conn, err := c.Dial(r.addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		for pb.Next() {
			resp, _, err := c.ExchangeWithConn(q, conn)
			if err != nil || len(resp.Answer) != 1 {
				b.Errorf("exchange: %v %v", resp, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
	b.ReportMetric(float64(b.N)/(cpuTime(b)-cpu0).Seconds(), "queries/cpu-s")
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
