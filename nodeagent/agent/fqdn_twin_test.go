package agent_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
)

// TestAnAllowedAnswerOpensItsAddressesForTheAskingPodOnly resolves through
// the real resolver and name policy and sends packets through the
// in-memory twin of the dataplane: an address is open to the pod that was
// answered it, on the rule's port, and to no other pod with the same rules;
// an address never answered stays closed.
func TestAnAllowedAnswerOpensItsAddressesForTheAskingPodOnly(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	mem := dataplane.NewMemory(dataplane.WithWallClock(clk.now))
	rules := map[string]policy.EndpointRules{}
	for _, p := range namePods() {
		rules[p.ID] = policy.EndpointRules{Identity: 1000, Egress: p.Egress}
		if err := mem.Attach(ctx, dataplane.Endpoint{ID: p.ID, Interface: "veth-" + p.ID}); err != nil {
			t.Fatal(err)
		}
	}
	if err := mem.Apply(ctx, &dataplane.Revision{Number: 1, Rules: rules}); err != nil {
		t.Fatal(err)
	}
	e := startNameEnv(t, envOpt{dp: &learner{Memory: mem}, clk: clk})

	egress := func(pod, dst string, port uint16) dataplane.Verdict {
		t.Helper()
		v, _, _, err := mem.Process(pod, policy.Egress, tcpSYN(podIPs[pod], netip.MustParseAddr(dst), 40000, port))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := egress(podA, "198.51.100.1", 443); v != dataplane.Deny {
		t.Fatalf("before any answer: a -> 198.51.100.1:443 = %v, want deny", v)
	}
	if r := e.ask(t, podA, "www.example.com.", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("rcode %s", dns.RcodeToString[r.Rcode])
	}
	e.ask(t, podA, "denied.org.", dns.TypeA)
	for _, c := range []struct {
		name, pod, dst string
		port           uint16
		want           dataplane.Verdict
	}{
		{"the asking pod reaches the answered address", podA, "198.51.100.1", 443, dataplane.Allow},
		{"on the rule's port only", podA, "198.51.100.1", 80, dataplane.Deny},
		{"another pod with the same rules did not ask", podB, "198.51.100.1", 443, dataplane.Deny},
		{"an address never answered stays closed", podA, "198.51.100.2", 443, dataplane.Deny},
		{"a refused name's address stays closed", podA, "203.0.113.9", 443, dataplane.Deny},
	} {
		if v := egress(c.pod, c.dst, c.port); v != c.want {
			t.Errorf("%s: %s -> %s:%d = %v, want %v", c.name, c.pod, c.dst, c.port, v, c.want)
		}
	}
}
