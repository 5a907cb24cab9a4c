package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/tools/fedlab/lab"
)

// Egress by DNS name (issue #22) with real packets: pods ask the cluster
// DNS address (redirected by their node's agent to its resolver), the
// agents forward to a real unbound in the lab's outside namespace, and the
// pods connect to the outside's servers at the addresses the answers gave.
//
// The policies: the web pods' egress by name is a federated
// ClusterNetworkPolicy (fedctl policy apply), the api pods' a member
// cluster's own ClusterNetworkPolicy (kubectl apply in cluster-a, synced),
// both Admin tier at priority 10; a federated Deny of all other egress of
// both at priority 20. DNS itself needs an Accept of its own above the
// Deny: the redirect happens at the socket, so the pod's packets go to the
// agent's node-local address 169.254.20.10 (never to the cluster DNS
// address), which the Deny of 0.0.0.0/0 covers (lab/demo-dns-cnp.yaml).

var dnsFeatureProbe struct {
	once sync.Once
	f    lab.DNSFeatures
	err  error
}

// dnsFeatures asks the run's binaries what DNS policy they support.
func dnsFeatures(t *testing.T) lab.DNSFeatures {
	t.Helper()
	dnsFeatureProbe.once.Do(func() {
		dnsFeatureProbe.f, dnsFeatureProbe.err = lab.ProbeDNSFeatures(context.Background(), binDir)
	})
	if dnsFeatureProbe.err != nil {
		t.Fatal(dnsFeatureProbe.err)
	}
	return dnsFeatureProbe.f
}

// requireFeature skips when the binaries lack a piece of DNS policy that
// has not landed yet, and fails instead under CI=true, where everything
// must have.
func requireFeature(t *testing.T, have bool, what string) {
	t.Helper()
	if have {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the fedmesh binaries lack %s (CI=true: every DNS policy test must run)", what)
	}
	t.Skipf("the fedmesh binaries lack %s: not landed yet (fails when CI=true)", what)
}

