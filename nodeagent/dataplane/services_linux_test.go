package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/internal/nstest"
)

// svcLab is a client netns and a server netns joined by a veth, two backend
// addresses per family on the server side, TCP and UDP servers on each that
// answer with the address they were reached at, and the test process moved
// into a cgroup of its own with the translation attached there.
type svcLab struct {
	client, server string // netns paths
	cgroup         string
	pinDir         string
	be4, be6       [2]netip.Addr
}

const svcLabPort = 8080

var enterCgroup = nstest.EnterCgroup

// requireCgroup2 fails (CI=true) or skips when no cgroup v2 hierarchy is
// mounted.
func requireCgroup2(t testing.TB) string {
	t.Helper()
	mnt, err := Cgroup2Mount()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cgroup v2 required in CI: %v", err)
		}
		t.Skipf("service translation needs a cgroup v2 hierarchy: %v", err)
	}
	return mnt
}

func newSvcLab(t testing.TB) *svcLab {
	t.Helper()
	requireKernel(t)
	mnt := requireCgroup2(t)
	l := &svcLab{
		be4: [2]netip.Addr{netip.MustParseAddr("10.77.0.2"), netip.MustParseAddr("10.77.0.3")},
		be6: [2]netip.Addr{netip.MustParseAddr("fd77::2"), netip.MustParseAddr("fd77::3")},
	}
	cn, cpath := newNetNS(t)
	sn, spath := newNetNS(t)
	l.client, l.server = cpath, spath
	run(t, "ip", "-n", cn, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", sn)
	run(t, "ip", "-n", cn, "addr", "add", "10.77.0.1/24", "dev", "eth0")
	run(t, "ip", "-n", cn, "addr", "add", "fd77::1/64", "dev", "eth0", "nodad")
	run(t, "ip", "-n", cn, "link", "set", "eth0", "up")
	for _, a := range l.be4 {
		run(t, "ip", "-n", sn, "addr", "add", a.String()+"/24", "dev", "eth0")
	}
	for _, a := range l.be6 {
		run(t, "ip", "-n", sn, "addr", "add", a.String()+"/64", "dev", "eth0", "nodad")
	}
	run(t, "ip", "-n", sn, "link", "set", "eth0", "up")
	for _, a := range append(l.be4[:], l.be6[:]...) {
		serveIdentity(t, spath, netip.AddrPortFrom(a, svcLabPort))
	}

	// A new veth drops what it is given until the kernel's link watch
	// activates it (up to a second): wait until every backend answers.
	for _, a := range append(l.be4[:], l.be6[:]...) {
		to := netip.AddrPortFrom(a, svcLabPort)
		for deadline := time.Now().Add(5 * time.Second); ; {
			err := inNetNS(cpath, func() error {
				c, err := net.DialTimeout("tcp", to.String(), 100*time.Millisecond)
				if err == nil {
					c.Close()
				}
				return err
			})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("backend %s unreachable from the client netns: %v", to, err)
			}
		}
	}

	l.cgroup, l.pinDir = newTranslatingCgroup(t, mnt)
	return l
}

// newTranslatingCgroup creates a cgroup, moves this process into it and
// names a pin directory for a SockLB attached there; all of it goes at
// cleanup.
func newTranslatingCgroup(t testing.TB, mnt string) (cgroup, pinDir string) {
	t.Helper()
	cgroup = filepath.Join(mnt, randName("fmsvc-test-"))
	if err := os.Mkdir(cgroup, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(cgroup); err != nil {
			t.Errorf("remove cgroup %s: %v", cgroup, err)
		}
	})
	enterCgroup(t, mnt, cgroup)
	pinDir = "/sys/fs/bpf/" + randName("fmsvc-test-")
	t.Cleanup(func() {
		if err := UninstallServices(context.Background(), pinDir); err != nil {
			t.Error(err)
		}
	})
	return cgroup, pinDir
}

