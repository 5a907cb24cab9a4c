package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// The lab's DNS tools: `fedlab dig` asks one question from inside a pod
// (miekg/dns, no resolv.conf: the server is named, as a test asks the
// cluster DNS address directly), `fedlab hold` keeps one TCP connection
// exchanging lines (a connection established before something changes),
// and `fedlab outside-serve` is every server of the outside namespace.

// DigAnswer is one record of an answer section.
type DigAnswer struct {
	Name   string `json:"name"`
	Type   string `json:"type"`
	TTL    uint32 `json:"ttl"`
	Addr   string `json:"addr,omitempty"`   // A, AAAA
	Target string `json:"target,omitempty"` // CNAME
}

// DigResult is what one question got.
type DigResult struct {
	Server  string      `json:"server"`
	Network string      `json:"network"`
	Rcode   string      `json:"rcode"` // NOERROR, REFUSED, NXDOMAIN, SERVFAIL...
	Answers []DigAnswer `json:"answers"`
}

// Addrs are the A and AAAA addresses of the answer, in order.
func (r DigResult) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, a := range r.Answers {
		if ip, err := netip.ParseAddr(a.Addr); err == nil {
			out = append(out, ip)
		}
	}
	return out
}

// ErrNoAnswer is a question nobody answered within the timeout.
var ErrNoAnswer = errors.New("no DNS answer")

// Dig asks server (ip:port) for name's records of qtype (A, AAAA, ...)
// over network (udp or tcp) from the current network namespace.
func Dig(ctx context.Context, server, network, name, qtype string, timeout time.Duration) (DigResult, error) {
	return dig(ctx, server, network, name, qtype, timeout, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, server)
	})
}

// digInNS is Dig from inside a lab namespace (no cgroup: fedlab's own
// sockets there are not any pod's).
func digInNS(ctx context.Context, ns, server, network, name, qtype string, timeout time.Duration) (DigResult, error) {
	return dig(ctx, server, network, name, qtype, timeout, func(ctx context.Context) (net.Conn, error) {
		return dialInNS(ctx, ns, network, server)
	})
}

func dig(ctx context.Context, server, network, name, qtype string, timeout time.Duration, dial func(context.Context) (net.Conn, error)) (DigResult, error) {
	res := DigResult{Server: server, Network: network}
	t, ok := dns.StringToType[strings.ToUpper(qtype)]
	if !ok {
		return res, fmt.Errorf("query type %q: want A, AAAA, CNAME or TXT", qtype)
	}
	if network != "udp" && network != "tcp" {
		return res, fmt.Errorf("network %q: want udp or tcp", network)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), t)
	q.SetEdns0(1232, false)
	c, err := dial(ctx)
	if err != nil {
		return res, fmt.Errorf("ask %s over %s: %w: %v", server, network, ErrNoAnswer, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	conn := &dns.Conn{Conn: c, UDPSize: 1232}
	if err := conn.WriteMsg(q); err != nil {
		return res, fmt.Errorf("ask %s over %s: %w: %v", server, network, ErrNoAnswer, err)
	}
	for {
		r, err := conn.ReadMsg()
		if err != nil {
			return res, fmt.Errorf("ask %s over %s: %w: %v", server, network, ErrNoAnswer, err)
		}
		if r.Id != q.Id {
			continue // a stale answer on a reused port
		}
		res.Rcode = dns.RcodeToString[r.Rcode]
		for _, rr := range r.Answer {
			a := DigAnswer{Name: strings.TrimSuffix(rr.Header().Name, "."), Type: dns.TypeToString[rr.Header().Rrtype], TTL: rr.Header().Ttl}
			switch v := rr.(type) {
			case *dns.A:
				a.Addr = v.A.String()
			case *dns.AAAA:
				a.Addr = v.AAAA.String()
			case *dns.CNAME:
				a.Target = strings.TrimSuffix(v.Target, ".")
			}
			res.Answers = append(res.Answers, a)
		}
		return res, nil
	}
}

// DigFrom runs `fedlab dig` inside a pod (its network namespace and its
// node's cgroup, where the agent's socket hooks see it): the question
// leaves the pod as its applications' would.
func (l *Lab) DigFrom(ctx context.Context, pod, server, network, name, qtype string, timeout time.Duration) (DigResult, error) {
	cmd, err := l.Topo.PodCommand(ctx, pod, l.bin("fedlab"), "dig", "--server", server, "--net", network, "--timeout", timeout.String(), name, qtype)
	if err != nil {
		return DigResult{}, err
	}
	out, err := cmd.Output()
	var res DigResult
	if jerr := json.Unmarshal(out, &res); jerr == nil && res.Rcode != "" {
		return res, nil
	}
	var exitErr interface{ ExitCode() int }
	if errors.As(err, &exitErr) && exitErr.ExitCode() == 3 {
		return res, fmt.Errorf("%s asked %s for %s %s over %s: %w: %s", pod, server, name, qtype, network, ErrNoAnswer, strings.TrimSpace(string(out)))
	}
	return res, fmt.Errorf("%s: fedlab dig %s %s: %v: %s", pod, name, qtype, err, strings.TrimSpace(string(out)))
}

// Hold connects to addr over TCP, reads the greeting and then exchanges a
// line every interval for d: a connection that stays established. It
// returns how many exchanges succeeded and the first failure.
func Hold(ctx context.Context, addr string, d, interval time.Duration) (int, error) {
	var dialer net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	c, err := dialer.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("connect %s: %w", addr, err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := r.ReadString('\n'); err != nil {
		return 0, fmt.Errorf("greeting of %s: %w", addr, err)
	}
	n := 0
	for end := time.Now().Add(d); time.Now().Before(end); n++ {
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		line := fmt.Sprintf("ping %d\n", n)
		if _, err := io.WriteString(c, line); err != nil {
			return n, fmt.Errorf("exchange %d with %s: %w", n, addr, err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != line {
			return n, fmt.Errorf("exchange %d with %s: got %q: %v", n, addr, got, err)
		}
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-time.After(interval):
		}
	}
	return n, nil
}

// ServeOutside runs the outside namespace's servers on every address it
// has: on port, TCP (a greeting, "ok", then an echo of every line: fedlab
// probe and fedlab hold) and UDP (an echo, as probe-serve); on httpPort,
// HTTP answering which address and Host it was asked for.
func ServeOutside(ctx context.Context, port, httpPort int) error {
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
	hln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(httpPort)))
	if err != nil {
		ln.Close()
		pc.Close()
		return fmt.Errorf("listen http :%d: %w", httpPort, err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
			fmt.Fprintf(w, "hello from the outside: %s (Host %s)\n", local, r.Host)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { <-ctx.Done(); ln.Close(); pc.Close(); srv.Close() }()
	go func() { _ = srv.Serve(hln) }()
	go answerUDP(pc, 512)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go echo(c)
	}
}

// echo greets and then echoes lines until the peer is quiet for a minute.
func echo(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := io.WriteString(c, "ok\n"); err != nil {
		return
	}
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		if _, err := io.WriteString(c, line); err != nil {
			return
		}
	}
}

// HTTPGet fetches http://host/ from addr (ip:port) with a short timeout:
// the demo's and the tests' web client.
func HTTPGet(ctx context.Context, addr, host string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tr := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", fmt.Errorf("GET http://%s/ at %s: %w", host, addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return "", fmt.Errorf("GET http://%s/ at %s: %w", host, addr, err)
	}
	return string(b), nil
}
