package dns

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startRawUpstreamPair is startRawUpstream over UDP and TCP on one port:
// respond's bytes go out as they are (length-prefixed over TCP), so an
// answer larger than a datagram reaches the resolver too.
func startRawUpstreamPair(t testing.TB, respond func(query []byte) []byte) string {
	t.Helper()
	pc, ln := listenPair(t)
	var wg sync.WaitGroup
	t.Cleanup(func() { pc.Close(); ln.Close(); wg.Wait() })
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := respond(buf[:n]); out != nil {
				pc.WriteTo(out, from)
			}
		}
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				var l [2]byte
				if _, err := readFull(c, l[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := readFull(c, q); err != nil {
					return
				}
				out := respond(q)
				if out == nil {
					return
				}
				out = out[:min(len(out), 0xffff)]
				msg := binary.BigEndian.AppendUint16(nil, uint16(len(out)))
				c.Write(append(msg, out...))
			})
		}
	})
	return pc.LocalAddr().String()
}

// hostileAnswers are upstream answers to example.org/A that a policy hook
// must survive: a CNAME loop, a long chain, an answer section of thousands
// of records (TCP), a compression pointer loop inside the answer section,
// a message cut short, and one claiming more records than it holds.
func hostileAnswers(t testing.TB) [][]byte {
	q := question("example.org.", dns.TypeA)
	mk := func(edit func(m *dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetReply(q)
		edit(m)
		m.Compress = true
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	loop := mk(func(m *dns.Msg) {
		m.Answer = []dns.RR{
			mustRR("example.org. 60 IN CNAME a.example.net."),
			mustRR("a.example.net. 60 IN CNAME example.org."),
			mustRR("a.example.net. 60 IN A 192.0.2.1"),
		}
	})
	chain := mk(func(m *dns.Msg) {
		m.Answer = append(m.Answer, mustRR("example.org. 60 IN CNAME c0.example.net."))
		for i := range 40 {
			m.Answer = append(m.Answer, mustRR(fmt.Sprintf("c%d.example.net. 60 IN CNAME c%d.example.net.", i, i+1)))
		}
		m.Answer = append(m.Answer, mustRR("c40.example.net. 60 IN A 192.0.2.2"))
	})
	huge := mk(func(m *dns.Msg) {
		for i := range 3000 {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: uint32(i)},
				A: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).AsSlice()})
		}
	})
	ok := mk(func(m *dns.Msg) { m.Answer = []dns.RR{mustRR("example.org. 60 IN A 192.0.2.1")} })
	// The answer's owner name is a pointer to itself.
	ptrLoop := append([]byte(nil), ok[:12+17]...) // header + question (example.org A IN)
	ptrLoop = append(ptrLoop, 0xc0, byte(len(ptrLoop)), 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1)
	lying := append([]byte(nil), ok...)
	binary.BigEndian.PutUint16(lying[6:], 500) // ANCOUNT 500, one present
	return [][]byte{loop, chain, huge, ok, ptrLoop, ok[:len(ok)/2], lying}
}

// FuzzUpstreamAnswerThroughTheReleaseHook sends arbitrary upstream
// answers (over UDP and TCP) through the whole pipeline with a policy hook
// that collects the answer's chain addresses in Release, as the agent's
// name policy does: nothing crashes, nothing wedges (each query ends
// within the upstream and hook timeouts), the client always gets a
// decodable answer with its own ID, and what the hook collected is only
// addresses the released answer's records give the queried name.
func FuzzUpstreamAnswerThroughTheReleaseHook(f *testing.F) {
	for _, a := range hostileAnswers(f) {
		f.Add(a, false)
		f.Add(a, true)
	}
	var answer, sent atomic.Pointer[[]byte]
	up := startRawUpstreamPair(f, func(query []byte) []byte {
		a := append([]byte(nil), *answer.Load()...)
		if len(a) >= 2 && len(query) >= 2 {
			copy(a, query[:2])
		}
		// A compression pointer may point into the ID: what the resolver
		// decodes is what was sent.
		sent.Store(&a)
		return a
	})
	var collected atomic.Pointer[[]ChainAddr]
	hook := HookFuncs{
		OnQuery: func(ctx context.Context, q *Query) (*dns.Msg, error) {
			q.Verdict = VerdictAllowed
			return nil, nil
		},
		OnRelease: func(ctx context.Context, q *Query, resp *dns.Msg) (*dns.Msg, error) {
			addrs := ChainAddrs(q.Question().Name, resp.Answer)
			collected.Store(&addrs)
			q.Learned = len(addrs)
			return resp, nil
		},
	}
	const upTimeout, hookTimeout = 100 * time.Millisecond, 100 * time.Millisecond
	s, err := New(Config{Listen: "127.0.0.1:0", Upstream: up, UpstreamTimeout: upTimeout, HookTimeout: hookTimeout},
		Deps{Logger: discard(), Hooks: []Hook{hook}})
	if err != nil {
		f.Fatal(err)
	}
	client := netip.MustParseAddrPort("127.0.0.1:5353")
	f.Fuzz(func(t *testing.T, upstreamAnswer []byte, tcp bool) {
		answer.Store(&upstreamAnswer)
		sent.Store(&upstreamAnswer)
		none := []ChainAddr(nil)
		collected.Store(&none)
		tr := UDP
		if tcp {
			tr = TCP
		}
		q := question("example.org.", dns.TypeA)
		q.SetEdns0(1232, false)
		start := time.Now()
		out := s.Handle(context.Background(), pack(t, q), client, tr)
		if took := time.Since(start); took > upTimeout+hookTimeout+time.Second {
			t.Fatalf("one query took %s: wedged", took)
		}
		resp := new(dns.Msg)
		if err := resp.Unpack(out); err != nil {
			t.Fatalf("answer does not decode: %v", err)
		}
		if !resp.Response || resp.Id != q.Id {
			t.Fatalf("answer %v is no response to id %#x", resp, q.Id)
		}
		// Every collected address is an A/AAAA record of the upstream's
		// answer for a name on the chain, its TTL no larger.
		got := *collected.Load()
		up := new(dns.Msg)
		if len(got) > 0 && up.Unpack(*sent.Load()) != nil {
			t.Fatalf("collected %v from an answer that does not decode", got)
		}
		for _, a := range got {
			found := false
			for _, rr := range up.Answer {
				var addr netip.Addr
				switch v := rr.(type) {
				case *dns.A:
					addr, _ = netip.AddrFromSlice(v.A.To4())
				case *dns.AAAA:
					addr, _ = netip.AddrFromSlice(v.AAAA)
					addr = addr.Unmap()
				default:
					continue
				}
				if addr == a.Addr && rr.Header().Ttl >= a.TTL {
					found = true
				}
			}
			if !found {
				t.Fatalf("collected %v, which no A/AAAA record of the answer gives", a)
			}
		}
		if len(got) > len(up.Answer) {
			t.Fatalf("collected %d addresses from %d records", len(got), len(up.Answer))
		}
	})
}
