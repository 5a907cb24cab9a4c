package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/nodeagent/dns"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

var dnsT0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func addr(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}) }

func TestNameCacheNamesAPodsAddressesUntilTheTTLEnds(t *testing.T) {
	c := &fakeClock{dnsT0}
	nc := NewNameCache(NameCacheConfig{MinTTL: 5 * time.Second, MaxTTL: time.Minute, Now: c.now}, nil)
	nc.Learn("a/demo/web", addr(1), "api.example.com", 30*time.Second)
	nc.Learn("a/demo/web", addr(2), "zero.example.com", 0)            // floor: 5s
	nc.Learn("a/demo/web", addr(3), "long.example.com", 24*time.Hour) // cap: 1m
	nc.Learn("a/demo/db", addr(4), "db.example.com", 30*time.Second)
	for _, tc := range []struct {
		name  string
		after time.Duration
		pod   string
		a     netip.Addr
		want  string
	}{
		{"answered address", 0, "a/demo/web", addr(1), "api.example.com"},
		{"IPv4-mapped form of it", 0, "a/demo/web", netip.AddrFrom16(addr(1).As16()).Unmap(), "api.example.com"},
		{"another pod's answer names nothing here", 0, "a/demo/web", addr(4), ""},
		{"an address never answered", 0, "a/demo/web", addr(9), ""},
		{"TTL 0 still names what follows at once", 4 * time.Second, "a/demo/web", addr(2), "zero.example.com"},
		{"TTL 0 kept for the floor only", 6 * time.Second, "a/demo/web", addr(2), ""},
		{"before the TTL ends", 29 * time.Second, "a/demo/web", addr(1), "api.example.com"},
		{"after the TTL", 31 * time.Second, "a/demo/web", addr(1), ""},
		{"a day's TTL is capped", 61 * time.Second, "a/demo/web", addr(3), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.t = dnsT0.Add(tc.after)
			if got := nc.Name(tc.pod, tc.a, c.t); got != tc.want {
				t.Fatalf("Name(%s, %s) = %q, want %q", tc.pod, tc.a, got, tc.want)
			}
		})
	}
	// A later answer for the same address wins.
	c.t = dnsT0
	nc.Learn("a/demo/web", addr(1), "other.example.com", 30*time.Second)
	if got := nc.Name("a/demo/web", addr(1), c.t); got != "other.example.com" {
		t.Fatalf("after a newer answer: %q", got)
	}
	c.t = dnsT0.Add(2 * time.Minute)
	nc.Sweep()
	if nc.Len() != 0 {
		t.Fatalf("after every TTL ended and a sweep: %d entries, want 0", nc.Len())
	}
}

func TestNameCacheStaysWithinItsBoundsAndCountsWhatItGivesUp(t *testing.T) {
	c := &fakeClock{dnsT0}
	reg := prometheus.NewRegistry()
	nc := NewNameCache(NameCacheConfig{PerPod: 10, Total: 25, MinTTL: time.Second, MaxTTL: time.Hour, Now: c.now}, reg)
	// A pod over its bound gives up its entry expiring first.
	for i := range 15 {
		nc.Learn("a/demo/loud", addr(i), fmt.Sprintf("n%d.test", i), time.Duration(100+i)*time.Second)
	}
	if nc.Len() != 10 || nc.Name("a/demo/loud", addr(4), c.t) != "" || nc.Name("a/demo/loud", addr(5), c.t) != "n5.test" {
		t.Fatalf("loud pod: %d entries, addr 4 %q, addr 5 %q; want 10, the five expiring first gone", nc.Len(),
			nc.Name("a/demo/loud", addr(4), c.t), nc.Name("a/demo/loud", addr(5), c.t))
	}
	// The node's bound takes from the pod holding the most, not from a
	// quiet pod.
	for i := range 3 {
		nc.Learn("a/demo/quiet", addr(i), "q.test", time.Hour)
	}
	for p := range 3 {
		for i := range 5 {
			nc.Learn(fmt.Sprintf("a/demo/p%d", p), addr(i), "p.test", time.Hour)
		}
	}
	if nc.Len() != 25 {
		t.Fatalf("%d entries, want the node's bound 25", nc.Len())
	}
	for i := range 3 {
		if nc.Name("a/demo/quiet", addr(i), c.t) != "q.test" {
			t.Fatalf("the quiet pod lost address %d to the node's bound", i)
		}
	}
	if got := testutil.ToFloat64(nc.mEvicted.WithLabelValues("pod")); got != 5 {
		t.Errorf("evicted for the pod's bound: %v, want 5", got)
	}
	if got := testutil.ToFloat64(nc.mEvicted.WithLabelValues("node")); got != 3 {
		t.Errorf("evicted for the node's bound: %v, want 3", got)
	}
	nc.Forget("a/demo/quiet")
	if nc.Len() != 22 || nc.Name("a/demo/quiet", addr(0), c.t) != "" {
		t.Fatalf("after forgetting a pod: %d entries", nc.Len())
	}
}

