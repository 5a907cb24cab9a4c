package agent

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/flows"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

type countSink struct{ n, named int }

func (s *countSink) Offer(b []byte) {
	s.n++
	if len(b) > 0 && b[len(b)-1] == 'm' { // ends in the name's last byte
		s.named++
	}
}

// BenchmarkFlowReaderNamingCost: the flow reader's cost per egress event
// with the DNS naming cache (10k addresses over 64 pods, every destination
// named) against the same reader without it, in the same run.
func BenchmarkFlowReaderNamingCost(b *testing.B) {
	const events = 20_000
	dir := flows.NewDirectory()
	dir.UpsertEndpoint(&fedmeshv1.Endpoint{Cluster: "a", Namespace: "demo", Name: "web", Ips: []string{"10.1.1.11"}})
	nc := NewNameCache(NameCacheConfig{Total: 1 << 20}, nil)
	for p := range 64 {
		for i := range 160 {
			nc.Learn(fmt.Sprintf("a/demo/p%d", p), netip.AddrFrom4([4]byte{192, 0, byte(p), byte(i)}), "svc.example.com", time.Hour)
		}
	}
	for i := range 160 {
		nc.Learn("a/demo/web", netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), "api.example.com", time.Hour)
	}
	evs := make([]dataplane.Event, events)
	for i := range evs {
		evs[i] = dataplane.Event{EndpointID: "a/demo/web", Direction: policy.Egress, Proto: 6, SrcPort: uint16(i), DstPort: 443,
			Src: netip.MustParseAddr("10.1.1.11"), Dst: netip.AddrFrom4([4]byte{198, 51, 100, byte(i % 160)})}
	}
	run := func(names flows.Names) (time.Duration, *countSink) {
		sink := &countSink{}
		ch := make(chan dataplane.Event, events)
		for _, ev := range evs {
			ch <- ev
		}
		close(ch)
		r := &flows.Reader{Cluster: "a", Node: "n1", Dir: dir, Sink: sink, Names: names}
		start := time.Now()
		r.Run(context.Background(), ch)
		return time.Since(start), sink
	}
	var base, named time.Duration
	i := 0
	for b.Loop() {
		// Alternate the order, so neither side always runs on a warmer cache.
		for _, withNames := range [2]bool{i%2 == 0, i%2 != 0} {
			if !withNames {
				d, _ := run(nil)
				base += d
				continue
			}
			d, s := run(nc)
			named += d
			if s.named != events {
				b.Fatalf("%d of %d flows named", s.named, events)
			}
		}
		i++
	}
	n := float64(b.N * events)
	b.ReportMetric(float64(base.Nanoseconds())/n, "ns/event-without")
	b.ReportMetric(float64(named.Nanoseconds())/n, "ns/event-named")
	b.ReportMetric(float64(named-base)/float64(base)*100, "overhead%")
}

// BenchmarkNameCacheLookup: one Name lookup in a cache of 10k addresses
// over 64 pods (the flow reader's added work per egress event, with the
// append of the name).
func BenchmarkNameCacheLookup(b *testing.B) {
	nc := NewNameCache(NameCacheConfig{Total: 1 << 20}, nil)
	for p := range 64 {
		for i := range 160 {
			nc.Learn(fmt.Sprintf("a/demo/p%d", p), netip.AddrFrom4([4]byte{192, 0, byte(p), byte(i)}), "svc.example.com", time.Hour)
		}
	}
	now := time.Now()
	i := 0
	for b.Loop() {
		if nc.Name("a/demo/p7", netip.AddrFrom4([4]byte{192, 0, 7, byte(i % 160)}), now) == "" {
			b.Fatal("not named")
		}
		i++
	}
}
