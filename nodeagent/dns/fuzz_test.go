package dns

import (
	"context"
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fuzzSeeds are requests worth mutating: every kind of name the zone
// answers, forwarded names, EDNS0, and the bad requests of the bad-input
// test.
func fuzzSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"redis.demo.svc.clusterset.local.", dns.TypeA},
		{"db.demo.svc.clusterset.local.", dns.TypeAAAA},
		{"db-0.cluster-a.db.demo.svc.clusterset.local.", dns.TypeA},
		{"_pg._tcp.db.demo.svc.clusterset.local.", dns.TypeSRV},
		{"clusterset.local.", dns.TypeSOA},
		{"example.org.", dns.TypeA},
		{"big.example.org.", dns.TypeTXT},
	} {
		m := question(q.name, q.qtype)
		seeds = append(seeds, pack(t, m))
		m.SetEdns0(4096, true)
		seeds = append(seeds, pack(t, m))
	}
	for _, b := range badRequests(t) {
		seeds = append(seeds, b.raw)
	}
	return seeds
}

// FuzzHandle feeds raw requests to the resolver's whole pipeline (decode,
// validate, zone or a real upstream on loopback, pack for the transport):
// it must never panic, must answer every request that has a header and is
// not a response, and every answer must decode, be a response, carry the
// request's ID and fit the transport.
func FuzzHandle(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s, false)
		f.Add(s, true)
	}
	up := startUpstream(f)
	s, err := New(Config{Listen: "127.0.0.1:0", Upstream: up.addr, UpstreamTimeout: 50 * time.Millisecond},
		Deps{View: testServices(), Logger: discard()})
	if err != nil {
		f.Fatal(err)
	}
	client := netip.MustParseAddrPort("127.0.0.1:5353")
	f.Fuzz(func(t *testing.T, raw []byte, tcp bool) {
		tr := UDP
		if tcp {
			tr = TCP
		}
		out := s.Handle(context.Background(), raw, client, tr)
		if len(raw) < headerLen || raw[2]&0x80 != 0 {
			if out != nil {
				t.Fatalf("answered a request without a header or with QR set: %x", out)
			}
			return
		}
		if out == nil {
			t.Fatalf("no answer to a request with a header")
		}
		if tr == UDP && len(out) > MaxUDPSize {
			t.Fatalf("UDP answer of %d bytes, more than %d", len(out), MaxUDPSize)
		}
		resp := new(dns.Msg)
		if err := resp.Unpack(out); err != nil {
			t.Fatalf("answer does not decode: %v", err)
		}
		if !resp.Response || resp.Id != binary.BigEndian.Uint16(raw) {
			t.Fatalf("answer QR %v id %#x, want a response with id %#x", resp.Response, resp.Id, binary.BigEndian.Uint16(raw))
		}
	})
}

// FuzzUpstreamAnswer makes the upstream answer with arbitrary bytes (its ID
// patched to the query's, so the answer is not just ignored): whatever the
// upstream sends, the client gets a decodable answer with its own ID, and
// the resolver goes on.
func FuzzUpstreamAnswer(f *testing.F) {
	good := question("example.org.", dns.TypeA)
	resp := new(dns.Msg)
	resp.SetReply(good)
	resp.Answer = []dns.RR{mustRR("example.org. 30 IN A 192.0.2.1")}
	f.Add(pack(f, resp))
	resp.Truncated = true
	f.Add(pack(f, resp))
	resp.Truncated, resp.Rcode = false, dns.RcodeNameError
	resp.SetEdns0(4096, false)
	f.Add(pack(f, resp))
	f.Add([]byte{0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1}) // pointer loop in the question
	f.Add([]byte{0, 0, 0x81})

	var answer atomic.Pointer[[]byte]
	up := startRawUpstream(f, func(query []byte) []byte {
		a := append([]byte(nil), *answer.Load()...)
		if len(a) >= 2 {
			copy(a, query[:2])
		}
		return a
	})
	s, err := New(Config{Listen: "127.0.0.1:0", Upstream: up, UpstreamTimeout: 50 * time.Millisecond},
		Deps{Logger: discard()})
	if err != nil {
		f.Fatal(err)
	}
	client := netip.MustParseAddrPort("127.0.0.1:5353")
	f.Fuzz(func(t *testing.T, upstreamAnswer []byte) {
		answer.Store(&upstreamAnswer)
		q := question("example.org.", dns.TypeA)
		q.SetEdns0(1232, false)
		out := s.Handle(context.Background(), pack(t, q), client, UDP)
		resp := new(dns.Msg)
		if err := resp.Unpack(out); err != nil {
			t.Fatalf("answer does not decode: %v", err)
		}
		if !resp.Response || resp.Id != q.Id || len(resp.Question) != 1 || resp.Question[0] != q.Question[0] {
			t.Fatalf("answer %v does not answer the client's question (id %#x)", resp, q.Id)
		}
		if len(out) > MaxUDPSize {
			t.Fatalf("UDP answer of %d bytes, more than %d", len(out), MaxUDPSize)
		}
	})
}
