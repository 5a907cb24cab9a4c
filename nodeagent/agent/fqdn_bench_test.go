package agent_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fdns "github.com/fedmesh/fedmesh/nodeagent/dns"
)

// BenchmarkNamePolicyQuery is one query of a pod with name rules through
// the resolver's whole pipeline and a real upstream on loopback: without
// the name policy (baseline), an allowed name learned into the in-memory
// dataplane, and a refused name (never forwarded). Compare allowed with
// baseline: the difference is the hooks and Learn.
func BenchmarkNamePolicyQuery(b *testing.B) {
	up := zoneUpstream(b, testRecords)
	client := netip.AddrPortFrom(podIPs[podA], 40000)
	for _, c := range []struct {
		name  string
		hook  bool
		qname string
	}{
		{"baseline", false, "www.example.com."},
		{"allowed", true, "www.example.com."},
		{"refused", true, "denied.org."},
	} {
		b.Run(c.name, func(b *testing.B) {
			deps := fdns.Deps{Logger: discardLog()}
			if c.hook {
				np, err := agent.NewNamePolicy(agent.NamePolicyConfig{}, dataplane.NewMemory(), nil, nil, nil, discardLog())
				if err != nil {
					b.Fatal(err)
				}
				np.Update(context.Background(), namePods())
				deps.Hooks, deps.Pods = []fdns.Hook{np}, np
			}
			srv, err := fdns.New(fdns.Config{Listen: "127.0.0.1:0", Upstream: up}, deps)
			if err != nil {
				b.Fatal(err)
			}
			req, _ := new(dns.Msg).SetQuestion(c.qname, dns.TypeA).Pack()
			b.ReportAllocs()
			for b.Loop() {
				if out := srv.Handle(context.Background(), req, client, fdns.UDP); out == nil {
					b.Fatal("no answer")
				}
			}
		})
	}
}
