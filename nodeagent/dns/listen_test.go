package dns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestParseListenTakesOneAddressPerFamily(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name, in string
		want     []netip.AddrPort
		err      string // substring; "" means accepted
	}{
		{"one IPv4 address", "169.254.20.10:53", []netip.AddrPort{ap("169.254.20.10:53")}, ""},
		{"one IPv6 address", "[fd00:169:254::10]:53", []netip.AddrPort{ap("[fd00:169:254::10]:53")}, ""},
		{"one per family", "169.254.20.10:53,[fd00:169:254::10]:53",
			[]netip.AddrPort{ap("169.254.20.10:53"), ap("[fd00:169:254::10]:53")}, ""},
		{"IPv6 first, kept in order", "[fd00:169:254::10]:53,169.254.20.10:53",
			[]netip.AddrPort{ap("[fd00:169:254::10]:53"), ap("169.254.20.10:53")}, ""},
		{"different ports and spaces", " 169.254.20.10:53 , [fd00:169:254::10]:5353",
			[]netip.AddrPort{ap("169.254.20.10:53"), ap("[fd00:169:254::10]:5353")}, ""},
		{"port 0 picks one", "127.0.0.1:0,[::1]:0", []netip.AddrPort{ap("127.0.0.1:0"), ap("[::1]:0")}, ""},
		{"two IPv4 addresses", "169.254.20.10:53,169.254.20.11:53", nil, "one IP family"},
		{"two IPv6 addresses", "[fd00::10]:53,[fd00::11]:53", nil, "one IP family"},
		{"three addresses", "169.254.20.10:53,[fd00::10]:53,169.254.20.11:53", nil, "one IP family"},
		{"no port", "169.254.20.10", nil, "want IP:port"},
		{"IPv6 without brackets", "fd00::10:53", nil, "want IP:port"},
		{"a host name", "localhost:53", nil, "want IP:port"},
		{"empty", "", nil, "want IP:port"},
		{"a trailing comma", "169.254.20.10:53,", nil, "want IP:port"},
		{"the IPv4 wildcard", "0.0.0.0:53", nil, "wildcard"},
		{"the IPv6 wildcard", "169.254.20.10:53,[::]:53", nil, "wildcard"},
		{"IPv4-mapped", "[::ffff:169.254.20.10]:53", nil, "IPv4-mapped"},
		{"with a zone", "[fe80::1%eth0]:53", nil, "zone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseListen(tt.in)
			if tt.err == "" {
				if err != nil || !slices.Equal(got, tt.want) {
					t.Fatalf("ParseListen(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
				}
				return
			}
			if !errors.Is(err, ErrInvalidListen) || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("ParseListen(%q) = %v, %v; want an ErrInvalidListen saying %q", tt.in, got, err, tt.err)
			}
		})
	}
}

// requireIPv6Loopback fails (CI=true) or skips where ::1 cannot be bound.
func requireIPv6Loopback(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no IPv6 loopback: %v", err)
		}
		t.Skipf("no IPv6 loopback here (fails when CI=true): %v", err)
	}
	ln.Close()
}

// One Server serves every listen address with one pipeline: both answer
// over UDP and TCP, the records name the pod behind either family's client
// address, and the metrics are shared.
func TestResolverServesEveryListenAddress(t *testing.T) {
	requireIPv6Loopback(t)
	up := startUpstream(t)
	var recs recorder
	pods := podNames{netip.MustParseAddr("127.0.0.1"): "demo/v4-client", netip.MustParseAddr("::1"): "demo/v6-client"}
	r := startResolver(t, Config{Listen: "127.0.0.1:0,[::1]:0", Upstream: up.addr},
		Deps{View: testServices(), Recorder: &recs, Pods: pods})
	addrs := r.Addrs()
	if len(addrs) != 2 || !addrs[0].Addr().Is4() || addrs[1].Addr() != netip.IPv6Loopback() || addrs[0].Port() == 0 || addrs[1].Port() == 0 {
		t.Fatalf("Addrs() = %v, want 127.0.0.1 and ::1 with the ports bound", addrs)
	}
	wantPod := map[bool]string{false: "demo/v4-client", true: "demo/v6-client"}
	n := 0
	for _, a := range addrs {
		for _, network := range []string{"udp", "tcp"} {
			for _, name := range []string{"redis.demo.svc.clusterset.local.", "example.org."} {
				resp := exchange(t, network, a.String(), question(name, dns.TypeAAAA))
				n++
				if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
					t.Errorf("%s over %s on %s: %v, want one answer", name, network, a, resp)
				}
				recs := recs.all()
				if len(recs) != n {
					t.Fatalf("%d records after %d queries", len(recs), n)
				}
				rec := recs[n-1]
				if rec.Client.Addr() != a.Addr() || rec.Pod != wantPod[a.Addr().Is6()] || rec.Name != name {
					t.Errorf("%s over %s on %s: recorded client %s pod %q name %q; want client %s, pod %q",
						name, network, a, rec.Client, rec.Pod, rec.Name, a.Addr(), wantPod[a.Addr().Is6()])
				}
			}
		}
	}
	var total float64
	for _, src := range []string{"zone", "upstream"} {
		total += counter(t, r.m.queries.WithLabelValues("AAAA", "NOERROR", src))
	}
	if total != float64(n) {
		t.Errorf("fedmesh_dns_queries_total over both addresses = %v, want %d", total, n)
	}

	// Stopping closes every socket.
	r.stop()
	for _, a := range addrs {
		if conn, err := net.DialTimeout("tcp", a.String(), time.Second); err == nil {
			conn.Close()
			t.Errorf("TCP %s still accepts after the resolver stopped", a)
		}
		if pc, err := net.ListenPacket("udp", a.String()); err != nil {
			t.Errorf("UDP %s still bound after the resolver stopped: %v", a, err)
		} else {
			pc.Close()
		}
	}
}