type dnsSink [][]byte

func (s *dnsSink) OfferDNS(b []byte) { *s = append(*s, b) }

func TestDNSLogShipsEveryQueryAndLearnsOnlyALocalPodsAnswers(t *testing.T) {
	c := &fakeClock{dnsT0}
	nc := NewNameCache(NameCacheConfig{Now: c.now}, nil)
	var sink dnsSink
	l := &DNSLog{Cluster: "a", Node: "n1", Sink: &sink, Names: nc}
	answered := dns.Record{
		Time: dnsT0, Client: netip.MustParseAddrPort("10.1.1.11:40000"), Pod: "a/demo/web", Transport: dns.UDP,
		Name: "api.example.com.", Type: mdns.TypeA, Rcode: mdns.RcodeSuccess, TTL: 30, Latency: 3 * time.Millisecond,
		Source: dns.SourceUpstream, Upstream: "10.96.0.10:53", Verdict: dns.VerdictAllowed, Learned: 2,
		Answers: []dns.Answer{
			{Name: "api.example.com.", Type: mdns.TypeCNAME, TTL: 300, Target: "edge.cdn.test."},
			{Name: "edge.cdn.test.", Type: mdns.TypeA, TTL: 30, Addr: netip.MustParseAddr("192.0.2.80")},
			{Name: "edge.cdn.test.", Type: mdns.TypeAAAA, TTL: 30, Addr: netip.MustParseAddr("2001:db8::80")},
		},
	}
	l.Record(answered)
	notAPod := answered
	notAPod.Pod, notAPod.Name = "", "host.example.com."
	notAPod.Answers = []dns.Answer{{Name: "host.example.com.", Type: mdns.TypeA, TTL: 30, Addr: netip.MustParseAddr("192.0.2.81")}}
	l.Record(notAPod)
	failed := dns.Record{Time: dnsT0, Client: netip.MustParseAddrPort("10.1.1.11:40001"), Pod: "a/demo/web", Transport: dns.TCP,
		Name: "down.example.com.", Type: 65280, Rcode: mdns.RcodeServerFailure, Source: dns.SourceLocal, Err: errors.New("upstream timed out")}
	l.Record(failed)

	if got := nc.Name("a/demo/web", netip.MustParseAddr("192.0.2.80"), c.t); got != "api.example.com" {
		t.Errorf("address at the end of the CNAME chain named %q, want the queried name", got)
	}
	if got := nc.Name("a/demo/web", netip.MustParseAddr("2001:db8::80"), c.t); got != "api.example.com" {
		t.Errorf("IPv6 answer named %q", got)
	}
	if nc.Len() != 2 {
		t.Errorf("cache holds %d, want only the local pod's two addresses", nc.Len())
	}
	if len(sink) != 3 {
		t.Fatalf("shipped %d records, want every query's", len(sink))
	}
	var got fedmeshv1.DNSRecord
	if err := proto.Unmarshal(sink[0], &got); err != nil {
		t.Fatal(err)
	}
	want := &fedmeshv1.DNSRecord{Time: got.Time, Namespace: "demo", Pod: "web", ClientIp: "10.1.1.11", ClientPort: 40000,
		Name: "api.example.com.", Type: "A", Rcode: "NOERROR", Ttl: 30, Latency: got.Latency, Source: "upstream", Upstream: "10.96.0.10:53", Transport: "udp",
		Verdict: fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ALLOWED, Learned: 2,
		Answers: []*fedmeshv1.DNSAnswer{
			{Name: "api.example.com.", Type: "CNAME", Ttl: 300, Target: "edge.cdn.test."},
			{Name: "edge.cdn.test.", Type: "A", Ttl: 30, Addr: "192.0.2.80"},
			{Name: "edge.cdn.test.", Type: "AAAA", Ttl: 30, Addr: "2001:db8::80"},
		}}
	if !proto.Equal(&got, want) || !got.GetTime().AsTime().Equal(dnsT0) || got.GetLatency().AsDuration() != 3*time.Millisecond {
		t.Errorf("shipped\n%v\nwant\n%v", &got, want)
	}
	if err := proto.Unmarshal(sink[2], &got); err != nil {
		t.Fatal(err)
	}
	if got.GetError() != "upstream timed out" || got.GetRcode() != "SERVFAIL" || got.GetType() != "TYPE65280" || got.GetTransport() != "tcp" || got.GetSource() != "local" {
		t.Errorf("failed query shipped as %v", &got)
	}
}

