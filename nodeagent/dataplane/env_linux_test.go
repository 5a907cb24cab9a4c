package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/internal/nstest"
)

// requireKernel fails (CI=true) or skips when the kernel dataplane cannot
// run here.
func requireKernel(t testing.TB) {
	t.Helper()
	if err := Probe("/sys/fs/bpf"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("kernel dataplane required in CI: %v", err)
		}
		if errors.Is(err, ErrNotSupported) {
			t.Skipf("kernel dataplane not available: %v", err)
		}
		t.Fatal(err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("iproute2 required in CI")
		}
		t.Skip("iproute2 missing")
	}
}

func randName(prefix string) string { return nstest.RandName(prefix) }

// newNetNS creates a named netns removed at cleanup and returns its path.
func newNetNS(t testing.TB) (name, path string) { t.Helper(); return nstest.NewNetNS(t, "fmdp") }

func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newEBPF starts a kernel dataplane pinned in a test-private directory and
// uninstalls it at cleanup.
func newEBPF(t testing.TB, netns string) (*EBPF, Config) {
	t.Helper()
	return newEBPFWith(t, Config{NetNS: netns})
}

// newEBPFWith is newEBPF with cfg's settings (its PinDir is test-private).
func newEBPFWith(t testing.TB, cfg Config) (*EBPF, Config) {
	t.Helper()
	cfg.PinDir = "/sys/fs/bpf/" + randName("fmdp-test-")
	dp, err := New(context.Background(), cfg)
	if err != nil {
		// New pins the maps before it loads the programs: a failed load
		// (a verifier refusal) leaves them, in this test's own directory.
		if uerr := Uninstall(context.Background(), cfg.PinDir); uerr != nil {
			t.Error(uerr)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dp.Close()
		if err := Uninstall(context.Background(), cfg.PinDir); err != nil {
			t.Error(err)
		}
	})
	return dp, cfg
}

// skbCtx is the head of struct __sk_buff up to ifindex, for BPF_PROG_TEST_RUN.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority, IngressIfindex, Ifindex uint32
}

// runProg runs the program for dir on frame as if seen on ifindex; it must
// be called inside the netns owning ifindex.
func (e *EBPF) runProg(dir uint8, ifindex uint32, frame []byte) (int32, error) {
	prog := e.coll.Programs["fm_to_pod"]
	if dir == 1 {
		prog = e.coll.Programs["fm_from_pod"]
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: skbCtx{Ifindex: ifindex}})
	return int32(ret), err
}

// egressSYN runs a TCP SYN from 198.18.0.1 to dst through the egress
// program of interface ifindex in netns and returns the verdict.
func egressSYN(t *testing.T, kern *EBPF, netns string, ifindex uint32, dst netip.Addr, sport, dport uint16) Verdict {
	t.Helper()
	f := pktSpec{src: netip.MustParseAddr("198.18.0.1"), dst: dst, proto: protoTCP, sport: sport, dport: dport, tcpFlags: 2}.frame()
	var got int32
	if err := inNetNS(netns, func() (err error) { got, err = kern.runProg(uint8(policy.Egress), ifindex, f); return err }); err != nil {
		t.Fatal(err)
	}
	if got == retDrop {
		return Deny
	}
	return Allow
}

func ifindexIn(netns, iface string) (uint32, error) {
	var idx uint32
	err := inNetNS(netns, func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return fmt.Errorf("find %s: %w", iface, err)
		}
		idx = uint32(ifi.Index)
		return nil
	})
	return idx, err
}
