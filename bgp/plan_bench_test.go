package bgp

import (
	"net/netip"
	"testing"
)

// BenchmarkPlan10kPrefixes is the speaker's own share of advertising
// 10,000 prefixes (everything of Apply but the GoBGP call): validating the
// desired state, applying health, diffing against what GoBGP holds and
// building GoBGP's native paths.
func BenchmarkPlan10kPrefixes(b *testing.B) {
	base := Desired{
		LocalASN: nodeASN,
		RouterID: netip.MustParseAddr(nodeV4),
		Peers:    []Peer{{Address: netip.MustParseAddr(torV4), ASN: torASN}},
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	}
	full := base
	full.Prefixes = benchPrefixList()
	applied := normalize(&base)
	b.ReportAllocs()
	for b.Loop() {
		if err := full.Validate(); err != nil {
			b.Fatal(err)
		}
		want := Effective(full, true)
		p, w := diff(&applied, &want)
		if _, err := apiPaths(p); err != nil {
			b.Fatal(err)
		}
		if len(w.Prefixes) != benchPrefixes {
			b.Fatalf("want holds %d prefixes", len(w.Prefixes))
		}
	}
}