func TestEgressByDNSName(t *testing.T) {
	l := useLab(t, lab.Config{Clusters: 2, Nodes: 2, Pods: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	feat := dnsFeatures(t)
	t.Logf("DNS features of the binaries: %+v", feat)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		// What unbound was asked (log-queries) says whether a query left
		// the agent at all.
		if p, ok := l.Proc(l.Topo.Outside.NS + "-unbound"); ok {
			if b, err := os.ReadFile(p.Log); err == nil {
				t.Logf("--- %s log (tail):\n%s", p.Name, tail(string(b), 30))
			}
		}
	})
	a, b := l.Topo.Clusters[0], l.Topo.Clusters[1]
	// web and api share a node (one agent learns for both); web2 is on the
	// other node of cluster-a, webB in cluster-b.
	web, api, web2, webB := a.Nodes[0].Pods[0], a.Nodes[0].Pods[1], a.Nodes[1].Pods[0], b.Nodes[0].Pods[0]
	server := lab.DNSServer(feat)
	name := func(n string) lab.OutsideName {
		t.Helper()
		e, ok := lab.LookupOutside(n)
		if !ok {
			t.Fatalf("no %s in the outside's zone", n)
		}
		return e
	}
	ask := func(t *testing.T, pod lab.Pod, network, n, qtype string) lab.DigResult {
		t.Helper()
		res, err := l.DigFrom(ctx, pod.Name, server, network, name(n).FQDN(), qtype, 2*time.Second)
		if err != nil {
			t.Fatalf("%s asks %s for %s %s: %v", pod.Name, server, n, qtype, err)
		}
		return res
	}
	// resolve asks and wants exactly the zone's address(es) of the name
	// (of its CNAME chain's end).
	resolve := func(t *testing.T, pod lab.Pod, network, n, qtype string) netip.Addr {
		t.Helper()
		res := ask(t, pod, network, n, qtype)
		want := name(n)
		for want.CNAME != "" {
			want = name(want.CNAME)
		}
		addr := want.A
		if qtype == "AAAA" {
			addr = want.AAAA
		}
		if res.Rcode != "NOERROR" || !slices.Equal(res.Addrs(), []netip.Addr{addr}) {
			t.Fatalf("%s: %s %s over %s: %s %v, want NOERROR [%s]", pod.Name, n, qtype, network, res.Rcode, res.Answers, addr)
		}
		return addr
	}
	refused := func(t *testing.T, pod lab.Pod, n, qtype string) {
		t.Helper()
		if res := ask(t, pod, "udp", n, qtype); res.Rcode != "REFUSED" || len(res.Answers) > 0 {
			t.Errorf("%s: %s %s answered %s %v, want REFUSED and no answer (no rule of its policy allows the name)", pod.Name, n, qtype, res.Rcode, res.Answers)
		}
	}
	target := func(addr netip.Addr) string { return netip.AddrPortFrom(addr, lab.OutsideTCPPort).String() }
	// connects makes one connection, no retry: the agent releases an
	// answer only once the dataplane holds its addresses, so the first
	// connection after an answer must get through.
	connects := func(t *testing.T, pod lab.Pod, addr netip.Addr, why string) {
		t.Helper()
		if err := l.ProbeFrom(ctx, pod.Name, "tcp", target(addr), 2*time.Second); err != nil {
			t.Errorf("%s -> %s (%s): %v", pod.Name, addr, why, err)
		}
	}
	blocked := func(t *testing.T, pod lab.Pod, addr netip.Addr, why string) {
		t.Helper()
		if err := l.ProbeFrom(ctx, pod.Name, "tcp", target(addr), time.Second); !errors.Is(err, lab.ErrBlocked) {
			t.Errorf("%s -> %s connected, want refused (%s)", pod.Name, addr, why)
		}
	}

	t.Run("the outside's unbound answers through the agents' resolvers and its servers are reachable over both families", func(t *testing.T) {
		// No policy: this needs only the lab, so it runs on every build.
		for _, pod := range []lab.Pod{web, webB} {
			for _, network := range []string{"udp", "tcp"} {
				res, err := l.DigFrom(ctx, pod.Name, lab.NodeDNS+":53", network, name("alias").FQDN(), "A", 2*time.Second)
				if err != nil {
					t.Fatalf("%s asks its node's resolver over %s: %v", pod.Name, network, err)
				}
				if got := res.Addrs(); res.Rcode != "NOERROR" || len(got) != 1 || got[0] != name("end").A || len(res.Answers) != 3 {
					t.Errorf("%s: the CNAME chain alias -> mid -> end over %s: %s %v", pod.Name, network, res.Rcode, res.Answers)
				}
			}
			for _, addr := range []netip.Addr{name("allowed").A, name("allowed").AAAA} {
				connects(t, pod, addr, "no policy")
			}
		}
		if res, err := l.DigFrom(ctx, web.Name, lab.NodeDNS+":53", "udp", name("short").FQDN(), "AAAA", 2*time.Second); err != nil || len(res.Answers) != 1 || res.Answers[0].TTL > 2 {
			t.Errorf("short.%s: %v %+v, want one AAAA with a TTL of at most 2 s", lab.OutsideZone, err, res)
		}
	})

	t.Run("pods' queries to the cluster DNS address reach the agent's resolver over UDP and TCP, answered from that address", func(t *testing.T) {
		requireFeature(t, feat.Redirect, "the agent's DNS redirect (--dns-redirect)")
		// A connected UDP socket takes an answer only from the address it
		// asked: an answer at all shows the reverse translation too.
		for _, pod := range []lab.Pod{web, webB} {
			for _, network := range []string{"udp", "tcp"} {
				res, err := l.DigFrom(ctx, pod.Name, netip.AddrPortFrom(lab.ClusterDNS[0], 53).String(), network, name("allowed").FQDN(), "A", 2*time.Second)
				if err != nil || res.Rcode != "NOERROR" || len(res.Addrs()) != 1 {
					t.Errorf("%s asks %s over %s: %v %+v", pod.Name, lab.ClusterDNS[0], network, err, res)
				}
			}
		}
	})

	t.Run("policy by name", func(t *testing.T) {
		requireFeature(t, feat.Names, "DNS policy in the agent (--dns-refuse-denied: REFUSED and learning)")
		applyDNSPolicies(t, ctx, l, a)

		t.Run("an address never resolved is refused", func(t *testing.T) {
			blocked(t, web, name("six").A, "six is an allowed name, but web never asked for it")
			blocked(t, web, name("denied").A, "never resolved and not allowed")
		})
		t.Run("an allowed name connects at once, over IPv4 and IPv6, HTTP too", func(t *testing.T) {
			connects(t, web, resolve(t, web, "udp", "allowed", "A"), "allowed.fedlab.test answered")
			connects(t, web, resolve(t, web, "udp", "allowed", "AAAA"), "allowed.fedlab.test answered (AAAA)")
			cmd, err := l.Topo.PodCommand(ctx, web.Name, filepath.Join(binDir, "fedlab"), "http-get", "--host", name("allowed").FQDN(),
				netip.AddrPortFrom(name("allowed").A, lab.OutsideHTTPPort).String())
			if err != nil {
				t.Fatal(err)
			}
			if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "hello from the outside") {
				t.Errorf("HTTP GET from %s: %v: %s", web.Name, err, out)
			}
		})
		t.Run("a denied name is answered REFUSED and its address stays closed", func(t *testing.T) {
			refused(t, web, "denied", "A")
			refused(t, web, "denied", "AAAA")
			blocked(t, web, name("denied").A, "denied.fedlab.test is not in web's policy")
			blocked(t, web, name("denied").AAAA, "denied.fedlab.test is not in web's policy")
		})
		t.Run("two pods with different policies get different answers for the same name, and an address learned by one does not open it for the other", func(t *testing.T) {
			// api's own cluster policy allows other.fedlab.test only.
			other := resolve(t, api, "udp", "other", "A")
			connects(t, api, other, "other.fedlab.test is api's allowed name")
			blocked(t, web, other, "learned by api on the same node, for a name web's policy does not list")
			refused(t, web, "other", "A")
			refused(t, api, "allowed", "A")
			blocked(t, api, name("allowed").A, "learned by web for allowed.fedlab.test, which api's policy does not list")
			// The federated policy holds in cluster-b too.
			connects(t, webB, resolve(t, webB, "udp", "allowed", "A"), "web in cluster-b, the same federated policy")
		})
		t.Run("the addresses at the end of a CNAME chain count for the queried name only", func(t *testing.T) {
			end := resolve(t, web, "udp", "alias", "A")
			connects(t, web, end, "alias.fedlab.test is allowed and its chain ends at end.fedlab.test")
			// Asked for directly, the chain's end is a name like any other.
			refused(t, web, "end", "A")
			refused(t, web2, "end", "A")
			blocked(t, web2, end, "web2 asked for end.fedlab.test, not for alias")
		})
		t.Run("*.wild matches one or more labels below wild, never wild itself", func(t *testing.T) {
			connects(t, web, resolve(t, web, "udp", "one.wild", "A"), "one label below")
			connects(t, web, resolve(t, web, "udp", "two.deep.wild", "A"), "two labels below: upstream's wildcard matches one or more")
			// Three labels below: a name the zone answers with its own
			// DNS wildcard record.
			deep, err := l.DigFrom(ctx, web.Name, server, "udp", "a.b.c.wild."+lab.OutsideZone, "A", 2*time.Second)
			if err != nil || deep.Rcode != "NOERROR" || len(deep.Addrs()) != 1 || deep.Addrs()[0] != name("*.wild").A {
				t.Errorf("a.b.c.wild: %v %+v, want the zone's wildcard address %s", err, deep, name("*.wild").A)
			} else {
				connects(t, web, deep.Addrs()[0], "three labels below")
			}
			refused(t, web, "wild", "A")
			blocked(t, web, name("wild").A, "wild.fedlab.test itself is not matched by *.wild.fedlab.test")
		})
		t.Run("DNS over TCP is learned as over UDP", func(t *testing.T) {
			connects(t, web, resolve(t, web, "tcp", "tcp", "A"), "asked over TCP")
			if res := ask(t, web, "tcp", "denied", "A"); res.Rcode != "REFUSED" {
				t.Errorf("denied over TCP: %s, want REFUSED", res.Rcode)
			}
		})
		t.Run("an AAAA answer opens the IPv6 address only", func(t *testing.T) {
			connects(t, web, resolve(t, web, "udp", "six", "AAAA"), "six.fedlab.test AAAA answered")
			blocked(t, web, name("six").A, "six's A record was never asked for")
		})
		t.Run("after the TTL new connections are refused and an established one continues", func(t *testing.T) {
			requireFeature(t, feat.MinTTL, "a TTL floor below 2 s (--dns-min-ttl)")
			expiryAfterTTL(t, ctx, l, web, server)
		})
		t.Run("agent SIGKILL and restart: learned addresses stay enforced without extension, DNS fails while it is down and resumes", func(t *testing.T) {
			requireFeature(t, feat.MinTTL, "a TTL floor below 2 s (--dns-min-ttl)")
			agentRestart(t, ctx, l, a.Nodes[0], web, server)
		})
		t.Run("fedctl dns shows the queries with pod and verdict", func(t *testing.T) {
			requireFeature(t, feat.Records, "fedctl dns")
			eventually(t, "the DNS records of "+web.Name, 30*time.Second, func() error {
				out, err := l.Fedctl(ctx, "dns", "--pod", web.Name)
				if err != nil {
					return fmt.Errorf("%w: %s", err, out)
				}
				for _, want := range []string{name("allowed").FQDN(), name("denied").FQDN(), "allowed", "refused"} {
					if !strings.Contains(out, want) {
						return fmt.Errorf("no %q in:\n%s", want, out)
					}
				}
				return nil
			})
			out, err := l.Fedctl(ctx, "dns", "--name", name("other").FQDN())
			if err != nil || !strings.Contains(out, api.Name) {
				t.Errorf("fedctl dns --name %s does not show %s: %v\n%s", name("other").FQDN(), api.Name, err, out)
			}
		})
	})
}