// MaxTCPConns bounds the connections of every listen address together.
func TestTCPConnectionLimitSpansTheListenAddresses(t *testing.T) {
	requireIPv6Loopback(t)
	r := startResolver(t, Config{Listen: "127.0.0.1:0,[::1]:0", MaxTCPConns: 1}, Deps{View: testServices()})
	addrs := r.Addrs()
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	held, err := c.Dial(addrs[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	q := question("redis.demo.svc.clusterset.local.", dns.TypeA)
	if _, _, err := c.ExchangeWithConn(q, held); err != nil {
		t.Fatalf("query on the IPv4 connection: %v", err)
	}
	other, err := c.Dial(addrs[1].String())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if resp, _, err := c.ExchangeWithConn(q, other); err == nil {
		t.Fatalf("a TCP connection to the IPv6 address beyond MaxTCPConns (one held on IPv4) was served: %v", resp)
	}
	if got := counter(t, r.m.dropped.WithLabelValues("tcp-conns")); got != 1 {
		t.Errorf("dropped{tcp-conns} = %v, want 1", got)
	}
}

// A listen address that cannot be bound fails Listen whole: the sockets of
// the addresses before it are closed again, and the error names the address.
func TestListenFailsWholeWhenOneAddressIsTaken(t *testing.T) {
	requireIPv6Loopback(t)
	free4, free4tcp := listenPair(t)
	port4 := free4.LocalAddr().(*net.UDPAddr).Port
	free4.Close()
	free4tcp.Close()
	taken, err := net.ListenPacket("udp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	listen := fmt.Sprintf("127.0.0.1:%d,%s", port4, taken.LocalAddr())
	s, err := New(Config{Listen: listen}, Deps{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Listen()
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), taken.LocalAddr().String()) {
		t.Fatalf("Listen(%s) with the IPv6 address taken: %v, want an error naming %s", listen, err, taken.LocalAddr())
	}
	for _, network := range []string{"udp", "tcp"} {
		a := fmt.Sprintf("127.0.0.1:%d", port4)
		if network == "udp" {
			pc, err := net.ListenPacket(network, a)
			if err != nil {
				t.Errorf("%s %s still held after the failed Listen: %v", network, a, err)
				continue
			}
			pc.Close()
			continue
		}
		ln, err := net.Listen(network, a)
		if err != nil {
			t.Errorf("%s %s still held after the failed Listen: %v", network, a, err)
			continue
		}
		ln.Close()
	}
	if err := s.Serve(t.Context()); err == nil {
		t.Error("Serve after a failed Listen returned nil, want an error")
	}
}

// FuzzParseListen: whatever the input, ParseListen never panics, and what
// it accepts keeps its rules (one or two addresses, one per family, none a
// wildcard, IPv4-mapped or zoned) and reads back the same from its own
// rendering.
func FuzzParseListen(f *testing.F) {
	for _, s := range []string{"169.254.20.10:53", "169.254.20.10:53,[fd00:169:254::10]:53", "[::1]:0, 127.0.0.1:0",
		"0.0.0.0:53", "[::ffff:1.2.3.4]:53", "[fe80::1%eth0]:53", "1.2.3.4:53,5.6.7.8:53", ",", "[fd00::1]:53,,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		aps, err := ParseListen(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidListen) {
				t.Fatalf("ParseListen(%q): %v does not wrap ErrInvalidListen", s, err)
			}
			return
		}
		if len(aps) == 0 || len(aps) > 2 || (len(aps) == 2 && aps[0].Addr().Is4() == aps[1].Addr().Is4()) {
			t.Fatalf("ParseListen(%q) = %v: want one address or one per family", s, aps)
		}
		parts := make([]string, len(aps))
		for i, ap := range aps {
			if ip := ap.Addr(); ip.IsUnspecified() || ip.Is4In6() || ip.Zone() != "" {
				t.Fatalf("ParseListen(%q) accepted %s", s, ap)
			}
			parts[i] = ap.String()
		}
		again, err := ParseListen(strings.Join(parts, ","))
		if err != nil || !slices.Equal(again, aps) {
			t.Fatalf("ParseListen(%q) = %v, but its rendering reads back as %v, %v", s, aps, again, err)
		}
	})
}
