package dataplane

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	fmdns "github.com/fedmesh/fedmesh/nodeagent/dns"
)

// dnsLab is a pod netns and a node netns joined by a veth. The node side
// holds the cluster DNS addresses (a real DNS server on port 53: the
// "upstream", kube-dns) and the agent's resolver addresses (port 5353, so
// the port rewrite is exercised too); both servers answer every question
// with a TXT record naming themselves and the client address they saw. The
// test process is in a cgroup of its own with the socket programs attached.
type dnsLab struct {
	pod, node  string // netns paths
	cgroup     string
	pinDir     string
	pod4, pod6 netip.Addr
	dns4, dns6 netip.Addr     // cluster DNS (port 53)
	res4, res6 netip.AddrPort // the agent's resolver
	upstreamQs atomic.Int64   // queries the cluster DNS server answered
	stopRes    []func()       // stop the resolver's servers
}

const (
	whoResolver = "resolver"
	whoUpstream = "upstream"
)

func newDNSLab(t testing.TB) *dnsLab {
	t.Helper()
	requireKernel(t)
	mnt := requireCgroup2(t)
	l := &dnsLab{
		pod4: netip.MustParseAddr("10.78.0.1"), pod6: netip.MustParseAddr("fd78::1"),
		dns4: netip.MustParseAddr("10.78.0.10"), dns6: netip.MustParseAddr("fd78::10"),
		res4: netip.MustParseAddrPort("10.78.0.53:5353"), res6: netip.MustParseAddrPort("[fd78::53]:5353"),
	}
	pn, ppath := newNetNS(t)
	nn, npath := newNetNS(t)
	l.pod, l.node = ppath, npath
	run(t, "ip", "-n", pn, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", nn)
	run(t, "ip", "-n", pn, "addr", "add", l.pod4.String()+"/24", "dev", "eth0")
	run(t, "ip", "-n", pn, "addr", "add", l.pod6.String()+"/64", "dev", "eth0", "nodad")
	run(t, "ip", "-n", pn, "link", "set", "eth0", "up")
	for _, a := range []netip.Addr{l.dns4, l.res4.Addr()} {
		run(t, "ip", "-n", nn, "addr", "add", a.String()+"/24", "dev", "eth0")
	}
	for _, a := range []netip.Addr{l.dns6, l.res6.Addr()} {
		run(t, "ip", "-n", nn, "addr", "add", a.String()+"/64", "dev", "eth0", "nodad")
	}
	run(t, "ip", "-n", nn, "link", "set", "eth0", "up")
	for _, a := range []netip.Addr{l.dns4, l.dns6} {
		l.serveWho(t, netip.AddrPortFrom(a, DNSPort), whoUpstream, &l.upstreamQs)
	}
	for _, a := range []netip.AddrPort{l.res4, l.res6} {
		l.stopRes = append(l.stopRes, l.serveWho(t, a, whoResolver, nil))
	}
	// A new veth drops what it is given until the kernel activates it.
	for _, a := range []netip.Addr{l.dns4, l.dns6} {
		for deadline := time.Now().Add(5 * time.Second); ; {
			_, err := l.query("udp", netip.AddrPortFrom(a, DNSPort), 0, "")
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster DNS %s unreachable from the pod netns: %v", a, err)
			}
		}
	}
	l.cgroup, l.pinDir = newTranslatingCgroup(t, mnt)
	return l
}

// serveWho runs a real DNS server (miekg/dns, UDP and TCP) on at in the
// node netns, answering each question with TXT "<who> <client address>";
// it stops at cleanup or when the returned function is called.
func (l *dnsLab) serveWho(t testing.TB, at netip.AddrPort, who string, count *atomic.Int64) (stop func()) {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		if count != nil {
			count.Add(1)
		}
		m := new(dns.Msg).SetReply(req)
		if len(req.Question) == 1 {
			m.Answer = []dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeTXT,
				Class: dns.ClassINET, Ttl: 30}, Txt: []string{who + " " + w.RemoteAddr().String()}}}
		}
		w.WriteMsg(m)
	})
	var pc net.PacketConn
	var ln net.Listener
	if err := inNetNS(l.node, func() error {
		var err error
		if pc, err = net.ListenPacket("udp", at.String()); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", at.String())
		return err
	}); err != nil {
		t.Fatalf("serve DNS on %s: %v", at, err)
	}
	us, ts := &dns.Server{PacketConn: pc, Handler: h}, &dns.Server{Listener: ln, Handler: h}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	var stopped atomic.Bool
	stop = func() {
		if stopped.CompareAndSwap(false, true) {
			us.Shutdown()
			ts.Shutdown()
			pc.Close()
			ln.Close()
		}
	}
	t.Cleanup(stop)
	return stop
}