// applyDNSPolicies applies the tests' three policies, from both sources,
// and removes them when the test ends.
func applyDNSPolicies(t *testing.T, ctx context.Context, l *lab.Lab, a lab.Cluster) {
	t.Helper()
	file := func(base string, body []byte) string {
		p := filepath.Join(l.Dir, base)
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Cleanups run last first: this one after every policy is gone.
	t.Cleanup(func() { _, _ = l.WaitEnforced(ctx, 30*time.Second) })
	apiPolicy := file("dns-api.yaml", lab.DemoDNSAPI)
	if out, err := l.KubeApplyFile(ctx, a.Name, apiPolicy, false); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_, _ = l.KubeApplyFile(ctx, a.Name, apiPolicy, true)
		// Gone from the federation (the syncer copies the delete) before
		// the next scenario runs.
		for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			if out, err := l.Fedctl(ctx, "policy", "list"); err == nil && !strings.Contains(out, "api-egress-by-name") {
				return
			}
		}
		t.Errorf("%s's api-egress-by-name still in the federation 30 s after its delete", a.Name)
	})
	for _, f := range []struct {
		base, key string
		body      []byte
	}{
		{"dns-web.yaml", "cnp/federated/web-egress-by-name", lab.DemoDNSCNP},
		{"dns-deny.yaml", "cnp/federated/deny-other-egress", lab.DemoDNSDeny},
	} {
		if out, err := l.Fedctl(ctx, "policy", "apply", "-f", file(f.base, f.body), "--wait", "--wait-timeout", "30s"); err != nil {
			t.Fatalf("fedctl policy apply %s: %v\n%s", f.base, err, out)
		}
		t.Cleanup(func() { _, _ = l.Fedctl(ctx, "policy", "delete", f.key, "--wait") })
	}
	eventually(t, "cluster-a's api-egress-by-name synced", 30*time.Second, func() error {
		out, err := l.Fedctl(ctx, "policy", "list")
		if err == nil && !strings.Contains(out, "api-egress-by-name") {
			err = errors.New("not synced yet")
		}
		return err
	})
	if _, err := l.WaitEnforced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// expiryAfterTTL: short.fedlab.test has a 2 s TTL (the agents' floor is
