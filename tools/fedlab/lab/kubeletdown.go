package lab

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// kubeletDown removes what the kubelet lab left on the host, after Down has
// stopped the lab's own processes (kubelets, containerds, the Kubernetes
// control planes) and before it deletes the namespaces: every process in
// the nodes' cgroups (containers and containerd's shims), the mounts under
// the lab's dirs (kubelet's self bind-mount, pod volumes, overlay rootfs,
// sandbox shm), the pods' /run/netns/cni-* files, the cgroups, the
// kubelet's sysctls, log links, CNI results and its device-plugin socket.
// Idempotent; a lab that never ran kubelets has no kubelet.json and is
// left alone.
func kubeletDown(name string) error {
	ks, err := loadKubeletState(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	// The pods' CNI results: under the lab's network, and containerd's
	// loopback result per sandbox of the lab's nodes.
	results, _ := filepath.Glob("/var/lib/cni/results/" + cniNetwork(name) + "-*")
	sandboxes, _ := filepath.Glob(filepath.Join(ks.VarDir, "*", "containerd", "io.containerd.grpc.v1.cri", "sandboxes", "*"))
	for _, sb := range sandboxes {
		m, _ := filepath.Glob("/var/lib/cni/results/*-" + filepath.Base(sb) + "-*")
		results = append(results, m...)
	}
	// The pods' network namespaces: those the lab's processes hold (by
	// inode), and those its CNI results name (a sandbox whose processes
	// are gone, e.g. a finished Job's, still has its file).
	held := map[uint64]bool{}
	for _, root := range ks.CgroupRoots {
		for _, pid := range cgroupPIDs(root) {
			var st syscall.Stat_t
			if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err == nil {
				held[st.Ino] = true
			}
		}
	}
	named := map[string]bool{}
	for _, f := range results {
		if b, err := os.ReadFile(f); err == nil {
			var r struct {
				NetNS string `json:"netns"`
			}
			if json.Unmarshal(b, &r) == nil && (strings.HasPrefix(r.NetNS, "/var/run/netns/cni-") || strings.HasPrefix(r.NetNS, "/run/netns/cni-")) {
				named["/run/netns/"+filepath.Base(r.NetNS)] = true
			}
		}
	}
	if cni, _ := filepath.Glob("/run/netns/cni-*"); len(cni) > 0 {
		var anyHeld map[uint64]bool // every process's netns, read once if needed
		for _, f := range cni {
			var st syscall.Stat_t
			if syscall.Stat(f, &st) != nil {
				continue
			}
			switch {
			case held[st.Ino] || named[f]:
				ks.Netns = append(ks.Netns, f)
			case !ks.StartedAt.IsZero() && !slices.Contains(ks.NetnsBefore, f) && !fileChangedBefore(f, ks.StartedAt):
				// Made while the lab ran and held by no process anywhere:
				// a sandbox the lab's containerd tore down or never
				// finished (no CNI result), so nothing else owns it.
				if anyHeld == nil {
					anyHeld = processNetns()
				}
				if !anyHeld[st.Ino] {
					ks.Netns = append(ks.Netns, f)
				}
			}
		}
		_ = ks.save(name)
	}
	for _, root := range ks.CgroupRoots {
		if err := killCgroup(root); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dir := range []string{ks.VarDir, StateDir(name)} {
		if err := unmountUnder(dir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, f := range ks.Netns {
		_ = unix.Unmount(f, unix.MNT_DETACH)
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pod netns %s: %w", f, err))
		}
	}
	for _, root := range ks.CgroupRoots {
		if err := removeCgroup(root); err != nil {
			errs = append(errs, err)
		}
	}
	for k, v := range ks.Sysctls {
		if err := os.WriteFile("/proc/sys/"+strings.ReplaceAll(k, ".", "/"), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, v, err))
		}
	}
	// Links the kubelets made to their pods' logs (the one path not
	// relocatable), and the CNI results cached under the lab's network.
	if links, _ := filepath.Glob("/var/log/containers/*.log"); len(links) > 0 {
		for _, l := range links {
			if dst, err := os.Readlink(l); err == nil && strings.HasPrefix(dst, ks.VarDir+"/") {
				_ = os.Remove(l)
			}
		}
	}
	for _, f := range results {
		_ = os.Remove(f)
	}
	if ks.CreatedKubeletDir {
		if err := os.RemoveAll("/var/lib/kubelet"); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(ks.VarDir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", ks.VarDir, err))
	}
	_ = os.Remove(filepath.Dir(ks.VarDir)) // /var/lib/fedlab, once empty
	return errors.Join(errs...)
}

// cgroupDirs are root's cgroup directories in every hierarchy, deepest
// first.
func cgroupDirs(root string) []string {
	var dirs []string
	for _, ctl := range cgroupControllers {
		base := filepath.Join("/sys/fs/cgroup", ctl, root)
		_ = filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	return dirs
}

// cgroupPIDs are the processes in root's pids hierarchy (every process of
// a node: containerd's shims and the containers).
func cgroupPIDs(root string) []int {
	var pids []int
	for _, d := range cgroupDirs(root) {
		if !strings.HasPrefix(d, "/sys/fs/cgroup/pids/") {
			continue
		}
		f, err := os.Open(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if pid, err := strconv.Atoi(sc.Text()); err == nil {
				pids = append(pids, pid)
			}
		}
		f.Close()
	}
	return pids
}

// killCgroup SIGKILLs every process in root, by PID, until none is left.
func killCgroup(root string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := cgroupPIDs(root)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in cgroup %s survive SIGKILL", pids, root)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeCgroup removes root's cgroups, deepest first.
func removeCgroup(root string) error {
	var errs []error
	for _, d := range cgroupDirs(root) {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// unmountUnder unmounts every mount point at or below dir, deepest first
// (lazily: a mount still busy goes once its last user does).
func unmountUnder(dir string) error {
	if dir == "" || dir == "/" {
		return fmt.Errorf("refusing to unmount everything under %q", dir)
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// KubeletLeftovers lists what a kubelet lab called name left on the host:
// mounts under its dirs, cgroups, its var dir, and sysctls that differ from
// before (for tests asserting a clean teardown). before are the sysctls
// read before the lab came up.
func KubeletLeftovers(name string, before map[string]string) []string {
	var out []string
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 {
			mp := unescapeMount(f[4])
			if strings.HasPrefix(mp, kubeletVarDir(name)+"/") || strings.HasPrefix(mp, StateDir(name)+"/") {
				out = append(out, "mount "+mp)
			}
		}
	}
	for _, ctl := range cgroupControllers {
		if m, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", ctl, "fedlab-"+name+"-*")); len(m) > 0 {
			out = append(out, m...)
		}
	}
	if _, err := os.Stat(kubeletVarDir(name)); err == nil {
		out = append(out, kubeletVarDir(name))
	}
	for k, v := range before {
		if b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(k, ".", "/")); err == nil && strings.TrimSpace(string(b)) != v {
			out = append(out, fmt.Sprintf("sysctl %s=%s (was %s)", k, strings.TrimSpace(string(b)), v))
		}
	}
	return out
}

// KubeletSysctls reads the host-wide sysctls the kubelet lab changes.
func KubeletSysctls() map[string]string {
	out := map[string]string{}
	for _, k := range kubeletSysctls {
		if b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(k, ".", "/")); err == nil {
			out[k] = strings.TrimSpace(string(b))
		}
	}
	return out
}

// fileChangedBefore reports whether f's status last changed before t (a
// netns bind mount's file keeps the time it was created).
func fileChangedBefore(f string, t time.Time) bool {
	fi, err := os.Lstat(f)
	return err == nil && fi.ModTime().Before(t)
}

// processNetns is the set of network namespaces (by inode) any process on
// the host is in.
func processNetns() map[uint64]bool {
	out := map[uint64]bool{}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range procs {
		var st syscall.Stat_t
		if syscall.Stat(p, &st) == nil {
			out[st.Ino] = true
		}
	}
	return out
}
