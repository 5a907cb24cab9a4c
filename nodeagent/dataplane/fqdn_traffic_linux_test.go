package dataplane

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// TestNameRulesOnRealTraffic: real TCP connections from pod namespaces
// through the kernel program to servers on a third namespace standing in
// for the outside (its addresses are not in the ipcache). Pod a may reach
// *.example.com on 8080, pod b api.example.com on any port; both have
// egress enforced and nothing else.
func TestNameRulesOnRealTraffic(t *testing.T) {
	requireKernel(t)
	pn := newPodNet(t, 3)
	a, b, out := pn.pods[0], pn.pods[1], pn.pods[2]
	addrs := map[string]netip.Addr{}
	for _, s := range []string{"198.18.0.50", "198.18.0.51", "198.18.0.52", "198.18.0.53", "fd00:18::50"} {
		addrs[s] = netip.MustParseAddr(s)
		plen := "/24"
		if addrs[s].Is6() {
			plen = "/64"
		}
		run(t, "ip", "-n", out.ns, "addr", "add", s+plen, "dev", "eth0", "nodad")
	}
	serveEcho(t, out, 8080)
	dp, cfg := newEBPF(t, pn.host)
	ctx := context.Background()
	ipc := NewIPCacheBuilder(IPCache{})
	for _, p := range []pod{a, b} {
		ipc.Set(netip.PrefixFrom(p.v4, 32), p.identity)
		ipc.Set(netip.PrefixFrom(p.v6, 128), p.identity)
	}
	nameRule := func(pattern string, proto uint8, ports policy.PortRange) policy.DirectionRules {
		return policy.DirectionRules{Enforced: true, Names: []policy.NameRule{{Names: []string{pattern}, Proto: proto, Ports: ports,
			Rule: 1, Tier: policy.TierAdmin, Action: policy.ActionAccept}}}
	}
	rev := func(n uint64) *Revision {
		return &Revision{Number: n, IPCache: ipc.IPCache(), Rules: map[string]policy.EndpointRules{
			a.id: {Identity: a.identity, Egress: nameRule("*.example.com", protoTCP, policy.PortRange{First: 8080, Last: 8080})},
			b.id: {Identity: b.identity, Egress: nameRule("api.example.com", 0, policy.AllPorts)},
		}}
	}
	if err := dp.Apply(ctx, rev(1)); err != nil {
		t.Fatal(err)
	}
	pn.attach(t, dp)
	to := func(s string) netip.AddrPort { return netip.AddrPortFrom(addrs[s], 8080) }
	learn := func(dp Dataplane, p pod, addr, name string, ttl time.Duration) {
		t.Helper()
		if err := dp.Learn(ctx, []LearnedAddr{{Endpoint: p.id, Addr: addrs[addr], Name: name, Expires: time.Now().Add(ttl)}}); err != nil {
			t.Fatal(err)
		}
	}
	type probe struct {
		name string
		from pod
		dst  netip.AddrPort
		want bool
	}
	probes := func(ps ...probe) {
		t.Helper()
		for _, p := range ps {
			if got := reach(p.from, "tcp", p.dst); got != p.want {
				t.Errorf("%s: %s -> %s reached=%v, want %v", p.name, p.from.id, p.dst, got, p.want)
			}
		}
	}
	probes(probe{"before any answer", a, to("198.18.0.50"), false})
	learn(dp, a, "198.18.0.50", "www.example.com", time.Hour)
	learn(dp, a, "fd00:18::50", "deep.www.example.com", time.Hour)
	learn(dp, a, "198.18.0.51", "other.org", time.Hour)
	learn(dp, b, "198.18.0.50", "www.example.com", time.Hour)
	probes(
		probe{"learned for a matching name", a, to("198.18.0.50"), true},
		probe{"IPv6, learned for a name two labels under the wildcard", a, to("fd00:18::50"), true},
		probe{"learned for a name the rule does not match", a, to("198.18.0.51"), false},
		probe{"never learned", a, to("198.18.0.53"), false},
		probe{"never learned, the server's own address", a, netip.AddrPortFrom(out.v4, 8080), false},
		probe{"same address, other pod, learned for a name its rule misses", b, to("198.18.0.50"), false},
	)
	learn(dp, b, "198.18.0.50", "api.example.com", time.Hour)
	probes(
		probe{"same address, other pod, learned for its own name", b, to("198.18.0.50"), true},
		probe{"first pod still by its own rule", a, to("198.18.0.50"), true},
	)

	// Expiry: a connection opened while the answer was live keeps working
	// (conntrack); a new one after the answer expired is refused.
	learn(dp, a, "198.18.0.52", "short.example.com", 1500*time.Millisecond)
	c, err := dialIn(a, "tcp", to("198.18.0.52"), time.Second)
	if err != nil {
		t.Fatalf("connect while the answer is live: %v", err)
	}
	defer c.Close()
	if err := echo(c, time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1600 * time.Millisecond)
	if err := echo(c, time.Second); err != nil {
		t.Errorf("established connection broke when its answer expired: %v", err)
	}
	probes(probe{"new connection after expiry", a, to("198.18.0.52"), false})

	// Restart: close and re-open on the same pins. Learned addresses stay
	// in force (before and after the first Apply and re-attach) without
	// being re-learned, and their expiry is not extended.
	// Loading the programs again takes seconds on a busy machine.
	const soon = 10 * time.Second
	learn(dp, a, "198.18.0.53", "soon.example.com", soon)
	deadline := time.Now().Add(soon)
	dp.Close()
	dp2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	probes(probe{"after restart, before Apply", a, to("198.18.0.50"), true})
	if err := dp2.Apply(ctx, rev(2)); err != nil {
		t.Fatal(err)
	}
	pn.attach(t, dp2)
	if time.Until(deadline) < time.Second {
		t.Fatalf("restart took too long to test the short answer (%v left)", time.Until(deadline))
	}
	probes(
		probe{"after restart and Apply", a, to("198.18.0.50"), true},
		probe{"after restart and Apply, other pod", b, to("198.18.0.50"), true},
		probe{"after restart, short answer still live", a, to("198.18.0.53"), true},
		probe{"after restart, never learned", a, to("198.18.0.51"), false},
	)
	time.Sleep(time.Until(deadline) + 100*time.Millisecond)
	probes(probe{"after restart, the short answer expired on time", a, to("198.18.0.53"), false})
}
