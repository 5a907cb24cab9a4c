package dns

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// rdata is "TYPE rdata" for each record, sorted: what a table can compare.
func rdata(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		out = append(out, dns.TypeToString[rr.Header().Rrtype]+" "+strings.TrimPrefix(rr.String(), rr.Header().String()))
	}
	slices.Sort(out)
	return out
}

func TestZoneAnswersClusterSetNamesOverUDPAndTCP(t *testing.T) {
	const ttl, negTTL = 7, 3
	up := startUpstream(t)
	r := startResolver(t, Config{Upstream: up.addr, TTL: ttl * time.Second, NegativeTTL: negTTL * time.Second},
		Deps{View: testServices()})
	const z = ".svc.clusterset.local."
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer []string // nil: NXDOMAIN or NODATA, which then carry the SOA
		extra  []string
	}{
		{"ClusterSetIP A", "redis.demo" + z, dns.TypeA, dns.RcodeSuccess, []string{"A 10.96.0.10"}, nil},
		{"ClusterSetIP AAAA", "redis.demo" + z, dns.TypeAAAA, dns.RcodeSuccess, []string{"AAAA fd00:96::10"}, nil},
		{"ANY at a service is both families", "redis.demo" + z, dns.TypeANY, dns.RcodeSuccess, []string{"A 10.96.0.10", "AAAA fd00:96::10"}, nil},
		{"names are case-insensitive", "ReDiS.DEMO.svc.ClusterSet.Local.", dns.TypeA, dns.RcodeSuccess, []string{"A 10.96.0.10"}, nil},
		{"other type of a service is NODATA", "redis.demo" + z, dns.TypeTXT, dns.RcodeSuccess, nil, nil},
		{"unknown service is NXDOMAIN", "nope.demo" + z, dns.TypeA, dns.RcodeNameError, nil, nil},
		{"service of another namespace is NXDOMAIN", "redis.other" + z, dns.TypeA, dns.RcodeNameError, nil, nil},
		{"namespace owns services: NODATA", "demo" + z, dns.TypeA, dns.RcodeSuccess, nil, nil},
		{"svc label owns namespaces: NODATA", "svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, nil, nil},
		{"apex SOA", "clusterset.local.", dns.TypeSOA, dns.RcodeSuccess,
			[]string{"SOA ns.dns.clusterset.local. hostmaster.clusterset.local. 1 7200 1800 86400 3"}, nil},
		{"name outside svc is NXDOMAIN", "redis.demo.pod.clusterset.local.", dns.TypeA, dns.RcodeNameError, nil, nil},
		{"too deep is NXDOMAIN", "a.b.c.redis.demo" + z, dns.TypeA, dns.RcodeNameError, nil, nil},
		{"SRV of a named port points at the service", "_redis._tcp.redis.demo" + z, dns.TypeSRV, dns.RcodeSuccess,
			[]string{"SRV 0 10 6379 redis.demo.svc.clusterset.local."},
			[]string{"A 10.96.0.10", "AAAA fd00:96::10"}},
		{"SRV of a port with another protocol is NXDOMAIN", "_redis._udp.redis.demo" + z, dns.TypeSRV, dns.RcodeNameError, nil, nil},
		{"SRV of an unknown port is NXDOMAIN", "_http._tcp.redis.demo" + z, dns.TypeSRV, dns.RcodeNameError, nil, nil},
		{"A at an SRV name is NODATA", "_redis._tcp.redis.demo" + z, dns.TypeA, dns.RcodeSuccess, nil, nil},
		{"protocol label with named ports is NODATA", "_tcp.redis.demo" + z, dns.TypeSRV, dns.RcodeSuccess, nil, nil},
		{"protocol label without named ports is NXDOMAIN", "_udp.redis.demo" + z, dns.TypeSRV, dns.RcodeNameError, nil, nil},
		{"service without ClusterSetIP of the family is NODATA", "empty.demo" + z, dns.TypeA, dns.RcodeSuccess, nil, nil},
		{"headless A is every backend's address", "db.demo" + z, dns.TypeA, dns.RcodeSuccess,
			[]string{"A 10.1.0.5", "A 10.2.0.5", "A 10.2.0.9"}, nil},
		{"headless AAAA", "db.demo" + z, dns.TypeAAAA, dns.RcodeSuccess, []string{"AAAA fd00:2::5", "AAAA fd00:2::9"}, nil},
		{"per-backend name in cluster-a", "db-0.cluster-a.db.demo" + z, dns.TypeA, dns.RcodeSuccess, []string{"A 10.1.0.5"}, nil},
		{"same hostname in cluster-b", "db-0.cluster-b.db.demo" + z, dns.TypeA, dns.RcodeSuccess, []string{"A 10.2.0.5"}, nil},
		{"dual-stack backend AAAA", "db-0.cluster-b.db.demo" + z, dns.TypeAAAA, dns.RcodeSuccess, []string{"AAAA fd00:2::5"}, nil},
		{"backend name of the other family is NODATA", "db-0.cluster-a.db.demo" + z, dns.TypeAAAA, dns.RcodeSuccess, nil, nil},
		{"IPv6 backend without hostname is named by its expanded address", "fd00-0002-0000-0000-0000-0000-0000-0009.cluster-b.db.demo" + z, dns.TypeAAAA,
			dns.RcodeSuccess, []string{"AAAA fd00:2::9"}, nil},
		{"a backend with a hostname has no address name", "fd00-0002-0000-0000-0000-0000-0000-0005.cluster-b.db.demo" + z, dns.TypeAAAA, dns.RcodeNameError, nil, nil},
		{"backend without hostname is named by its address", "10-2-0-9.cluster-b.db.demo" + z, dns.TypeA, dns.RcodeSuccess, []string{"A 10.2.0.9"}, nil},
		{"unknown backend is NXDOMAIN", "db-1.cluster-a.db.demo" + z, dns.TypeA, dns.RcodeNameError, nil, nil},
		{"cluster label with backends is NODATA", "cluster-a.db.demo" + z, dns.TypeA, dns.RcodeSuccess, nil, nil},
		{"cluster label without backends is NXDOMAIN", "cluster-c.db.demo" + z, dns.TypeA, dns.RcodeNameError, nil, nil},
		{"no backend names under a ClusterSetIP service", "db-0.cluster-a.redis.demo" + z, dns.TypeA, dns.RcodeNameError, nil, nil},
		{"headless SRV has one record per backend", "_pg._tcp.db.demo" + z, dns.TypeSRV, dns.RcodeSuccess,
			[]string{
				"SRV 0 10 5432 db-0.cluster-a.db.demo.svc.clusterset.local.",
				"SRV 0 10 6432 10-2-0-9.cluster-b.db.demo.svc.clusterset.local.",
				"SRV 0 10 6432 db-0.cluster-b.db.demo.svc.clusterset.local.",
				"SRV 0 10 6432 fd00-0002-0000-0000-0000-0000-0000-0009.cluster-b.db.demo.svc.clusterset.local.",
			},
			[]string{"A 10.1.0.5", "A 10.2.0.5", "A 10.2.0.9", "AAAA fd00:2::5", "AAAA fd00:2::9"}},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				resp := exchange(t, network, r.addr, question(tt.qname, tt.qtype))
				if resp.Rcode != tt.rcode {
					t.Fatalf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
				}
				if !resp.Authoritative {
					t.Error("answer from the zone is not authoritative")
				}
				if got := rdata(resp.Answer); !slices.Equal(got, tt.answer) {
					t.Errorf("answer %q, want %q", got, tt.answer)
				}
				if got := rdata(resp.Extra); !slices.Equal(got, tt.extra) {
					t.Errorf("additional %q, want %q", got, tt.extra)
				}
				for _, rr := range resp.Answer {
					if rr.Header().Name != tt.qname {
						t.Errorf("owner %q, want the question's %q", rr.Header().Name, tt.qname)
					}
					if rr.Header().Ttl != ttl && rr.Header().Rrtype != dns.TypeSOA {
						t.Errorf("%s TTL %d, want %d", rr.Header().Name, rr.Header().Ttl, ttl)
					}
				}
				if tt.answer == nil {
					if len(resp.Ns) != 1 || resp.Ns[0].Header().Rrtype != dns.TypeSOA {
						t.Fatalf("negative answer without the zone's SOA in authority: %v", resp.Ns)
					}
					soa := resp.Ns[0].(*dns.SOA)
					if soa.Hdr.Name != "clusterset.local." || soa.Hdr.Ttl != negTTL || soa.Minttl != negTTL {
						t.Errorf("SOA %v: want owner clusterset.local. and TTL/minimum %d", soa, negTTL)
					}
				}
			})
		}
	}
	if len(up.queries()) != 0 {
		t.Errorf("zone names reached the upstream: %v", up.queries())
	}
}