// 1 s). A connection made while the answer is fresh keeps exchanging after
// it expires (conntrack); a new one after expiry is refused; asking again
// opens the address again.
func expiryAfterTTL(t *testing.T, ctx context.Context, l *lab.Lab, web lab.Pod, server string) {
	short, _ := lab.LookupOutside("short")
	res, err := l.DigFrom(ctx, web.Name, server, "udp", short.FQDN(), "A", 2*time.Second)
	answered := time.Now()
	if err != nil || res.Rcode != "NOERROR" || len(res.Addrs()) != 1 {
		t.Fatalf("%s: %v %+v", short.FQDN(), err, res)
	}
	addr := netip.AddrPortFrom(res.Addrs()[0], lab.OutsideTCPPort).String()
	// The answer's TTL (a cache may have counted it down), never below
	// the agents' floor.
	ttl := max(time.Duration(res.Answers[0].TTL)*time.Second, lab.AgentMinTTL)
	hold, err := l.Topo.PodCommand(ctx, web.Name, filepath.Join(binDir, "fedlab"), "hold", "--for", (ttl + 4*time.Second).String(), "--every", "200ms", addr)
	if err != nil {
		t.Fatal(err)
	}
	var holdOut strings.Builder
	hold.Stdout, hold.Stderr = &holdOut, &holdOut
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	if err := l.ProbeFrom(ctx, web.Name, "tcp", addr, time.Second); err != nil {
		t.Errorf("a new connection within the TTL: %v", err)
	}
	// The datapath compares Expires itself; a second of slack for the
	// clock reads on both sides.
	time.Sleep(time.Until(answered.Add(ttl + 1500*time.Millisecond)))
	if err := l.ProbeFrom(ctx, web.Name, "tcp", addr, time.Second); !errors.Is(err, lab.ErrBlocked) {
		t.Errorf("a new connection %s after the answer (TTL %s) connected, want refused", time.Since(answered).Round(100*time.Millisecond), ttl)
	}
	if err := hold.Wait(); err != nil {
		t.Errorf("the connection established within the TTL broke after it: %v: %s", err, holdOut.String())
	}
	res, err = l.DigFrom(ctx, web.Name, server, "udp", short.FQDN(), "A", 2*time.Second)
	if err != nil || res.Rcode != "NOERROR" {
		t.Fatalf("%s again: %v %+v", short.FQDN(), err, res)
	}
	if err := l.ProbeFrom(ctx, web.Name, "tcp", addr, 2*time.Second); err != nil {
		t.Errorf("a new answer opens the address again: %v", err)
	}
}

