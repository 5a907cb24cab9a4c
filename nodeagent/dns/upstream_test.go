package dns

import (
	"context"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startRawUpstream is an upstream on 127.0.0.1 UDP that answers every
// query with whatever respond returns for it (nothing when nil): for
// upstreams that misbehave in ways a real server would not.
func startRawUpstream(t testing.TB, respond func(query []byte) []byte) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { pc.Close(); wg.Wait() })
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
	return pc.LocalAddr().String()
}

func TestMisbehavingUpstreamGetsTheClientServfail(t *testing.T) {
	answerTo := func(query []byte, edit func(m *dns.Msg)) []byte {
		q := new(dns.Msg)
		if err := q.Unpack(query); err != nil {
			return nil
		}
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = []dns.RR{mustRR("example.org. 30 IN A 192.0.2.1")}
		edit(m)
		out, err := m.Pack()
		if err != nil {
			panic(err)
		}
		return out
	}
	tests := []struct {
		name    string
		respond func(query []byte) []byte
		counter string // upErrors reason, or "timeout"
	}{
		{"answer to another question", func(q []byte) []byte {
			return answerTo(q, func(m *dns.Msg) { m.Question[0].Name = "evil.example." })
		}, "mismatch"},
		{"answer to another type", func(q []byte) []byte {
			return answerTo(q, func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeMX })
		}, "mismatch"},
		{"a query instead of an answer", func(q []byte) []byte {
			return answerTo(q, func(m *dns.Msg) { m.Response = false })
		}, "mismatch"},
		{"no question", func(q []byte) []byte {
			return answerTo(q, func(m *dns.Msg) { m.Question = nil })
		}, "mismatch"},
		{"garbage after the ID", func(q []byte) []byte {
			return append([]byte{q[0], q[1]}, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 0xc0, 12)
		}, "exchange"},
		{"only a wrong ID, then silence", func(q []byte) []byte {
			return answerTo(q, func(m *dns.Msg) { m.Id ^= 1 })
		}, "timeout"},
		{"silence", func([]byte) []byte { return nil }, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startRawUpstream(t, tt.respond)
			r := startResolver(t, Config{Upstream: up, UpstreamTimeout: 200 * time.Millisecond}, Deps{})
			resp := exchange(t, "udp", r.addr, question("example.org.", dns.TypeA))
			if resp.Rcode != dns.RcodeServerFailure || len(resp.Answer) != 0 {
				t.Fatalf("rcode %s answer %v, want SERVFAIL and no answer", dns.RcodeToString[resp.Rcode], resp.Answer)
			}
			c := r.m.timeouts.WithLabelValues("udp")
			if tt.counter != "timeout" {
				c = r.m.upErrors.WithLabelValues(tt.counter)
			}
			if got := counter(t, c); got != 1 {
				t.Errorf("counter %q = %v, want 1", tt.counter, got)
			}
		})
	}
}

func TestQueriesBeyondMaxInFlightAreDroppedAndCounted(t *testing.T) {
	var held atomic.Int32
	release := make(chan struct{})
	hold := HookFuncs{OnRelease: func(ctx context.Context, q *Query, resp *dns.Msg) (*dns.Msg, error) {
		held.Add(1)
		<-release
		return resp, nil
	}}
	r := startResolver(t, Config{Upstream: "127.0.0.1:1", MaxInFlight: 1},
		Deps{View: testServices(), Hooks: []Hook{hold}})
	q := question("redis.demo.svc.clusterset.local.", dns.TypeA)
	first := make(chan *dns.Msg, 1)
	go func() {
		c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
		resp, _, _ := c.Exchange(q, r.addr)
		first <- resp
	}()
	for held.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	c := &dns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
	if resp, _, err := c.Exchange(q, r.addr); err == nil {
		t.Fatalf("a query beyond MaxInFlight was answered: %v", resp)
	}
	if got := counter(t, r.m.dropped.WithLabelValues("overload")); got != 1 {
		t.Errorf("dropped{overload} = %v, want 1", got)
	}
	close(release)
	if resp := <-first; resp == nil || len(resp.Answer) != 1 {
		t.Fatalf("the query in flight: %v", resp)
	}
	if resp := exchange(t, "udp", r.addr, q); len(resp.Answer) != 1 {
		t.Fatalf("after the load went: %v", resp)
	}
}

func TestConcurrentQueriesWhileTheViewChanges(t *testing.T) {
	up := startUpstream(t)
	r := startResolver(t, Config{Upstream: up.addr}, Deps{View: testServices()})
	other := NewServices(nil)
	stop := make(chan struct{})
	var swaps sync.WaitGroup
	swaps.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%2 == 0 {
				r.SetView(other)
			} else {
				r.SetView(testServices())
			}
		}
	})
	var clients sync.WaitGroup
	for range 4 {
		clients.Go(func() {
			c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
			for range 50 {
				resp, _, err := c.Exchange(question("redis.demo.svc.clusterset.local.", dns.TypeA), r.addr)
				if err != nil {
					t.Error(err)
					return
				}
				// One view or the other, never a mix.
				ok := (resp.Rcode == dns.RcodeNameError && len(resp.Answer) == 0) ||
					(resp.Rcode == dns.RcodeSuccess && len(resp.Answer) == 1)
				if !ok {
					t.Errorf("answer from no view: %v", resp)
					return
				}
			}
		})
	}
	clients.Wait()
	close(stop)
	swaps.Wait()
}

func TestServesOverIPv6Loopback(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no IPv6 loopback: %v", err)
		}
		t.Skipf("no IPv6 loopback here (fails when CI=true): %v", err)
	} else {
		ln.Close()
	}
	up := startUpstream(t)
	r := startResolver(t, Config{Listen: "[::1]:0", Upstream: up.addr}, Deps{View: testServices()})
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"redis.demo.svc.clusterset.local.", "example.org."} {
			if resp := exchange(t, network, r.addr, question(name, dns.TypeA)); len(resp.Answer) != 1 {
				t.Errorf("%s over %s on [::1]: %v", name, network, resp)
			}
		}
	}
}
