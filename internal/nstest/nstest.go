// Package nstest holds the test helpers that create and enter network
// namespaces and cgroups, removing what they made at cleanup; one copy for
// every package whose tests run real packets.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RandName is prefix with eight random hex digits, for names that must
// not collide with a parallel run's.
func RandName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// IP runs ip with args, failing t on an error.
func IP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// NewNetNS creates a named network namespace (prefix and random digits)
// with lo up, removed at cleanup, and returns its name and path.
func NewNetNS(t testing.TB, prefix string) (name, path string) {
	t.Helper()
	name = RandName(prefix)
	IP(t, "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	IP(t, "-n", name, "link", "set", "lo", "up")
	return name, "/run/netns/" + name
}

// EnterCgroup moves this process into the cgroup dir (under the cgroup v2
// mount mnt) and back at cleanup, so dir can be removed.
func EnterCgroup(t testing.TB, mnt, dir string) {
	t.Helper()
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	orig := ""
	for line := range strings.SplitSeq(string(self), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			orig = filepath.Join(mnt, rest)
		}
	}
	if orig == "" {
		t.Fatalf("no cgroup v2 membership in /proc/self/cgroup: %s", self)
	}
	pid := []byte(fmt.Sprint(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0); err != nil {
		t.Fatalf("enter cgroup %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(orig, "cgroup.procs"), pid, 0); err != nil {
			t.Errorf("return to cgroup %s: %v", orig, err)
		}
	})
}