// agentRestart SIGKILLs the agent of web's node between learning two
// names (long: TTL 300 s, brief: 2 s) and restarting it: while it is down
// DNS fails (closed), long stays open and brief closes when its TTL
// passes (nothing extends it); after the restart DNS answers again, new
// names are learned, brief stays closed and long stays open.
func agentRestart(t *testing.T, ctx context.Context, l *lab.Lab, node lab.Node, web lab.Pod, server string) {
	long, _ := lab.LookupOutside("long")
	brief, _ := lab.LookupOutside("brief")
	after, _ := lab.LookupOutside("after")
	tcp := func(a netip.Addr) string { return netip.AddrPortFrom(a, lab.OutsideTCPPort).String() }
	learn := func(n lab.OutsideName) time.Time {
		t.Helper()
		res, err := l.DigFrom(ctx, web.Name, server, "udp", n.FQDN(), "A", 2*time.Second)
		if err != nil || res.Rcode != "NOERROR" || len(res.Addrs()) != 1 || res.Addrs()[0] != n.A {
			t.Fatalf("%s: %v %+v", n.FQDN(), err, res)
		}
		return time.Now()
	}
	learn(long)
	briefAt := learn(brief)
	for _, n := range []lab.OutsideName{long, brief} {
		if err := l.ProbeFrom(ctx, web.Name, "tcp", tcp(n.A), time.Second); err != nil {
			t.Fatalf("%s before the kill: %v", n.FQDN(), err)
		}
	}
	agent := "agent-" + node.Name
	if err := l.Kill(agent); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !l.Alive(agent) {
			_ = l.Restart(agent)
		}
	})
	eventually(t, agent+" gone", 10*time.Second, func() error {
		if l.Alive(agent) {
			return errors.New("still running")
		}
		return nil
	})
	if res, err := l.DigFrom(ctx, web.Name, server, "udp", after.FQDN(), "A", 2*time.Second); !errors.Is(err, lab.ErrNoAnswer) {
		t.Errorf("DNS while the agent is down: %v %+v, want no answer (it fails closed: nothing learns, so nothing may answer)", err, res)
	}
	if err := l.ProbeFrom(ctx, web.Name, "tcp", tcp(long.A), time.Second); err != nil {
		t.Errorf("%s, learned before the kill and within its TTL, while the agent is down: %v", long.FQDN(), err)
	}
	time.Sleep(time.Until(briefAt.Add(2*time.Second + 1500*time.Millisecond)))
	if err := l.ProbeFrom(ctx, web.Name, "tcp", tcp(brief.A), time.Second); !errors.Is(err, lab.ErrBlocked) {
		t.Errorf("%s past its TTL while the agent is down: connected, want refused (the datapath expires it)", brief.FQDN())
	}
	if err := l.Restart(agent); err != nil {
		t.Fatal(err)
	}
	eventually(t, "DNS through the restarted agent", 60*time.Second, func() error {
		res, err := l.DigFrom(ctx, web.Name, server, "udp", after.FQDN(), "A", time.Second)
		if err == nil && res.Rcode != "NOERROR" {
			err = fmt.Errorf("rcode %s", res.Rcode)
		}
		return err
	})
	if _, err := l.WaitEnforced(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := l.ProbeFrom(ctx, web.Name, "tcp", tcp(after.A), 2*time.Second); err != nil {
		t.Errorf("%s, learned by the restarted agent: %v", after.FQDN(), err)
	}
	if err := l.ProbeFrom(ctx, web.Name, "tcp", tcp(long.A), 2*time.Second); err != nil {
		t.Errorf("%s after the restart (its entry survived it): %v", long.FQDN(), err)
	}
	if err := l.ProbeFrom(ctx, web.Name, "tcp", tcp(brief.A), time.Second); !errors.Is(err, lab.ErrBlocked) {
		t.Errorf("%s after the restart: connected, want refused (a restart must not extend an expired entry)", brief.FQDN())
	}
}
