package dataplane

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func addrPorts(ss ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range ss {
		out = append(out, ap(s))
	}
	return out
}

func TestDNSRedirectValidateRejectsWhatCannotBeRedirected(t *testing.T) {
	for _, c := range []struct {
		name string
		r    DNSRedirect
		ok   bool
	}{
		{"empty removes the redirect", DNSRedirect{}, true},
		{"both families", DNSRedirect{ClusterDNS: addrs("10.96.0.10", "fd00::a"),
			Resolvers: addrPorts("169.254.20.10:53", "[fd00:169:254::10]:53")}, true},
		{"two cluster DNS addresses one resolver", DNSRedirect{ClusterDNS: addrs("10.96.0.10", "10.96.0.11"),
			Resolvers: addrPorts("169.254.20.10:53")}, true},
		{"cluster DNS without a resolver of its family", DNSRedirect{ClusterDNS: addrs("fd00::a"),
			Resolvers: addrPorts("169.254.20.10:53")}, false},
		{"no resolver", DNSRedirect{ClusterDNS: addrs("10.96.0.10")}, false},
		{"two resolvers of one family", DNSRedirect{ClusterDNS: addrs("10.96.0.10"),
			Resolvers: addrPorts("169.254.20.10:53", "169.254.20.11:53")}, false},
		{"resolver without port", DNSRedirect{ClusterDNS: addrs("10.96.0.10"), Resolvers: addrPorts("169.254.20.10:0")}, false},
		{"unspecified resolver", DNSRedirect{ClusterDNS: addrs("10.96.0.10"), Resolvers: addrPorts("0.0.0.0:53")}, false},
		{"IPv4-mapped cluster DNS", DNSRedirect{ClusterDNS: addrs("::ffff:10.96.0.10"), Resolvers: addrPorts("169.254.20.10:53")}, false},
		{"redirect to itself", DNSRedirect{ClusterDNS: addrs("169.254.20.10"), Resolvers: addrPorts("169.254.20.10:53")}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.r.Validate()
			if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrInvalidDNSRedirect)) {
				t.Fatalf("Validate() = %v, want ok=%v", err, c.ok)
			}
		})
	}
}

// The twin redirects as the programs do: connect and sendmsg to a cluster
// DNS address on port 53 go to the resolver of its family unless the
// socket carries the skip mark, and the peer is shown as the cluster DNS
// address.
func TestSockLBMemoryRedirectsClusterDNSUnlessMarked(t *testing.T) {
	m := NewSockLBMemory(ServiceLimits{}, func() uint32 { return 0 })
	ctx := context.Background()
	// A service frontend on the same address: the redirect takes
	// precedence on port 53, the service table keeps the other ports.
	if err := m.ApplyServices(ctx, table(1, fe("10.96.0.10:53", protoUDP, be("10.1.0.5:5353", 1)),
		fe("10.96.0.10:9153", protoTCP, be("10.1.0.5:9153", 1)))); err != nil {
		t.Fatal(err)
	}
	r := DNSRedirect{ClusterDNS: addrs("10.96.0.10", "fd00::a"), Resolvers: addrPorts("169.254.20.10:53", "[fd00:169:254::10]:5353"),
		SkipMark: 0x53}
	if err := m.SetDNSRedirect(ctx, r); err != nil {
		t.Fatal(err)
	}
	m.SetMark(2, 0x53)
	m.SetMark(3, 0x54)
	for _, c := range []struct {
		name  string
		sock  SocketID
		proto uint8
		dst   string
		want  string
	}{
		{"udp4", 1, protoUDP, "10.96.0.10:53", "169.254.20.10:53"},
		{"tcp4", 1, protoTCP, "10.96.0.10:53", "169.254.20.10:53"},
		{"udp6", 1, protoUDP, "[fd00::a]:53", "[fd00:169:254::10]:5353"},
		{"tcp6", 1, protoTCP, "[fd00::a]:53", "[fd00:169:254::10]:5353"},
		{"udp4 from a dual-stack socket", 1, protoUDP, "[::ffff:10.96.0.10]:53", "[::ffff:169.254.20.10]:53"},
		{"the agent's marked socket", 2, protoUDP, "10.96.0.10:53", "10.96.0.10:53"},
		{"another mark", 3, protoTCP, "10.96.0.10:53", "169.254.20.10:53"},
		{"another port: the service table", 1, protoTCP, "10.96.0.10:9153", "10.1.0.5:9153"},
		{"another address", 1, protoUDP, "10.96.0.11:53", "10.96.0.11:53"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := m.Connect(c.sock, c.proto, ap(c.dst))
			if err != nil || got != ap(c.want) {
				t.Fatalf("connect %s = %s (%v), want %s", c.dst, got, err, c.want)
			}
			if peer := m.PeerName(c.sock, c.proto, got); peer != ap(c.dst) {
				t.Errorf("getpeername shows %s, want %s", peer, c.dst)
			}
		})
	}
	if got := m.RecvMsg(1, protoUDP, ap("169.254.20.10:53")); got != ap("10.96.0.10:53") {
		t.Errorf("recvmsg source %s, want the cluster DNS address", got)
	}
	// An empty redirect removes it.
	if err := m.SetDNSRedirect(ctx, DNSRedirect{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Connect(1, protoTCP, ap("10.96.0.10:53")); got != ap("10.96.0.10:53") {
		t.Errorf("after removal connect goes to %s, want the cluster DNS address itself", got)
	}
	st, _ := m.ServiceStatus(ctx)
	if st.DNSRedirected != 6 || st.DNSExempt != 1 {
		t.Errorf("counters %d redirected, %d exempt; want 6 and 1", st.DNSRedirected, st.DNSExempt)
	}
}
