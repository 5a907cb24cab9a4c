package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Lab is a running (or half-built) lab.
type Lab struct {
	Topo  *Topology
	Dir   string
	State *State
	Log   *slog.Logger
}

// ErrNotRoot says the lab needs root: it creates namespaces and links.
var ErrNotRoot = errors.New("fedlab needs root: it creates network namespaces, veths and BPF programs; run it with sudo")

// Up builds the lab and starts its routers. On any error it tears down what
// it built, so a failed Up leaves nothing behind.
func Up(ctx context.Context, cfg Config, log *slog.Logger) (l *Lab, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if cfg.Kubelet {
		cfg.Pods = 0 // the kubelets' pods, not the lab's namespaces
	}
	topo, err := Plan(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := LoadState(cfg.Name); err == nil || nsExists(topo.Core) {
		return nil, fmt.Errorf("lab %q already exists: run `fedlab down --name %s` first", cfg.Name, cfg.Name)
	}
	dir := StateDir(cfg.Name)
	// 0755: FRR drops to the frr user and must traverse it to its own dir.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create lab dir: %w", err)
	}
	l = &Lab{Topo: topo, Dir: dir, State: &State{Config: cfg}, Log: log}
	defer func() {
		if err != nil {
			if kept := keepLogs(dir, cfg.Name); kept != "" {
				err = fmt.Errorf("%w (logs kept in %s)", err, kept)
			}
			if derr := Down(context.WithoutCancel(ctx), cfg.Name, log); derr != nil {
				log.Error("tear down failed lab", "err", derr)
			}
			l = nil
		}
	}()
	if err := l.State.save(dir); err != nil {
		return l, err
	}
	log.Info("building namespaces and links", "namespaces", len(topo.Namespaces()))
	if err := Build(ctx, topo); err != nil {
		return l, err
	}
	if err := makeCgroups(topo); err != nil {
		return l, err
	}
	if err := writeResolvConfs(topo); err != nil {
		return l, err
	}
	for _, c := range topo.Clusters {
		log.Info("starting ToR", "cluster", c.Name, "router", c.ToRKind, "ns", c.ToR.NS)
		if err := l.startToR(ctx, c); err != nil {
			return l, err
		}
	}
	if cfg.BinDir == "" {
		return l, nil // network only: the lab's own tests
	}
	if err := l.startApps(ctx); err != nil {
		return l, err
	}
	log.Info("starting the outside: unbound and servers", "ns", topo.Outside.NS, "dns", OutsideDNS)
	if err := l.startOutside(ctx); err != nil {
		return l, err
	}
	log.Info("starting control plane", "replicas", replicas, "ns", topo.Mgmt.NS, "addrs", topo.ControlPlaneAddrs())
	if err := l.startControlPlane(ctx); err != nil {
		return l, err
	}
	log.Info("registering clusters with fedctl cluster register")
	if err := l.registerClusters(ctx); err != nil {
		return l, err
	}
	if cfg.Kubelet {
		log.Info("starting a Kubernetes cluster per cluster: kubelets, containerd, fedmesh from its Helm chart")
		if err := l.startKubeletClusters(ctx); err != nil {
			return l, err
		}
	} else if cfg.NoKube {
		log.Info("publishing endpoints through the API (no kube-apiserver)")
		if err := l.publishEndpoints(ctx); err != nil {
			return l, err
		}
	} else {
		log.Info("starting a kube-apiserver and fedmesh-syncer per cluster")
		if err := l.startKube(ctx); err != nil {
			return l, err
		}
	}
	if !cfg.Kubelet {
		log.Info("starting agents", "nodes", len(topo.Clusters)*cfg.Nodes)
		if err := l.startAgents(ctx); err != nil {
			return l, err
		}
	}
	rev, err := l.WaitEnforced(ctx, 90*time.Second)
	if err != nil {
		return l, err
	}
	log.Info("every node enforces the federation", "revision", rev)
	return l, nil
}

// AppPort is where every lab pod's app (fedlab probe-serve) answers TCP and
// UDP; it is the pods' named port "http".
const AppPort = 8080

