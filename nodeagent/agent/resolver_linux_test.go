package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// requireRoot skips without root, except in CI where it fails.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (network namespaces, veths); CI=true must run it")
		}
		t.Skip("needs root (network namespaces, veths)")
	}
}

// testNetns creates a named network namespace for the test and removes it
// afterwards; the calling thread's namespace is left unchanged.
func testNetns(t *testing.T) (string, netns.NsHandle) {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "fmag-" + hex.EncodeToString(b)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("return to the original netns: %v", err)
	}
	t.Cleanup(func() { ns.Close(); netns.DeleteNamed(name) })
	return "/run/netns/" + name, ns
}

func TestNetlinkResolverFindsThePodVethFromItsRoute(t *testing.T) {
	requireRoot(t)
	path, ns := testNetns(t)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mustUp := func(l netlink.Link) {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", l.Attrs().Name, err)
		}
	}
	// The "uplink" with a default route through a gateway, and a pod veth
	// with a /32 route, as Calico sets them up.
	uplink := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0"}, PeerName: "uplinkpeer"}
	pod := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "cali1234"}, PeerName: "eth0pod"}
	for _, l := range []netlink.Link{uplink, pod} {
		if err := h.LinkAdd(l); err != nil {
			t.Fatalf("add %s: %v", l.Attrs().Name, err)
		}
	}
	peer, err := h.LinkByName("eth0pod")
	if err != nil {
		t.Fatal(err)
	}
	upPeer, err := h.LinkByName("uplinkpeer")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []netlink.Link{uplink, upPeer, pod, peer} {
		mustUp(l)
	}
	addr, _ := netlink.ParseAddr("198.18.7.1/24")
	if err := h.AddrAdd(uplink, addr); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{Gw: net.ParseIP("198.18.7.254"), LinkIndex: uplink.Attrs().Index}); err != nil {
		t.Fatalf("default route: %v", err)
	}
	podLink, _ := h.LinkByName("cali1234")
	if err := h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.ParseIP("10.244.1.5").To4(), Mask: net.CIDRMask(32, 32)},
		LinkIndex: podLink.Attrs().Index, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatalf("pod route: %v", err)
	}

	r, err := NewNetlinkResolver(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tests := []struct {
		ip    string
		iface string
		found bool
	}{
		{"10.244.1.5", "cali1234", true},
		{"10.244.1.6", "", false}, // only the default route: not a pod of this node
		{"198.18.7.9", "", false}, // on-link on the uplink, not a veth
	}
	for _, tt := range tests {
		iface, found, err := r.Lookup(context.Background(), netip.MustParseAddr(tt.ip))
		if err != nil || iface != tt.iface || found != tt.found {
			t.Errorf("Lookup(%s) = %q, %v, %v; want %q, %v", tt.ip, iface, found, err, tt.iface, tt.found)
		}
	}
	// The pod goes: its route goes with the veth.
	if err := h.LinkDel(podLink); err != nil {
		t.Fatal(err)
	}
	if _, found, err := r.Lookup(context.Background(), netip.MustParseAddr("10.244.1.5")); found || err != nil {
		t.Errorf("after the veth is gone: found=%v err=%v, want not found", found, err)
	}
}
