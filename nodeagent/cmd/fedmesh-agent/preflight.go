package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Before it opens anything, the agent checks that the host gave it what its
// features need, and exits naming each thing missing: an agent pod without
// its bpffs mount or a capability would otherwise fail deep inside a
// syscall with a bare EPERM. It exits before serving /readyz, so it is
// never ready.

// Capability numbers (linux/capability.h).
const (
	capNetBindService = 10
	capNetAdmin       = 12
	capSysAdmin       = 21
	capPerfmon        = 38
	capBPF            = 39
)

var capNames = map[int]string{capNetBindService: "NET_BIND_SERVICE", capNetAdmin: "NET_ADMIN", capSysAdmin: "SYS_ADMIN", capPerfmon: "PERFMON", capBPF: "BPF"}

// hostFacts is what preflight looks at, read by readHostFacts.
type hostFacts struct {
	capEff  uint64 // effective capability set
	bpffs   bool   // --bpf-pin-dir (or its nearest existing parent) is on bpffs
	pinPath string // the directory checked for bpffs
	tun     bool   // /dev/net/tun exists
}

// preflight lists what the enabled features need and the host lacks. Pure.
func preflight(o *options, h hostFacts) error {
	need := map[int][]string{}
	var errs []error
	if o.dataplane == "ebpf" {
		for _, c := range []int{capBPF, capPerfmon, capNetAdmin} {
			need[c] = append(need[c], "the eBPF dataplane")
		}
		need[capSysAdmin] = append(need[capSysAdmin], "the eBPF dataplane (reading its pinned maps of maps after a restart)")
		if !h.bpffs {
			errs = append(errs, fmt.Errorf("--bpf-pin-dir %s is not on a bpffs (%s is not): mount it (mount -t bpf bpffs /sys/fs/bpf; in a pod a hostPath volume /sys/fs/bpf)", o.bpfPinDir, h.pinPath))
		}
	}
	if o.wireguard {
		need[capNetAdmin] = append(need[capNetAdmin], "WireGuard")
		if !h.tun {
			errs = append(errs, errors.New("/dev/net/tun is missing, WireGuard needs it: in a pod a hostPath volume /dev/net/tun of type CharDevice (or --wireguard=false)"))
		}
	}
	if o.bgp {
		need[capNetBindService] = append(need[capNetBindService], "the BGP speaker (port 179)")
	}
	for _, c := range []int{capBPF, capPerfmon, capNetAdmin, capSysAdmin, capNetBindService} {
		if len(need[c]) > 0 && h.capEff&(1<<c) == 0 {
			errs = append(errs, fmt.Errorf("capability %s is missing, needed by %s: add it to the agent's securityContext.capabilities", capNames[c], strings.Join(need[c], " and ")))
		}
	}
	return errors.Join(errs...)
}

// readHostFacts reads the effective capabilities, the filesystem under the
// pin dir and the TUN device.
func readHostFacts(pinDir string) (hostFacts, error) {
	var h hostFacts
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return h, fmt.Errorf("read own capabilities: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			if h.capEff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				return h, fmt.Errorf("parse CapEff %q: %w", v, err)
			}
		}
	}
	h.pinPath = filepath.Clean(pinDir)
	for {
		if _, err := os.Stat(h.pinPath); err == nil || h.pinPath == "/" {
			break
		}
		h.pinPath = filepath.Dir(h.pinPath)
	}
	var st unix.Statfs_t
	h.bpffs = unix.Statfs(h.pinPath, &st) == nil && st.Type == unix.BPF_FS_MAGIC
	_, err = os.Stat("/dev/net/tun")
	h.tun = err == nil
	return h, nil
}
