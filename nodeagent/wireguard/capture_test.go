package wireguard

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// capture records every frame crossing a link (both directions) through an
// AF_PACKET socket opened inside the link's namespace.
type capture struct {
	fd     int
	mu     sync.Mutex
	frames [][]byte
	stop   chan struct{}
	done   chan struct{}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func startCapture(t testing.TB, nsName, ifName string) *capture {
	t.Helper()
	c := &capture{fd: -1, stop: make(chan struct{}), done: make(chan struct{})}
	inNS(t, nsName, func() error {
		ifi, err := net.InterfaceByName(ifName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("open AF_PACKET socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind AF_PACKET socket to %s: %w", ifName, err)
		}
		tv := unix.Timeval{Usec: 50_000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	go func() {
		defer close(c.done)
		buf := make([]byte, 1<<17)
		for {
			select {
			case <-c.stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				continue // timeout: check stop
			}
			c.mu.Lock()
			c.frames = append(c.frames, bytes.Clone(buf[:n]))
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Stop() })
	return c
}

// Stop ends the capture and returns the frames.
func (c *capture) Stop() [][]byte {
	select {
	case <-c.stop:
	default:
		close(c.stop)
		<-c.done
		unix.Close(c.fd)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames
}

// checkOnlyWireGuard fails the test for any frame on the underlay other than
// ARP or UDP between the two underlay addresses on the WireGuard port, and
// for any frame carrying the plaintext marker. It returns how many WireGuard
// frames it saw.
func checkOnlyWireGuard(t testing.TB, frames [][]byte, underlay [2]netip.Addr, port uint16, marker []byte, podIPs []netip.Addr) (wgFrames, wgBytes int) {
	t.Helper()
	wg, wgb, bad := 0, 0, 0
	report := func(format string, args ...any) {
		if bad++; bad <= 5 {
			t.Errorf(format, args...)
		}
	}
	isUnderlay := func(a netip.Addr) bool { return a == underlay[0] || a == underlay[1] }
	for i, f := range frames {
		if bytes.Contains(f, marker) {
			report("frame %d carries the plaintext marker: traffic crossed the underlay unencrypted", i)
		}
		if len(f) < 14 {
			report("frame %d: runt of %d bytes", i, len(f))
			continue
		}
		switch et := binary.BigEndian.Uint16(f[12:14]); et {
		case unix.ETH_P_ARP:
			continue
		case unix.ETH_P_IP:
		default:
			report("frame %d: ethertype %#04x, want only IPv4 WireGuard and ARP", i, et)
			continue
		}
		ipb := f[14:]
		if len(ipb) < 20 {
			report("frame %d: truncated IPv4 header", i)
			continue
		}
		ihl := int(ipb[0]&0x0f) * 4
		src, _ := netip.AddrFromSlice(ipb[12:16])
		dst, _ := netip.AddrFromSlice(ipb[16:20])
		for _, p := range podIPs {
			if src == p || dst == p {
				report("frame %d: pod address %s in clear on the underlay (%s -> %s)", i, p, src, dst)
			}
		}
		if ipb[9] != unix.IPPROTO_UDP || len(ipb) < ihl+8 {
			report("frame %d: IP protocol %d %s -> %s, want UDP", i, ipb[9], src, dst)
			continue
		}
		sport := binary.BigEndian.Uint16(ipb[ihl : ihl+2])
		dport := binary.BigEndian.Uint16(ipb[ihl+2 : ihl+4])
		if !isUnderlay(src) || !isUnderlay(dst) || (sport != port && dport != port) {
			report("frame %d: UDP %s:%d -> %s:%d, want between underlay addresses on port %d", i, src, sport, dst, dport, port)
			continue
		}
		wg++
		wgb += len(f)
	}
	if bad > 5 {
		t.Errorf("... and %d more bad frames", bad-5)
	}
	return wg, wgb
}
