package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/internal/netnsrun"
	"github.com/fedmesh/fedmesh/internal/nstest"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/dns"
)

// requireSocketHooks fails (CI=true) or skips where the socket-level
// service translation cannot run: no root, no eBPF, no cgroup v2, no ip.
func requireSocketHooks(t testing.TB) (cgroup2 string) {
	t.Helper()
	requireRoot(t)
	fail := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf(format+" (CI=true must run it)", args...)
		}
		t.Skipf(format, args...)
	}
	if err := dataplane.Probe("/sys/fs/bpf"); err != nil {
		if !errors.Is(err, dataplane.ErrNotSupported) {
			t.Fatal(err)
		}
		fail("kernel dataplane not available: %v", err)
	}
	mnt, err := dataplane.Cgroup2Mount()
	if err != nil {
		fail("service translation needs a cgroup v2 hierarchy: %v", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		fail("iproute2 missing: %v", err)
	}
	return mnt
}

// inNetNS runs fn on a thread inside the network namespace at path; the
// sockets fn opens stay there.
var inNetNS = netnsrun.Do

func randName(prefix string) string { return nstest.RandName(prefix) }

func ipCmd(t testing.TB, args ...string) { t.Helper(); nstest.IP(t, args...) }

// newNetNS creates a named network namespace, removed at cleanup.
func newNetNS(t testing.TB) (name, path string) { t.Helper(); return nstest.NewNetNS(t, "fmag") }

var enterCgroup = nstest.EnterCgroup

// records keeps the resolver's records.
type records struct {
	mu   sync.Mutex
	recs []dns.Record
}

func (r *records) Record(rec dns.Record) {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
}

// of is the record of the query from client, if any.
func (r *records) of(client netip.AddrPort) (dns.Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.recs {
		if rec.Client == client {
			return rec, true
		}
	}
	return dns.Record{}, false
}

// serveUpstream is the cluster's DNS for the resolver's forwarder: a real
// miekg/dns server on 127.0.0.1 (UDP and TCP, one port) answering
// api.example.com and blocked.example.org in both families.
func serveUpstream(t testing.TB) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for range 10 {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no free UDP and TCP port pair on 127.0.0.1")
	}
	records := map[string][]string{
		"api.example.com.":     {"api.example.com. 60 IN A 203.0.113.7", "api.example.com. 60 IN AAAA 2001:db8::7"},
		"blocked.example.org.": {"blocked.example.org. 60 IN A 198.51.100.9", "blocked.example.org. 60 IN AAAA 2001:db8::9"},
	}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg).SetReply(req)
		q := req.Question[0]
		for _, s := range records[strings.ToLower(q.Name)] {
			rr, err := mdns.NewRR(s)
			if err != nil {
				panic(err)
			}
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
		w.WriteMsg(m)
	})
	us, ts := &mdns.Server{PacketConn: pc, Handler: h}, &mdns.Server{Listener: ln, Handler: h}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	t.Cleanup(func() { us.Shutdown(); ts.Shutdown(); pc.Close(); ln.Close() })
	return pc.LocalAddr().String()
}

// podQuery is what a pod's query got: the answer, the peer its socket
// showed and its own address (what the resolver saw as the client).
type podQuery struct {
	resp       *mdns.Msg
	peer, self netip.AddrPort
}

