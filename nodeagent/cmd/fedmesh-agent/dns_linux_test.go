package main

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// hasAddr says whether an interface of the current namespace has ip.
func hasAddr(t *testing.T, ip netip.Addr) bool {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if got, ok := netip.AddrFromSlice(n.IP); ok && got.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// TestDNSAddressIsPlacedServedAndUninstalled runs in a network namespace of
// its own: the agent makes the resolver's link-local addresses (one per
// family) local (on its dummy link, or on lo where the kernel has no dummy
// links), a socket binds each, a second start finds them in place, and
// --uninstall's steps leave the namespace without them, also when they
// were on lo.
func TestDNSAddressIsPlacedServedAndUninstalled(t *testing.T) {
	requireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	b := make([]byte, 4)
	rand.Read(b)
	name := "fmdns-" + hex.EncodeToString(b)
	ns, err := netns.NewNamed(name) // the thread is inside it now
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("return to the original netns: %v", err)
		}
		ns.Close()
		netns.DeleteNamed(name)
	}()

	const listen = "169.254.20.10:53,[fd00:169:254::10]:53"
	aps, err := dnsAddrs(listen)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	for _, ap := range aps {
		if err := ensureDNSAddr(ap.Addr(), defaultDNSLink, log); err != nil {
			t.Fatalf("place the DNS address %s: %v", ap.Addr(), err)
		}
	}
	for _, ap := range aps {
		ip := ap.Addr()
		if !hasAddr(t, ip) {
			t.Fatalf("%s is not local after ensureDNSAddr", ip)
		}
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip.AsSlice(), Port: 0})
		if err != nil {
			t.Fatalf("bind the DNS address %s: %v", ip, err)
		}
		c.Close()
		if err := ensureDNSAddr(ip, defaultDNSLink, log); err != nil {
			t.Fatalf("a restarted agent must find its address %s in place: %v", ip, err)
		}
	}

	if _, err := removeDNSLink(defaultDNSLink); err != nil {
		t.Fatalf("remove the dummy link: %v", err)
	}
	if _, err := removeDNSAddrsFromLo(listen); err != nil {
		t.Fatalf("remove the addresses from lo: %v", err)
	}
	for _, ap := range aps {
		if hasAddr(t, ap.Addr()) {
			t.Errorf("%s is still local after uninstall", ap.Addr())
		}
	}

	// Where the kernel has no dummy links the addresses went on lo, and
	// --uninstall takes both off it.
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, ap := range aps {
		bits := ap.Addr().BitLen()
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: ap.Addr().AsSlice(), Mask: net.CIDRMask(bits, bits)}}); err != nil {
			t.Fatalf("put %s on lo: %v", ap.Addr(), err)
		}
	}
	removed, err := removeDNSAddrsFromLo(listen)
	if err != nil {
		t.Fatalf("remove the addresses from lo: %v", err)
	}
	if want := []netip.Addr{aps[0].Addr(), aps[1].Addr()}; !slices.Equal(removed, want) {
		t.Errorf("removed %v from lo, want %v", removed, want)
	}
	for _, ap := range aps {
		if hasAddr(t, ap.Addr()) {
			t.Errorf("%s is still on lo after uninstall", ap.Addr())
		}
	}
}

// requireRoot fails (CI=true) or skips without root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (network namespaces, links, cgroups, BPF); CI=true must run it")
		}
		t.Skip("needs root (network namespaces, links, cgroups, BPF)")
	}
}
