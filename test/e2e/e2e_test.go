package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
	"github.com/fedmesh/fedmesh/tools/fedlab/lab"
)

// requireLab skips on a laptop and fails under CI, where the lab must run.
func requireLab(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, bin := range []string{"ip", "nsenter", "/usr/sbin/bird", "/usr/lib/frr/bgpd"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if _, err := kubetest.FindBinaries(); err != nil {
		missing = append(missing, "kube-apiserver/etcd (make deps)")
	}
	if len(missing) == 0 {
		return
	}
	msg := "end-to-end tests need " + strings.Join(missing, ", ")
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// upLab brings up a lab for one test and tears it down after, asserting
// that nothing is left behind.
func upLab(t *testing.T, cfg lab.Config) *lab.Lab {
	t.Helper()
	return upLabB(t, cfg)
}

// upLabB is upLab for benchmarks too.
func upLabB(t testing.TB, cfg lab.Config) *lab.Lab {
	t.Helper()
	requireLab(t)
	cfg.Name = fmt.Sprintf("e%d", os.Getpid()%10000)
	cfg.BinDir = binDir
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_ = lab.Down(ctx, cfg.Name, log) // a crashed earlier run
	l, err := lab.Up(ctx, cfg, log)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range l.State.Procs {
				if b, err := os.ReadFile(p.Log); err == nil && strings.HasPrefix(p.Name, "agent") {
					t.Logf("--- %s log (tail):\n%s", p.Name, tail(string(b), 20))
				}
			}
			// The ToRs' own logs and views say what they made of the sessions.
			for _, c := range l.Topo.Clusters {
				out, err := l.ToRBGP(context.Background(), c)
				t.Logf("--- %s BGP (err %v):\n%s", c.ToR.NS, err, out)
				for _, f := range []string{"bird.log", "frr.log"} {
					if b, err := os.ReadFile(filepath.Join(l.Dir, c.ToR.NS, f)); err == nil {
						t.Logf("--- %s %s (tail):\n%s", c.ToR.NS, f, tail(string(b), 30))
					}
				}
			}
		}
		if err := lab.Down(context.Background(), cfg.Name, log); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if left := lab.Leftovers(cfg.Name); len(left) > 0 {
			t.Errorf("left behind after down: %v", left)
		}
		if _, err := os.Stat("/sys/fs/bpf/fedmesh/" + cfg.Name); err == nil {
			t.Errorf("BPF pins left behind in /sys/fs/bpf/fedmesh/%s", cfg.Name)
		}
	})
	return l
}

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

func addr(p lab.Pod) string { return fmt.Sprintf("%s:%d", p.IP, lab.AppPort) }

// allowed probes until it connects (the first packet to a new WireGuard
// peer waits for a handshake).
func allowed(ctx context.Context, l *lab.Lab, from lab.Pod, to lab.Pod, proto string) error {
	var err error
	for i := 0; i < 3; i++ {
		if err = l.ProbeFrom(ctx, from.Name, proto, addr(to), 2*time.Second); err == nil {
			return nil
		}
	}
	return err
}

func TestFederationEndToEnd(t *testing.T) {
	l := upLab(t, lab.Config{Clusters: 2, Nodes: 2, Pods: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a, b := l.Topo.Clusters[0], l.Topo.Clusters[1]
	webA, apiA := a.Nodes[0].Pods[0], a.Nodes[1].Pods[1]
	webB, apiB := b.Nodes[1].Pods[0], b.Nodes[0].Pods[1]

	t.Run("ToRs hold every node's pod CIDR", func(t *testing.T) {
		for _, c := range l.Topo.Clusters {
			routes, err := lab.ToRRoutes(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range c.Nodes {
				if !routeVia(routes, n.PodCIDR.String(), n.Host.Addr.Addr().String()) {
					t.Errorf("%s (%s) has no route %s via %s:\n%s", c.ToR.NS, c.ToRKind, n.PodCIDR, n.Host.Addr.Addr(), routes)
				}
			}
		}
	})

	t.Run("pods reach each other across clusters over TCP and UDP, both ways", func(t *testing.T) {
		for _, pair := range [][2]lab.Pod{{webA, apiB}, {webB, apiA}, {webA, apiA}} {
			for _, proto := range []string{"tcp", "udp"} {
				if err := allowed(ctx, l, pair[0], pair[1], proto); err != nil {
					t.Error(err)
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
		// No retry: --wait returned, so the drop must already be in force.
		if err := l.ProbeFrom(ctx, webA.Name, "tcp", addr(apiB), time.Second); !errors.Is(err, lab.ErrBlocked) {
			t.Errorf("cross-cluster web -> api after the policy: err = %v, want blocked", err)
		}
		if err := allowed(ctx, l, webB, apiB, "tcp"); err != nil {
			t.Errorf("same-cluster web -> api must stay allowed: %v", err)
		}
		// The policy's port is "http" (8080): UDP is not in it.
		if err := l.ProbeFrom(ctx, webB.Name, "udp", addr(apiB), time.Second); !errors.Is(err, lab.ErrBlocked) {
			t.Errorf("udp to the api pod must be dropped: %v", err)
		}
		if out, err := l.Fedctl(ctx, "policy", "delete", "federated/demo/api-local-web-only", "--wait"); err != nil {
			t.Fatalf("delete --wait: %v\n%s", err, out)
		}
		if err := l.ProbeFrom(ctx, webA.Name, "tcp", addr(apiB), 2*time.Second); err != nil {
			t.Errorf("after delete --wait: %v", err)
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
			if err := l.ProbeFrom(ctx, webA.Name, "tcp", addr(apiB), time.Second); !errors.Is(err, lab.ErrBlocked) {
				t.Errorf("with %s down, denied flow: err = %v", name, err)
			}
			if err := allowed(ctx, l, webB, apiB, "tcp"); err != nil {
				t.Errorf("with %s down, allowed flow: %v", name, err)
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
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := l.ProbeFrom(ctx, webA.Name, "tcp", addr(apiB), 500*time.Millisecond); err == nil {
					wrong <- "cross-cluster flow passed while denied"
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
		if err := allowed(ctx, l, webB, apiB, "tcp"); err != nil {
			t.Errorf("allowed flow after the agent restart: %v", err)
		}
	})

	t.Run("node removed: its pod CIDR is withdrawn at the ToR", func(t *testing.T) {
		n := a.Nodes[1]
		if err := l.Stop("agent-" + n.Name); err != nil {
			t.Fatal(err)
		}
		eventually(t, "route withdrawn", 15*time.Second, func() error {
			routes, err := lab.ToRRoutes(ctx, a)
			if err != nil {
				return err
			}
			if strings.Contains(routes, n.PodCIDR.String()+" ") {
				return fmt.Errorf("%s still routes %s", a.ToR.NS, n.PodCIDR)
			}
			return nil
		})
	})
}
