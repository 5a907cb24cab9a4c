// Package e2e runs fedmesh end to end through fedlab: real control-plane
// replicas, kube-apiservers and syncers, agents with the eBPF dataplane,
// WireGuard and GoBGP, BIRD and FRR ToRs, all inside network namespaces.
//
// TestMain checks what the lab needs before it builds anything: a machine
// without it skips every scenario with one message, or fails the run with
// that message under CI=true. The scenarios share one lab (useLab), which
// TestMain tears down at the end.
package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
)

// binDir holds the binaries built once for the whole run.
var binDir string

// unmet says what this machine lacks for the lab ("" when nothing).
var unmet string

func TestMain(m *testing.M) {
	if missing := missingPrereqs(); len(missing) > 0 {
		unmet = "end-to-end tests need " + strings.Join(missing, ", ")
		if os.Getenv("CI") == "true" {
			fmt.Fprintln(os.Stderr, "FAIL:", unmet)
			os.Exit(1)
		}
		// Every scenario skips with the message; nothing to build.
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "fedmesh-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	build := exec.Command("go", "build", "-o", dir+"/",
		"./controlplane/cmd/fedmesh-controlplane", "./nodeagent/cmd/fedmesh-agent",
		"./federation/cmd/fedmesh-syncer", "./tools/fedctl", "./tools/fedlab")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build fedmesh binaries:", err)
		return 1
	}
	code := m.Run()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := releaseLab(ctx, log); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		code = 1
	}
	return code
}

// labTools are the programs the lab runs or drives; a path is looked up
// as it is.
var labTools = []string{"ip", "nsenter", "unshare", "ping", "/usr/sbin/bird", "birdc", "/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "vtysh", "/usr/bin/redis-server", "redis-cli", "/usr/sbin/unbound", "unbound-checkconf"}

// missingPrereqs lists what the lab needs and this machine lacks, each
// with how to get it.
func missingPrereqs() []string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (the lab creates network namespaces; run as root or with sudo)")
	}
	var tools []string
	for _, bin := range labTools {
		if _, err := exec.LookPath(bin); err != nil {
			tools = append(tools, bin)
		}
	}
	if len(tools) > 0 {
		missing = append(missing, strings.Join(tools, ", ")+" (make deps installs bird2, frr, iproute2, redis-server/redis-tools and unbound)")
	}
	if _, err := exec.LookPath("go"); err != nil {
		missing = append(missing, "the go tool (to build the binaries)")
	}
	if _, err := kubetest.FindBinaries(); err != nil {
		missing = append(missing, "kube-apiserver and etcd in .cache/bin (make deps)")
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		missing = append(missing, "bpffs on /sys/fs/bpf (mount -t bpf bpffs /sys/fs/bpf)")
	}
	return missing
}

// requireLab skips a scenario when the machine cannot run the lab (under
// CI=true TestMain has failed the run already).
func requireLab(t testing.TB) {
	t.Helper()
	if unmet != "" {
		t.Skip(unmet)
	}
}