// dnsSeen is what a pod's query got: which server answered, the client
// address that server saw, and the peer the pod's socket showed
// (getpeername for TCP and connected UDP, recvmsg's source for unconnected
// UDP).
type dnsSeen struct {
	who  string
	saw  netip.AddrPort
	peer netip.AddrPort
}

func (s dnsSeen) String() string {
	return fmt.Sprintf("%s saw %s, peer shown %s", s.who, s.saw, s.peer)
}

func setMark(mark uint32) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return err
		}
		return serr
	}
}

// query asks to (from the pod netns) one question over network ("udp" or
// "tcp") on a new socket carrying mark (0: none); with sendto set, on an
// unconnected socket of that network ("udp4", "udp6", "udp") with sendto
// and recvfrom, as some stub resolvers do.
func (l *dnsLab) query(network string, to netip.AddrPort, mark uint32, sendto string) (dnsSeen, error) {
	var s dnsSeen
	q := new(dns.Msg).SetQuestion("probe.example.test.", dns.TypeTXT)
	err := inNetNS(l.pod, func() error {
		var r *dns.Msg
		if sendto != "" {
			pc, err := net.ListenPacket(sendto, ":0")
			if err != nil {
				return err
			}
			defer pc.Close()
			pc.SetDeadline(time.Now().Add(time.Second))
			wire, err := q.Pack()
			if err != nil {
				return err
			}
			if _, err := pc.WriteTo(wire, net.UDPAddrFromAddrPort(to)); err != nil {
				return err
			}
			buf := make([]byte, dns.MaxMsgSize)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return err
			}
			r = new(dns.Msg)
			if err := r.Unpack(buf[:n]); err != nil {
				return err
			}
			// A dual-stack socket sends to IPv4 through the IPv6 hooks
			// as an IPv4-mapped address; the source comes back mapped.
			from4 := from.(*net.UDPAddr).AddrPort()
			s.peer = netip.AddrPortFrom(from4.Addr().Unmap(), from4.Port())
		} else {
			d := net.Dialer{Timeout: time.Second}
			if mark != 0 {
				d.Control = setMark(mark)
			}
			c, err := d.Dial(network, to.String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Second))
			dc := &dns.Conn{Conn: c}
			if err := dc.WriteMsg(q); err != nil {
				return err
			}
			if r, err = dc.ReadMsg(); err != nil {
				return err
			}
			s.peer = netip.MustParseAddrPort(c.RemoteAddr().String())
		}
		if len(r.Answer) != 1 {
			return fmt.Errorf("answer %v: want one TXT record", r.Answer)
		}
		txt, ok := r.Answer[0].(*dns.TXT)
		if !ok || len(txt.Txt) != 1 {
			return fmt.Errorf("answer %v: want one TXT string", r.Answer[0])
		}
		who, saw, _ := strings.Cut(txt.Txt[0], " ")
		s.who, s.saw = who, netip.MustParseAddrPort(saw)
		return nil
	})
	return s, err
}

func (l *dnsLab) redirect(mark uint32) DNSRedirect {
	return DNSRedirect{ClusterDNS: []netip.Addr{l.dns4, l.dns6}, Resolvers: []netip.AddrPort{l.res4, l.res6}, SkipMark: mark}
}

