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