// query asks to one question over network ("udp", "tcp") from a connected
// socket in the pod netns.
func query(podNS, network string, to netip.AddrPort, name string, qtype uint16) (podQuery, error) {
	var out podQuery
	err := inNetNS(podNS, func() error {
		c, err := net.DialTimeout(network, to.String(), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		dc := &mdns.Conn{Conn: c}
		if err := dc.WriteMsg(new(mdns.Msg).SetQuestion(name, qtype)); err != nil {
			return err
		}
		if out.resp, err = dc.ReadMsg(); err != nil {
			return err
		}
		out.peer = netip.MustParseAddrPort(c.RemoteAddr().String())
		out.self = netip.MustParseAddrPort(c.LocalAddr().String())
		return nil
	})
	return out, err
}

// TestAgentRedirectsEachFamilysClusterDNSToItsResolver runs the agent's
// resolver with one address per family (--dns-listen), the socket-level
// translation attached to a cgroup of the test's own (--service-cgroup) and
// the redirect of both families' cluster DNS addresses (--dns-redirect), as
// the agent wires them. A pod netns behind a veth, whose sockets belong to
// the cgroup, asks the cluster DNS addresses over UDP and TCP: each query
// reaches the resolver of its family (the resolver has one socket pair per
// family, and its record shows the pod's address of that family), the
// answer appears to come from the cluster DNS address, and policy by name
// decides for the pod found by that address, learning the answer's
// addresses or refusing the name, over IPv6 as over IPv4.
//
// The resolver's sockets live in the node netns (as the agent's do); its
// forwarder dials from the test's own netns, where the upstream listens on
// loopback.
func TestAgentRedirectsEachFamilysClusterDNSToItsResolver(t *testing.T) {
	mnt := requireSocketHooks(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	ap := netip.MustParseAddrPort
	var (
		pod4, pod6 = netip.MustParseAddr("10.79.0.1"), netip.MustParseAddr("fd79::1")
		gw4, gw6   = netip.MustParseAddr("10.79.0.2"), netip.MustParseAddr("fd79::2")
		dns4, dns6 = ap("10.96.0.10:53"), ap("[fd00:96::a]:53")
		res4, res6 = ap("169.254.20.10:53"), ap("[fd00:169:254::10]:5353")
	)
	const podID = "demo/client"

	// The pod and the node, joined by a veth; the pod's default routes
	// go to the node, which holds the resolver's addresses.
	pn, podNS := newNetNS(t)
	nn, nodeNS := newNetNS(t)
	ipCmd(t, "-n", pn, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", nn)
	ipCmd(t, "-n", pn, "addr", "add", pod4.String()+"/24", "dev", "eth0")
	ipCmd(t, "-n", pn, "addr", "add", pod6.String()+"/64", "dev", "eth0", "nodad")
	ipCmd(t, "-n", nn, "addr", "add", gw4.String()+"/24", "dev", "eth0")
	ipCmd(t, "-n", nn, "addr", "add", gw6.String()+"/64", "dev", "eth0", "nodad")
	for _, ns := range []string{pn, nn} {
		ipCmd(t, "-n", ns, "link", "set", "eth0", "up")
	}
	ipCmd(t, "-n", pn, "route", "add", "default", "via", gw4.String())
	ipCmd(t, "-n", pn, "-6", "route", "add", "default", "via", gw6.String())

	// The agent's pieces, from its flags.
	cg := filepath.Join(mnt, randName("fmag-test-"))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(cg); err != nil {
			t.Errorf("remove cgroup %s: %v", cg, err)
		}
	})
	enterCgroup(t, mnt, cg)
	o := &options{
		dataplane: "ebpf", bpfPinDir: "/sys/fs/bpf/" + randName("fmag-test-"), serviceCgroup: cg,
		dnsListen: res4.String() + "," + res6.String(), dnsLink: defaultDNSLink,
		dnsUpstream: serveUpstream(t), dnsRedirect: dns4.Addr().String() + "," + dns6.Addr().String(),
		stateDir: t.TempDir(), names: defaultNameFlags(),
	}
	t.Cleanup(func() {
		if err := dataplane.UninstallServices(context.Background(), filepath.Join(o.bpfPinDir, "services")); err != nil {
			t.Error(err)
		}
		os.RemoveAll(o.bpfPinDir)
	})
	svc, closeSvc, err := openServices(ctx, o, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeSvc() })
	reg := prometheus.NewRegistry()
	names, closeNames, err := openNamePolicy(ctx, o, dataplane.NewMemory(), reg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeNames)
	var recs records
	var srv *dns.Server
	if err := inNetNS(nodeNS, func() error {
		var err error
		srv, err = openDNS(o, reg, log, names, &recs)
		return err
	}); err != nil {
		t.Fatalf("open the resolver in the node netns: %v", err)
	}
	if got := srv.Addrs(); len(got) != 2 || got[0] != res4 || got[1] != res6 {
		t.Fatalf("resolver bound %v, want %v and %v", got, res4, res6)
	}
	served := make(chan struct{})
	go func() { serveDNSWhenReady(ctx, srv, names, log); close(served) }()
	t.Cleanup(func() { cancel(); <-served })
	if err := setDNSRedirect(ctx, o, svc, log); err != nil {
		t.Fatal(err)
	}
	names.Update(ctx, []agent.NamePod{{ID: podID, IPs: []netip.Addr{pod4, pod6}, Egress: policy.DirectionRules{
		Enforced: true, Names: []policy.NameRule{{Names: []string{"api.example.com"}, Proto: 6,
			Ports: policy.PortRange{First: 443, Last: 443}, Rule: 1, Tier: policy.TierAdmin, Action: policy.ActionAccept}},
	}}})

	// A new veth drops what it is given until the kernel activates it:
	// wait until each family's cluster DNS is answered.
	for _, to := range []netip.AddrPort{dns4, dns6} {
		for deadline := time.Now().Add(5 * time.Second); ; {
			_, err := query(podNS, "udp", to, "ready.example.com.", mdns.TypeA)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s unanswered from the pod netns: %v", to, err)
			}
		}
	}

	for _, c := range []struct {
		family     string
		clusterDNS netip.AddrPort
		pod        netip.Addr
		qtype      uint16
		answer     netip.Addr
	}{
		{"IPv4", dns4, pod4, mdns.TypeA, netip.MustParseAddr("203.0.113.7")},
		{"IPv6", dns6, pod6, mdns.TypeAAAA, netip.MustParseAddr("2001:db8::7")},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(c.family+" "+network, func(t *testing.T) {
				got, err := query(podNS, network, c.clusterDNS, "api.example.com.", c.qtype)
				if err != nil {
					t.Fatalf("ask %s: %v", c.clusterDNS, err)
				}
				if got.peer != c.clusterDNS {
					t.Errorf("the answer appears to come from %s, want the cluster DNS address %s", got.peer, c.clusterDNS)
				}
				if len(got.resp.Answer) != 1 || !strings.Contains(got.resp.Answer[0].String(), c.answer.String()) {
					t.Errorf("answer %v, want the upstream's %s", got.resp.Answer, c.answer)
				}
				rec, ok := recs.of(got.self)
				if !ok {
					t.Fatalf("the resolver recorded no query from the pod's socket %s", got.self)
				}
				if rec.Client.Addr() != c.pod || rec.Pod != podID || rec.Transport.String() != network {
					t.Errorf("recorded client %s pod %q over %s; want the pod's %s address %s, pod %q, over %s",
						rec.Client, rec.Pod, rec.Transport, c.family, c.pod, podID, network)
				}
				if rec.Verdict != dns.VerdictAllowed || rec.Learned != 1 {
					t.Errorf("verdict %q, %d learned; want allowed, the answer's address learned", rec.Verdict, rec.Learned)
				}

				denied, err := query(podNS, network, c.clusterDNS, "blocked.example.org.", c.qtype)
				if err != nil {
					t.Fatalf("ask %s for a name no rule allows: %v", c.clusterDNS, err)
				}
				if denied.resp.Rcode != mdns.RcodeRefused {
					t.Errorf("a name no rule of the pod allows: %s, want REFUSED", mdns.RcodeToString[denied.resp.Rcode])
				}
				if rec, ok := recs.of(denied.self); !ok || rec.Pod != podID || rec.Verdict != dns.VerdictRefused {
					t.Errorf("record of the refused query: %+v (found %v), want pod %q refused", rec, ok, podID)
				}
			})
		}
	}

	// Without name rules the hook decides nothing; the record still names
	// the pod behind either family's address (the resolver's own lookup).
	names.Update(ctx, []agent.NamePod{{ID: podID, IPs: []netip.Addr{pod4, pod6}}})
	for _, to := range []netip.AddrPort{dns4, dns6} {
		for _, network := range []string{"udp", "tcp"} {
			got, err := query(podNS, network, to, "blocked.example.org.", mdns.TypeA)
			if err != nil {
				t.Fatalf("ask %s over %s: %v", to, network, err)
			}
			if got.resp.Rcode != mdns.RcodeSuccess {
				t.Errorf("%s over %s for a pod without name rules: %s, want the upstream's answer", to, network, mdns.RcodeToString[got.resp.Rcode])
			}
			if rec, ok := recs.of(got.self); !ok || rec.Pod != podID || rec.Verdict != dns.VerdictUnpoliced {
				t.Errorf("%s over %s: record %+v (found %v), want pod %q unpoliced", to, network, rec, ok, podID)
			}
		}
	}
}
