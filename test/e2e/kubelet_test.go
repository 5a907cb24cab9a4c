package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fedmesh/fedmesh/tools/fedlab/lab"
)

// The kubelet lab end to end: fedmesh installed with its Helm chart on real
// kubelets, the agent a DaemonSet pod, the workloads Deployments.

// buildImages runs make images' builder into dir with version tag.
func buildImages(t *testing.T, dir, tag string) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root, _ := filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
	start := time.Now()
	out, err := exec.Command("go", "-C", filepath.Join(root, "tools", "devtools"), "run", "./images",
		"-root", root, "-out", dir, "-version", tag).CombinedOutput()
	if err != nil {
		t.Fatalf("build images %s: %v\n%s", tag, err, out)
	}
	t.Logf("images %s built in %s:\n%s", tag, time.Since(start).Round(time.Second), out)
}

func requireKubeletLab(t *testing.T) {
	t.Helper()
	requireLab(t)
	if err := lab.CheckKubeletLab(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

// probeLoop probes pairs with known verdicts over and over until stopped,
// and reports every wrong verdict: a denied flow that connects, or an
// allowed flow that fails twice in a row (one miss may be the probe's own
// timeout on a loaded machine; a dropped flow misses every time).
type probeLoop struct {
	l     *lab.Lab
	pairs []probePair
	stop  chan struct{}
	done  sync.WaitGroup
	mu    sync.Mutex
	wrong []string
	runs  int
}

type probePair struct {
	from  lab.KubePod
	to    lab.KubePod
	allow bool
}

func startProbeLoop(ctx context.Context, l *lab.Lab, pairs []probePair) *probeLoop {
	p := &probeLoop{l: l, pairs: pairs, stop: make(chan struct{})}
	for _, pair := range pairs {
		p.done.Add(1)
		go func() {
			defer p.done.Done()
			misses := 0
			for {
				select {
				case <-p.stop:
					return
				default:
				}
				err := l.ProbeFromPod(ctx, pair.from, "tcp", pair.to.Addr(), time.Second)
				p.mu.Lock()
				p.runs++
				switch {
				case !pair.allow && err == nil:
					p.wrong = append(p.wrong, fmt.Sprintf("%s: %s -> %s connected, want denied", time.Now().Format(time.TimeOnly), pair.from.Name, pair.to.Name))
				case pair.allow && err != nil:
					if misses++; misses >= 2 {
						p.wrong = append(p.wrong, fmt.Sprintf("%s: %s -> %s refused twice in a row, want allowed: %v", time.Now().Format(time.TimeOnly), pair.from.Name, pair.to.Name, err))
					}
				default:
					misses = 0
				}
				p.mu.Unlock()
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	return p
}

// finish stops the loop and fails t with every wrong verdict seen.
func (p *probeLoop) finish(t *testing.T, what string) {
	t.Helper()
	close(p.stop)
	p.done.Wait()
	if p.runs < 2*len(p.pairs) {
		t.Errorf("%s: only %d probes ran", what, p.runs)
	}
	for _, w := range p.wrong {
		t.Errorf("%s: %s", what, w)
	}
	t.Logf("%s: %d probes, %d wrong verdicts", what, p.runs, len(p.wrong))
}

// agentPod is the fedmesh agent pod on node, with its agent process.
func agentPod(ctx context.Context, t *testing.T, l *lab.Lab, c lab.Cluster, node string) (lab.KubePod, int) {
	t.Helper()
	pods, err := l.KubePods(ctx, c, lab.FedmeshNamespace, "app.kubernetes.io/component=agent")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if p.Node != node {
			continue
		}
		for _, pid := range l.PodPIDs(p) {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(b)) == "fedmesh-agent" {
				return p, pid
			}
		}
	}
	t.Fatalf("no running agent pod on %s (have %+v)", node, pods)
	return lab.KubePod{}, 0
}

func rssKB(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			return strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:"))
		}
	}
	return "?"
}

// tcxPrograms counts the programs attached with tcx to the veths of the
// node namespace ns (the pods' host sides).
func tcxPrograms(ns string) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return 0, err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return 0, err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return 0, err
	}
	defer netns.Set(orig) //nolint:errcheck // the thread is locked; a failure here fails the Set above first
	links, err := netlink.LinkList()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, lk := range links {
		if lk.Type() != "veth" {
			continue
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: lk.Attrs().Index, Attach: at})
			if err != nil {
				return 0, fmt.Errorf("query tcx programs of %s: %w", lk.Attrs().Name, err)
			}
			n += len(res.Programs)
		}
	}
	return n, nil
}

