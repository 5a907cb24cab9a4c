package agent_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fdns "github.com/fedmesh/fedmesh/nodeagent/dns"
)

// The benchmarks here are policy by DNS name with its real pieces: the
// resolver (nodeagent/dns), NamePolicy as its hook, and the kernel
// dataplane learning every answer into fm_fqdn, in network namespaces the
// benchmark creates:
//
//	node netns:  br0 198.18.0.254/24 (the resolver listens here), h1, h2
//	pod netns:   eth0 198.18.0.1/24 (veth h1, the endpoint the dataplane
//	             enforces), 198.18.128.0/17 via the outside
//	outside:     eth0 198.18.0.3/24 (veth h2, not enforced), every address
//	             of 198.18.128.0/17 local (a route), a listener on 8080
//
// The pod's egress is enforced: *.example.com on TCP 8080 by name, and
// DNS to the resolver by CIDR; nothing else. The upstream (the cluster DNS
// stand-in, a miekg/dns server) runs on the test process's loopback, as
// the resolver's forwarder sockets do.

const (
	benchPodID   = "c1/default/pod1"
	benchNamePat = "*.example.com"
	benchPort    = 8080
)

var (
	benchPodIP      = netip.MustParseAddr("198.18.0.1")
	benchOutsideIP  = netip.MustParseAddr("198.18.0.3")
	benchResolverIP = netip.MustParseAddr("198.18.0.254")
	// benchAnswers are the outside addresses the upstream answers with,
	// one fresh address per query.
	benchAnswers = netip.MustParsePrefix("198.18.128.0/17")
)

// requireNameBench skips where the kernel dataplane or netns cannot run,
// and fails under CI=true.
func requireNameBench(b *testing.B) {
	b.Helper()
	fail := func(format string, args ...any) {
		b.Helper()
		if os.Getenv("CI") == "true" {
			b.Fatalf("CI=true must run it: "+format, args...)
		}
		b.Skipf(format, args...)
	}
	if os.Geteuid() != 0 {
		fail("needs root (network namespaces, veths, BPF)")
	}
	if err := dataplane.Probe("/sys/fs/bpf"); err != nil {
		if !errors.Is(err, dataplane.ErrNotSupported) {
			b.Fatal(err)
		}
		fail("kernel dataplane not available: %v", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		fail("iproute2 missing")
	}
}

func benchRand(prefix string) string {
	r := make([]byte, 4)
	rand.Read(r)
	return prefix + hex.EncodeToString(r)
}

func ipCmd(b *testing.B, args ...string) {
	b.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		b.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// benchNetns creates a named netns, deleted at cleanup.
func benchNetns(b *testing.B) (name, path string) {
	b.Helper()
	name = benchRand("fmnb")
	ipCmd(b, "netns", "add", name)
	b.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ipCmd(b, "-n", name, "link", "set", "lo", "up")
	return name, "/run/netns/" + name
}

// inNetns runs fn on a thread in the netns at path; sockets fn opens stay
// there.
func inNetns(path string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get the current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and dies with the goroutine.
		runtime.LockOSThread()
		return fmt.Errorf("return from netns %s: %w", path, err)
	}
	return ferr
}

// stampingUpstream answers A queries with the address answer(qname) and
// records when each answer left it (just before the write).
type stampingUpstream struct {
	addr   string
	answer func(qname string) netip.Addr
	sent   sync.Map // qname -> time.Time
}

func startStampingUpstream(b *testing.B, answer func(string) netip.Addr) *stampingUpstream {
	b.Helper()
	u := &stampingUpstream{answer: answer}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	u.addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		q := r.Question[0]
		if q.Qtype == dns.TypeA {
			a := u.answer(q.Name)
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: a.AsSlice()}}
		}
		u.sent.Store(q.Name, time.Now())
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	b.Cleanup(func() { srv.Shutdown() })
	return u
}

// nameBenchEnv is the namespaces, the kernel dataplane with the pod
// attached and its revision applied, and a NamePolicy over it.
type nameBenchEnv struct {
	node, pod, outside string // netns paths
	dp                 *dataplane.EBPF
	np                 *agent.NamePolicy
}

