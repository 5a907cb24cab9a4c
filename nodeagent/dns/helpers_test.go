package dns

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// upstream is the cluster DNS stand-in of these tests: a real miekg/dns
// server on 127.0.0.1 (UDP and TCP on one port) with a few names:
//
//	example.org.       A 192.0.2.1 (and AAAA 2001:db8::1)
//	big.example.org.   40 TXT records: more than 512 bytes, truncated over UDP
//	slow.example.org.  answered after upstream.delay (or never, if negative)
//	anything else      NXDOMAIN
type upstream struct {
	addr  string
	delay time.Duration

	mu   sync.Mutex
	seen []seenQuery
}

type seenQuery struct {
	net  string
	name string
	opt  *dns.OPT
	id   uint16
}

func startUpstream(t testing.TB) *upstream {
	t.Helper()
	u := &upstream{delay: -1}
	pc, ln := listenPair(t)
	u.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(u.serve)
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return u
}

// listenPair opens UDP and TCP sockets on one free loopback port.
func listenPair(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 10 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
	}
	t.Fatal("no free port pair on 127.0.0.1")
	return nil, nil
}

func (u *upstream) serve(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	network := w.RemoteAddr().Network()
	u.mu.Lock()
	u.seen = append(u.seen, seenQuery{net: network, name: q.Name, opt: r.IsEdns0(), id: r.Id})
	delay := u.delay
	u.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	switch strings.ToLower(q.Name) {
	case "example.org.":
		if q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, mustRR("example.org. 30 IN A 192.0.2.1"))
		}
		if q.Qtype == dns.TypeAAAA {
			m.Answer = append(m.Answer, mustRR("example.org. 30 IN AAAA 2001:db8::1"))
		}
	case "big.example.org.":
		for i := range 40 {
			m.Answer = append(m.Answer, mustRR("big.example.org. 30 IN TXT \"record "+strings.Repeat("x", 20)+string(rune('a'+i%26))+"\""))
		}
	case "slow.example.org.":
		if delay < 0 {
			return
		}
		time.Sleep(delay)
		m.Answer = append(m.Answer, mustRR("slow.example.org. 30 IN A 192.0.2.9"))
	default:
		m.Rcode = dns.RcodeNameError
	}
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(4096, opt.Do())
	}
	if network == "udp" {
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

func (u *upstream) queries() []seenQuery {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seenQuery(nil), u.seen...)
}

func (u *upstream) setDelay(d time.Duration) {
	u.mu.Lock()
	u.delay = d
	u.mu.Unlock()
}

func mustRR(s string) dns.RR {
	rr, err := dns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return rr
}

// testResolver is a Server listening on 127.0.0.1 and serving until the
// test ends.
type testResolver struct {
	*Server
	reg  *prometheus.Registry
	addr string
	stop func() // cancels Serve and waits for it
}

func startResolver(t testing.TB, cfg Config, deps Deps) *testResolver {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	reg := prometheus.NewRegistry()
	deps.Registry = reg
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &testResolver{Server: s, reg: reg, addr: s.Addr().String(), stop: stop}
}

// exchange asks addr m over network ("udp" or "tcp").
func exchange(t testing.TB, network, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("exchange %s over %s: %v", m.Question[0].Name, network, err)
	}
	return r
}

func question(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

func counter(t testing.TB, c prometheus.Collector) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}

// testServices are the imports every zone test answers from.
func testServices() *Services {
	return NewServices([]ServiceRecord{
		{
			Namespace: "demo", Name: "redis",
			ClusterSetIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:96::10")},
			Ports: []Port{
				{Name: "redis", Protocol: ProtoTCP, Number: 6379},
				{Name: "", Protocol: ProtoTCP, Number: 7000},
			},
		},
		{
			Namespace: "demo", Name: "db", Headless: true,
			// The service listens on 5432; cluster-b's pods on 6432.
			Ports: []Port{{Name: "pg", Protocol: ProtoTCP, Number: 5432, TargetPorts: map[string]uint16{"cluster-b": 6432}}},
			Backends: []Backend{
				{Cluster: "cluster-a", Hostname: "db-0", Addr: netip.MustParseAddr("10.1.0.5")},
				{Cluster: "cluster-b", Hostname: "db-0", Addr: netip.MustParseAddr("10.2.0.5")},
				{Cluster: "cluster-b", Hostname: "db-0", Addr: netip.MustParseAddr("fd00:2::5")},
				{Cluster: "cluster-b", Addr: netip.MustParseAddr("10.2.0.9")},
				{Cluster: "cluster-b", Addr: netip.MustParseAddr("fd00:2::9")},
			},
		},
		{
			Namespace: "demo", Name: "empty",
			Ports: []Port{{Name: "dns", Protocol: ProtoUDP, Number: 53}},
		},
	})
}

// recorder keeps every Record.
type recorder struct {
	mu   sync.Mutex
	recs []Record
}

func (r *recorder) Record(rec Record) {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
}

func (r *recorder) all() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Record(nil), r.recs...)
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