func (l *dnsLab) newSockLB(t testing.TB) *SockLB {
	t.Helper()
	s, err := NewSockLB(context.Background(), ServiceConfig{PinDir: l.pinDir, Cgroup: l.cgroup})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type dnsCase struct {
	name    string
	network string
	v6      bool
	sendto  string // "": a connected socket; else an unconnected one of this network
}

var dnsCases = []dnsCase{
	{"udp4 connected", "udp", false, ""},
	{"udp4 sendto", "udp", false, "udp4"},
	{"udp4 sendto from a dual-stack socket", "udp", false, "udp"},
	{"tcp4", "tcp", false, ""},
	{"udp6 connected", "udp", true, ""},
	{"udp6 sendto", "udp", true, "udp6"},
	{"tcp6", "tcp", true, ""},
}

func (l *dnsLab) addrs(v6 bool) (pod netip.Addr, clusterDNS netip.AddrPort) {
	if v6 {
		return l.pod6, netip.AddrPortFrom(l.dns6, DNSPort)
	}
	return l.pod4, netip.AddrPortFrom(l.dns4, DNSPort)
}

func TestDNSRedirectAnswersPodQueriesFromTheResolver(t *testing.T) {
	l := newDNSLab(t)
	s := l.newSockLB(t)
	// Before the redirect is set, the cluster DNS server answers: the
	// lab's control.
	for _, c := range dnsCases {
		_, to := l.addrs(c.v6)
		if got, err := l.query(c.network, to, 0, c.sendto); err != nil || got.who != whoUpstream {
			t.Fatalf("%s without a redirect: %v (%v), want the cluster DNS server", c.name, got, err)
		}
	}
	if err := s.SetDNSRedirect(context.Background(), l.redirect(fmdns.UpstreamMark)); err != nil {
		t.Fatal(err)
	}
	for _, c := range dnsCases {
		t.Run(c.name, func(t *testing.T) {
			pod, to := l.addrs(c.v6)
			got, err := l.query(c.network, to, 0, c.sendto)
			if err != nil {
				t.Fatalf("query %s: %v", to, err)
			}
			if got.who != whoResolver {
				t.Errorf("answered by %v, want the agent's resolver", got)
			}
			if got.saw.Addr() != pod {
				t.Errorf("the resolver saw the query come from %s, want the pod's own address %s", got.saw, pod)
			}
			if got.peer != to {
				t.Errorf("the answer appears to come from %s, want the cluster DNS address %s", got.peer, to)
			}
		})
	}
	st, err := s.ServiceStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.DNSRedirected < uint64(len(dnsCases)) || st.DNSExempt != 0 {
		t.Errorf("counters: %d redirected, %d exempt; want >= %d and 0", st.DNSRedirected, st.DNSExempt, len(dnsCases))
	}
	// Another port of the cluster DNS address is not DNS: left alone
	// (nothing listens there, so the connection is refused).
	if _, err := l.query("tcp", netip.AddrPortFrom(l.dns4, 54), 0, ""); err == nil {
		t.Error("TCP to the cluster DNS address on port 54 was answered: only port 53 is redirected")
	}
}

func TestDNSRedirectLeavesSocketsWithTheUpstreamMarkAlone(t *testing.T) {
	l := newDNSLab(t)
	s := l.newSockLB(t)
	if err := s.SetDNSRedirect(context.Background(), l.redirect(fmdns.UpstreamMark)); err != nil {
		t.Fatal(err)
	}
	for _, c := range dnsCases {
		if c.sendto != "" {
			continue
		}
		for _, m := range []struct {
			mark uint32
			want string
		}{
			{fmdns.UpstreamMark, whoUpstream},
			{0, whoResolver},
			{fmdns.UpstreamMark + 1, whoResolver}, // the whole mark is compared
		} {
			t.Run(fmt.Sprintf("%s mark %#x", c.name, m.mark), func(t *testing.T) {
				_, to := l.addrs(c.v6)
				got, err := l.query(c.network, to, m.mark, "")
				if err != nil || got.who != m.want {
					t.Fatalf("query %s with mark %#x: %v (%v), want answered by the %s", to, m.mark, got, err, m.want)
				}
			})
		}
	}
}

func TestDNSRedirectOutlivesTheAgentAndFailsClosedWithoutResolver(t *testing.T) {
	l := newDNSLab(t)
	ctx := context.Background()
	s := l.newSockLB(t)
	want := l.redirect(fmdns.UpstreamMark)
	if err := s.SetDNSRedirect(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, to := l.addrs(false)
	// The agent is gone; the pinned programs and map keep redirecting.
	if got, err := l.query("udp", to, 0, ""); err != nil || got.who != whoResolver {
		t.Fatalf("with the agent gone: %v (%v), want the resolver", got, err)
	}

	// A restarted agent re-adopts the pinned map.
	s2 := l.newSockLB(t)
	got, err := s2.dnsRedirectEntries()
	if err != nil {
		t.Fatal(err)
	}
	exp, _ := want.entries()
	if fmt.Sprint(got) != fmt.Sprint(exp) {
		t.Errorf("pinned redirect after restart: %v, want %v", got, exp)
	}

	// No resolver listening (the agent's process is down, its address
	// stays): queries fail at once and none reaches the cluster DNS server.
	// Fail closed: the answers an agent would have learned addresses from
	// must not be got around it.
	before := l.upstreamQs.Load()
	for _, stop := range l.stopRes {
		stop()
	}
	for _, c := range dnsCases {
		_, to := l.addrs(c.v6)
		if got, err := l.query(c.network, to, 0, c.sendto); err == nil {
			t.Errorf("%s with no resolver listening was answered: %v; want a failed query", c.name, got)
		}
	}
	if n := l.upstreamQs.Load() - before; n != 0 {
		t.Errorf("with no resolver, %d queries reached the cluster DNS server; want none (fail closed)", n)
	}

	// An agent started without --dns-redirect removes it.
	if err := s2.SetDNSRedirect(ctx, DNSRedirect{}); err != nil {
		t.Fatal(err)
	}
	if got, err := l.query("udp", to, 0, ""); err != nil || got.who != whoUpstream {
		t.Fatalf("after the redirect was removed: %v (%v), want the cluster DNS server", got, err)
	}
}

// agentHelperEnv makes the test binary, run again by startAgentResolver,
// be the agent's resolver instead of running tests: nodeagent/dns's Server
// listening on and forwarding to the addresses the variable names
// ("listen,upstream"), until its stdin closes.
const agentHelperEnv = "FEDMESH_DNSREDIR_AGENT"

func TestMain(m *testing.M) {
	if arg := os.Getenv(agentHelperEnv); arg != "" {
		if err := runAgentResolver(arg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runAgentResolver(arg string) error {
	listen, upstream, _ := strings.Cut(arg, ",")
	srv, err := fmdns.New(fmdns.Config{Listen: listen, Upstream: upstream, UpstreamTimeout: 500 * time.Millisecond},
		fmdns.Deps{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	return srv.Serve(ctx)
}

// startAgentResolver runs the real resolver (nodeagent/dns, with its
// forwarder) as a process of its own inside the node netns and, as on a
// real node, inside the redirected cgroup, listening on at and forwarding to
// the cluster DNS address.
func (l *dnsLab) startAgentResolver(t testing.TB, at, upstream netip.AddrPort) {
	t.Helper()
	cmd := exec.Command("nsenter", "--net="+l.node, os.Args[0])
	cmd.Env = append(os.Environ(), agentHelperEnv+"="+at.String()+","+upstream.String())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the resolver process: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("resolver process output:\n%s", out.String())
		}
	})
	q := new(dns.Msg).SetQuestion("ready.example.test.", dns.TypeTXT)
	for deadline := time.Now().Add(10 * time.Second); ; {
		err := inNetNS(l.node, func() error {
			_, _, err := (&dns.Client{Timeout: 200 * time.Millisecond}).Exchange(q, at.String())
			return err
		})
		if err == nil {
			return
		}
		select {
		case <-done:
			t.Fatalf("resolver process exited: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("resolver process not answering on %s: %v\n%s", at, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The agent's resolver runs inside the redirected cgroup and its upstream
// is the cluster DNS address itself: its forwarder's sockets carry
// dns.UpstreamMark, so they reach the cluster DNS server while the pod's
// query to the same address is redirected to the resolver.
func TestDNSRedirectAgentForwarderReachesTheClusterDNS(t *testing.T) {
	l := newDNSLab(t)
	s := l.newSockLB(t)
	agent4, agent6 := netip.MustParseAddrPort("10.78.0.53:5300"), netip.MustParseAddrPort("[fd78::53]:5300")
	up4, up6 := netip.AddrPortFrom(l.dns4, DNSPort), netip.AddrPortFrom(l.dns6, DNSPort)
	l.startAgentResolver(t, agent4, up4)
	l.startAgentResolver(t, agent6, up6)
	if err := s.SetDNSRedirect(context.Background(), DNSRedirect{ClusterDNS: []netip.Addr{l.dns4, l.dns6},
		Resolvers: []netip.AddrPort{agent4, agent6}, SkipMark: fmdns.UpstreamMark}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		network string
		up      netip.AddrPort
		pod     netip.Addr
	}{{"udp", up4, l.pod4}, {"tcp", up4, l.pod4}, {"udp", up6, l.pod6}, {"tcp", up6, l.pod6}} {
		before := l.upstreamQs.Load()
		got, err := l.query(c.network, c.up, 0, "")
		if err != nil {
			t.Fatalf("%s query to %s through the agent: %v", c.network, c.up, err)
		}
		// The cluster DNS server answered the forwarder, which it saw
		// come from the node netns (not from the pod): the query went
		// pod -> agent -> cluster DNS.
		if got.who != whoUpstream || got.saw.Addr() == c.pod || got.peer != c.up {
			t.Errorf("%s to %s: %v; want the cluster DNS server's answer, relayed by the agent, shown from %s", c.network, c.up, got, c.up)
		}
		if n := l.upstreamQs.Load() - before; n != 1 {
			t.Errorf("%s to %s: the cluster DNS server got %d queries, want 1", c.network, c.up, n)
		}
	}
	st, err := s.ServiceStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.DNSExempt < 4 || st.DNSRedirected < 4 {
		t.Errorf("counters: %d redirected, %d exempt; want >= 4 each (pod redirected, forwarder exempt)", st.DNSRedirected, st.DNSExempt)
	}
}
