package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// pod is a network namespace behind a veth whose host side sits on a bridge
// in the test's "node" namespace.
type pod struct {
	id, ns, path string
	v4, v6       netip.Addr
	hostIface    string
	identity     uint32
}

type podNet struct {
	host string // node netns path
	pods []pod
}

// newPodNet builds a node netns with a bridge and n pods (198.18.0.i and
// fd00:18::i), all removed at cleanup.
func newPodNet(t testing.TB, n int) *podNet {
	t.Helper()
	hostNS, hostPath := newNetNS(t)
	run(t, "ip", "-n", hostNS, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", hostNS, "link", "set", "br0", "up")
	pn := &podNet{host: hostPath}
	for i := 1; i <= n; i++ {
		ns, path := newNetNS(t)
		h := fmt.Sprintf("h%d", i)
		p := pod{id: fmt.Sprintf("c1/default/pod%d", i), ns: ns, path: path, hostIface: h, identity: uint32(100 + i),
			v4: netip.MustParseAddr(fmt.Sprintf("198.18.0.%d", i)), v6: netip.MustParseAddr(fmt.Sprintf("fd00:18::%d", i))}
		run(t, "ip", "-n", hostNS, "link", "add", h, "type", "veth", "peer", "name", "eth0", "netns", ns)
		run(t, "ip", "-n", hostNS, "link", "set", h, "master", "br0", "up")
		run(t, "ip", "-n", ns, "addr", "add", p.v4.String()+"/24", "dev", "eth0")
		run(t, "ip", "-n", ns, "addr", "add", p.v6.String()+"/64", "dev", "eth0", "nodad")
		run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		pn.pods = append(pn.pods, p)
	}
	return pn
}

func (pn *podNet) ipcache() IPCache {
	b := NewIPCacheBuilder(IPCache{})
	for _, p := range pn.pods {
		b.Set(netip.PrefixFrom(p.v4, 32), p.identity)
		b.Set(netip.PrefixFrom(p.v6, 128), p.identity)
	}
	return b.IPCache()
}

func (pn *podNet) attach(t testing.TB, dp Dataplane) {
	t.Helper()
	for _, p := range pn.pods {
		if err := dp.Attach(context.Background(), Endpoint{ID: p.id, Interface: p.hostIface}); err != nil {
			t.Fatal(err)
		}
	}
}

// serveEcho runs TCP and UDP echo servers on port in the pod (both families).
func serveEcho(t testing.TB, p pod, port int) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := inNetNS(p.path, func() error {
		var err error
		if ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", fmt.Sprintf("[::]:%d", port))
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
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, a, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], a)
		}
	}()
}

func dialIn(from pod, network string, to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNetNS(from.path, func() error {
		var err error
		c, err = net.DialTimeout(network, to.String(), timeout)
		return err
	})
	return c, err
}

// echo sends a line over c and waits for it to come back.
func echo(c net.Conn, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	msg := []byte("fedmesh\n")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return err
}

// reach reports whether a new connection (TCP, UDP round trip, or ping for
// "icmp") from one pod to addr succeeds.
func reach(from pod, proto string, to netip.AddrPort) bool {
	const timeout = 400 * time.Millisecond
	if proto == "icmp" {
		return exec.Command("ip", "netns", "exec", from.ns, "ping", "-c1", "-W1", to.Addr().String()).Run() == nil
	}
	c, err := dialIn(from, proto, to, timeout)
	if err != nil {
		return false
	}
	defer c.Close()
	return echo(c, timeout) == nil
}