func TestSetViewReplacesTheAnswers(t *testing.T) {
	up := startUpstream(t)
	r := startResolver(t, Config{Upstream: up.addr}, Deps{})
	q := question("redis.demo.svc.clusterset.local.", dns.TypeA)
	if resp := exchange(t, "udp", r.addr, q); resp.Rcode != dns.RcodeNameError {
		t.Fatalf("before any view: rcode %s, want NXDOMAIN", dns.RcodeToString[resp.Rcode])
	}
	r.SetView(testServices())
	if resp := exchange(t, "udp", r.addr, q); !slices.Equal(rdata(resp.Answer), []string{"A 10.96.0.10"}) {
		t.Fatalf("after SetView: %v", resp.Answer)
	}
	r.SetView(NewServices([]ServiceRecord{{Namespace: "demo", Name: "redis",
		ClusterSetIPs: []netip.Addr{netip.MustParseAddr("10.96.0.11")}}}))
	if resp := exchange(t, "udp", r.addr, q); !slices.Equal(rdata(resp.Answer), []string{"A 10.96.0.11"}) {
		t.Fatalf("after a second SetView: %v", resp.Answer)
	}
}

func TestInZoneAnswerTooBigForUDPIsTruncatedAndWholeOverTCP(t *testing.T) {
	up := startUpstream(t)
	var backends []Backend
	for i := range 100 {
		backends = append(backends, Backend{Cluster: "a", Addr: netip.AddrFrom4([4]byte{10, 3, byte(i / 256), byte(i)})})
	}
	view := NewServices([]ServiceRecord{{Namespace: "demo", Name: "many", Headless: true, Backends: backends,
		Ports: []Port{{Name: "p", Protocol: ProtoTCP, Number: 1}}}})
	r := startResolver(t, Config{Upstream: up.addr}, Deps{View: view})
	q := question("many.demo.svc.clusterset.local.", dns.TypeA)
	udp := exchange(t, "udp", r.addr, q)
	if !udp.Truncated || len(udp.Answer) >= 100 {
		t.Fatalf("UDP without EDNS0: TC=%v with %d answers, want TC and fewer than 100", udp.Truncated, len(udp.Answer))
	}
	udp.Compress = true // as the resolver packed it
	if n := udp.Len(); n > dns.MinMsgSize {
		t.Errorf("UDP answer is %d bytes, more than the 512 a client without EDNS0 takes", n)
	}
	tcp := exchange(t, "tcp", r.addr, q)
	if tcp.Truncated || len(tcp.Answer) != 100 {
		t.Fatalf("TCP: TC=%v with %d answers, want all 100", tcp.Truncated, len(tcp.Answer))
	}
	if got := counter(t, r.m.truncated.WithLabelValues("zone")); got != 1 {
		t.Errorf("truncated{zone} = %v, want 1", got)
	}
}