func TestKubeletLabEndToEnd(t *testing.T) {
	requireKubeletLab(t)
	imagesA, imagesB := t.TempDir(), t.TempDir()
	buildImages(t, imagesA, "e2e-a")
	for _, f := range []string{"images.json"} {
		b, _ := os.ReadFile(filepath.Join(imagesA, f))
		var list []struct {
			Name string
			Size int64
		}
		_ = json.Unmarshal(b, &list)
		for _, im := range list {
			t.Logf("image %s: %.1f MB", im.Name, float64(im.Size)/1e6)
		}
	}

	cfg := lab.Config{Clusters: 2, Nodes: 1, Kubelet: true, ImagesDir: imagesA}
	cfg.Name = fmt.Sprintf("k%d", os.Getpid()%10000)
	cfg.BinDir = binDir
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sysctls := lab.KubeletSysctls()
	cniBefore, _ := filepath.Glob("/run/netns/cni-*")
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	_ = lab.Down(ctx, cfg.Name, log)
	start := time.Now()
	l, err := lab.Up(ctx, cfg, log)
	if err != nil {
		t.Fatalf("lab up --kubelet: %v", err)
	}
	t.Logf("kubelet lab up in %s (two clusters, helm install, every node enforcing)", time.Since(start).Round(100*time.Millisecond))
	if d, err := lab.KubeletInstallTime(cfg.Name); err == nil {
		t.Logf("helm install (both clusters, --wait) to every node enforcing the demo pods: %s", d.Round(100*time.Millisecond))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range l.Topo.Clusters {
				t.Logf("--- %s %s:\n%s", c.Name, lab.FedmeshNamespace, l.PodReport(context.Background(), c, lab.FedmeshNamespace))
			}
		}
		if err := lab.Down(context.Background(), cfg.Name, log); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if left := append(lab.Leftovers(cfg.Name), lab.KubeletLeftovers(cfg.Name, sysctls)...); len(left) > 0 {
			t.Errorf("left behind after down: %v", left)
		}
		cniAfter, _ := filepath.Glob("/run/netns/cni-*")
		for _, f := range cniAfter {
			if !slices.Contains(cniBefore, f) {
				t.Errorf("pod network namespace %s left behind after down", f)
			}
		}
	})
	a, b := l.Topo.Clusters[0], l.Topo.Clusters[1]
	podsOf := func(c lab.Cluster, app string) lab.KubePod {
		pods, err := l.WaitKubePods(ctx, c, "demo", "app="+app, len(c.Nodes), 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return pods[0]
	}
	webA, apiA, webB, apiB := podsOf(a, "web"), podsOf(a, "api"), podsOf(b, "web"), podsOf(b, "api")

	t.Run("Deployment pods reach each other across clusters", func(t *testing.T) {
		for _, pair := range [][2]lab.KubePod{{webA, apiB}, {webB, apiA}, {webB, apiB}} {
			var err error
			for i := 0; i < 5; i++ { // the first packet to a new WireGuard peer waits for the handshake
				if err = l.ProbeFromPod(ctx, pair[0], "tcp", pair[1].Addr(), 2*time.Second); err == nil {
					break
				}
			}
			if err != nil {
				t.Error(err)
			}
		}
	})

	policy := filepath.Join(l.Dir, "policy.yaml")
	if err := os.WriteFile(policy, lab.DemoPolicy, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("a federated policy is enforced by the agent pods once --wait returns", func(t *testing.T) {
		if out, err := l.Fedctl(ctx, "policy", "apply", "-f", policy, "--wait", "--wait-timeout", "30s"); err != nil || !strings.Contains(out, "enforced on every node") {
			t.Fatalf("apply --wait: %v\n%s", err, out)
		}
		if err := l.ProbeFromPod(ctx, webA, "tcp", apiB.Addr(), time.Second); !errors.Is(err, lab.ErrBlocked) {
			t.Errorf("cross-cluster web -> api after the policy: err = %v, want blocked", err)
		}
		if err := l.ProbeFromPod(ctx, webB, "tcp", apiB.Addr(), 2*time.Second); err != nil {
			t.Errorf("same-cluster web -> api must stay allowed: %v", err)
		}
	})
	pairs := []probePair{{webA, apiB, false}, {webB, apiB, true}, {webB, apiA, false}, {webA, apiA, true}}

	t.Run("agent container killed: kubelet restarts it, no wrong verdict", func(t *testing.T) {
		node := b.Nodes[0].Name
		pod, pid := agentPod(ctx, t, l, b, node)
		t.Logf("agent pod %s on %s: pid %d, RSS %s", pod.Name, node, pid, rssKB(pid))
		cs, err := l.KubeClient(b)
		if err != nil {
			t.Fatal(err)
		}
		restarts := func() int32 {
			p, err := cs.CoreV1().Pods(lab.FedmeshNamespace).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil || len(p.Status.ContainerStatuses) == 0 {
				return -1
			}
			return p.Status.ContainerStatuses[0].RestartCount
		}
		before := restarts()
		loop := startProbeLoop(ctx, l, pairs)
		time.Sleep(2 * time.Second)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, "kubelet restarts the agent container and it is ready again", 90*time.Second, func() error {
			if r := restarts(); r <= before {
				return fmt.Errorf("restart count %d", r)
			}
			if ps, err := l.KubePods(ctx, b, lab.FedmeshNamespace, "app.kubernetes.io/component=agent"); err != nil || len(ps) != 1 {
				return fmt.Errorf("ready agent pods %v (err %v)", ps, err)
			}
			return nil
		})
		time.Sleep(3 * time.Second)
		loop.finish(t, "agent kill")
	})

	t.Run("helm upgrade to a rebuilt agent image rolls the DaemonSet, no wrong verdict", func(t *testing.T) {
		buildImages(t, imagesB, "e2e-b")
		if err := l.ImportImages(ctx, imagesB); err != nil {
			t.Fatal(err)
		}
		loop := startProbeLoop(ctx, l, pairs)
		time.Sleep(2 * time.Second)
		start := time.Now()
		for _, c := range l.Topo.Clusters {
			if out, err := l.HelmInstall(ctx, c, "upgrade", "e2e-b"); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		}
		rev, err := l.WaitEnforced(ctx, 90*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("helm upgrade of both clusters to every node enforcing revision %d: %s", rev, time.Since(start).Round(100*time.Millisecond))
		time.Sleep(3 * time.Second)
		loop.finish(t, "helm upgrade")
		for _, c := range l.Topo.Clusters {
			cs, err := l.KubeClient(c)
			if err != nil {
				t.Fatal(err)
			}
			ds, err := cs.AppsV1().DaemonSets(lab.FedmeshNamespace).Get(ctx, "fedmesh-agent", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if img := ds.Spec.Template.Spec.Containers[0].Image; !strings.HasSuffix(img, ":e2e-b") {
				t.Errorf("%s agent image %s after the upgrade, want tag e2e-b", c.Name, img)
			}
			if ds.Status.UpdatedNumberScheduled != ds.Status.DesiredNumberScheduled || ds.Status.NumberReady != ds.Status.DesiredNumberScheduled {
				t.Errorf("%s DaemonSet not rolled: %+v", c.Name, ds.Status)
			}
		}
		_, pid := agentPod(ctx, t, l, a, a.Nodes[0].Name)
		t.Logf("agent RSS after the upgrade on %s: %s", a.Nodes[0].Name, rssKB(pid))
	})

	t.Run("helm uninstall leaves no BPF program or pin on the node", func(t *testing.T) {
		for _, c := range l.Topo.Clusters {
			n := c.Nodes[0]
			if progs, err := tcxPrograms(n.Host.NS); err != nil || progs == 0 {
				t.Fatalf("%s before uninstall: %d tcx programs (err %v), want the agent's", n.Name, progs, err)
			}
			if out, err := l.HelmUninstall(ctx, c); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			eventually(t, "no tcx program on "+n.Name, 30*time.Second, func() error {
				progs, err := tcxPrograms(n.Host.NS)
				if err == nil && progs > 0 {
					err = fmt.Errorf("%d tcx programs still attached", progs)
				}
				return err
			})
			if _, err := os.Stat(l.PinDir(n)); !errors.Is(err, os.ErrNotExist) {
				entries, _ := os.ReadDir(l.PinDir(n))
				t.Errorf("%s: pins left in %s after helm uninstall: %v", n.Name, l.PinDir(n), entries)
			}
		}
	})
}
