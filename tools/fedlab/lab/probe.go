package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Probes are the lab's traffic: a tiny TCP/UDP echo server that runs inside a
// pod namespace (fedlab re-executes itself there) and a client that reports
// whether one exchange got through. Nothing outside the lab is contacted.

// Serve answers every TCP connection and UDP datagram on port with "ok"
// until ctx ends.
func Serve(ctx context.Context, port int) error {
	addr := net.JoinHostPort("", strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen tcp %s: %w", addr, err)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listen udp %s: %w", addr, err)
	}
	go func() { <-ctx.Done(); ln.Close(); pc.Close() }()
	go answerUDP(pc, 64)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Write([]byte("ok\n"))
		}()
	}
}

// ErrBlocked is a probe that got no answer: dropped by policy or unroutable.
var ErrBlocked = errors.New("no answer")

// Probe makes one TCP connection (reading the greeting) or one UDP
// exchange to addr within timeout.
func Probe(ctx context.Context, proto, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, proto, addr)
	if err != nil {
		return fmt.Errorf("%s %s: %w: %v", proto, addr, ErrBlocked, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if proto == "udp" {
		if _, err := c.Write([]byte("ping")); err != nil {
			return fmt.Errorf("udp %s: %w: %v", addr, ErrBlocked, err)
		}
	}
	buf := make([]byte, 16)
	if _, err := io.ReadAtLeast(c, buf, 2); err != nil {
		return fmt.Errorf("%s %s: %w: %v", proto, addr, ErrBlocked, err)
	}
	return nil
}

// ProbeFrom runs one probe (fedlab probe) from inside a pod of the lab.
func (l *Lab) ProbeFrom(ctx context.Context, pod, proto, addr string, timeout time.Duration) error {
	cmd, err := l.Topo.PodCommand(ctx, pod, l.bin("fedlab"), "probe", "--proto", proto, "--timeout", timeout.String(), addr)
	if err != nil {
		return err
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s -> %s/%s: %w: %s", pod, addr, proto, ErrBlocked, strings.TrimSpace(string(out)))
	}
	return nil
}

// Outcome of one probe in a batch.
type Outcome string

// A probe is reachable when the destination answered at all: the app
// ("open") or the kernel refusing the port ("refused"); dropped probes time
// out.
const (
	Open    Outcome = "open"
	Refused Outcome = "refused"
	Timeout Outcome = "timeout"
)

// Reachable reports whether the outcome means the packets got through.
func (o Outcome) Reachable() bool { return o == Open || o == Refused }

// Target is one probe of a batch.
type Target struct {
	Proto string `json:"proto"`
	Addr  string `json:"addr"`
}

// ProbeBatch runs every target concurrently (from the current namespace)
// and returns their outcomes in order.
func ProbeBatch(ctx context.Context, targets []Target, timeout time.Duration) []Outcome {
	out := make([]Outcome, len(targets))
	sem := make(chan struct{}, 64)
	done := make(chan struct{})
	var n int
	for i, t := range targets {
		sem <- struct{}{}
		n++
		go func() {
			defer func() { <-sem; done <- struct{}{} }()
			out[i] = probeOnce(ctx, t, timeout)
		}()
	}
	for ; n > 0; n-- {
		<-done
	}
	return out
}

func probeOnce(ctx context.Context, t Target, timeout time.Duration) Outcome {
	err := Probe(ctx, t.Proto, t.Addr, timeout)
	switch {
	case err == nil:
		return Open
	case strings.Contains(err.Error(), "connection refused"):
		return Refused
	}
	return Timeout
}

// ProbeBatchFrom runs ProbeBatch inside a pod of the lab.
func (l *Lab) ProbeBatchFrom(ctx context.Context, pod string, targets []Target, timeout time.Duration) ([]Outcome, error) {
	in, err := json.Marshal(targets)
	if err != nil {
		return nil, err
	}
	cmd, err := l.Topo.PodCommand(ctx, pod, l.bin("fedlab"), "probe-batch", "--timeout", timeout.String())
	if err != nil {
		return nil, err
	}
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("probe batch from %s: %w", pod, err)
	}
	lines := strings.Fields(string(out))
	if len(lines) != len(targets) {
		return nil, fmt.Errorf("probe batch from %s: %d outcomes for %d targets", pod, len(lines), len(targets))
	}
	res := make([]Outcome, len(lines))
	for i, l := range lines {
		res[i] = Outcome(l)
	}
	return res, nil
}

// answerUDP answers every datagram on pc with "ok:" and what it carried
// (up to size bytes), until pc is closed: the lab's UDP probe target.
func answerUDP(pc net.PacketConn, size int) {
	buf := make([]byte, size)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(append([]byte("ok:"), buf[:n]...), from)
	}
}
