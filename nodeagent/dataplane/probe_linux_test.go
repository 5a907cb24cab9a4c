package dataplane

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A pin dir below an existing bpffs must become a directory of that bpffs,
// not a second bpffs mounted over it (which would hide the pins from every
// other agent and leak a mount).
func TestEnsureBPFFSCreatesDirsInsideTheExistingMount(t *testing.T) {
	requireKernel(t)
	top := filepath.Join("/sys/fs/bpf", fmt.Sprintf("fedmesh-probe-%d", os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(top) })
	root := filepath.Join(top, "lab", "node")
	if err := ensureBPFFS(root); err != nil {
		t.Fatal(err)
	}
	var parent, child unix.Stat_t
	if err := unix.Stat("/sys/fs/bpf", &parent); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(root, &child); err != nil {
		t.Fatal(err)
	}
	if parent.Dev != child.Dev {
		t.Fatalf("%s is a new mount (dev %d), want a directory of /sys/fs/bpf (dev %d)", root, child.Dev, parent.Dev)
	}
}

// TestProgramsStayWellInsideTheVerifierBudget: the verifier gives up at 1M
// processed instructions and fedmesh.c is near-branch-free only where it
// must be (keeping conntrack state live across the policy lookups once
// multiplied the states past the limit). Fail early, with room left for
// another kernel's verifier, instead of at load on some node.
func TestProgramsStayWellInsideTheVerifierBudget(t *testing.T) {
	requireKernel(t)
	dp, _ := newEBPF(t, "")
	for _, n := range []string{"fm_from_pod", "fm_to_pod", "fm_decide_from_pod", "fm_decide_to_pod"} {
		info, err := dp.coll.Programs[n].Info()
		if err != nil {
			t.Fatal(err)
		}
		vi, ok := info.VerifiedInstructions()
		if !ok {
			// Kernels since 5.16 report it; CI's does, so there it must.
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s: the kernel does not report verified instructions (CI's kernel does)", n)
			}
			t.Skip("kernel does not report verified instructions")
		}
		t.Logf("%s: %d instructions verified", n, vi)
		if vi > 600_000 {
			t.Errorf("%s: the verifier processed %d instructions, want <= 600000 (limit 1M)", n, vi)
		}
	}
}
