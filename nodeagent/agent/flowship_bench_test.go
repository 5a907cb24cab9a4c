package agent_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/flows"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// traffic drives rate new TCP flows per second into the in-memory
// dataplane's endpoint for d (each SYN from a new source port, so each is
// a new flow a rule allows and an event) and returns how many it sent.
func traffic(b *testing.B, dp *dataplane.Memory, rate int, d time.Duration, sport *uint32) int {
	const tick = 5 * time.Millisecond
	frame := tcpSYN(netip.MustParseAddr("10.0.0.20"), netip.MustParseAddr("10.0.0.10"), 1, 80)
	tk := time.NewTicker(tick)
	defer tk.Stop()
	n := 0
	start := time.Now()
	for end := start.Add(d); time.Now().Before(end); <-tk.C {
		// Catch up to the rate over the elapsed time: a late tick sends more.
		for due := int(time.Since(start).Seconds() * float64(rate)); n < due; n++ {
			*sport++
			binary.BigEndian.PutUint16(frame[14+20:], uint16(*sport))
			binary.BigEndian.PutUint16(frame[14+12:], uint16(*sport>>16)) // vary the source address too: no 5-tuple repeats
			if _, _, _, err := dp.Process("a/web/server", policy.Ingress, frame); err != nil {
				b.Fatal(err)
			}
		}
	}
	return n
}

// BenchmarkFlowShippingCPU: this process's CPU while the in-memory
// dataplane takes 50k new flows/s, with the flow reader and the shipper
// off (nobody reads the events, as with --ship-flows=false) and then on
// (every event attributed and shipped to one, then three,
// fedmesh-controlplane processes, whose CPU is not counted), in the same
// run.
func BenchmarkFlowShippingCPU(b *testing.B) {
	cp := cptest.Start(b, cptest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	any, err := cp.Any()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := fedmeshv1.NewClusterServiceClient(any.Conn()).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: clusterObj("a", "10.0.0.0/16")}); err != nil {
		b.Fatal(err)
	}
	reg, err := fedmeshv1.NewNodeServiceClient(any.Conn()).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: self, UnderlayIp: "198.18.0.1"}})
	if err != nil {
		b.Fatal(err)
	}
	if err := cp.WaitRevision(reg.GetRevision(), 10*time.Second); err != nil {
		b.Fatal(err)
	}

	rules := policy.EndpointRules{Identity: 256, Ingress: policy.DirectionRules{Enforced: true,
		Identities: []policy.IdentityRule{{Peer: policy.IdentityAny, Proto: policy.ProtoAny, Ports: policy.AllPorts, Rule: 1}}}}
	// Each phase gets a fresh dataplane, so its flow table's growth is the
	// same in both.
	newDataplane := func(b *testing.B) *dataplane.Memory {
		dp := dataplane.NewMemory()
		if err := dp.Apply(ctx, &dataplane.Revision{Number: 1, Rules: map[string]policy.EndpointRules{"a/web/server": rules}}); err != nil {
			b.Fatal(err)
		}
		if err := dp.Attach(ctx, dataplane.Endpoint{ID: "a/web/server", Interface: "cali-server"}); err != nil {
			b.Fatal(err)
		}
		return dp
	}
	dir := flows.NewDirectory()
	dir.UpsertEndpoint(server)
	dir.UpsertEndpoint(client)
	dir.Stage("a/web/server", &policy.Compiled{Rules: rules, Origins: []policy.RuleOrigin{{Cluster: "a", Namespace: "web", Name: "allow-all", Direction: policy.Ingress}}})
	dir.Commit()

	for _, replicas := range []int{1, 3} {
		b.Run(fmt.Sprintf("replicas=%d", replicas), func(b *testing.B) { shipCPU(b, ctx, cp.Addrs()[:replicas], newDataplane, dir) })
	}
}

func shipCPU(b *testing.B, ctx context.Context, addrs []string, newDataplane func(*testing.B) *dataplane.Memory, dir *flows.Directory) {
	const rate = 50_000
	const window = 3 * time.Second
	for b.Loop() {
		var sport uint32
		// Off: the events channel fills and the dataplane drops the rest.
		dp := newDataplane(b)
		traffic(b, dp, rate, time.Second, &sport)
		start, m0 := cpuTime(), allocated()
		nOff := traffic(b, dp, rate, window, &sport)
		off, mOff := cpuTime()-start, allocated().minus(m0)
		dp.Close()
		dp = newDataplane(b)

		cl, err := agent.NewClient(addrs, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		sctx, stop := context.WithCancel(ctx)
		shipper := agent.NewFlowShipper(cl, "a", self, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
		rd := &flows.Reader{Cluster: "a", Node: self, Dir: dir, Sink: shipper}
		done := make(chan struct{}, 2)
		go func() { shipper.Run(sctx); done <- struct{}{} }()
		go func() { rd.Run(sctx, dp.Events()); done <- struct{}{} }()
		traffic(b, dp, rate, time.Second, &sport) // streams open, queues warm
		start, ev0, m0 := cpuTime(), rd.Events(), allocated()
		nOn := traffic(b, dp, rate, window, &sport)
		on, mOn := cpuTime()-start, allocated().minus(m0)
		events := rd.Events() - ev0
		stop()
		<-done
		<-done
		cl.Close()
		dp.Close()

		if events < uint64(nOn)/2 {
			b.Fatalf("the reader saw %d events of %d flows: the dataplane dropped the rest, so shipping was not measured at %d/s", events, nOn, rate)
		}
		b.ReportMetric(float64(nOff)/window.Seconds(), "flows/s-off")
		b.ReportMetric(float64(events)/window.Seconds(), "events/s-on")
		b.ReportMetric(off.Seconds()/window.Seconds()*100, "cpu%-off")
		b.ReportMetric(on.Seconds()/window.Seconds()*100, "cpu%-on")
		b.ReportMetric((on-off).Seconds()/off.Seconds()*100, "overhead%")
		b.ReportMetric(float64((on-off).Nanoseconds())/float64(events)/1000, "µs-cpu/event")
		// Allocation is the steady measure on a loaded machine: what the
		// reader and the shipper allocate per event, beyond the traffic's.
		b.ReportMetric((float64(mOn.bytes)/float64(nOn) - float64(mOff.bytes)/float64(nOff)), "B-alloc/event")
		b.ReportMetric((float64(mOn.objects)/float64(nOn) - float64(mOff.objects)/float64(nOff)), "allocs/event")
		b.ReportMetric(float64(shipper.Dropped()), "dropped")
		b.ReportMetric(float64(uint64(nOn)-events), "lost-in-dataplane")
	}
}

type allocs struct{ bytes, objects uint64 }

func allocated() allocs {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return allocs{m.TotalAlloc, m.Mallocs}
}

func (a allocs) minus(b allocs) allocs { return allocs{a.bytes - b.bytes, a.objects - b.objects} }
