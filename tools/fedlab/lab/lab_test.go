package lab

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// requireLab skips on a laptop without root or the routers, and fails
// instead under CI, where the lab must run.
func requireLab(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, bin := range []string{"ip", "nsenter", "/usr/sbin/bird", "/usr/lib/frr/bgpd", "/usr/lib/frr/zebra", "ping"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("lab test needs %s (make deps installs the tools; run as root)", strings.Join(missing, ", "))
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func TestLabBuildsRoutesAndTearsDownCompletely(t *testing.T) {
	requireLab(t)
	name := fmt.Sprintf("t%d", os.Getpid()%10000)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	t.Cleanup(func() {
		if err := Down(context.Background(), name, log); err != nil {
			t.Errorf("down: %v", err)
		}
		if left := Leftovers(name); len(left) > 0 {
			t.Errorf("left behind after down: %v", left)
		}
	})
	l, err := Up(ctx, Config{Name: name, Clusters: 2, Nodes: 2, Pods: 2}, log)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	ping := func(pod, dst string) error {
		out, err := l.Topo.Exec(ctx, pod, []string{"ping", "-c1", "-W2", dst}).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ping %s from %s: %v: %s", dst, pod, err, out)
		}
		return nil
	}
	a := l.Topo.Clusters[0]
	src, peer, node := a.Nodes[0].Pods[0], a.Nodes[0].Pods[1], a.Nodes[0]
	for _, tc := range []struct{ what, dst string }{
		// Same node: through the node's /32 routes and proxy ARP.
		{"same-node pod over IPv4", peer.IP.String()},
		// ...and its /128 routes and the fe80::1 gateway.
		{"same-node pod over IPv6", peer.IP6.String()},
		// Pod to its node's underlay and rack addresses (the ToR learns pod
		// routes only once the node's BGP speaker runs).
		{"node underlay over IPv4", node.Host.Addr.Addr().String()},
		{"node rack address over IPv6", node.Host.Addr6.Addr().String()},
	} {
		if err := ping(src.Name, tc.dst); err != nil {
			t.Errorf("%s: %v", tc.what, err)
		}
	}
	// A pod's processes run in its node's cgroup (where the node's agent
	// attaches the service translation), and a process left running in a
	// pod is the lab's to remove: Down kills it with the cgroup.
	leftover := l.Topo.Exec(ctx, src.Name, []string{"sleep", "300"})
	leftover.Cancel = nil // outlives ctx only until Down
	if err := leftover.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = leftover.Wait() }()
	waitCg := func() (string, error) {
		var cg string
		err := waitFor(ctx, "the sleeper to exec", func() error {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", leftover.Process.Pid))
			if err != nil || strings.TrimSpace(string(b)) != "sleep" {
				return fmt.Errorf("comm %q: %v", b, err)
			}
			cg, err = cgroupOf(leftover.Process.Pid)
			return err
		})
		return cg, err
	}
	if cg, err := waitCg(); err != nil || cg != l.Topo.NodeCgroup(node) {
		t.Errorf("a pod's process runs in cgroup %q (%v), want its node's %s", cg, err, l.Topo.NodeCgroup(node))
	}
	// The ToR reaches its nodes over the dual-stack rack.
	if out, err := exec.CommandContext(ctx, "ip", "netns", "exec", a.ToR.NS, "ping", "-c1", "-W2", node.Host.Addr6.Addr().String()).CombinedOutput(); err != nil {
		t.Errorf("ToR to node over IPv6: %v: %s", err, out)
	}
	// Every node reaches the outside through its ToR, both families, and
	// so do the other cluster's (the outside routes back through each
	// ToR).
	for _, c := range l.Topo.Clusters {
		for _, dst := range []string{"198.19.0.10", "fd00:198:19::10"} {
			if out, err := exec.CommandContext(ctx, "nsenter", "--net=/var/run/netns/"+c.Nodes[0].Host.NS, "ping", "-c1", "-W2", dst).CombinedOutput(); err != nil {
				t.Errorf("%s to the outside's %s: %v: %s", c.Nodes[0].Name, dst, err, out)
			}
		}
	}
	// Both router kinds run and answer on their control sockets.
	for _, p := range l.State.Procs {
		if !p.alive() {
			t.Errorf("%s (pid %d) is not running; log %s", p.Name, p.PID, p.Log)
		}
	}
	if len(l.State.Procs) != 3 {
		t.Errorf("procs = %d, want BIRD + zebra + bgpd", len(l.State.Procs))
	}
	// Up twice is refused while the first lab exists.
	if _, err := Up(ctx, Config{Name: name, Clusters: 1, Nodes: 1}, log); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second up: %v", err)
	}
	// Down is idempotent.
	if err := Down(ctx, name, log); err != nil {
		t.Fatal(err)
	}
	if err := Down(ctx, name, log); err != nil {
		t.Fatalf("second down: %v", err)
	}
	for _, p := range l.State.Procs {
		if p.alive() {
			t.Errorf("%s still runs after down", p.Name)
		}
	}
	if err := waitFor(ctx, "the pod's leftover process to die", func() error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/comm", leftover.Process.Pid)); err == nil && !zombie(leftover.Process.Pid) {
			return fmt.Errorf("pid %d still runs", leftover.Process.Pid)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
