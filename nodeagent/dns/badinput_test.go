package dns

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func pack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// badRequests are requests a pod's resolver library never sends, each with
// what the resolver must do: answer with rcode, or drop (rcode -1).
func badRequests(t testing.TB) []struct {
	name   string
	raw    []byte
	rcode  int
	reason string
} {
	valid := pack(t, question("redis.demo.svc.clusterset.local.", dns.TypeA))
	withID := func(b []byte) []byte { binary.BigEndian.PutUint16(b, 0xbeef); return b }
	m := func(f func(m *dns.Msg)) []byte {
		q := question("redis.demo.svc.clusterset.local.", dns.TypeA)
		f(q)
		return withID(pack(t, q))
	}
	loop := withID([]byte{0, 0, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1}) // name points at itself
	oversized := append(withID(append([]byte(nil), valid...)), make([]byte, 5000)...)
	return []struct {
		name   string
		raw    []byte
		rcode  int
		reason string
	}{
		{"shorter than a header is dropped", []byte{1, 2, 3, 4, 5}, -1, "short"},
		{"a response is dropped", m(func(m *dns.Msg) { m.Response = true }), -1, "response"},
		{"another opcode is NOTIMP", m(func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), dns.RcodeNotImplemented, "opcode"},
		{"question cut off is FORMERR", withID(append([]byte(nil), valid[:len(valid)-3]...)), dns.RcodeFormatError, "undecodable"},
		{"counts beyond the message are FORMERR", withID([]byte{0, 0, 1, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0}), dns.RcodeFormatError, "questions"},
		{"compression pointer loop is FORMERR", loop, dns.RcodeFormatError, "undecodable"},
		{"oversized is FORMERR", oversized, dns.RcodeFormatError, "oversized"},
		{"no question is FORMERR", m(func(m *dns.Msg) { m.Question = nil }), dns.RcodeFormatError, "questions"},
		{"two questions are FORMERR", m(func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), dns.RcodeFormatError, "questions"},
		{"an answer section is FORMERR", m(func(m *dns.Msg) { m.Answer = []dns.RR{mustRR("a. 1 IN A 192.0.2.1")} }), dns.RcodeFormatError, "sections"},
		{"two OPT records are FORMERR", m(func(m *dns.Msg) { m.SetEdns0(1232, false); m.SetEdns0(1232, false) }), dns.RcodeFormatError, "opt"},
		{"EDNS version 1 is BADVERS", m(func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) }), dns.RcodeBadVers, "edns-version"},
		{"a zone transfer is REFUSED", m(func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAXFR }), dns.RcodeRefused, "transfer"},
	}
}

// rawExchange sends raw over network and returns the answer, or nil when
// none comes (UDP: within 300ms; TCP: the resolver closed the connection).
func rawExchange(t *testing.T, network, addr string, raw []byte) []byte {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if network == "udp" {
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Write(raw); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 65536)
		n, err := c.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		return buf[:n]
	}
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(raw)))
	if _, err := c.Write(append(msg, raw...)); err != nil {
		t.Fatal(err)
	}
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		// A reset after a partly read oversized request is a close too.
		var op *net.OpError
		if errors.As(err, &op) && !op.Timeout() {
			return nil
		}
		t.Fatal(err)
	}
	buf := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	return buf
}

func TestBadRequestsAreAnsweredFormerrOrDroppedAndNeverStopTheResolver(t *testing.T) {
	up := startUpstream(t)
	r := startResolver(t, Config{Upstream: up.addr}, Deps{View: testServices()})
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range badRequests(t) {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				c := r.m.dropped.WithLabelValues(tt.reason)
				if tt.rcode >= 0 {
					c = r.m.badRequests.WithLabelValues(rcodeLabel(tt.rcode), tt.reason)
				}
				before := counter(t, c)
				out := rawExchange(t, network, r.addr, tt.raw)
				if tt.rcode < 0 {
					if out != nil {
						t.Fatalf("answered %x, want no answer", out)
					}
				} else {
					if out == nil {
						t.Fatalf("no answer, want %s", dns.RcodeToString[tt.rcode])
					}
					resp := new(dns.Msg)
					if err := resp.Unpack(out); err != nil {
						t.Fatalf("answer does not decode: %v", err)
					}
					if resp.Rcode != tt.rcode || !resp.Response || resp.Id != 0xbeef {
						t.Fatalf("answer rcode %s QR %v id %#x, want %s, QR and the request's id 0xbeef",
							dns.RcodeToString[resp.Rcode], resp.Response, resp.Id, dns.RcodeToString[tt.rcode])
					}
				}
				if got := counter(t, c); got != before+1 {
					t.Errorf("counted %v times under %q, want once", got-before, tt.reason)
				}
			})
		}
	}
	for _, network := range []string{"udp", "tcp"} {
		if resp := exchange(t, network, r.addr, question("redis.demo.svc.clusterset.local.", dns.TypeA)); len(resp.Answer) != 1 {
			t.Errorf("after bad input over %s: answer %v", network, resp.Answer)
		}
	}
}
