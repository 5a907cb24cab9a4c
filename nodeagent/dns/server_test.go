package dns

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestNewRejectsConfigItCannotServe(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"upstream without port", Config{Listen: "127.0.0.1:0", Upstream: "10.96.0.10"}, "upstream"},
		{"listen without port", Config{Listen: "127.0.0.1", Upstream: "10.96.0.10:53"}, "listen"},
		{"zone that is no name", Config{Listen: "127.0.0.1:0", Upstream: "10.96.0.10:53", Zone: "a..b"}, "zone"},
		{"sub-second TTL", Config{Listen: "127.0.0.1:0", Upstream: "10.96.0.10:53", TTL: time.Millisecond}, "TTL"},
		{"negative limit", Config{Listen: "127.0.0.1:0", Upstream: "10.96.0.10:53", MaxInFlight: -1}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, Deps{Logger: discard()})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New: %v, want an error about %s", err, tt.wantErr)
			}
		})
	}
	if _, err := New(Config{Listen: "127.0.0.1:0", Upstream: "10.96.0.10:53", Zone: "mesh.example"}, Deps{Logger: discard()}); err != nil {
		t.Fatalf("New with another zone: %v", err)
	}
}

func TestWithoutUpstreamOnlyTheZoneIsAnswered(t *testing.T) {
	r := startResolver(t, Config{}, Deps{View: testServices()})
	for _, network := range []string{"udp", "tcp"} {
		in := exchange(t, network, r.addr, question("redis.demo.svc.clusterset.local.", dns.TypeA))
		if in.Rcode != dns.RcodeSuccess || len(in.Answer) != 1 {
			t.Errorf("%s: zone name: rcode %s, %d answers; want the ClusterSetIP", network, dns.RcodeToString[in.Rcode], len(in.Answer))
		}
		out := exchange(t, network, r.addr, question("example.org.", dns.TypeA))
		if out.Rcode != dns.RcodeRefused {
			t.Errorf("%s: name outside the zone with no upstream: rcode %s, want REFUSED", network, dns.RcodeToString[out.Rcode])
		}
	}
	if got := counter(t, r.m.badRequests.WithLabelValues("REFUSED", "no_upstream")); got != 2 {
		t.Errorf("no_upstream refusals counted %v, want 2", got)
	}
}

func TestListenOnATakenAddressSaysWhatToDo(t *testing.T) {
	pc, ln := listenPair(t)
	defer pc.Close()
	defer ln.Close()
	s, err := New(Config{Listen: pc.LocalAddr().String(), Upstream: "127.0.0.1:1"}, Deps{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Listen()
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "another DNS server") {
		t.Fatalf("Listen on a taken address: %v, want EADDRINUSE with a hint", err)
	}
}

func TestTCPConnectionsAreBoundedAndIdleOnesClosed(t *testing.T) {
	up := startUpstream(t)
	r := startResolver(t, Config{Upstream: up.addr, MaxTCPConns: 1, TCPIdleTimeout: 200 * time.Millisecond},
		Deps{View: testServices()})
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	first, err := c.Dial(r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	q := question("redis.demo.svc.clusterset.local.", dns.TypeA)
	for i := range 2 { // one connection carries several queries
		if resp, _, err := c.ExchangeWithConn(q, first); err != nil || len(resp.Answer) != 1 {
			t.Fatalf("query %d on the first connection: %v %v", i, resp, err)
		}
	}
	second, err := c.Dial(r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if _, _, err := c.ExchangeWithConn(q, second); err == nil {
		t.Fatal("a connection beyond MaxTCPConns was served")
	}
	if got := counter(t, r.m.dropped.WithLabelValues("tcp-conns")); got != 1 {
		t.Errorf("dropped{tcp-conns} = %v, want 1", got)
	}
	// The first connection idles past TCPIdleTimeout: the resolver closes it.
	first.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := first.Read(make([]byte, 1)); err == nil {
		t.Fatal("an idle connection stayed open")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("idle connection still open after 2s; TCPIdleTimeout is 200ms")
	}
	// Its slot is free again.
	third, err := c.Dial(r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	if resp, _, err := c.ExchangeWithConn(q, third); err != nil || len(resp.Answer) != 1 {
		t.Fatalf("query after the idle connection closed: %v %v", resp, err)
	}
}
