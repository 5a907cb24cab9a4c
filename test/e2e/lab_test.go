package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/tools/fedlab/lab"
)

// shared is the one lab of the run. Only one lab can exist on a machine at
// a time (fixed underlay addresses), and bringing one up costs tens of
// seconds, so every scenario of one size uses the same lab.
//
// A scenario leaves the lab as it found it: whatever it changes (policies,
// stopped processes) it restores in t.Cleanup. A scenario that fails may
// not have, so the next one gets a fresh lab.
var shared struct {
	mu     sync.Mutex
	cfg    lab.Config
	l      *lab.Lab
	failed bool
}

// useLab returns the run's lab at the size cfg asks for: the running one
// when it has that size and the last scenario on it passed, else a new one
// (the old one torn down first). TestMain tears the last one down.
func useLab(t testing.TB, cfg lab.Config) *lab.Lab {
	t.Helper()
	requireLab(t)
	cfg.Name = fmt.Sprintf("e%d", os.Getpid()%10000)
	cfg.BinDir = binDir
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.l != nil && (shared.cfg != cfg || shared.failed) {
		if err := downLab(ctx, log); err != nil {
			t.Fatalf("tear down the previous lab: %v", err)
		}
	}
	if shared.l == nil {
		_ = lab.Down(ctx, cfg.Name, log) // a crashed earlier run
		l, err := lab.Up(ctx, cfg, log)
		if err != nil {
			t.Fatalf("lab up: %v", err)
		}
		shared.l, shared.cfg, shared.failed = l, cfg, false
		warmMesh(ctx, t, l)
	} else if err := labWhole(ctx, shared.l); err != nil {
		t.Fatalf("the shared lab is not as the last scenario should have left it: %v", err)
	}
	l := shared.l
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		shared.mu.Lock()
		shared.failed = true
		shared.mu.Unlock()
		dumpLab(t, l)
	})
	return l
}

// labWhole checks that every lab process runs and every node enforces the
// newest revision with its BGP sessions up.
func labWhole(ctx context.Context, l *lab.Lab) error {
	var dead []string
	for _, p := range l.State.Procs {
		if !l.Alive(p.Name) {
			dead = append(dead, p.Name)
		}
	}
	if len(dead) > 0 {
		return fmt.Errorf("lab processes not running: %v", dead)
	}
	_, err := l.WaitEnforced(ctx, time.Minute)
	return err
}

// releaseLab tears the run's lab down, if one is up, and checks that
// nothing is left behind.
func releaseLab(ctx context.Context, log *slog.Logger) error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	return downLab(ctx, log)
}

// downLab is releaseLab with shared.mu held.
func downLab(ctx context.Context, log *slog.Logger) error {
	if shared.l == nil {
		return nil
	}
	name := shared.cfg.Name
	shared.l = nil
	var errs []error
	if err := lab.Down(ctx, name, log); err != nil {
		errs = append(errs, fmt.Errorf("lab down: %w", err))
	}
	if left := lab.Leftovers(name); len(left) > 0 {
		errs = append(errs, fmt.Errorf("left behind after lab down: %v", left))
	}
	if _, err := os.Stat("/sys/fs/bpf/fedmesh/" + name); err == nil {
		errs = append(errs, fmt.Errorf("BPF pins left behind in /sys/fs/bpf/fedmesh/%s", name))
	}
	return errors.Join(errs...)
}

// dumpLab logs what the agents and ToRs said, for a failed scenario.
func dumpLab(t testing.TB, l *lab.Lab) {
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

// warmMesh has a pod of every node of a new lab reach a pod of every other
// node once (the app's port, both families), retrying for a bounded time. First
// contact between two nodes is a WireGuard handshake in userspace, and a
// lost initiation is sent again only after 5 s (REKEY_TIMEOUT): longer
// than a scenario's probe waits. A new lab holds no policy, so every probe
// must get through; scenarios then measure policy, not handshakes.
func warmMesh(ctx context.Context, t testing.TB, l *lab.Lab) {
	t.Helper()
	var pods []lab.Pod // one per node: the tunnels are between nodes
	for _, c := range l.Topo.Clusters {
		for _, n := range c.Nodes {
			if len(n.Pods) > 0 {
				pods = append(pods, n.Pods[0])
			}
		}
	}
	for _, src := range pods {
		var targets []lab.Target
		for _, dst := range pods {
			if dst.Name == src.Name {
				continue
			}
			for _, fam := range []int{4, 6} {
				targets = append(targets, lab.Target{Proto: "tcp", Addr: netip.AddrPortFrom(dst.Addr(fam), lab.AppPort).String()})
			}
		}
		probe := func() error {
			outcomes, err := l.ProbeBatchFrom(ctx, src.Name, targets, 2*time.Second)
			if err != nil {
				return err
			}
			for i, o := range outcomes {
				if !o.Reachable() {
					return fmt.Errorf("%s: %s", targets[i].Addr, o)
				}
			}
			return nil
		}
		deadline := time.Now().Add(30 * time.Second)
		for err := probe(); err != nil; err = probe() {
			if time.Now().After(deadline) {
				t.Fatalf("%s does not reach every node of the new lab: %v", src.Name, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}
