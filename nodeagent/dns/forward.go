package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// UpstreamMark is the socket mark (SO_MARK) of the forwarder's upstream
// sockets. The transparent DNS redirect (nodeagent/dataplane,
// DNSRedirect.SkipMark) leaves sockets carrying it alone: on a real node
// the agent runs inside the cgroup whose DNS is redirected, and its
// upstream is usually the cluster DNS address itself, so without the mark
// its own queries would come back to it. The value keeps clear of the mark
// bits kube-proxy (0x4000, 0x8000), Cilium (0x0f00) and Calico
// (0xffff0000) use, so no routing rule of theirs matches it; the redirect
// compares the whole mark.
const UpstreamMark uint32 = 0x53

// markUpstream sets UpstreamMark on a forwarder socket before it connects.
// Setting a mark needs CAP_NET_ADMIN; without it (an unprivileged test or
// tool) the socket goes unmarked, which is safe: the redirect's programs
// can only have been attached by a process holding CAP_NET_ADMIN, so an
// unprivileged forwarder is not the agent of a redirecting node.
func markUpstream(network, address string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(UpstreamMark))
	}); err != nil {
		return fmt.Errorf("mark upstream socket to %s: %w", address, err)
	}
	if serr != nil && !errors.Is(serr, unix.EPERM) {
		return fmt.Errorf("mark upstream socket to %s: %w", address, serr)
	}
	return nil
}

var (
	// ErrUpstreamTimeout is a forwarded query the upstream did not answer
	// within Config.UpstreamTimeout.
	ErrUpstreamTimeout = errors.New("upstream did not answer in time")
	// ErrUpstreamMismatch is an upstream answer that is no response to the
	// question asked (wrong question, or QR not set).
	ErrUpstreamMismatch = errors.New("upstream answer does not match the question")
)

// forwarder sends queries outside the zone to the upstream, each over a new
// socket (a fresh source port per query, as a stub resolver does) with a
// fresh message ID.
type forwarder struct {
	addr     string
	udp, tcp *dns.Client
	timeout  time.Duration
}

func newForwarder(addr string, timeout time.Duration) *forwarder {
	// The dialer replaces the client's own (same timeout) to mark the
	// sockets.
	d := &net.Dialer{Timeout: timeout, Control: markUpstream}
	return &forwarder{
		addr:    addr,
		udp:     &dns.Client{Net: "udp", Timeout: timeout, UDPSize: MaxUDPSize, Dialer: d},
		tcp:     &dns.Client{Net: "tcp", Timeout: timeout, Dialer: d},
		timeout: timeout,
	}
}

// forward asks the upstream req's question over tr and returns its answer
// with req's ID. The client's OPT record goes along with its UDP size
// capped at MaxUDPSize; without one the upstream answers within 512 bytes
// over UDP, or sets TC.
func (f *forwarder) forward(ctx context.Context, req *dns.Msg, tr Transport) (*dns.Msg, time.Duration, error) {
	out := &dns.Msg{MsgHdr: req.MsgHdr, Question: req.Question}
	out.Id = dns.Id()
	if opt := req.IsEdns0(); opt != nil {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}, Option: opt.Option}
		o.SetUDPSize(min(max(opt.UDPSize(), dns.MinMsgSize), MaxUDPSize))
		o.SetDo(opt.Do())
		out.Extra = []dns.RR{o}
	}
	c := f.udp
	if tr == TCP {
		c = f.tcp
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	resp, rtt, err := c.ExchangeContext(ctx, out, f.addr)
	if err != nil {
		if isTimeout(err) {
			return nil, rtt, fmt.Errorf("forward %s over %s to %s: %w", req.Question[0].Name, tr, f.addr, ErrUpstreamTimeout)
		}
		return nil, rtt, fmt.Errorf("forward %s over %s to %s: %w", req.Question[0].Name, tr, f.addr, err)
	}
	if !resp.Response || len(resp.Question) != 1 || !sameQuestion(resp.Question[0], req.Question[0]) {
		return nil, rtt, fmt.Errorf("forward %s to %s: %w", req.Question[0].Name, f.addr, ErrUpstreamMismatch)
	}
	resp.Id = req.Id
	// The upstream saw our ID-randomised copy; the client must see its own
	// question (0x20 case included).
	resp.Question[0] = req.Question[0]
	return resp, rtt, nil
}

func sameQuestion(a, b dns.Question) bool {
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}