func newNameBenchEnv(b *testing.B, learner func(agent.Learner) agent.Learner, podIPs ...netip.Addr) *nameBenchEnv {
	b.Helper()
	nodeNS, nodePath := benchNetns(b)
	podNS, podPath := benchNetns(b)
	outNS, outPath := benchNetns(b)
	ipCmd(b, "-n", nodeNS, "link", "add", "br0", "type", "bridge")
	ipCmd(b, "-n", nodeNS, "addr", "add", benchResolverIP.String()+"/24", "dev", "br0")
	ipCmd(b, "-n", nodeNS, "link", "set", "br0", "up")
	for _, p := range []struct{ ns, host, addr string }{{podNS, "h1", benchPodIP.String()}, {outNS, "h2", benchOutsideIP.String()}} {
		ipCmd(b, "-n", nodeNS, "link", "add", p.host, "type", "veth", "peer", "name", "eth0", "netns", p.ns)
		ipCmd(b, "-n", nodeNS, "link", "set", p.host, "master", "br0", "up")
		ipCmd(b, "-n", p.ns, "addr", "add", p.addr+"/24", "dev", "eth0")
		ipCmd(b, "-n", p.ns, "link", "set", "eth0", "up")
	}
	// One gateway for every answered address: no neighbour resolution per
	// fresh address on the pod's side.
	ipCmd(b, "-n", podNS, "route", "add", benchAnswers.String(), "via", benchOutsideIP.String())
	ipCmd(b, "-n", outNS, "route", "add", "local", benchAnswers.String(), "dev", "lo")

	ctx := context.Background()
	pinDir := "/sys/fs/bpf/" + benchRand("fmnb-")
	dp, err := dataplane.New(ctx, dataplane.Config{PinDir: pinDir, NetNS: nodePath})
	if err != nil {
		// A failed load leaves the maps New pinned in this run's directory.
		if uerr := dataplane.Uninstall(context.Background(), pinDir); uerr != nil {
			b.Error(uerr)
		}
		b.Fatal(err)
	}
	b.Cleanup(func() {
		dp.Close()
		if err := dataplane.Uninstall(context.Background(), pinDir); err != nil {
			b.Error(err)
		}
	})
	ipc := dataplane.NewIPCacheBuilder(dataplane.IPCache{})
	ipc.Set(netip.PrefixFrom(benchPodIP, 32), 101)
	egress := policy.DirectionRules{Enforced: true,
		CIDRs: []policy.CIDRRule{{Prefix: netip.PrefixFrom(benchResolverIP, 32), Proto: syscall.IPPROTO_UDP,
			Ports: policy.PortRange{First: 53, Last: 53}, Rule: 2},
			// The baseline of BenchmarkNameAnswerToFirstPacket: a first
			// SYN allowed without a name.
			{Prefix: netip.PrefixFrom(benchOutsideIP, 32), Proto: syscall.IPPROTO_TCP,
				Ports: policy.PortRange{First: benchPort, Last: benchPort}, Rule: 3}},
		Names: []policy.NameRule{{Names: []string{benchNamePat}, Proto: syscall.IPPROTO_TCP,
			Ports: policy.PortRange{First: benchPort, Last: benchPort}, Rule: 1, Tier: policy.TierAdmin, Action: policy.ActionAccept}}}
	rev := &dataplane.Revision{Number: 1, IPCache: ipc.IPCache(), Rules: map[string]policy.EndpointRules{
		benchPodID: {Identity: 101, Egress: egress}}}
	if err := dp.Apply(ctx, rev); err != nil {
		b.Fatal(err)
	}
	if err := dp.Attach(ctx, dataplane.Endpoint{ID: benchPodID, Interface: "h1"}); err != nil {
		b.Fatal(err)
	}
	var l agent.Learner = dp
	if learner != nil {
		l = learner(dp)
	}
	// The per-pod limit is above what a run learns: an eviction (a Forget
	// and a re-Learn of all the pod keeps) is not what these measure.
	np, err := agent.NewNamePolicy(agent.NamePolicyConfig{MaxAddrsPerPod: 1 << 17}, l, nil, nil, nil, discardLog())
	if err != nil {
		b.Fatal(err)
	}
	np.Update(ctx, []agent.NamePod{{ID: benchPodID, IPs: append([]netip.Addr{benchPodIP}, podIPs...), Egress: egress}})
	return &nameBenchEnv{node: nodePath, pod: podPath, outside: outPath, dp: dp, np: np}
}

