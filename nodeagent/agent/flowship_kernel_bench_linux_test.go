package agent_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/flows"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// requireKernelDataplane skips without root and the kernel dataplane,
// except in CI where it fails.
func requireKernelDataplane(b *testing.B) {
	b.Helper()
	err := dataplane.Probe("/sys/fs/bpf")
	if err == nil && os.Geteuid() != 0 {
		err = errors.New("needs root")
	}
	if err == nil {
		_, err = exec.LookPath("ip")
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			b.Fatalf("kernel dataplane (root, BPF, iproute2) required in CI: %v", err)
		}
		b.Skipf("kernel dataplane (root, BPF, iproute2) not available: %v", err)
	}
}

// threadCPU is the calling OS thread's CPU time.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// skbCtx is the head of struct __sk_buff up to ifindex, for BPF_PROG_TEST_RUN.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority, IngressIfindex, Ifindex uint32
}

// kernelTraffic runs the attached fm_to_pod program (BPF_PROG_TEST_RUN)
// on rate new TCP flows per second from the client workload to the server
// for d, on a thread of its own inside the endpoint's namespace, and
// returns how many it ran and that thread's CPU: the packet work, which on
// a node runs in the kernel's softirqs and not in the agent, so the
// benchmark takes it out of the process's CPU.
func kernelTraffic(b *testing.B, prog *ebpf.Program, ns string, ifindex uint32, rate int, d time.Duration, seq *uint32) (int, time.Duration) {
	type result struct {
		n   int
		cpu time.Duration
		err error
	}
	res := make(chan result, 1)
	go func() {
		// The thread stays locked and so ends with the goroutine: it was
		// moved into the test's namespace.
		runtime.LockOSThread()
		h, err := netns.GetFromPath(ns)
		if err == nil {
			err = netns.Set(h)
			h.Close()
		}
		if err != nil {
			res <- result{err: err}
			return
		}
		frame := tcpSYN(netip.MustParseAddr("10.0.0.20"), netip.MustParseAddr("10.0.0.10"), 1, 1)
		// The context encoded once: as a struct, every run would encode it
		// by reflection, and the garbage would be collected on the
		// agent's CPU.
		skb, err := binary.Append(nil, binary.NativeEndian, skbCtx{Ifindex: ifindex})
		if err != nil {
			res <- result{err: err}
			return
		}
		opts := &ebpf.RunOptions{Data: frame, Context: skb}
		const tick = 5 * time.Millisecond
		tk := time.NewTicker(tick)
		defer tk.Stop()
		cpu0 := threadCPU()
		n := 0
		start := time.Now()
		for end := start.Add(d); time.Now().Before(end); <-tk.C {
			for due := int(time.Since(start).Seconds() * float64(rate)); n < due; n++ {
				// A new 5-tuple every time: source port and destination
				// port from the sequence number, the client's address, so
				// the source is a known workload as on a node.
				*seq++
				binary.BigEndian.PutUint16(frame[14+20:], uint16(1024+*seq%60000))
				binary.BigEndian.PutUint16(frame[14+22:], uint16(1+*seq/60000))
				if _, err := prog.Run(opts); err != nil {
					res <- result{err: err}
					return
				}
			}
		}
		res <- result{n: n, cpu: threadCPU() - cpu0}
	}()
	r := <-res
	if r.err != nil {
		b.Fatal(r.err)
	}
	return r.n, r.cpu
}

// discard is the sink with shipping off: records are read and attributed
// (encoded) and go nowhere.
type discard struct{}

func (discard) Offer([]byte) {}

