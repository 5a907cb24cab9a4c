package main

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/dns"
)

func TestDNSRedirectFlagIsCheckedAtStart(t *testing.T) {
	ip, ap := netip.MustParseAddr, netip.MustParseAddrPort
	const dual = "169.254.20.10:53,[fd00:169:254::10]:5353"
	for _, c := range []struct {
		name, redirect, listen string
		want                   []netip.Addr     // cluster DNS addresses redirected
		resolvers              []netip.AddrPort // where to
		err                    string           // substring; "" means accepted
	}{
		{"unset", "", "", nil, nil, ""},
		{"unset with a resolver", "", dual, nil, nil, ""},
		{"one address", "10.96.0.10", "169.254.20.10:53", []netip.Addr{ip("10.96.0.10")}, []netip.AddrPort{ap("169.254.20.10:53")}, ""},
		{"two addresses", "10.96.0.10, 10.96.0.11", "169.254.20.10:53",
			[]netip.Addr{ip("10.96.0.10"), ip("10.96.0.11")}, []netip.AddrPort{ap("169.254.20.10:53")}, ""},
		{"IPv6", "fd00::a", "[fd00:169:254::10]:53", []netip.Addr{ip("fd00::a")}, []netip.AddrPort{ap("[fd00:169:254::10]:53")}, ""},
		{"both families to a resolver of each", "10.96.0.10,fd00::a", dual,
			[]netip.Addr{ip("10.96.0.10"), ip("fd00::a")}, []netip.AddrPort{ap("169.254.20.10:53"), ap("[fd00:169:254::10]:5353")}, ""},
		{"IPv4 only with a resolver of each family", "10.96.0.10", dual,
			[]netip.Addr{ip("10.96.0.10")}, []netip.AddrPort{ap("169.254.20.10:53"), ap("[fd00:169:254::10]:5353")}, ""},
		{"without a resolver", "10.96.0.10", "", nil, nil, "needs --dns-listen"},
		{"IPv6 with an IPv4 resolver only", "fd00::a", "169.254.20.10:53", nil, nil,
			"--dns-redirect fd00::a: the resolver (--dns-listen 169.254.20.10:53) has no address of its IP family"},
		{"IPv4 with an IPv6 resolver only", "10.96.0.10,fd00::a", "[fd00:169:254::10]:53", nil, nil,
			"--dns-redirect 10.96.0.10: the resolver (--dns-listen [fd00:169:254::10]:53) has no address of its IP family"},
		{"a bad resolver list", "10.96.0.10", "169.254.20.10:53,169.254.20.11:53", nil, nil, "--dns-listen: invalid listen address"},
		{"not an address", "kube-dns", "169.254.20.10:53", nil, nil, "want the cluster DNS addresses"},
		{"with a port", "10.96.0.10:53", "169.254.20.10:53", nil, nil, "want the cluster DNS addresses"},
		{"the resolver itself", "169.254.20.10", "169.254.20.10:53", nil, nil, "resolver's own address"},
		{"the IPv6 resolver itself", "10.96.0.10,fd00:169:254::10", dual, nil, nil, "resolver's own address"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := dnsRedirect(c.redirect, c.listen)
			if c.err == "" {
				if err != nil || !slices.Equal(got.ClusterDNS, c.want) || !slices.Equal(got.Resolvers, c.resolvers) {
					t.Fatalf("dnsRedirect(%q, %q) = %+v, %v; want %v to %v", c.redirect, c.listen, got, err, c.want, c.resolvers)
				}
				if len(c.want) > 0 && got.SkipMark != dns.UpstreamMark {
					t.Errorf("skip mark %#x, want the resolver's upstream mark %#x", got.SkipMark, dns.UpstreamMark)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("dnsRedirect(%q, %q) = %v, want an error saying %q", c.redirect, c.listen, err, c.err)
			}
		})
	}
}

// The agent programs the redirect from its flags at start, each family's
// cluster DNS to that family's resolver, and removes one an earlier run
// left when started without --dns-redirect.
func TestAgentProgramsTheDNSRedirectFromItsFlags(t *testing.T) {
	ctx := context.Background()
	ap := netip.MustParseAddrPort
	m := dataplane.NewSockLBMemory(dataplane.ServiceLimits{}, rand.Uint32)
	o := &options{dnsListen: "169.254.20.10:53,[fd00:169:254::10]:5353", dnsRedirect: "10.96.0.10,fd00:96::a"}
	if err := setDNSRedirect(ctx, o, m, slog.Default()); err != nil {
		t.Fatal(err)
	}
	const udp, tcp = 17, 6
	pod, agent := dataplane.SocketID(1), dataplane.SocketID(2)
	m.SetMark(agent, dns.UpstreamMark)
	for _, c := range []struct {
		proto      uint8
		clusterDNS netip.AddrPort
		resolver   netip.AddrPort
	}{
		{udp, ap("10.96.0.10:53"), ap("169.254.20.10:53")},
		{tcp, ap("10.96.0.10:53"), ap("169.254.20.10:53")},
		{udp, ap("[fd00:96::a]:53"), ap("[fd00:169:254::10]:5353")},
		{tcp, ap("[fd00:96::a]:53"), ap("[fd00:169:254::10]:5353")},
	} {
		if got, _ := m.Connect(pod, c.proto, c.clusterDNS); got != c.resolver {
			t.Errorf("a pod's DNS (proto %d) to %s goes to %s, want the resolver %s", c.proto, c.clusterDNS, got, c.resolver)
		}
		if got, _ := m.Connect(agent, c.proto, c.clusterDNS); got != c.clusterDNS {
			t.Errorf("the agent's upstream query (proto %d) to %s goes to %s, want the cluster DNS itself", c.proto, c.clusterDNS, got)
		}
	}
	o.dnsRedirect = ""
	if err := setDNSRedirect(ctx, o, m, slog.Default()); err != nil {
		t.Fatal(err)
	}
	for _, to := range []netip.AddrPort{ap("10.96.0.10:53"), ap("[fd00:96::a]:53")} {
		if got, _ := m.Connect(pod, udp, to); got != to {
			t.Errorf("after a start without --dns-redirect a pod's DNS to %s goes to %s, want the cluster DNS itself", to, got)
		}
	}
	if err := setDNSRedirect(ctx, &options{dnsListen: "169.254.20.10:53", dnsRedirect: "10.96.0.10"}, nil, slog.Default()); err == nil ||
		!strings.Contains(err.Error(), "--service-cgroup") {
		t.Errorf("--dns-redirect without a service translation: %v, want an error naming --service-cgroup", err)
	}
}
