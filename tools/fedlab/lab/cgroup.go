package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The pods of one lab node share a cgroup v2 directory, as a real node's
// pods share the kubelet's kubepods cgroup: the agent's socket-level
// service translation (cgroup connect/sendmsg/recvmsg hooks) sees only
// the sockets of processes inside the cgroup it attaches to, and the lab's
// nodes are network namespaces on one host, so each lab node's agent
// attaches to its own node's cgroup and every process the lab runs in a
// pod starts inside it. Nothing else on the machine is in these cgroups,
// so a teardown may kill what is left in them: the lab started all of it.

// cgroup2Root is where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup
// on a unified host, /sys/fs/cgroup/unified on a hybrid one.
func cgroup2Root() string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return "/sys/fs/cgroup"
	}
	return "/sys/fs/cgroup/unified"
}

// LabCgroup is the lab's cgroup v2 directory, parent of its nodes'.
func LabCgroup(lab string) string { return filepath.Join(cgroup2Root(), "fedlab-"+lab) }

// NodeCgroup is the cgroup v2 directory of a lab node's pods, where its
// agent attaches the service translation.
func (t *Topology) NodeCgroup(n Node) string { return filepath.Join(LabCgroup(t.Name), n.Host.NS) }

// makeCgroups creates every node's pod cgroup.
func makeCgroups(t *Topology) error {
	for _, c := range t.Clusters {
		for _, n := range c.Nodes {
			if err := os.MkdirAll(t.NodeCgroup(n), 0o755); err != nil {
				return fmt.Errorf("create the pod cgroup of node %s: %w", n.Name, err)
			}
		}
	}
	return nil
}

// removeCgroups kills what is left in the lab's cgroups (processes the lab
// started in its pods) and removes them, children first.
func removeCgroups(ctx context.Context, lab string) error {
	root := LabCgroup(lab)
	children, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read lab cgroup %s: %w", root, err)
	}
	var errs []error
	for _, e := range children {
		if e.IsDir() {
			errs = append(errs, removePodCgroup(ctx, filepath.Join(root, e.Name())))
		}
	}
	errs = append(errs, removePodCgroup(ctx, root))
	return errors.Join(errs...)
}

func removePodCgroup(ctx context.Context, dir string) error {
	// cgroup.kill (Linux 5.14) SIGKILLs every process in the cgroup.
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := waitFor(ctx, "cgroup "+dir+" to empty", func() error {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	return nil
}

// enterPod returns the command line that runs argv in network namespace
// ns and, unless cgroup is "", in that cgroup: a shell moves itself into the
// cgroup, then becomes nsenter, so argv's first socket is already inside.
// nsenter rather than `ip netns exec`: the latter remounts /sys and would
// hide bpffs pins from the agent. Unless resolv is "", argv also gets the
// pod's own resolv.conf:
// a pod here is a network namespace and shares the machine's files, so
// each command gets a private mount namespace (unshare --mount, private
// propagation: nothing leaks to the host) in which resolv is bind-mounted
// on /etc/resolv.conf, as a container runtime mounts the kubelet's
// resolv.conf into a container. The chain execs all the way down
// (unshare without --fork, nsenter for a network namespace), so the
// process the lab records is argv itself.
func enterPod(ns, cgroup, resolv string, argv []string) []string {
	full := append([]string{"nsenter", "--net=/var/run/netns/" + ns, "--"}, argv...)
	if resolv != "" {
		full = append([]string{"unshare", "--mount", "--propagation", "private", "--",
			"sh", "-c", `mount --bind "$0" /etc/resolv.conf || exit 126; exec "$@"`, resolv}, full...)
	}
	if cgroup == "" {
		return full
	}
	return append([]string{"sh", "-c", `echo $$ > "$0" || exit 126; exec "$@"`, filepath.Join(cgroup, "cgroup.procs")}, full...)
}

// inPod returns the command line that runs argv in a pod: in the pod's
// network namespace and its node's cgroup, with the pod's resolv.conf
// (the node-local resolver).
func (t *Topology) inPod(pod string, argv []string) ([]string, error) {
	_, n, p, ok := t.Pod(pod)
	if !ok {
		return nil, fmt.Errorf("no pod %s in lab %s", pod, t.Name)
	}
	return enterPod(p.NS, t.NodeCgroup(*n), resolvPath(t.Name, p.NS), argv), nil
}

// PodCommand is an exec.Cmd running argv in a pod (its network namespace,
// its node's cgroup and its resolv.conf).
func (t *Topology) PodCommand(ctx context.Context, pod string, argv ...string) (*exec.Cmd, error) {
	full, err := t.inPod(pod, argv)
	if err != nil {
		return nil, err
	}
	return exec.CommandContext(ctx, full[0], full[1:]...), nil
}

// cgroupLeftovers names the lab's cgroup when it still exists.
func cgroupLeftovers(lab string) []string {
	if _, err := os.Stat(LabCgroup(lab)); err == nil {
		return []string{LabCgroup(lab)}
	}
	return nil
}

// cgroupOf returns the cgroup v2 path of a process, for tests.
func cgroupOf(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(cgroup2Root(), rest), nil
		}
	}
	return "", fmt.Errorf("process %d has no cgroup v2 entry", pid)
}