// BenchmarkFlowShippingCPUKernel is the target against the real
// dataplane: the agent's CPU while the eBPF dataplane raises 50k new-flow
// verdict events/s on an attached endpoint, with the flow reader draining
// the event ring and attributing every event but shipping none ("off"),
// and with every record shipped to one, then three, fedmesh-controlplane
// processes ("on"), in alternating one-second windows of the same run.
// The packets are run through the attached fm_to_pod by BPF_PROG_TEST_RUN
// on a thread whose CPU is subtracted (on a node that work is the
// kernel's, not the agent's); the control plane's CPU is not counted.
// overhead% = (on − off) / off.
func BenchmarkFlowShippingCPUKernel(b *testing.B) {
	requireKernelDataplane(b)
	const rate = 50_000
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	rnd := make([]byte, 4)
	rand.Read(rnd)
	nsName := "fmfb-" + hex.EncodeToString(rnd)
	for _, args := range [][]string{{"netns", "add", nsName}, {"-n", nsName, "link", "add", "srv0", "type", "veth", "peer", "name", "psrv0"}, {"-n", nsName, "link", "set", "srv0", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			b.Fatalf("ip %v: %v: %s", args, err, out)
		}
		if args[0] == "netns" {
			b.Cleanup(func() { exec.Command("ip", "netns", "del", nsName).Run() })
		}
	}
	nsPath := "/run/netns/" + nsName
	cfg := dataplane.Config{PinDir: "/sys/fs/bpf/fmfb-" + hex.EncodeToString(rnd), NetNS: nsPath,
		// Every new flow raises an event: the default rate limit (1000/s
		// per CPU) would drop nearly all of them.
		EventsPerSecond: 10 * rate, EventsBurst: rate,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	dp, err := dataplane.New(ctx, cfg)
	if err != nil {
		// A failed load leaves the maps New pinned in this run's directory.
		if uerr := dataplane.Uninstall(context.Background(), cfg.PinDir); uerr != nil {
			b.Error(uerr)
		}
		b.Fatal(err)
	}
	b.Cleanup(func() {
		dp.Close()
		if err := dataplane.Uninstall(context.Background(), cfg.PinDir); err != nil {
			b.Error(err)
		}
	})
	rules := policy.EndpointRules{Identity: 256, Ingress: policy.DirectionRules{Enforced: true,
		Identities: []policy.IdentityRule{{Peer: policy.IdentityAny, Proto: policy.ProtoAny, Ports: policy.AllPorts, Rule: 1}}}}
	ipc := dataplane.NewIPCacheBuilder(dataplane.IPCache{})
	ipc.Set(netip.MustParsePrefix("10.0.0.10/32"), 256)
	ipc.Set(netip.MustParsePrefix("10.0.0.20/32"), 257)
	if err := dp.Attach(ctx, dataplane.Endpoint{ID: "a/web/server", Interface: "srv0"}); err != nil {
		b.Fatal(err)
	}
	if err := dp.Apply(ctx, &dataplane.Revision{Number: 1, IPCache: ipc.IPCache(), Rules: map[string]policy.EndpointRules{"a/web/server": rules}}); err != nil {
		b.Fatal(err)
	}
	prog := attachedProgram(b, cfg.PinDir, "fm_to_pod")
	var ifindex uint32
	{
		h, err := netns.GetFromPath(nsPath)
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		runtime.LockOSThread()
		orig, _ := netns.Get()
		if err := netns.Set(h); err != nil {
			b.Fatal(err)
		}
		ifi, err := net.InterfaceByName("srv0")
		if err2 := netns.Set(orig); err2 != nil {
			b.Fatal(err2)
		}
		orig.Close()
		runtime.UnlockOSThread()
		if err != nil {
			b.Fatal(err)
		}
		ifindex = uint32(ifi.Index)
	}

	cp := cptest.Start(b, cptest.Options{})
	anyCP, err := cp.Any()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := fedmeshv1.NewClusterServiceClient(anyCP.Conn()).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: clusterObj("a", "10.0.0.0/16")}); err != nil {
		b.Fatal(err)
	}
	reg, err := fedmeshv1.NewNodeServiceClient(anyCP.Conn()).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: self, UnderlayIp: "198.18.0.1"}})
	if err != nil {
		b.Fatal(err)
	}
	if err := cp.WaitRevision(reg.GetRevision(), 10*time.Second); err != nil {
		b.Fatal(err)
	}

	dir := flows.NewDirectory()
	dir.UpsertEndpoint(server)
	dir.UpsertEndpoint(client)
	dir.Stage("a/web/server", &policy.Compiled{Rules: rules, Origins: []policy.RuleOrigin{{Cluster: "a", Namespace: "web", Name: "allow-all", Direction: policy.Ingress}}})
	dir.Commit()

	// One reader drains the ring for the whole run; the phase decides
	// where its records go.
	sink := &switchSink{}
	sink.to.Store(&sinkRef{discard{}})
	rd := &flows.Reader{Cluster: "a", Node: self, Dir: dir, Sink: sink}
	rdone := make(chan struct{})
	go func() { rd.Run(ctx, dp.Events()); close(rdone) }()
	defer func() { cancel(); <-rdone }()

	var seq uint32
	// window runs one window of traffic and returns the new flows, the
	// agent's CPU (the process's less the traffic thread's) and the events
	// the reader took. It ends when the reader has drained the ring: events
	// a lagging reader took after the switch would count for the other
	// side.
	window := func(b *testing.B, d time.Duration) (n int, agentCPU time.Duration, events uint64) {
		cpu0, ev0 := cpuTime(), rd.Events()
		n, gen := kernelTraffic(b, prog, nsPath, ifindex, rate, d, &seq)
		for last := rd.Events(); ; {
			time.Sleep(20 * time.Millisecond)
			if e := rd.Events(); e != last {
				last = e
				continue
			}
			break
		}
		return n, cpuTime() - cpu0 - gen, rd.Events() - ev0
	}
	for _, replicas := range []int{1, 3} {
		b.Run(fmt.Sprintf("replicas=%d", replicas), func(b *testing.B) {
			kernelShipCPU(b, ctx, cp.Addrs()[:replicas], sink, window)
		})
	}
}

