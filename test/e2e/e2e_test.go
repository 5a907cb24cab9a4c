package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/tools/fedlab/lab"
)

// routeVia reports whether `ip route` output has prefix via next hop
// (FRR's routes carry an "nhid N" between the two).
func routeVia(routes, prefix, via string) bool {
	for _, line := range strings.Split(routes, "\n") {
		if strings.HasPrefix(line, prefix+" ") && strings.Contains(line, " via "+via+" ") {
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// eventually polls f until it succeeds or the deadline passes.
func eventually(t *testing.T, what string, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, d, err)
}

// families are the pods' address families: every scenario runs over both.
var families = []int{4, 6}

// addrOf is the pod's app address of one family (4 or 6).
func addrOf(p lab.Pod, family int) string {
	return netip.AddrPortFrom(p.Addr(family), lab.AppPort).String()
}

// allowedOver probes over one family until it connects (the first packet
// to a new WireGuard peer waits for a handshake).
func allowedOver(ctx context.Context, l *lab.Lab, from lab.Pod, to lab.Pod, proto string, family int) error {
	var err error
	for i := 0; i < 3; i++ {
		if err = l.ProbeFrom(ctx, from.Name, proto, addrOf(to, family), 2*time.Second); err == nil {
			return nil
		}
	}
	return fmt.Errorf("IPv%d: %w", family, err)
}

// nodeRoutes are a node's pod prefixes with the rack address the ToR
// reaches each through, one per family.
func nodeRoutes(n lab.Node) [][2]string {
	return [][2]string{
		{n.PodCIDR.String(), n.Host.Addr.Addr().String()},
		{n.PodCIDR6.String(), n.Host.Addr6.Addr().String()},
	}
}

func TestFederationEndToEnd(t *testing.T) {
	l := useLab(t, lab.Config{Clusters: 2, Nodes: 2, Pods: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a, b := l.Topo.Clusters[0], l.Topo.Clusters[1]
	webA, apiA := a.Nodes[0].Pods[0], a.Nodes[1].Pods[1]
	webB, apiB := b.Nodes[1].Pods[0], b.Nodes[0].Pods[1]

	t.Run("ToRs hold every node's pod CIDRs of both families", func(t *testing.T) {
		for _, c := range l.Topo.Clusters {
			routes, err := lab.ToRRoutes(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range c.Nodes {
				for _, r := range nodeRoutes(n) {
					if !routeVia(routes, r[0], r[1]) {
						t.Errorf("%s (%s) has no route %s via %s:\n%s", c.ToR.NS, c.ToRKind, r[0], r[1], routes)
					}
				}
			}
		}
	})

	t.Run("pods reach each other across clusters over TCP and UDP, both ways, over IPv4 and IPv6", func(t *testing.T) {
		for _, pair := range [][2]lab.Pod{{webA, apiB}, {webB, apiA}, {webA, apiA}} {
			for _, proto := range []string{"tcp", "udp"} {
				for _, fam := range families {
					if err := allowedOver(ctx, l, pair[0], pair[1], proto, fam); err != nil {
						t.Error(err)
					}
				}
			}
		}
	})

	t.Run("a federated policy is enforced on every node once --wait returns", func(t *testing.T) {
		policy := fmt.Sprintf("%s/policy.yaml", l.Dir)
		if err := os.WriteFile(policy, lab.DemoPolicy, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := l.Fedctl(ctx, "policy", "apply", "-f", policy, "--wait", "--wait-timeout", "20s"); err != nil || !strings.Contains(out, "enforced on every node") {
			t.Fatalf("apply --wait: %v\n%s", err, out)
		}
		for _, fam := range families {
			// No retry: --wait returned, so the drop must already be in force.
			if err := l.ProbeFrom(ctx, webA.Name, "tcp", addrOf(apiB, fam), time.Second); !errors.Is(err, lab.ErrBlocked) {
				t.Errorf("cross-cluster web -> api over IPv%d after the policy: err = %v, want blocked", fam, err)
			}
			if err := allowedOver(ctx, l, webB, apiB, "tcp", fam); err != nil {
				t.Errorf("same-cluster web -> api must stay allowed: %v", err)
			}
			// The policy's port is "http" (8080): UDP is not in it.
			if err := l.ProbeFrom(ctx, webB.Name, "udp", addrOf(apiB, fam), time.Second); !errors.Is(err, lab.ErrBlocked) {
				t.Errorf("udp to the api pod over IPv%d must be dropped: %v", fam, err)
			}
		}
		if out, err := l.Fedctl(ctx, "policy", "delete", "federated/demo/api-local-web-only", "--wait"); err != nil {
			t.Fatalf("delete --wait: %v\n%s", err, out)
		}
		for _, fam := range families {
			if err := l.ProbeFrom(ctx, webA.Name, "tcp", addrOf(apiB, fam), 2*time.Second); err != nil {
				t.Errorf("after delete --wait, over IPv%d: %v", fam, err)
			}
		}
	})

	t.Run("control-plane leader killed: verdicts stay", func(t *testing.T) {
		policy := fmt.Sprintf("%s/policy.yaml", l.Dir)
		if _, err := l.Fedctl(ctx, "policy", "apply", "-f", policy, "--wait"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = l.Fedctl(ctx, "policy", "delete", "federated/demo/api-local-web-only", "--wait") })
		// Kill every replica in turn (one at a time, restarted before the
		// next), so the leader is killed whichever it is.
		for i := 1; i <= 3; i++ {
			name := fmt.Sprintf("controlplane-%d", i)
			if err := l.Signal(name, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			eventually(t, name+" gone", 5*time.Second, func() error {
				if l.Alive(name) {
					return errors.New("still running")
				}
				return nil
			})
			for _, fam := range families {
				if err := l.ProbeFrom(ctx, webA.Name, "tcp", addrOf(apiB, fam), time.Second); !errors.Is(err, lab.ErrBlocked) {
					t.Errorf("with %s down, denied flow over IPv%d: err = %v", name, fam, err)
				}
				if err := allowedOver(ctx, l, webB, apiB, "tcp", fam); err != nil {
					t.Errorf("with %s down, allowed flow: %v", name, err)
				}
			}
			if err := l.Restart(name); err != nil {
				t.Fatal(err)
			}
			eventually(t, "writes accepted after restarting "+name, 20*time.Second, func() error {
				_, err := l.Fedctl(ctx, "cluster", "list")
				return err
			})
		}
	})

	t.Run("agent SIGKILLed and restarted: no wrong verdict", func(t *testing.T) {
		policy := fmt.Sprintf("%s/policy.yaml", l.Dir)
		if _, err := l.Fedctl(ctx, "policy", "apply", "-f", policy, "--wait"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = l.Fedctl(ctx, "policy", "delete", "federated/demo/api-local-web-only", "--wait") })
		agent := "agent-" + b.Nodes[0].Name // the node of apiB
		stop := make(chan struct{})
		wrong := make(chan string, 100)
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Alternate the families: the restarted agent must keep both
			// denied.
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				fam := families[i%len(families)]
				if err := l.ProbeFrom(ctx, webA.Name, "tcp", addrOf(apiB, fam), 500*time.Millisecond); err == nil {
					wrong <- fmt.Sprintf("cross-cluster flow over IPv%d passed while denied", fam)
				}
			}
		}()
		time.Sleep(time.Second)
		if err := l.Signal(agent, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if err := l.Restart(agent); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		close(stop)
		<-done
		close(wrong)
		for w := range wrong {
			t.Error(w)
		}
		for _, fam := range families {
			if err := allowedOver(ctx, l, webB, apiB, "tcp", fam); err != nil {
				t.Errorf("allowed flow after the agent restart: %v", err)
			}
		}
	})

	t.Run("node removed: its pod CIDRs of both families are withdrawn at the ToR", func(t *testing.T) {
		n := a.Nodes[1]
		if err := l.Stop("agent-" + n.Name); err != nil {
			t.Fatal(err)
		}
		// The lab is shared: the node comes back for the next scenario.
		t.Cleanup(func() {
			if err := l.Restart("agent-" + n.Name); err != nil {
				t.Errorf("restart agent-%s: %v", n.Name, err)
				return
			}
			eventually(t, "route back", time.Minute, func() error {
				routes, err := lab.ToRRoutes(ctx, a)
				if err != nil {
					return err
				}
				for _, r := range nodeRoutes(n) {
					if !routeVia(routes, r[0], r[1]) {
						return fmt.Errorf("%s has no route %s yet", a.ToR.NS, r[0])
					}
				}
				return nil
			})
			// The ToR's route is not the whole path back: the restarted
			// agent must also have re-programmed its WireGuard peers and
			// routes to the other site, in both families, before the next
			// scenario probes from this node (no policy is left by now).
			eventually(t, "cross-site traffic from the restarted node", time.Minute, func() error {
				for _, from := range n.Pods {
					for _, to := range b.Nodes {
						for _, fam := range families {
							if err := l.ProbeFrom(ctx, from.Name, "tcp", addrOf(to.Pods[0], fam), 2*time.Second); err != nil {
								return fmt.Errorf("%s -> %s over IPv%d: %w", from.Name, to.Pods[0].Name, fam, err)
							}
						}
					}
				}
				return nil
			})
		})
		eventually(t, "route withdrawn", 15*time.Second, func() error {
			routes, err := lab.ToRRoutes(ctx, a)
			if err != nil {
				return err
			}
			for _, cidr := range n.PodCIDRs() {
				if strings.Contains(routes, cidr.String()+" ") {
					return fmt.Errorf("%s still routes %s", a.ToR.NS, cidr)
				}
			}
			return nil
		})
	})
}
