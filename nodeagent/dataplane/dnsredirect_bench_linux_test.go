package dataplane

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	fmdns "github.com/fedmesh/fedmesh/nodeagent/dns"
)

// BenchmarkDNSRedirect measures a pod's DNS query to the agent's resolver
// asked directly (its own address) against the same query asked of the
// cluster DNS address and redirected to that resolver by the socket hooks,
// alternating in one run: "new socket" is a connected UDP socket per query
// (connect hook and reverse entry each time, as glibc and Go's resolver
// do), "sendto" one unconnected socket (sendmsg and recvmsg hooks per
// query). Reported: ns per query each way and their ratio. "connect only"
// isolates the hook: connect() of one UDP socket (no datagram), to the
// resolver (the programs look the address up and miss) against to the
// cluster DNS address (hit, reverse entry found, rewrite).
func BenchmarkDNSRedirect(b *testing.B) {
	l := newDNSLab(b)
	s := l.newSockLB(b)
	if err := s.SetDNSRedirect(context.Background(), l.redirect(fmdns.UpstreamMark)); err != nil {
		b.Fatal(err)
	}
	q := new(dns.Msg).SetQuestion("probe.example.test.", dns.TypeTXT)
	wire, err := q.Pack()
	if err != nil {
		b.Fatal(err)
	}
	direct, redirected := l.res4, netip.AddrPortFrom(l.dns4, DNSPort)
	b.Run("connect only", func(b *testing.B) {
		var took [2]time.Duration
		err := inNetNS(l.pod, func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			sa := [2]*unix.SockaddrInet4{{Addr: direct.Addr().As4(), Port: int(direct.Port())},
				{Addr: redirected.Addr().As4(), Port: int(redirected.Port())}}
			b.ResetTimer()
			for i := range b.N {
				for _, w := range [2]int{i % 2, 1 - i%2} {
					start := time.Now()
					if err := unix.Connect(fd, sa[w]); err != nil {
						return err
					}
					took[w] += time.Since(start)
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(took[0].Nanoseconds())/float64(b.N), "direct-ns/connect")
		b.ReportMetric(float64(took[1].Nanoseconds())/float64(b.N), "redirected-ns/connect")
		b.ReportMetric(float64(took[1])/float64(took[0]), "redirected/direct")
	})
	for _, mode := range []string{"new socket", "sendto"} {
		b.Run(mode, func(b *testing.B) {
			var took [2]time.Duration
			err := inNetNS(l.pod, func() error {
				buf := make([]byte, 512)
				var pc net.PacketConn
				if mode == "sendto" {
					var err error
					if pc, err = net.ListenPacket("udp4", ":0"); err != nil {
						return err
					}
					defer pc.Close()
				}
				ask := func(to netip.AddrPort) (time.Duration, error) {
					start := time.Now()
					if pc != nil {
						if _, err := pc.WriteTo(wire, net.UDPAddrFromAddrPort(to)); err != nil {
							return 0, err
						}
						_, _, err := pc.ReadFrom(buf)
						return time.Since(start), err
					}
					c, err := net.Dial("udp", to.String())
					if err != nil {
						return 0, err
					}
					defer c.Close()
					if _, err := c.Write(wire); err != nil {
						return 0, err
					}
					_, err = c.Read(buf)
					return time.Since(start), err
				}
				b.ResetTimer()
				for i := range b.N {
					// Alternate the order so neither way always runs on a
					// warmer cache.
					order := [2]int{0, 1}
					if i%2 == 1 {
						order = [2]int{1, 0}
					}
					for _, w := range order {
						to := direct
						if w == 1 {
							to = redirected
						}
						d, err := ask(to)
						if err != nil {
							return err
						}
						took[w] += d
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(took[0].Nanoseconds())/float64(b.N), "direct-ns/query")
			b.ReportMetric(float64(took[1].Nanoseconds())/float64(b.N), "redirected-ns/query")
			b.ReportMetric(float64(took[1])/float64(took[0]), "redirected/direct")
		})
	}
}
