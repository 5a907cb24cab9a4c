package netnsrun

import (
	"errors"
	"os"
	"os/exec"
	"testing"
)

func netnsID(t *testing.T) string {
	t.Helper()
	id, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// fn runs in the namespace asked for, its error comes back, and the
// caller's thread never leaves its own.
func TestDoRunsInTheNamespaceAndComesBack(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("network namespaces need root; CI=true must run this")
		}
		t.Skip("network namespaces need root")
	}
	name := "fmnsrun-test"
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	path := "/run/netns/" + name
	home := netnsID(t)
	var inside string
	if err := Do(path, func() error { inside = netnsID(t); return nil }); err != nil {
		t.Fatal(err)
	}
	if inside == home {
		t.Fatalf("fn ran in %s, home is %s: want another namespace", inside, home)
	}
	boom := errors.New("boom")
	if err := Do(path, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	if got := netnsID(t); got != home {
		t.Fatalf("after Do this thread is in %s, want %s", got, home)
	}
	var here string
	if err := Do("", func() error { here = netnsID(t); return nil }); err != nil || here != home {
		t.Fatalf(`Do("") ran in %s (%v), want here (%s)`, here, err, home)
	}
	if err := Do("/nonexistent/netns", func() error { return nil }); err == nil {
		t.Fatal("Do on a missing namespace file returned nil")
	}
}