// kernelShipCPU alternates windows with shipping off and on to addrs, so
// the load of the shared machine moves both alike, and sums each side.
// The shipper runs throughout: with shipping off nothing is offered to it.
func kernelShipCPU(b *testing.B, ctx context.Context, addrs []string, sink *switchSink, window func(*testing.B, time.Duration) (int, time.Duration, uint64)) {
	const rate = 50_000
	const rounds, each = 5, time.Second
	total := (rounds * each).Seconds()
	for b.Loop() {
		cl, err := agent.NewClient(addrs, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		sctx, stop := context.WithCancel(ctx)
		shipper := agent.NewFlowShipper(cl, "a", self, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
		sdone := make(chan struct{})
		go func() { shipper.Run(sctx); close(sdone) }()
		sink.to.Store(&sinkRef{shipper})
		window(b, time.Second) // warm: streams open, queues and ring in use

		var nOff, nOn int
		var off, on time.Duration
		var evOff, evOn uint64
		for range rounds {
			sink.to.Store(&sinkRef{discard{}})
			n, cpu, ev := window(b, each)
			nOff, off, evOff = nOff+n, off+cpu, evOff+ev
			sink.to.Store(&sinkRef{shipper})
			n, cpu, ev = window(b, each)
			nOn, on, evOn = nOn+n, on+cpu, evOn+ev
		}
		sink.to.Store(&sinkRef{discard{}})
		stop()
		<-sdone
		cl.Close()

		for _, p := range []struct {
			name   string
			n      int
			events uint64
		}{{"off", nOff, evOff}, {"on", nOn, evOn}} {
			if p.events < uint64(p.n)*9/10 {
				b.Fatalf("%s: the reader saw %d events of %d new flows: the kernel's rate limit or the ring dropped the rest, so the phase was not at %d/s", p.name, p.events, p.n, rate)
			}
		}
		b.ReportMetric(float64(evOff)/total, "events/s-off")
		b.ReportMetric(float64(evOn)/total, "events/s-on")
		b.ReportMetric(off.Seconds()/total*100, "cpu%-off")
		b.ReportMetric(on.Seconds()/total*100, "cpu%-on")
		// Per event: a window that lost events to a full ring did less
		// work, which is not a saving.
		perOff, perOn := float64(off.Nanoseconds())/float64(evOff)/1000, float64(on.Nanoseconds())/float64(evOn)/1000
		b.ReportMetric((perOn-perOff)/perOff*100, "overhead%")
		b.ReportMetric(perOff, "µs-cpu/event-off")
		b.ReportMetric(perOn, "µs-cpu/event-on")
		b.ReportMetric(perOn-perOff, "µs-cpu/shipped")
		b.ReportMetric(float64(shipper.Dropped()), "dropped")
	}
}

type sinkRef struct{ flows.Sink }

// switchSink hands records to the phase's sink.
type switchSink struct{ to atomic.Pointer[sinkRef] }

func (s *switchSink) Offer(f []byte) { s.to.Load().Offer(f) }

// attachedProgram is the program of the dataplane's pinned link named
// name, opened by ID as an agent-side tool would.
func attachedProgram(b *testing.B, pinDir, name string) *ebpf.Program {
	b.Helper()
	pins, err := filepath.Glob(filepath.Join(pinDir, "links", "*"))
	if err != nil {
		b.Fatal(err)
	}
	for _, p := range pins {
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			b.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			b.Fatal(err)
		}
		prog, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			b.Fatal(err)
		}
		pi, err := prog.Info()
		if err == nil && pi.Name == name {
			b.Cleanup(func() { prog.Close() })
			return prog
		}
		prog.Close()
	}
	b.Fatalf("no pinned link in %s runs %s", pinDir, name)
	return nil
}
