// Package e2e runs fedmesh end to end through fedlab: real control-plane
// replicas, kube-apiservers and syncers, agents with the eBPF dataplane,
// WireGuard and GoBGP, BIRD and FRR ToRs, all inside network namespaces.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// binDir holds the binaries built once for the whole run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fedmesh-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := func() int {
		defer os.RemoveAll(dir)
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
		return m.Run()
	}()
	os.Exit(code)
}
