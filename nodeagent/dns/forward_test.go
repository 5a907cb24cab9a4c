package dns

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestForwardsOtherNamesOverTheClientsTransport(t *testing.T) {
	up := startUpstream(t)
	r := startResolver(t, Config{Upstream: up.addr}, Deps{View: testServices()})
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			before := len(up.queries())
			q := question("Example.ORG.", dns.TypeA)
			resp := exchange(t, network, r.addr, q)
			if resp.Rcode != dns.RcodeSuccess || !slices.Equal(rdata(resp.Answer), []string{"A 192.0.2.1"}) {
				t.Fatalf("rcode %s answer %v, want the upstream's A 192.0.2.1", dns.RcodeToString[resp.Rcode], resp.Answer)
			}
			if resp.Id != q.Id || resp.Question[0].Name != "Example.ORG." {
				t.Errorf("answer id %d question %q, want the client's %d and %q", resp.Id, resp.Question[0].Name, q.Id, "Example.ORG.")
			}
			seen := up.queries()[before:]
			if len(seen) != 1 || seen[0].net != network {
				t.Fatalf("upstream saw %+v, want one query over %s", seen, network)
			}
			nx := exchange(t, network, r.addr, question("missing.example.org.", dns.TypeA))
			if nx.Rcode != dns.RcodeNameError {
				t.Errorf("upstream's NXDOMAIN came back as %s", dns.RcodeToString[nx.Rcode])
			}
		})
	}
	if got := counter(t, r.m.queries.WithLabelValues("A", "NOERROR", "upstream")); got != 2 {
		t.Errorf("queries{A,NOERROR,upstream} = %v, want 2", got)
	}
}

func TestForwardPassesEDNS0Sensibly(t *testing.T) {
	up := startUpstream(t)
	r := startResolver(t, Config{Upstream: up.addr}, Deps{})
	tests := []struct {
		name     string
		edns     uint16 // 0: the client sends no OPT record
		do       bool
		wantSize uint16 // what the upstream is offered; 0: no OPT
	}{
		{"no OPT from the client, none upstream", 0, false, 0},
		{"large client size capped", 4096, true, MaxUDPSize},
		{"small client size kept", 800, false, 800},
		{"size below 512 raised to 512", 100, false, 512},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(up.queries())
			q := question("example.org.", dns.TypeA)
			if tt.edns != 0 {
				q.SetEdns0(tt.edns, tt.do)
			}
			resp := exchange(t, "udp", r.addr, q)
			seen := up.queries()[before:]
			if len(seen) != 1 {
				t.Fatalf("upstream saw %d queries, want 1", len(seen))
			}
			if seen[0].id == q.Id {
				t.Log("upstream saw the client's ID; it should be a fresh one (may collide 1 in 65536)")
			}
			switch opt := seen[0].opt; {
			case tt.wantSize == 0 && opt != nil:
				t.Errorf("upstream got an OPT record the client did not send: %v", opt)
			case tt.wantSize != 0 && opt == nil:
				t.Errorf("upstream got no OPT record, want size %d", tt.wantSize)
			case opt != nil && (opt.UDPSize() != tt.wantSize || opt.Do() != tt.do):
				t.Errorf("upstream OPT size %d DO %v, want %d %v", opt.UDPSize(), opt.Do(), tt.wantSize, tt.do)
			}
			ropt := resp.IsEdns0()
			if (ropt != nil) != (tt.edns != 0) {
				t.Errorf("answer has OPT %v; the client sent one: %v", ropt, tt.edns != 0)
			}
			if ropt != nil && ropt.UDPSize() != MaxUDPSize {
				t.Errorf("answer advertises %d, want the resolver's own %d", ropt.UDPSize(), MaxUDPSize)
			}
		})
	}
}

func TestUpstreamTimeoutAnswersServfailAndIsCounted(t *testing.T) {
	up := startUpstream(t) // slow.example.org. is never answered
	var recs recorder
	r := startResolver(t, Config{Upstream: up.addr, UpstreamTimeout: 200 * time.Millisecond}, Deps{Recorder: &recs})
	for _, network := range []string{"udp", "tcp"} {
		start := time.Now()
		resp := exchange(t, network, r.addr, question("slow.example.org.", dns.TypeA))
		if resp.Rcode != dns.RcodeServerFailure {
			t.Fatalf("%s: rcode %s, want SERVFAIL", network, dns.RcodeToString[resp.Rcode])
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: SERVFAIL after %v; the timeout is 200ms", network, d)
		}
		if got := counter(t, r.m.timeouts.WithLabelValues(network)); got != 1 {
			t.Errorf("timeouts{%s} = %v, want 1", network, got)
		}
	}
	got := recs.all()
	if len(got) != 2 || got[0].Source != SourceLocal || got[0].Upstream != up.addr || got[0].Err == nil {
		t.Errorf("records %+v: want two local SERVFAILs naming the upstream and the error", got)
	}
	// The resolver still answers after timeouts.
	if resp := exchange(t, "udp", r.addr, question("example.org.", dns.TypeA)); resp.Rcode != dns.RcodeSuccess {
		t.Errorf("after timeouts: rcode %s", dns.RcodeToString[resp.Rcode])
	}
}

func TestTruncatedUpstreamAnswerMakesTheClientRetryOverTCP(t *testing.T) {
	up := startUpstream(t)
	r := startResolver(t, Config{Upstream: up.addr}, Deps{})
	q := question("big.example.org.", dns.TypeTXT)
	udp := exchange(t, "udp", r.addr, q)
	if !udp.Truncated {
		t.Fatalf("UDP answer of %d TXT records without TC; the upstream truncated it", len(udp.Answer))
	}
	tcp := exchange(t, "tcp", r.addr, q)
	if tcp.Truncated || len(tcp.Answer) != 40 {
		t.Fatalf("TCP answer TC=%v with %d records, want all 40", tcp.Truncated, len(tcp.Answer))
	}
	var nets []string
	for _, s := range up.queries() {
		nets = append(nets, s.net)
	}
	if !slices.Equal(nets, []string{"udp", "tcp"}) {
		t.Errorf("upstream saw %v, want the UDP query then the TCP retry forwarded over TCP", nets)
	}
	if got := counter(t, r.m.truncated.WithLabelValues("upstream")); got != 1 {
		t.Errorf("truncated{upstream} = %v, want 1", got)
	}
}

func TestShutdownLetsQueriesInFlightFinish(t *testing.T) {
	up := startUpstream(t)
	up.setDelay(300 * time.Millisecond)
	r := startResolver(t, Config{Upstream: up.addr}, Deps{})
	got := make(chan *dns.Msg, 1)
	go func() {
		c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
		resp, _, err := c.Exchange(question("slow.example.org.", dns.TypeA), r.addr)
		if err != nil {
			t.Errorf("query in flight during shutdown: %v", err)
		}
		got <- resp
	}()
	for len(up.queries()) == 0 { // stop only once the query is at the upstream
		time.Sleep(5 * time.Millisecond)
	}
	r.stop()
	resp := <-got
	if resp == nil || resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Fatalf("query in flight during shutdown answered %v, want the upstream's answer", resp)
	}
	c := &dns.Client{Net: "udp", Timeout: 300 * time.Millisecond}
	if _, _, err := c.ExchangeContext(context.Background(), question("example.org.", dns.TypeA), r.addr); err == nil {
		t.Error("a stopped resolver still answers")
	}
}