// startApps runs the probe server in every pod, as the pod's application,
// and redis-server beside it in the db pods.
func (l *Lab) startApps(ctx context.Context) error {
	self := l.bin("fedlab")
	for _, c := range l.Topo.Clusters {
		for _, n := range c.Nodes {
			for _, p := range n.Pods {
				proc, err := startIn(l.Dir, p.NS, l.Topo.NodeCgroup(n), "app-"+p.Name, []string{self, "probe-serve", "--port", fmt.Sprint(AppPort)})
				if err != nil {
					return err
				}
				if err := l.record(proc); err != nil {
					return err
				}
				if IsRedisPod(p) {
					if err := l.startRedis(ctx, c, n, p); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

func (l *Lab) record(p Proc) error {
	l.State.Procs = append(l.State.Procs, p)
	return l.State.save(l.Dir)
}

func (l *Lab) startToR(ctx context.Context, c Cluster) error {
	dir := filepath.Join(l.Dir, c.ToR.NS)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	switch c.ToRKind {
	case "bird":
		conf := filepath.Join(dir, "bird.conf")
		if err := os.WriteFile(conf, []byte(BIRDConfig(c, filepath.Join(dir, "bird.log"))), 0o644); err != nil {
			return err
		}
		sock := filepath.Join(dir, "bird.ctl")
		p, err := start(l.Dir, c.ToR.NS, c.ToR.NS+"-bird", []string{"/usr/sbin/bird", "-f", "-c", conf, "-s", sock, "-P", filepath.Join(dir, "bird.pid")})
		if err != nil {
			return err
		}
		if err := l.record(p); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return waitFor(wctx, "BIRD in "+c.ToR.NS, func() error { return run(wctx, "birdc", "-s", sock, "show", "status") })
	case "frr":
		// FRR drops privileges to frr:frr and needs its dirs owned by it.
		if err := run(ctx, "chown", "frr:frr", dir); err != nil {
			return err
		}
		conf := filepath.Join(dir, "frr.conf")
		if err := os.WriteFile(conf, []byte(FRRConfig(c, filepath.Join(dir, "frr.log"))), 0o644); err != nil {
			return err
		}
		if err := run(ctx, "chown", "frr:frr", conf); err != nil {
			return err
		}
		common := []string{"-u", "frr", "-g", "frr", "-f", conf, "-z", filepath.Join(dir, "zserv.api"), "--vty_socket", dir}
		z, err := start(l.Dir, c.ToR.NS, c.ToR.NS+"-zebra", append([]string{"/usr/lib/frr/zebra", "-i", filepath.Join(dir, "zebra.pid")}, common...))
		if err != nil {
			return err
		}
		if err := l.record(z); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := waitFor(wctx, "zebra in "+c.ToR.NS, func() error { _, err := os.Stat(filepath.Join(dir, "zserv.api")); return err }); err != nil {
			return err
		}
		b, err := start(l.Dir, c.ToR.NS, c.ToR.NS+"-bgpd", append([]string{"/usr/lib/frr/bgpd", "-i", filepath.Join(dir, "bgpd.pid")}, common...))
		if err != nil {
			return err
		}
		if err := l.record(b); err != nil {
			return err
		}
		return waitFor(wctx, "bgpd in "+c.ToR.NS, func() error {
			return run(wctx, "vtysh", "--vty_socket", dir, "-c", "show bgp summary")
		})
	}
	return fmt.Errorf("unknown ToR kind %q", c.ToRKind)
}

// ToRRoutes returns the ToR's kernel routes (its FIB) of both families,
// IPv4 then IPv6, which hold the pod CIDRs its nodes advertise.
func ToRRoutes(ctx context.Context, c Cluster) (string, error) {
	var b strings.Builder
	for _, fam := range []string{"-4", "-6"} {
		out, err := exec.CommandContext(ctx, "ip", "-n", c.ToR.NS, fam, "route", "show").CombinedOutput()
		b.Write(out)
		if err != nil {
			return b.String(), fmt.Errorf("ip -n %s %s route show: %w", c.ToR.NS, fam, err)
		}
	}
	return b.String(), nil
}

// ToRBGP returns what the ToR's router itself reports about its BGP
// sessions and the routes they carry (BIRD: birdc; FRR: vtysh), for
// diagnosing a route the FIB holds or lacks.
func (l *Lab) ToRBGP(ctx context.Context, c Cluster) (string, error) {
	dir := filepath.Join(l.Dir, c.ToR.NS)
	var cmds [][]string
	switch c.ToRKind {
	case "bird":
		sock := filepath.Join(dir, "bird.ctl")
		cmds = [][]string{{"birdc", "-s", sock, "show", "protocols", "all"}, {"birdc", "-s", sock, "show", "route", "all"}}
	case "frr":
		cmds = [][]string{{"vtysh", "--vty_socket", dir, "-c", "show bgp neighbors"}, {"vtysh", "--vty_socket", dir, "-c", "show ip bgp"}, {"vtysh", "--vty_socket", dir, "-c", "show bgp ipv6 unicast"}}
	default:
		return "", fmt.Errorf("unknown ToR kind %q", c.ToRKind)
	}
	var b strings.Builder
	for _, cmd := range cmds {
		out, err := exec.CommandContext(ctx, cmd[0], cmd[1:]...).CombinedOutput()
		fmt.Fprintf(&b, "$ %s\n%s\n", strings.Join(cmd, " "), out)
		if err != nil {
			return b.String(), fmt.Errorf("%s: %w", strings.Join(cmd, " "), err)
		}
	}
	return b.String(), nil
}

// Down stops every process the lab started and removes its namespaces,
// links and state. It is idempotent and works from the lab name alone, also
// when the state file is gone (the namespaces are found from the plan).
func Down(ctx context.Context, name string, log *slog.Logger) error {
	var errs []error
	st, err := LoadState(name)
	switch {
	case err == nil:
		for i := len(st.Procs) - 1; i >= 0; i-- {
			if err := st.Procs[i].stop(5 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	case !errors.Is(err, os.ErrNotExist):
		errs = append(errs, err)
	}
	// What is left in the pods' cgroups (processes run in pods after Up)
	// goes with them.
	if err := removeCgroups(ctx, name); err != nil {
		errs = append(errs, err)
	}
	// The kubelet lab's containers, mounts, cgroups and sysctls go before
	// the namespaces they live in.
	if err := kubeletDown(name); err != nil {
		errs = append(errs, err)
	}
	cfg := Config{Name: name, Clusters: 8, Nodes: 32, Pods: 32}
	if st != nil {
		cfg = st.Config
	}
	if topo, err := Plan(cfg); err == nil {
		if err := Teardown(ctx, topo); err != nil {
			errs = append(errs, err)
		}
	} else {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(filepath.Join(bpfPinRoot, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove BPF pins: %w", err))
	}
	// The shared pin root too once no lab or agent has pins under it
	// (Remove refuses a directory that is not empty).
	_ = os.Remove(bpfPinRoot)
	if err := os.RemoveAll(StateDir(name)); err != nil {
		errs = append(errs, err)
	}
	_ = os.Remove(filepath.Dir(StateDir(name))) // /run/fedlab, once no lab is left
	if log != nil {
		log.Info("lab down", "name", name)
	}
	return errors.Join(errs...)
}

// Leftovers lists namespaces whose name starts with the lab's prefix, for
// tests asserting that nothing is left behind.
func Leftovers(name string) []string {
	entries, _ := os.ReadDir("/var/run/netns")
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), name+"-") {
			out = append(out, e.Name())
		}
	}
	if _, err := os.Stat(StateDir(name)); err == nil {
		out = append(out, StateDir(name))
	}
	return append(out, cgroupLeftovers(name)...)
}

// Exec runs argv inside a pod (its network namespace and its node's
// cgroup), or inside any other namespace of the lab named by pod.
func (t *Topology) Exec(ctx context.Context, pod string, argv []string) *exec.Cmd {
	if cmd, err := t.PodCommand(ctx, pod, argv...); err == nil {
		return cmd
	}
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=/var/run/netns/" + pod, "--"}, argv...)...)
}

// keepLogs copies the lab's logs out of its state dir before a failed Up
// removes it, so the user can read why.
func keepLogs(dir, name string) string {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(logs) == 0 {
		return ""
	}
	out, err := os.MkdirTemp("", "fedlab-"+name+"-logs-")
	if err != nil {
		return ""
	}
	for _, f := range logs {
		if b, err := os.ReadFile(f); err == nil {
			_ = os.WriteFile(filepath.Join(out, filepath.Base(f)), b, 0o600)
		}
	}
	return out
}
