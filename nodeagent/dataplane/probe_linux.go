package dataplane

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/fedmesh/fedmesh/internal/netnsrun"
)

// ErrNotSupported is wrapped by every UnsupportedError: this kernel or
// process cannot run the eBPF dataplane.
var ErrNotSupported = errors.New("ebpf dataplane not supported here")

// UnsupportedError names the missing capability and what to do about it.
type UnsupportedError struct {
	Feature string // "privileges", "BTF", "bpffs", "tcx"
	Remedy  string
	Err     error
}

func (e *UnsupportedError) Error() string {
	msg := fmt.Sprintf("ebpf dataplane: %s missing: %s", e.Feature, e.Remedy)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *UnsupportedError) Unwrap() []error { return []error{ErrNotSupported, e.Err} }

const (
	capNetAdmin = 12
	capSysAdmin = 21
	capBPF      = 39
)

// Probe checks what the eBPF dataplane needs before anything is loaded:
// privileges (CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN), kernel BTF, and a
// bpffs at bpffsRoot (mounted there when nothing is). tcx is probed after
// load (it needs a program). Errors are *UnsupportedError.
func Probe(bpffsRoot string) error {
	if !hasCaps() {
		return &UnsupportedError{Feature: "privileges",
			Remedy: "run the agent as root or with CAP_BPF and CAP_NET_ADMIN"}
	}
	if _, err := btf.LoadKernelSpec(); err != nil {
		return &UnsupportedError{Feature: "BTF",
			Remedy: "kernel has no /sys/kernel/btf/vmlinux; use a kernel built with CONFIG_DEBUG_INFO_BTF=y", Err: err}
	}
	if err := ensureBPFFS(bpffsRoot); err != nil {
		return &UnsupportedError{Feature: "bpffs",
			Remedy: fmt.Sprintf("mount a bpf filesystem at %s (mount -t bpf bpffs %s)", bpffsRoot, bpffsRoot), Err: err}
	}
	return nil
}

func hasCaps() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return os.Geteuid() == 0
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	return has(capSysAdmin) || (has(capBPF) && has(capNetAdmin))
}

// ensureBPFFS makes root a directory on a bpffs: inside the bpffs that
// covers its nearest existing ancestor (creating the missing directories), or
// a new bpffs mounted at root when none covers it. Mounting at a path that is
// already inside a bpffs would hide that bpffs' pins from everyone else.
func ensureBPFFS(root string) error {
	var st unix.Statfs_t
	for dir := filepath.Clean(root); ; dir = filepath.Dir(dir) {
		if err := unix.Statfs(dir, &st); err == nil {
			if st.Type == unix.BPF_FS_MAGIC {
				return os.MkdirAll(root, 0o700)
			}
			break
		}
		if dir == "/" {
			break
		}
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", root, err)
	}
	if err := unix.Mount("bpffs", root, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", root, err)
	}
	return nil
}

// probeTCX attaches prog to a nonexistent interface: the kernel says ENODEV
// when it knows tcx links and something else when it does not.
func probeTCX(prog *ebpf.Program) error {
	l, err := link.AttachTCX(link.TCXOptions{Interface: math.MaxInt32, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err == nil {
		l.Close()
		return nil
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return &UnsupportedError{Feature: "tcx", Remedy: "kernel lacks tcx links (needs Linux >= 6.6); run on a newer kernel", Err: err}
	}
	return nil
}

// inNetNS runs fn on an OS thread inside the network namespace at path
// (path "" runs it here). Sockets and links fn creates stay in that netns.
var inNetNS = netnsrun.Do