// startResolver runs the resolver with the name policy, listening on
// listen inside the netns at path (the root netns when path is empty);
// its forwarder sockets stay in the root netns, with the upstream.
func (e *nameBenchEnv) startResolver(b *testing.B, path, listen, upstream string) string {
	b.Helper()
	return startBenchResolver(b, path, listen, upstream, fdns.Deps{Hooks: []fdns.Hook{e.np}, Pods: e.np, Logger: discardLog()})
}

func startBenchResolver(b *testing.B, path, listen, upstream string, deps fdns.Deps) string {
	b.Helper()
	srv, err := fdns.New(fdns.Config{Listen: listen, Upstream: upstream}, deps)
	if err != nil {
		b.Fatal(err)
	}
	if path == "" {
		err = srv.Listen()
	} else {
		err = inNetns(path, srv.Listen)
	}
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	return srv.Addr().String()
}

// answerAddr is the n-th address of benchAnswers (n below its size).
func answerAddr(n uint32) netip.Addr {
	a := benchAnswers.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) + n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// answersSize is how many addresses benchAnswers holds.
var answersSize = uint32(1) << (32 - benchAnswers.Bits())

func benchPercentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func µs(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// learnedPool bounds the addresses BenchmarkNamePolicyQueryLatency answers
// with: each query answers the next one, so every answer rewrites its
// fm_fqdn entry (a later expiry) while the pod's book stays the size of a
// busy pod's. book=1 answers one address, rewritten by every query: the
// same kernel write with the smallest book (NamePolicy's per-answer work
// grows with the pod's book: it clones it and scans it for the limits).
const learnedPool = 512

// BenchmarkNamePolicyQueryLatency is a query of a pod with a domainNames
// rule through the resolver with NamePolicy over the kernel dataplane,
// each answer a different address learned into fm_fqdn before it is
// released, against the same query asked of the upstream directly,
// alternating in the same run over one connected UDP socket each; and,
// in the same rotation, through a second resolver without the name policy
// (proxy-*: nodeagent/dns's BenchmarkForwardLatency), so that what the
// policy adds (the hooks and Learn) is told from what the proxy adds.
// Client, resolver and upstream are on loopback (the client's address is
// the pod's for NamePolicy); the pod's veth is attached so that Learn
// really writes the map.
//
// throughput is queries/s through the resolver alone (parallel clients);
// run it with -cpu 1 for one core. queries/cpu-s divides by the CPU time
// of the whole process (resolver, name policy, upstream and clients), a
// lower bound for the resolver that holds on a busy machine.
func BenchmarkNamePolicyQueryLatency(b *testing.B) {
	requireNameBench(b)
	env := newNameBenchEnv(b, nil, netip.MustParseAddr("127.0.0.1"))
	var next, pool atomic.Uint32
	up := startStampingUpstream(b, func(string) netip.Addr { return answerAddr(next.Add(1) % pool.Load()) })
	addr := env.startResolver(b, "", "127.0.0.1:0", up.addr)
	plain := startBenchResolver(b, "", "127.0.0.1:0", up.addr, fdns.Deps{Logger: discardLog()})
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	q := new(dns.Msg).SetQuestion("www.example.com.", dns.TypeA)

	for _, book := range []uint32{1, learnedPool} {
		pool.Store(book)
		b.Run(fmt.Sprintf("book=%d", book), func(b *testing.B) { benchQueries(b, c, q, up.addr, plain, addr) })
	}
}

func benchQueries(b *testing.B, c *dns.Client, q *dns.Msg, upstream, plain, addr string) {
	b.Run("latency", func(b *testing.B) {
		direct, err := c.Dial(upstream)
		if err != nil {
			b.Fatal(err)
		}
		defer direct.Close()
		via, err := c.Dial(addr)
		if err != nil {
			b.Fatal(err)
		}
		defer via.Close()
		proxy, err := c.Dial(plain)
		if err != nil {
			b.Fatal(err)
		}
		defer proxy.Close()
		ask := func(conn *dns.Conn) time.Duration {
			start := time.Now()
			resp, _, err := c.ExchangeWithConn(q, conn)
			if err != nil || resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
				b.Fatalf("exchange: %v %v", resp, err)
			}
			return time.Since(start)
		}
		var d, p, v []time.Duration
		for b.Loop() {
			d = append(d, ask(direct))
			p = append(p, ask(proxy))
			v = append(v, ask(via))
		}
		dp50, dp99 := benchPercentile(d, 50), benchPercentile(d, 99)
		vp50, vp99 := benchPercentile(v, 50), benchPercentile(v, 99)
		b.ReportMetric(µs(dp50), "direct-p50-µs")
		b.ReportMetric(µs(dp99), "direct-p99-µs")
		b.ReportMetric(µs(benchPercentile(p, 50)), "proxy-p50-µs")
		b.ReportMetric(µs(benchPercentile(p, 99)), "proxy-p99-µs")
		b.ReportMetric(µs(vp50), "policy-p50-µs")
		b.ReportMetric(µs(vp99), "policy-p99-µs")
		b.ReportMetric(float64(vp50)/float64(dp50), "p50-ratio")
		b.ReportMetric(float64(vp99)/float64(dp99), "p99-ratio")
		b.ReportMetric(µs(vp99-dp99), "p99-added-µs")
	})
	b.Run("throughput", func(b *testing.B) {
		b.SetParallelism(8)
		cpu0 := processCPU(b)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			conn, err := c.Dial(addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Close()
			for pb.Next() {
				resp, _, err := c.ExchangeWithConn(q, conn)
				if err != nil || resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
					b.Errorf("exchange: %v %v", resp, err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
		b.ReportMetric(float64(b.N)/(processCPU(b)-cpu0).Seconds(), "queries/cpu-s")
	})
}

// BenchmarkNameAnswerToFirstPacket is the time from a DNS answer leaving
// the upstream to the pod's first packet to the answered address being
// allowed: the pod (its own netns, its veth attached to the kernel
// dataplane, egress enforced with *.example.com on TCP 8080) asks the
// resolver (NamePolicy over the dataplane) for a name the upstream answers
// with a fresh address every time, and connects to that address on 8080
// the moment it has the answer. The SYN is seen allowed when the SYN-ACK
// of the outside's listener is back (connect returned): the figure is an
// upper bound by one veth hop. Each iteration is one fresh name and
// address (iterations are capped by the 32768 addresses of
// 198.18.128.0/17).
//
// dropped-first-connects is the share of first connections that did not
// complete within firstConnectTimeout (a SYN the dataplane dropped is
// retransmitted only after a second); it must be 0, because the resolver
// releases an answer only once the dataplane holds its address, and the
// benchmark fails otherwise. Before the run it checks that an address
// never answered is closed, so a 0 is not an open dataplane's.
//
// The parts are reported too: answer-to-pod (the resolver learning and
// releasing the answer, until the pod's socket has it) and connect (the
// pod's connect to the learned address), and, alternating in the same
// iteration, baseline-connect: a connect to an address a CIDR rule allows,
// the same path without a name, which tells the machine's scheduling noise
// from what the name adds.
func BenchmarkNameAnswerToFirstPacket(b *testing.B) {
	requireNameBench(b)
	benchAnswerToFirstPacket(b, nil)
}

const firstConnectTimeout = 500 * time.Millisecond

func benchAnswerToFirstPacket(b *testing.B, learner func(agent.Learner) agent.Learner) {
	env := newNameBenchEnv(b, learner)
	up := startStampingUpstream(b, func(qname string) netip.Addr {
		n, err := strconv.ParseUint(strings.TrimPrefix(strings.SplitN(qname, ".", 2)[0], "i"), 10, 32)
		if err != nil {
			return netip.IPv4Unspecified()
		}
		return answerAddr(uint32(n))
	})
	resolver := env.startResolver(b, env.node, netip.AddrPortFrom(benchResolverIP, 53).String(), up.addr)

	// The outside: accepts on every answered address.
	var ln net.Listener
	if err := inNetns(env.outside, func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", benchPort))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	// The pod: this goroutine's thread moves into its netns for the run,
	// so the DNS socket and every connect are the pod's.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		b.Fatal(err)
	}
	defer orig.Close()
	podNS, err := netns.GetFromPath(env.pod)
	if err != nil {
		b.Fatal(err)
	}
	defer podNS.Close()
	if err := netns.Set(podNS); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// Keep the thread locked: it dies with the goroutine.
			runtime.LockOSThread()
			b.Errorf("return from the pod netns: %v", err)
		}
	}()
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	conn, err := c.Dial(resolver)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	dialer := &net.Dialer{Timeout: firstConnectTimeout}
	connect := func(a netip.Addr) error {
		tc, err := dialer.Dial("tcp4", netip.AddrPortFrom(a, benchPort).String())
		if err != nil {
			return err
		}
		return tc.Close()
	}
	// Enforcement is on: an address never answered is closed.
	if err := connect(answerAddr(answersSize - 1)); err == nil {
		b.Fatal("the pod reached an address it never resolved: the dataplane does not enforce its egress")
	}

	// lat is the whole time; toPod its part until the pod had the answer
	// (the resolver's learning and release), syn the rest (the connect).
	// base is, in the same iteration, a connect to an address a CIDR rule
	// allows (no name involved): what the machine's scheduling alone gives.
	var lat, toPod, syn, base []time.Duration
	dropped, n := 0, uint32(0)
	for b.Loop() {
		if n >= answersSize-1 {
			b.Fatalf("more iterations than fresh addresses (%d): lower -benchtime", answersSize-1)
		}
		name := fmt.Sprintf("i%d.example.com.", n)
		n++
		resp, _, err := c.ExchangeWithConn(new(dns.Msg).SetQuestion(name, dns.TypeA), conn)
		if err != nil || resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
			b.Fatalf("resolve %s: %v %v", name, resp, err)
		}
		got := time.Now()
		a, ok := resp.Answer[0].(*dns.A)
		if !ok {
			b.Fatalf("resolve %s: not an A record: %v", name, resp.Answer[0])
		}
		err = connect(netip.AddrFrom4([4]byte(a.A.To4())))
		seen := time.Now()
		if err != nil {
			dropped++
			continue
		}
		sent, ok := up.sent.Load(name)
		if !ok {
			b.Fatalf("the upstream never answered %s", name)
		}
		start := time.Now()
		if err := connect(benchOutsideIP); err != nil {
			b.Fatalf("baseline connect to %s (allowed by CIDR): %v", benchOutsideIP, err)
		}
		base = append(base, time.Since(start))
		lat = append(lat, seen.Sub(sent.(time.Time)))
		toPod = append(toPod, got.Sub(sent.(time.Time)))
		syn = append(syn, seen.Sub(got))
	}
	b.ReportMetric(float64(dropped)/float64(n), "dropped-first-connects")
	if len(lat) > 0 {
		b.ReportMetric(µs(benchPercentile(lat, 50)), "answer-to-syn-p50-µs")
		b.ReportMetric(µs(benchPercentile(lat, 99)), "answer-to-syn-p99-µs")
		b.ReportMetric(µs(benchPercentile(toPod, 50)), "answer-to-pod-p50-µs")
		b.ReportMetric(µs(benchPercentile(toPod, 99)), "answer-to-pod-p99-µs")
		b.ReportMetric(µs(benchPercentile(syn, 50)), "connect-p50-µs")
		b.ReportMetric(µs(benchPercentile(syn, 99)), "connect-p99-µs")
		b.ReportMetric(µs(benchPercentile(base, 50)), "baseline-connect-p50-µs")
		b.ReportMetric(µs(benchPercentile(base, 99)), "baseline-connect-p99-µs")
	}
	if dropped > 0 {
		b.Errorf("%d of %d first connections to a just-resolved address were not let through: the answer was released before the dataplane held it", dropped, n)
	}
}
