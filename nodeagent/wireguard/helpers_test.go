package wireguard

import (
	"net/netip"
	"os"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// requireRoot skips on a laptop and fails in CI, where these tests must run.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (network namespaces, TUN); CI=true so this must not be skipped")
	}
	t.Skip("needs root (network namespaces, TUN); run as root or with CI=true in a privileged container")
}

// testKey returns a deterministic private key: byte i of seed repeated.
func testKey(seed byte) wgtypes.Key {
	var k wgtypes.Key
	for i := range k {
		k[i] = seed
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func pfxs(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, pfx(s))
	}
	return out
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