func TestKernelEnforcesPolicyOnRealTraffic(t *testing.T) {
	requireKernel(t)
	pn := newPodNet(t, 2)
	dp, _ := newEBPF(t, pn.host)
	ctx := context.Background()
	a, b := pn.pods[0], pn.pods[1]
	for _, p := range pn.pods {
		serveEcho(t, p, 8080)
		serveEcho(t, p, 9090)
	}
	pn.attach(t, dp)
	tcp := func(p pod, port uint16) netip.AddrPort { return netip.AddrPortFrom(p.v4, port) }
	tcp6 := func(p pod, port uint16) netip.AddrPort { return netip.AddrPortFrom(p.v6, port) }
	in := func(rules ...policy.IdentityRule) policy.DirectionRules {
		return policy.DirectionRules{Enforced: true, Identities: rules}
	}
	cidr := func(prefix string, except ...string) policy.DirectionRules {
		r := policy.CIDRRule{Prefix: netip.MustParsePrefix(prefix), Ports: policy.AllPorts, Proto: protoTCP, Rule: 7}
		for _, e := range except {
			r.Except = append(r.Except, netip.MustParsePrefix(e))
		}
		return policy.DirectionRules{Enforced: true, CIDRs: []policy.CIDRRule{r}}
	}
	type probe struct {
		from, to pod
		proto    string
		dst      netip.AddrPort
		want     bool
	}
	tests := []struct {
		name  string
		a, b  policy.EndpointRules
		probe []probe
	}{
		{"open endpoints pass everything", policy.EndpointRules{}, policy.EndpointRules{}, []probe{
			{a, b, "tcp", tcp(b, 8080), true}, {a, b, "udp", tcp(b, 9090), true}, {a, b, "icmp", tcp(b, 0), true},
			{a, b, "tcp", tcp6(b, 8080), true}}},
		{"ingress rule allows only its port range", policy.EndpointRules{},
			policy.EndpointRules{Ingress: in(policy.IdentityRule{Peer: a.identity, Proto: protoTCP,
				Ports: policy.PortRange{First: 8000, Last: 8100}, Rule: 1})}, []probe{
				{a, b, "tcp", tcp(b, 8080), true}, {a, b, "tcp", tcp(b, 9090), false},
				{a, b, "udp", tcp(b, 8080), false}, {a, b, "icmp", tcp(b, 0), false},
				{b, a, "tcp", tcp(a, 9090), true}}},
		{"ingress rule for another identity denies", policy.EndpointRules{},
			policy.EndpointRules{Ingress: in(policy.IdentityRule{Peer: 999, Ports: policy.AllPorts, Rule: 1})}, []probe{
				{a, b, "tcp", tcp(b, 8080), false}}},
		{"icmp rule allows ping only", policy.EndpointRules{},
			policy.EndpointRules{Ingress: in(policy.IdentityRule{Peer: policy.IdentityAny, Proto: protoICMP,
				Ports: policy.AllPorts, Rule: 1})}, []probe{
				{a, b, "icmp", tcp(b, 0), true}, {a, b, "tcp", tcp(b, 8080), false}}},
		{"ipBlock except carves out the peer", policy.EndpointRules{},
			policy.EndpointRules{Ingress: cidr("198.18.0.0/24", "198.18.0.1/32")}, []probe{
				{a, b, "tcp", tcp(b, 8080), false}}},
		{"ipBlock allows outside its except", policy.EndpointRules{},
			policy.EndpointRules{Ingress: cidr("198.18.0.0/24", "198.18.0.128/25")}, []probe{
				{a, b, "tcp", tcp(b, 8080), true}, {a, b, "tcp", tcp6(b, 8080), false}}},
		{"ipv6 identity rule", policy.EndpointRules{},
			policy.EndpointRules{Ingress: in(policy.IdentityRule{Peer: a.identity, Proto: protoTCP,
				Ports: policy.PortRange{First: 8080, Last: 8080}, Rule: 1})}, []probe{
				{a, b, "tcp", tcp6(b, 8080), true}, {a, b, "tcp", tcp6(b, 9090), false}}},
		{"replies pass through conntrack against deny-all ingress",
			policy.EndpointRules{Ingress: in(), Egress: in(policy.IdentityRule{Peer: b.identity, Proto: protoTCP,
				Ports: policy.PortRange{First: 8080, Last: 8080}, Rule: 1})}, policy.EndpointRules{}, []probe{
				{a, b, "tcp", tcp(b, 8080), true}, {a, b, "tcp", tcp6(b, 8080), true},
				{a, b, "tcp", tcp(b, 9090), false}, {b, a, "tcp", tcp(a, 8080), false}}},
		{"egress deny-all blocks new flows", policy.EndpointRules{Egress: in()}, policy.EndpointRules{}, []probe{
			{a, b, "tcp", tcp(b, 8080), false}, {a, b, "udp", tcp(b, 8080), false}, {b, a, "tcp", tcp(a, 8080), true}}},
	}
	for n, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a.identity, b.identity = pn.pods[0].identity, pn.pods[1].identity
			tt.a.Identity, tt.b.Identity = a.identity, b.identity
			rev := &Revision{Number: uint64(n + 1), IPCache: pn.ipcache(),
				Rules: map[string]policy.EndpointRules{a.id: tt.a, b.id: tt.b}}
			if err := dp.Apply(ctx, rev); err != nil {
				t.Fatal(err)
			}
			for _, p := range tt.probe {
				if got := reach(p.from, p.proto, p.dst); got != p.want {
					t.Errorf("%s %s -> %s: reached=%v, want %v", p.from.id, p.proto, p.dst, got, p.want)
				}
			}
		})
	}
}

