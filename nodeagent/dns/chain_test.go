package dns

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

func rrs(lines ...string) []dns.RR {
	out := make([]dns.RR, len(lines))
	for i, l := range lines {
		out[i] = mustRR(l)
	}
	return out
}

func TestChainAddrsFollowsTheQueriedNamesCNAMEChainOnly(t *testing.T) {
	tests := []struct {
		name   string
		qname  string
		answer []dns.RR
		want   []string // "addr ttl"
	}{
		{"direct A and AAAA", "api.example.com.", rrs(
			"api.example.com. 60 IN A 192.0.2.1",
			"api.example.com. 30 IN AAAA 2001:db8::1"),
			[]string{"192.0.2.1 60", "2001:db8::1 30"}},
		{"names compare case-insensitively", "API.Example.COM.", rrs(
			"api.example.COM. 60 IN A 192.0.2.1"),
			[]string{"192.0.2.1 60"}},
		{"a CNAME chain gives the end's addresses the smallest TTL on the way", "www.example.com.", rrs(
			"www.example.com. 300 IN CNAME edge.cdn.net.",
			"edge.cdn.net. 20 IN CNAME e1.cdn.net.",
			"e1.cdn.net. 100 IN A 198.51.100.7",
			"e1.cdn.net. 5 IN A 198.51.100.8"),
			[]string{"198.51.100.7 20", "198.51.100.8 5"}},
		{"records off the chain count for nothing", "www.example.com.", rrs(
			"www.example.com. 300 IN CNAME edge.cdn.net.",
			"edge.cdn.net. 60 IN A 198.51.100.7",
			"evil.example.org. 60 IN A 203.0.113.66",
			"other.cdn.net. 60 IN CNAME evil.example.org."),
			[]string{"198.51.100.7 60"}},
		{"a CNAME loop ends where it closes", "a.example.com.", rrs(
			"a.example.com. 60 IN CNAME b.example.com.",
			"b.example.com. 40 IN CNAME a.example.com.",
			"b.example.com. 60 IN A 192.0.2.2"),
			[]string{"192.0.2.2 60"}}, // the loop's closing CNAME is not on the way to b
		{"a second CNAME of one owner is ignored", "a.example.com.", rrs(
			"a.example.com. 60 IN CNAME b.example.com.",
			"a.example.com. 60 IN CNAME c.example.com.",
			"b.example.com. 60 IN A 192.0.2.2",
			"c.example.com. 60 IN A 192.0.2.3"),
			[]string{"192.0.2.2 60"}},
		{"duplicates count once with the smaller TTL", "a.example.com.", rrs(
			"a.example.com. 60 IN A 192.0.2.2",
			"a.example.com. 10 IN A 192.0.2.2"),
			[]string{"192.0.2.2 10"}},
		{"an IPv4-mapped AAAA is the IPv4 address", "a.example.com.", rrs(
			"a.example.com. 60 IN AAAA ::ffff:192.0.2.9"),
			[]string{"192.0.2.9 60"}},
		{"other types are not addresses", "a.example.com.", rrs(
			"a.example.com. 60 IN TXT \"192.0.2.1\"",
			"a.example.com. 60 IN MX 10 mail.example.com."),
			nil},
		{"no answer", "a.example.com.", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, a := range ChainAddrs(tt.qname, tt.answer) {
				got = append(got, fmt.Sprintf("%s %d", a.Addr, a.TTL))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ChainAddrs = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestChainAddrsStopsAfterMaxChainHops(t *testing.T) {
	var answer []dns.RR
	for i := range MaxChain + 2 {
		answer = append(answer, mustRR(fmt.Sprintf("c%d.example.com. 60 IN CNAME c%d.example.com.", i, i+1)))
	}
	answer = append(answer,
		mustRR(fmt.Sprintf("c%d.example.com. 60 IN A 192.0.2.1", MaxChain)),   // reached: MaxChain hops
		mustRR(fmt.Sprintf("c%d.example.com. 60 IN A 192.0.2.2", MaxChain+1))) // one hop too far
	got := ChainAddrs("c0.example.com.", answer)
	if want := []ChainAddr{{Addr: netip.MustParseAddr("192.0.2.1"), TTL: 60}}; !slices.Equal(got, want) {
		t.Errorf("ChainAddrs = %v, want %v", got, want)
	}
}