func TestChainAnswersGiveTheQueriedNameOnlyTheAddressesOfItsChain(t *testing.T) {
	a := func(name string, ttl uint32, ip string) dns.Answer {
		ad := netip.MustParseAddr(ip)
		typ := mdns.TypeA
		if ad.Is6() {
			typ = mdns.TypeAAAA
		}
		return dns.Answer{Name: name, Type: typ, TTL: ttl, Addr: ad}
	}
	cname := func(name string, ttl uint32, target string) dns.Answer {
		return dns.Answer{Name: name, Type: mdns.TypeCNAME, TTL: ttl, Target: target}
	}
	for _, tc := range []struct {
		name    string
		answers []dns.Answer
		want    []string // addr/ttl
	}{
		{"own addresses", []dns.Answer{a("api.example.com.", 30, "192.0.2.1"), a("api.example.com.", 20, "2001:db8::1")}, []string{"192.0.2.1/30", "2001:db8::1/20"}},
		{"end of a chain, smallest TTL on the way", []dns.Answer{cname("api.example.com.", 10, "b.cdn.test."), cname("b.cdn.test.", 300, "c.cdn.test."), a("c.cdn.test.", 60, "192.0.2.2")}, []string{"192.0.2.2/10"}},
		{"chain in any order, any case", []dns.Answer{a("C.cdn.test.", 60, "192.0.2.2"), cname("API.example.com.", 90, "c.CDN.test.")}, []string{"192.0.2.2/60"}},
		{"an address of another name is not the queried name's", []dns.Answer{a("api.example.com.", 30, "192.0.2.1"), a("evil.test.", 30, "192.0.2.66")}, []string{"192.0.2.1/30"}},
		{"a CNAME loop ends", []dns.Answer{cname("api.example.com.", 30, "x.test."), cname("x.test.", 30, "api.example.com.")}, nil},
		{"no answer", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, x := range chainAnswers("api.example.com.", tc.answers) {
				got = append(got, fmt.Sprintf("%s/%d", x.Addr, x.TTL))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDNSVerdictMapsTheResolversWords(t *testing.T) {
	for word, want := range map[string]fedmeshv1.DNSPolicyVerdict{
		"allowed": fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ALLOWED, "refused": fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_REFUSED,
		"denied": fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_DENIED, "unpoliced": fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_UNPOLICED,
		"error": fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ERROR, "": fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_UNSPECIFIED,
		"Allowed": fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_UNSPECIFIED,
	} {
		if got := DNSVerdict(word); got != want {
			t.Errorf("DNSVerdict(%q) = %v, want %v", word, got, want)
		}
	}
}
