package agent_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fdns "github.com/fedmesh/fedmesh/nodeagent/dns"
)

// rawUpstream answers every UDP query with answer() as it is, the query's
// ID patched in.
func rawUpstream(t testing.TB, answer func() []byte) string {
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
			a := append([]byte(nil), answer()...)
			if len(a) >= 2 && n >= 2 {
				copy(a, buf[:2])
			}
			pc.WriteTo(a, from)
		}
	})
	return pc.LocalAddr().String()
}

// FuzzNamePolicyNeverReleasesAnAddressTheDataplaneDoesNotHold sends
// arbitrary upstream answers to an allowed name through the real resolver
// pipeline and the real name policy, with Learn failing or not: the pod
// never gets an answer giving the queried name an address the dataplane
// was not told to hold for that pod (over the per-name limit of 3 too),
// and nothing crashes or wedges.
func FuzzNamePolicyNeverReleasesAnAddressTheDataplaneDoesNotHold(f *testing.F) {
	q := new(dns.Msg).SetQuestion("www.example.com.", dns.TypeA)
	mk := func(rrs ...string) []byte {
		m := new(dns.Msg).SetReply(q)
		for _, s := range rrs {
			rr, err := dns.NewRR(s)
			if err != nil {
				f.Fatal(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	formerr := new(dns.Msg).SetRcode(q, dns.RcodeFormatError)
	formerr.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{198, 51, 100, 9}}}
	formerrRaw, err := formerr.Pack()
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range [][]byte{
		formerrRaw, // an error answer carrying an address
		mk("www.example.com. 60 IN A 198.51.100.1"),
		mk("www.example.com. 60 IN CNAME e.cdn.net.", "e.cdn.net. 5 IN A 198.51.100.2", "other.net. 60 IN A 203.0.113.1"),
		mk("www.example.com. 60 IN CNAME e.cdn.net.", "e.cdn.net. 60 IN CNAME www.example.com.", "e.cdn.net. 60 IN AAAA 2001:db8::7"),
		mk("WWW.EXAMPLE.COM. 0 IN A 198.51.100.3", "www.example.com. 10 IN AAAA ::ffff:198.51.100.4"),
	} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	var answer atomic.Pointer[[]byte]
	up := rawUpstream(f, func() []byte { return *answer.Load() })
	pods := namePods()
	client := netip.AddrPortFrom(podIPs[podA], 40000)
	f.Fuzz(func(t *testing.T, upstreamAnswer []byte, failLearn bool) {
		answer.Store(&upstreamAnswer)
		dp := &learner{Memory: dataplane.NewMemory()}
		if failLearn {
			dp.setFail(errors.New("map full"))
		}
		now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
		np, err := agent.NewNamePolicy(agent.NamePolicyConfig{MinTTL: -1, MaxAddrsPerName: 3}, dp, nil, nil, func() time.Time { return now }, discardLog())
		if err != nil {
			t.Fatal(err)
		}
		np.Update(context.Background(), pods)
		srv, err := fdns.New(fdns.Config{Listen: "127.0.0.1:0", Upstream: up, UpstreamTimeout: 100 * time.Millisecond, HookTimeout: 100 * time.Millisecond},
			fdns.Deps{Hooks: []fdns.Hook{np}, Pods: np, Logger: discardLog()})
		if err != nil {
			t.Fatal(err)
		}
		req, _ := q.Pack()
		start := time.Now()
		out := srv.Handle(context.Background(), req, client, fdns.UDP)
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("one query took %s: wedged", took)
		}
		resp := new(dns.Msg)
		if err := resp.Unpack(out); err != nil {
			t.Fatalf("answer does not decode: %v", err)
		}
		held := map[netip.Addr]time.Time{}
		for _, a := range heldNow(dp) {
			if a.Endpoint != podA || a.Name != "www.example.com" {
				t.Fatalf("learned %+v: another pod or name than asked", a)
			}
			held[a.Addr] = a.Expires
		}
		for _, a := range fdns.ChainAddrs("www.example.com.", resp.Answer) {
			exp, ok := held[a.Addr]
			if !ok {
				t.Fatalf("released %s for the pod (rcode %s) but the dataplane does not hold it", a.Addr, dns.RcodeToString[resp.Rcode])
			}
			if want := now.Add(time.Duration(a.TTL) * time.Second); exp.Before(want) {
				t.Fatalf("%s held until %s, before its TTL ends at %s", a.Addr, exp, want)
			}
		}
	})
}
