package main

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

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
// its own: the agent makes the resolver's link-local address local (on its
// dummy link, or on lo where the kernel has no dummy links), a socket binds
// it, a second start finds it in place, and --uninstall's steps leave the
// namespace without it.
func TestDNSAddressIsPlacedServedAndUninstalled(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (a network namespace, links); CI=true must run it")
		}
		t.Skip("needs root (a network namespace, links)")
	}
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

	ip := netip.MustParseAddr("169.254.20.10")
	log := slog.New(slog.DiscardHandler)
	if err := ensureDNSAddr(ip, defaultDNSLink, log); err != nil {
		t.Fatalf("place the DNS address: %v", err)
	}
	if !hasAddr(t, ip) {
		t.Fatalf("%s is not local after ensureDNSAddr", ip)
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip.AsSlice(), Port: 0})
	if err != nil {
		t.Fatalf("bind the DNS address: %v", err)
	}
	c.Close()
	if err := ensureDNSAddr(ip, defaultDNSLink, log); err != nil {
		t.Fatalf("a restarted agent must find its address in place: %v", err)
	}

	if _, err := removeDNSLink(defaultDNSLink); err != nil {
		t.Fatalf("remove the dummy link: %v", err)
	}
	if _, err := removeDNSAddrFromLo(ip.String() + ":53"); err != nil {
		t.Fatalf("remove the address from lo: %v", err)
	}
	if hasAddr(t, ip) {
		t.Errorf("%s is still local after uninstall", ip)
	}
}