func (l *svcLab) newSockLB(t testing.TB, lim ServiceLimits) *SockLB {
	t.Helper()
	s, err := NewSockLB(context.Background(), ServiceConfig{PinDir: l.pinDir, Cgroup: l.cgroup, Limits: lim})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// serveIdentity serves TCP (one line, then echo) and UDP (echo prefixed)
// on at, answering with at so the client learns which backend it reached.
func serveIdentity(t testing.TB, netns string, at netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := inNetNS(netns, func() error {
		var err error
		if ln, err = net.Listen("tcp", at.String()); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", at.String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", at)
				buf := make([]byte, 64)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte(at.String()+" "), buf[:n]...), from)
		}
	}()
}

// reached is what a client saw: the backend that answered and the peer
// address the socket showed (getpeername for TCP and connected UDP,
// recvmsg's source for unconnected UDP).
type reached struct {
	backend netip.AddrPort
	peer    netip.AddrPort
}

func (r reached) String() string { return fmt.Sprintf("backend %s (peer shown %s)", r.backend, r.peer) }

func parseAP(s string) netip.AddrPort {
	a, _ := netip.ParseAddrPort(strings.TrimSpace(s))
	return a
}

// dialTCP connects from the client netns and reads the backend's line.
func (l *svcLab) dialTCP(to netip.AddrPort) (reached, error) {
	var r reached
	err := inNetNS(l.client, func() error {
		c, err := net.DialTimeout("tcp", to.String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		r = reached{backend: parseAP(line), peer: c.RemoteAddr().(*net.TCPAddr).AddrPort()}
		return nil
	})
	return r, err
}

// udpExchange sends one datagram and reads the reply: on pc (unconnected,
// created by the caller in the client netns) when pc is set, else on a new
// connected socket.
func (l *svcLab) udpExchange(pc net.PacketConn, to netip.AddrPort) (reached, error) {
	var r reached
	err := inNetNS(l.client, func() error {
		buf := make([]byte, 256)
		if pc == nil {
			c, err := net.Dial("udp", to.String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Write([]byte("ping")); err != nil {
				return err
			}
			n, err := c.Read(buf)
			if err != nil {
				return err
			}
			r = reached{backend: parseAP(strings.Fields(string(buf[:n]))[0]), peer: c.RemoteAddr().(*net.UDPAddr).AddrPort()}
			return nil
		}
		pc.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := pc.WriteTo([]byte("ping"), net.UDPAddrFromAddrPort(to)); err != nil {
			return err
		}
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		r = reached{backend: parseAP(strings.Fields(string(buf[:n]))[0]), peer: from.(*net.UDPAddr).AddrPort()}
		return nil
	})
	return r, err
}

func (l *svcLab) listenUDP(t testing.TB, network string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	if err := inNetNS(l.client, func() error {
		var err error
		pc, err = net.ListenPacket(network, ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

var (
	vip4 = netip.MustParseAddr("10.96.77.10")
	vip6 = netip.MustParseAddr("fd96::77:10")
)

// backendsOf lists the lab's backends of a family at svcLabPort with
// weight 1 each, in table order.
func backendsOf(addrs ...netip.Addr) []ServiceBackend {
	var bs []ServiceBackend
	for _, a := range addrs {
		bs = append(bs, ServiceBackend{Addr: a, Port: svcLabPort, Weight: 1, Cluster: "a", Node: "n1"})
	}
	return bs
}

func frontend(vip netip.Addr, port uint16, proto uint8, bs ...ServiceBackend) ServiceFrontend {
	return ServiceFrontend{Key: ServiceKey{VIP: vip, Port: port, Protocol: proto}, Namespace: "demo", Name: "svc", Backends: bs}
}

// labTable translates both VIPs on port 80 (TCP) and 53 (UDP) to the given
// backends of each family.
func labTable(rev uint64, b4, b6 []netip.Addr) *ServiceTable {
	fs := []ServiceFrontend{
		frontend(vip4, 80, protoTCP, backendsOf(b4...)...), frontend(vip4, 53, protoUDP, backendsOf(b4...)...),
		frontend(vip6, 80, protoTCP, backendsOf(b6...)...), frontend(vip6, 53, protoUDP, backendsOf(b6...)...),
	}
	SortFrontends(fs)
	return &ServiceTable{Revision: rev, Frontends: fs}
}

func TestSockLBTranslatesRealSockets(t *testing.T) {
	l := newSvcLab(t)
	s := l.newSockLB(t, ServiceLimits{})
	if err := s.ApplyServices(context.Background(), labTable(1, l.be4[:], l.be6[:])); err != nil {
		t.Fatal(err)
	}
	pc4, pc6 := l.listenUDP(t, "udp4"), l.listenUDP(t, "udp6")
	tests := []struct {
		name     string
		vip      netip.AddrPort
		backends []netip.Addr
		call     func(netip.AddrPort) (reached, error)
	}{
		{"tcp ipv4", netip.AddrPortFrom(vip4, 80), l.be4[:], l.dialTCP},
		{"tcp ipv6", netip.AddrPortFrom(vip6, 80), l.be6[:], l.dialTCP},
		{"udp ipv4 connected", netip.AddrPortFrom(vip4, 53), l.be4[:], func(to netip.AddrPort) (reached, error) { return l.udpExchange(nil, to) }},
		{"udp ipv6 connected", netip.AddrPortFrom(vip6, 53), l.be6[:], func(to netip.AddrPort) (reached, error) { return l.udpExchange(nil, to) }},
		{"udp ipv4 unconnected: reply source is the VIP", netip.AddrPortFrom(vip4, 53), l.be4[:], func(to netip.AddrPort) (reached, error) { return l.udpExchange(pc4, to) }},
		{"udp ipv6 unconnected: reply source is the VIP", netip.AddrPortFrom(vip6, 53), l.be6[:], func(to netip.AddrPort) (reached, error) { return l.udpExchange(pc6, to) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := tt.call(tt.vip)
			if err != nil {
				t.Fatalf("exchange with %s: %v", tt.vip, err)
			}
			if r.backend.Port() != svcLabPort || (r.backend.Addr() != tt.backends[0] && r.backend.Addr() != tt.backends[1]) {
				t.Errorf("reached %s, want a backend of %v", r.backend, tt.backends)
			}
			if r.peer != tt.vip {
				t.Errorf("socket shows peer %s, want the VIP %s", r.peer, tt.vip)
			}
		})
	}
	t.Run("tcp dual-stack socket to the v4-mapped VIP", func(t *testing.T) {
		// An AF_INET6 socket connecting to ::ffff:VIP goes through connect6
		// with a v4-mapped address (Go would open an AF_INET socket).
		var peer netip.AddrPort
		var line string
		err := inNetNS(l.client, func() error {
			fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			f := os.NewFile(uintptr(fd), "dual")
			defer f.Close()
			mapped := netip.AddrFrom16(vip4.As16())
			if err := syscall.Connect(fd, &syscall.SockaddrInet6{Addr: mapped.As16(), Port: 80}); err != nil {
				return fmt.Errorf("connect [%s]:80: %w", mapped, err)
			}
			sa, err := syscall.Getpeername(fd)
			if err != nil {
				return err
			}
			in6 := sa.(*syscall.SockaddrInet6)
			peer = netip.AddrPortFrom(netip.AddrFrom16(in6.Addr), uint16(in6.Port))
			buf := make([]byte, 64)
			n, err := syscall.Read(fd, buf)
			if err != nil {
				return err
			}
			line = string(buf[:n])
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if b := parseAP(line); b.Addr() != l.be4[0] && b.Addr() != l.be4[1] {
			t.Errorf("reached %q, want an IPv4 backend", line)
		}
		if want := netip.AddrPortFrom(netip.AddrFrom16(vip4.As16()), 80); peer != want {
			t.Errorf("getpeername shows %s, want %s", peer, want)
		}
	})
	t.Run("other port of the VIP is not translated", func(t *testing.T) {
		// No route to the VIP exists in the client netns: an untranslated
		// connect fails at once.
		if _, err := l.dialTCP(netip.AddrPortFrom(vip4, 81)); !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("connect to an untranslated port: %v, want ENETUNREACH", err)
		}
	})
	st, err := s.ServiceStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Revision != 1 || st.Frontends != 4 || st.Backends != 8 || st.Translated < 6 || st.Reversed < 6 || st.Err() != nil {
		t.Errorf("status %+v", st)
	}
}

func TestSockLBSpreadsConnectionsByWeight(t *testing.T) {
	l := newSvcLab(t)
	s := l.newSockLB(t, ServiceLimits{})
	bs := backendsOf(l.be4[:]...)
	bs[1].Weight = 3
	tbl := &ServiceTable{Revision: 1, Frontends: []ServiceFrontend{frontend(vip4, 80, protoTCP, bs...)}}
	if err := s.ApplyServices(context.Background(), tbl); err != nil {
		t.Fatal(err)
	}
	const n = 400
	count := map[netip.Addr]int{}
	for range n {
		r, err := l.dialTCP(netip.AddrPortFrom(vip4, 80))
		if err != nil {
			t.Fatal(err)
		}
		count[r.backend.Addr()]++
	}
	// Expected 100 and 300 (sd ~8.7): 60..140 fails a correct choice with
	// probability far below 1e-5.
	if c := count[l.be4[0]]; c < 60 || c > 140 || count[l.be4[0]]+count[l.be4[1]] != n {
		t.Errorf("weights 1:3 over %d connections gave %v", n, count)
	}
}

func TestSockLBNeverChoosesWithdrawnBackend(t *testing.T) {
	l := newSvcLab(t)
	s := l.newSockLB(t, ServiceLimits{})
	ctx := context.Background()
	if err := s.ApplyServices(ctx, labTable(1, l.be4[:], l.be6[:])); err != nil {
		t.Fatal(err)
	}
	vipUDP := netip.AddrPortFrom(vip4, 53)
	// An unconnected UDP socket that chose the backend about to go.
	var pc net.PacketConn
	for range 64 {
		pc = l.listenUDP(t, "udp4")
		r, err := l.udpExchange(pc, vipUDP)
		if err != nil {
			t.Fatal(err)
		}
		if r.backend.Addr() == l.be4[1] {
			break
		}
		pc = nil
	}
	if pc == nil {
		t.Fatal("no socket chose the second backend in 64 tries")
	}
	if r, err := l.udpExchange(pc, vipUDP); err != nil || r.backend.Addr() != l.be4[1] {
		t.Fatalf("socket did not keep its backend while the set was unchanged: %v %v", r, err)
	}
	if err := s.ApplyServices(ctx, labTable(2, l.be4[:1], l.be6[:1])); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		for _, vip := range []netip.AddrPort{netip.AddrPortFrom(vip4, 80), netip.AddrPortFrom(vip6, 80)} {
			r, err := l.dialTCP(vip)
			if err != nil {
				t.Fatal(err)
			}
			if r.backend.Addr() == l.be4[1] || r.backend.Addr() == l.be6[1] {
				t.Fatalf("new connection to %s reached withdrawn backend %s", vip, r.backend)
			}
		}
	}
	r, err := l.udpExchange(pc, vipUDP)
	if err != nil {
		t.Fatal(err)
	}
	if r.backend.Addr() != l.be4[0] || r.peer != vipUDP {
		t.Errorf("the UDP socket's next datagram reached %s (peer shown %s), want %s via the VIP", r.backend, r.peer, l.be4[0])
	}
}

func TestSockLBRejectsFrontendWithoutBackends(t *testing.T) {
	l := newSvcLab(t)
	s := l.newSockLB(t, ServiceLimits{})
	if err := s.ApplyServices(context.Background(), labTable(1, nil, nil)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := l.dialTCP(netip.AddrPortFrom(vip4, 80)); !errors.Is(err, syscall.EPERM) {
		t.Errorf("connect to a service without backends: %v, want EPERM", err)
	}
	if _, err := l.udpExchange(l.listenUDP(t, "udp6"), netip.AddrPortFrom(vip6, 53)); !errors.Is(err, syscall.EPERM) {
		t.Errorf("sendmsg to a service without backends: %v, want EPERM", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("rejection took %v; it must fail at once", d)
	}
	st, _ := s.ServiceStatus(context.Background())
	if st.Rejected != 2 {
		t.Errorf("rejected counter %d, want 2", st.Rejected)
	}
}

func TestSockLBRestartKeepsTranslation(t *testing.T) {
	l := newSvcLab(t)
	ctx := context.Background()
	s := l.newSockLB(t, ServiceLimits{})
	tbl := labTable(7, l.be4[:1], l.be6[:1])
	if err := s.ApplyServices(ctx, tbl); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// No process holds the programs now: the pins keep them attached.
	for _, vip := range []netip.AddrPort{netip.AddrPortFrom(vip4, 80), netip.AddrPortFrom(vip6, 80)} {
		if r, err := l.dialTCP(vip); err != nil || (r.backend.Addr() != l.be4[0] && r.backend.Addr() != l.be6[0]) {
			t.Fatalf("with the agent gone, %s reached %v (%v)", vip, r, err)
		}
	}
	s2 := l.newSockLB(t, ServiceLimits{})
	want, _ := renderServices(tbl, ServiceLimits{})
	if s2.rev != 7 || len(s2.shadow) != len(want.Frontends) {
		t.Fatalf("re-adopted revision %d with %d frontends, want 7 and %d", s2.rev, len(s2.shadow), len(want.Frontends))
	}
	for k, f := range want.Frontends {
		if got := s2.shadow[k].f; fmt.Sprint(got) != fmt.Sprint(f) {
			t.Errorf("re-adopted %v as %v, loaded %v", k, got, f)
		}
	}
	if err := s2.ApplyServices(ctx, labTable(8, l.be4[1:], l.be6[1:])); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if r, err := l.dialTCP(netip.AddrPortFrom(vip4, 80)); err != nil || r.backend.Addr() != l.be4[1] {
			t.Fatalf("after the restarted agent's update: %v (%v), want %s", r, err, l.be4[1])
		}
	}
	// The replaced sets are gone: each frontend's set only.
	n := 0
	var k beKeyC
	var v beValC
	for it := s2.coll.Maps["fm_svc_be"].Iterate(); it.Next(&k, &v); {
		n++
	}
	if n != 4 {
		t.Errorf("backend map holds %d entries, want 4 (replaced sets not deleted)", n)
	}
}

func TestSockLBServesWhatFitsWhenFull(t *testing.T) {
	l := newSvcLab(t)
	s := l.newSockLB(t, ServiceLimits{Frontends: 8, Backends: 2, BackendsPerFrontend: 8})
	// Budget is one backend: the first of the list is served.
	tbl := &ServiceTable{Revision: 1, Frontends: []ServiceFrontend{frontend(vip4, 80, protoTCP, backendsOf(l.be4[:]...)...)}}
	if err := s.ApplyServices(context.Background(), tbl); err != nil {
		t.Fatalf("a table that does not fit must be applied with what fits: %v", err)
	}
	st, err := s.ServiceStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ce *ServiceCapacityError
	if !errors.As(st.Err(), &ce) || !errors.Is(st.Err(), ErrServiceCapacity) || len(ce.Truncated) != 1 ||
		ce.Truncated[0].Listed != 2 || ce.Truncated[0].Loaded != 1 {
		t.Fatalf("status error %v, want one frontend truncated from 2 to 1", st.Err())
	}
	for range 20 {
		if r, err := l.dialTCP(netip.AddrPortFrom(vip4, 80)); err != nil || r.backend.Addr() != l.be4[0] {
			t.Fatalf("truncated service reached %v (%v), want %s", r, err, l.be4[0])
		}
	}
}

func TestSockLBUninstallDetaches(t *testing.T) {
	l := newSvcLab(t)
	s := l.newSockLB(t, ServiceLimits{})
	if err := s.ApplyServices(context.Background(), labTable(1, l.be4[:], l.be6[:])); err != nil {
		t.Fatal(err)
	}
	if err := s.Uninstall(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left after uninstall: %v", err)
	}
	if _, err := l.dialTCP(netip.AddrPortFrom(vip4, 80)); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("connect to the VIP after uninstall: %v, want ENETUNREACH (untranslated)", err)
	}
}

// TestPolicyDecidesAgainstTheChosenBackend runs the tc policy programs and
// the socket translation together: the client pod may reach one backend
// pod only, and a connection through the ClusterSetIP passes or is dropped
// by the backend it was translated to, as Kubernetes decides for Services.
func TestPolicyDecidesAgainstTheChosenBackend(t *testing.T) {
	requireKernel(t)
	mnt := requireCgroup2(t)
	pn := newPodNet(t, 3)
	dp, _ := newEBPF(t, pn.host)
	ctx := context.Background()
	client, allowed, denied := pn.pods[0], pn.pods[1], pn.pods[2]
	for _, p := range pn.pods[1:] {
		serveEcho(t, p, 8080)
	}
	pn.attach(t, dp)
	egress := policy.DirectionRules{Enforced: true}
	for _, proto := range []uint8{protoTCP, protoUDP} {
		egress.Identities = append(egress.Identities, policy.IdentityRule{Peer: allowed.identity, Proto: proto,
			Ports: policy.PortRange{First: 8080, Last: 8080}, Rule: 1})
	}
	if err := dp.Apply(ctx, &Revision{Number: 1, IPCache: pn.ipcache(),
		Rules: map[string]policy.EndpointRules{client.id: {Identity: client.identity, Egress: egress}}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !reach(client, "tcp", netip.AddrPortFrom(allowed.v4, 8080)) ||
		!reach(client, "tcp", netip.AddrPortFrom(allowed.v6, 8080)); {
		if time.Now().After(deadline) {
			t.Fatal("the allowed backend is unreachable directly")
		}
	}
	if reach(client, "tcp", netip.AddrPortFrom(denied.v4, 8080)) {
		t.Fatal("policy does not deny the other backend directly; the test would prove nothing")
	}

	cg, pin := newTranslatingCgroup(t, mnt)
	lb, err := NewSockLB(ctx, ServiceConfig{PinDir: pin, Cgroup: cg})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	vip4, vip6 := netip.MustParseAddr("10.96.77.20"), netip.MustParseAddr("fd96::77:20")
	for _, tt := range []struct {
		name    string
		backend pod
		want    bool
	}{
		{"translated to the allowed backend passes", allowed, true},
		{"translated to the denied backend is dropped", denied, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var fs []ServiceFrontend
			for _, proto := range []uint8{protoTCP, protoUDP} {
				fs = append(fs,
					frontend(vip4, 80, proto, ServiceBackend{Addr: tt.backend.v4, Port: 8080, Weight: 1}),
					frontend(vip6, 80, proto, ServiceBackend{Addr: tt.backend.v6, Port: 8080, Weight: 1}))
			}
			SortFrontends(fs)
			if err := lb.ApplyServices(ctx, &ServiceTable{Revision: 1, Frontends: fs}); err != nil {
				t.Fatal(err)
			}
			for _, vip := range []netip.Addr{vip4, vip6} {
				for _, proto := range []string{"tcp", "udp"} {
					if got := reach(client, proto, netip.AddrPortFrom(vip, 80)); got != tt.want {
						t.Errorf("%s to %s:80 reached=%v, want %v", proto, vip, got, tt.want)
					}
				}
			}
		})
	}
}

func TestSockLBFailedApplyKeepsPreviousTable(t *testing.T) {
	l := newSvcLab(t)
	s := l.newSockLB(t, ServiceLimits{})
	if err := s.ApplyServices(context.Background(), labTable(1, l.be4[:1], l.be6[:1])); err != nil {
		t.Fatal(err)
	}
	// A cancelled context stops the update after the first new set is
	// written: everything written is rolled back.
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.ApplyServices(cancelled, labTable(2, l.be4[1:], l.be6[1:])); !errors.Is(err, context.Canceled) {
		t.Fatalf("apply with a cancelled context: %v", err)
	}
	for range 10 {
		if r, err := l.dialTCP(netip.AddrPortFrom(vip4, 80)); err != nil || r.backend.Addr() != l.be4[0] {
			t.Fatalf("after a failed update: %v (%v), want the previous table's %s", r, err, l.be4[0])
		}
	}
	n := 0
	var k beKeyC
	var v beValC
	for it := s.coll.Maps["fm_svc_be"].Iterate(); it.Next(&k, &v); {
		n++
	}
	if n != 4 {
		t.Errorf("backend map holds %d entries after the rollback, want the previous table's 4", n)
	}
	if st, _ := s.ServiceStatus(context.Background()); st.Revision != 1 {
		t.Errorf("status revision %d after a failed update, want 1", st.Revision)
	}
	if err := s.ApplyServices(context.Background(), labTable(3, l.be4[1:], l.be6[1:])); err != nil {
		t.Fatal(err)
	}
	if r, err := l.dialTCP(netip.AddrPortFrom(vip4, 80)); err != nil || r.backend.Addr() != l.be4[1] {
		t.Fatalf("after the retried update: %v (%v), want %s", r, err, l.be4[1])
	}
}

func TestSockLBReplacesIncompatibleSocketStateKeepsTable(t *testing.T) {
	l := newSvcLab(t)
	ctx := context.Background()
	s := l.newSockLB(t, ServiceLimits{})
	if err := s.ApplyServices(ctx, labTable(1, l.be4[:1], l.be6[:1])); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// An older version's reverse map with another layout.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 8, ValueSize: 8, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	path := filepath.Join(l.pinDir, "fm_sock_rev")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
	s2 := l.newSockLB(t, ServiceLimits{})
	if len(s2.shadow) != 4 {
		t.Fatalf("re-adopted %d frontends, want the table's 4", len(s2.shadow))
	}
	if r, err := l.dialTCP(netip.AddrPortFrom(vip4, 80)); err != nil || r.peer != netip.AddrPortFrom(vip4, 80) {
		t.Fatalf("after replacing the reverse map: %v (%v)", r, err)
	}
}

func TestSockLBRestartOnAnotherCgroupMovesTheHooks(t *testing.T) {
	l := newSvcLab(t)
	ctx := context.Background()
	s := l.newSockLB(t, ServiceLimits{})
	if err := s.ApplyServices(ctx, labTable(1, l.be4[:1], l.be6[:1])); err != nil {
		t.Fatal(err)
	}
	s.Close()
	mnt, _ := Cgroup2Mount()
	other := filepath.Join(mnt, randName("fmsvc-test-"))
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(other); err != nil {
			t.Errorf("remove cgroup %s: %v", other, err)
		}
	})
	s2, err := NewSockLB(ctx, ServiceConfig{PinDir: l.pinDir, Cgroup: other})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	// This process stays in the first cgroup, which has no hooks now.
	if _, err := l.dialTCP(netip.AddrPortFrom(vip4, 80)); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("connect from the old cgroup after the move: %v, want ENETUNREACH (untranslated)", err)
	}
	otherID, err := cgroupV2ID(other)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range s2.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Cgroup() == nil || info.Cgroup().CgroupId != otherID {
			t.Errorf("link %v not on the new cgroup", info)
		}
	}
}
