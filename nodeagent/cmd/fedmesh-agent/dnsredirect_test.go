package main

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/dns"
)

func TestDNSRedirectFlagIsCheckedAtStart(t *testing.T) {
	for _, c := range []struct {
		name, redirect, listen string
		want                   []netip.Addr
		err                    string // substring; "" means accepted
	}{
		{"unset", "", "", nil, ""},
		{"one address", "10.96.0.10", "169.254.20.10:53", []netip.Addr{netip.MustParseAddr("10.96.0.10")}, ""},
		{"two addresses", "10.96.0.10, 10.96.0.11", "169.254.20.10:53",
			[]netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.96.0.11")}, ""},
		{"IPv6", "fd00::a", "[fd00:169:254::10]:53", []netip.Addr{netip.MustParseAddr("fd00::a")}, ""},
		{"without a resolver", "10.96.0.10", "", nil, "needs --dns-listen"},
		{"other family than the resolver", "fd00::a", "169.254.20.10:53", nil, "other IP family"},
		{"not an address", "kube-dns", "169.254.20.10:53", nil, "want the cluster DNS addresses"},
		{"with a port", "10.96.0.10:53", "169.254.20.10:53", nil, "want the cluster DNS addresses"},
		{"the resolver itself", "169.254.20.10", "169.254.20.10:53", nil, "resolver's own address"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := dnsRedirectAddrs(c.redirect, c.listen)
			if c.err == "" {
				if err != nil || len(got) != len(c.want) {
					t.Fatalf("dnsRedirectAddrs(%q, %q) = %v, %v; want %v", c.redirect, c.listen, got, err, c.want)
				}
				for i := range got {
					if got[i] != c.want[i] {
						t.Fatalf("dnsRedirectAddrs(%q) = %v, want %v", c.redirect, got, c.want)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("dnsRedirectAddrs(%q, %q) = %v, want an error saying %q", c.redirect, c.listen, err, c.err)
			}
		})
	}
}

// The agent programs the redirect from its flags at start, and removes one
// an earlier run left when started without --dns-redirect.
func TestAgentProgramsTheDNSRedirectFromItsFlags(t *testing.T) {
	ctx := context.Background()
	m := dataplane.NewSockLBMemory(dataplane.ServiceLimits{}, rand.Uint32)
	o := &options{dnsListen: "169.254.20.10:53", dnsRedirect: "10.96.0.10"}
	if err := setDNSRedirect(ctx, o, m, slog.Default()); err != nil {
		t.Fatal(err)
	}
	const udp = 17
	pod, agent := dataplane.SocketID(1), dataplane.SocketID(2)
	m.SetMark(agent, dns.UpstreamMark)
	if got, _ := m.Connect(pod, udp, netip.MustParseAddrPort("10.96.0.10:53")); got != netip.MustParseAddrPort("169.254.20.10:53") {
		t.Errorf("a pod's DNS goes to %s, want the resolver", got)
	}
	if got, _ := m.Connect(agent, udp, netip.MustParseAddrPort("10.96.0.10:53")); got != netip.MustParseAddrPort("10.96.0.10:53") {
		t.Errorf("the agent's upstream query goes to %s, want the cluster DNS itself", got)
	}
	o.dnsRedirect = ""
	if err := setDNSRedirect(ctx, o, m, slog.Default()); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Connect(pod, udp, netip.MustParseAddrPort("10.96.0.10:53")); got != netip.MustParseAddrPort("10.96.0.10:53") {
		t.Errorf("after a start without --dns-redirect a pod's DNS goes to %s, want the cluster DNS itself", got)
	}
	if err := setDNSRedirect(ctx, &options{dnsListen: "169.254.20.10:53", dnsRedirect: "10.96.0.10"}, nil, slog.Default()); err == nil ||
		!strings.Contains(err.Error(), "--service-cgroup") {
		t.Errorf("--dns-redirect without a service translation: %v, want an error naming --service-cgroup", err)
	}
}