func TestEstablishedFlowSurvivesPolicyChange(t *testing.T) {
	requireKernel(t)
	pn := newPodNet(t, 2)
	dp, _ := newEBPF(t, pn.host)
	ctx := context.Background()
	a, b := pn.pods[0], pn.pods[1]
	serveEcho(t, b, 8080)
	pn.attach(t, dp)
	rules := func(enforced bool) map[string]policy.EndpointRules {
		return map[string]policy.EndpointRules{b.id: {Identity: b.identity, Ingress: policy.DirectionRules{Enforced: enforced}}}
	}
	if err := dp.Apply(ctx, &Revision{Number: 1, IPCache: pn.ipcache(), Rules: rules(false)}); err != nil {
		t.Fatal(err)
	}
	c, err := dialIn(a, "tcp", netip.AddrPortFrom(b.v4, 8080), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echo(c, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := dp.Apply(ctx, &Revision{Number: 2, IPCache: pn.ipcache(), Rules: rules(true)}); err != nil {
		t.Fatal(err)
	}
	if err := echo(c, 2*time.Second); err != nil {
		t.Errorf("established connection broke after the policy change: %v", err)
	}
	if reach(a, "tcp", netip.AddrPortFrom(b.v4, 8080)) {
		t.Error("a new connection passed the deny-all policy")
	}
	// The denial raised a verdict event.
	deadline := time.After(2 * time.Second)
	for {
		select {
		case ev := <-dp.Events():
			if ev.Verdict == Deny && ev.EndpointID == b.id && ev.DstPort == 8080 && ev.Src == a.v4 {
				if ev.SrcIdentity != a.identity || ev.DstIdentity != b.identity {
					t.Errorf("deny event identities %d -> %d, want %d -> %d", ev.SrcIdentity, ev.DstIdentity, a.identity, b.identity)
				}
				return
			}
		case <-deadline:
			t.Fatal("no deny event for the refused connection")
		}
	}
}

// TestRestartKeepsEnforcing restarts the dataplane (Close, New on the same
// pins, Attach, Apply) while probes run: no denied connection may pass and
// no allowed one may fail.
func TestRestartKeepsEnforcing(t *testing.T) {
	requireKernel(t)
	pn := newPodNet(t, 2)
	ctx := context.Background()
	a, b := pn.pods[0], pn.pods[1]
	serveEcho(t, b, 8080)
	serveEcho(t, b, 9090)
	dp1, cfg := newEBPF(t, pn.host)
	rev := &Revision{Number: 1, IPCache: pn.ipcache(), Rules: map[string]policy.EndpointRules{
		b.id: {Identity: b.identity, Ingress: policy.DirectionRules{Enforced: true, Identities: []policy.IdentityRule{
			{Peer: a.identity, Proto: protoTCP, Ports: policy.PortRange{First: 8080, Last: 8080}, Rule: 1}}}}}}
	pn.attach(t, dp1)
	if err := dp1.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	errc := make(chan error, 1)
	probes := 0
	go func() {
		defer close(errc)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if !reach(a, "tcp", netip.AddrPortFrom(b.v4, 8080)) {
				errc <- errors.New("an allowed connection failed")
				return
			}
			if c, err := dialIn(a, "tcp", netip.AddrPortFrom(b.v4, 9090), 50*time.Millisecond); err == nil {
				c.Close()
				errc <- errors.New("a denied connection passed")
				return
			}
			probes++
		}
	}()
	time.Sleep(300 * time.Millisecond)
	if err := dp1.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // no agent at all for a while
	dp2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	pn.attach(t, dp2)
	if err := dp2.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	if err := <-errc; err != nil {
		t.Fatalf("after %d probe rounds: %v", probes, err)
	}
	if probes < 5 {
		t.Fatalf("only %d probe rounds ran", probes)
	}
	c, err := dp2.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Rules[1].Packets == 0 {
		t.Errorf("rule 1 counted no packets after the restart: %+v", c)
	}
	// The first process's tail-call arrays kept its programs deciding
	// while no agent ran; once its links run dp2's programs they go.
	tails, err := os.ReadDir(filepath.Join(cfg.PinDir, "tail"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := dp2.coll.Programs["fm_from_pod"].Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	var names []string
	for _, de := range tails {
		names = append(names, de.Name())
	}
	if want := []string{fmt.Sprintf("fm_tail_from_pod_%d", id), fmt.Sprintf("fm_tail_to_pod_%d", id)}; !slices.Equal(names, want) {
		t.Errorf("pinned tail-call arrays after the restart %v, want only this process's %v", names, want)
	}
}
