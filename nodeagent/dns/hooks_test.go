package dns

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

type podNames map[netip.Addr]string

func (p podNames) PodByIP(ip netip.Addr) (string, bool) { n, ok := p[ip]; return n, ok }

func TestHooksDecideBeforeResolvingAndBeforeRelease(t *testing.T) {
	up := startUpstream(t)
	release := make(chan struct{})
	var (
		mu       sync.Mutex
		released []string
	)
	hook := HookFuncs{
		OnQuery: func(ctx context.Context, q *Query) (*dns.Msg, error) {
			switch strings.ToLower(q.Question().Name) {
			case "denied.example.org.":
				m := new(dns.Msg)
				return m.SetRcode(q.Request, dns.RcodeRefused), nil
			case "broken.example.org.":
				return nil, errors.New("policy unavailable")
			}
			return nil, nil
		},
		OnRelease: func(ctx context.Context, q *Query, resp *dns.Msg) (*dns.Msg, error) {
			switch strings.ToLower(q.Question().Name) {
			case "held.example.org.":
				select { // the dataplane learning the addresses
				case <-release:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			case "stuck.example.org.":
				<-ctx.Done()
				return nil, ctx.Err()
			}
			mu.Lock()
			released = append(released, q.Pod+" "+q.Question().Name+" "+dns.RcodeToString[resp.Rcode]+" "+q.Source.String())
			mu.Unlock()
			return resp, nil
		},
	}
	r := startResolver(t, Config{Upstream: up.addr, HookTimeout: 300 * time.Millisecond},
		Deps{View: testServices(), Hooks: []Hook{hook}, Recorder: &recorder{},
			Pods: podNames{netip.MustParseAddr("127.0.0.1"): "demo/client-0"}})

	tests := []struct {
		name, qname string
		rcode       int
		upstream    bool // whether the upstream must have seen it
	}{
		{"a name the hook denies is refused without asking the upstream", "denied.example.org.", dns.RcodeRefused, false},
		{"a failing query hook is SERVFAIL", "broken.example.org.", dns.RcodeServerFailure, false},
		{"a release hook that never returns is SERVFAIL after the hook timeout", "stuck.example.org.", dns.RcodeServerFailure, true},
		{"zone answers pass the release hook", "redis.demo.svc.clusterset.local.", dns.RcodeSuccess, false},
		{"upstream answers pass the release hook", "example.org.", dns.RcodeSuccess, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(up.queries())
			resp := exchange(t, "udp", r.addr, question(tt.qname, dns.TypeA))
			if resp.Rcode != tt.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
			}
			if asked := len(up.queries()) > before; asked != tt.upstream {
				t.Errorf("upstream asked: %v, want %v", asked, tt.upstream)
			}
		})
	}
	// Release happens from the handling goroutine; the client's answer
	// only comes after it, so released is complete here.
	want := []string{
		"demo/client-0 denied.example.org. REFUSED local",
		"demo/client-0 redis.demo.svc.clusterset.local. NOERROR zone",
		"demo/client-0 example.org. NOERROR upstream",
	}
	mu.Lock()
	if !slices.Equal(released, want) {
		t.Errorf("release hook saw %q, want %q", released, want)
	}
	mu.Unlock()

	t.Run("an answer held by the release hook reaches the client only when released", func(t *testing.T) {
		got := make(chan *dns.Msg, 1)
		go func() {
			c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
			resp, _, _ := c.Exchange(question("held.example.org.", dns.TypeA), r.addr)
			got <- resp
		}()
		select {
		case resp := <-got:
			t.Fatalf("answer %v released while the hook held it", resp)
		case <-time.After(100 * time.Millisecond):
		}
		close(release)
		if resp := <-got; resp == nil || resp.Rcode != dns.RcodeNameError {
			t.Fatalf("after release: %v, want the upstream's NXDOMAIN", resp)
		}
	})
}

func TestEveryAnsweredQueryIsRecorded(t *testing.T) {
	up := startUpstream(t)
	var recs recorder
	pods := podNames{netip.MustParseAddr("127.0.0.1"): "demo/client-0"}
	r := startResolver(t, Config{Upstream: up.addr, TTL: 9 * time.Second, NegativeTTL: 4 * time.Second},
		Deps{View: testServices(), Recorder: &recs, Pods: pods})
	exchange(t, "udp", r.addr, question("Redis.demo.svc.clusterset.local.", dns.TypeA))
	exchange(t, "tcp", r.addr, question("example.org.", dns.TypeAAAA))
	exchange(t, "udp", r.addr, question("nope.demo.svc.clusterset.local.", dns.TypeA))
	exchange(t, "udp", r.addr, question("_redis._tcp.redis.demo.svc.clusterset.local.", dns.TypeSRV))
	got := recs.all()
	if len(got) != 4 {
		t.Fatalf("%d records, want 4", len(got))
	}
	type summary struct {
		Pod, Name string
		Type      uint16
		Transport Transport
		Rcode     int
		Source    Source
		Upstream  string
		TTL       uint32
		Answers   []Answer
	}
	want := []summary{
		{"demo/client-0", "redis.demo.svc.clusterset.local.", dns.TypeA, UDP, dns.RcodeSuccess, SourceZone, "", 9,
			[]Answer{{Name: "Redis.demo.svc.clusterset.local.", Type: dns.TypeA, TTL: 9, Addr: netip.MustParseAddr("10.96.0.10")}}},
		{"demo/client-0", "example.org.", dns.TypeAAAA, TCP, dns.RcodeSuccess, SourceUpstream, up.addr, 30,
			[]Answer{{Name: "example.org.", Type: dns.TypeAAAA, TTL: 30, Addr: netip.MustParseAddr("2001:db8::1")}}},
		{"demo/client-0", "nope.demo.svc.clusterset.local.", dns.TypeA, UDP, dns.RcodeNameError, SourceZone, "", 4, nil},
		{"demo/client-0", "_redis._tcp.redis.demo.svc.clusterset.local.", dns.TypeSRV, UDP, dns.RcodeSuccess, SourceZone, "", 9,
			[]Answer{{Name: "_redis._tcp.redis.demo.svc.clusterset.local.", Type: dns.TypeSRV, TTL: 9, Target: "redis.demo.svc.clusterset.local."}}},
	}
	for i, rec := range got {
		s := summary{rec.Pod, rec.Name, rec.Type, rec.Transport, rec.Rcode, rec.Source, rec.Upstream, rec.TTL, rec.Answers}
		if !slices.Equal(s.Answers, want[i].Answers) || s.Pod != want[i].Pod || s.Name != want[i].Name || s.Type != want[i].Type ||
			s.Transport != want[i].Transport || s.Rcode != want[i].Rcode || s.Source != want[i].Source ||
			s.Upstream != want[i].Upstream || s.TTL != want[i].TTL {
			t.Errorf("record %d:\n got %+v\nwant %+v", i, s, want[i])
		}
		if rec.Latency <= 0 || rec.Client.Addr() != netip.MustParseAddr("127.0.0.1") || rec.Time.IsZero() {
			t.Errorf("record %d: latency %v client %v time %v", i, rec.Latency, rec.Client, rec.Time)
		}
	}
}
