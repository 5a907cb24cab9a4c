package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

const (
	// MaxQuerySize is the largest request the resolver reads; a query is a
	// name and an OPT record, so anything larger is FORMERR.
	MaxQuerySize = 4096
	// MaxUDPSize is the EDNS0 UDP payload size the resolver advertises and
	// asks the upstream for (the DNS flag day 2020 value, which avoids IP
	// fragmentation).
	MaxUDPSize = 1232
	headerLen  = 12
)

// Transport is how a query reached the resolver.
type Transport uint8

const (
	UDP Transport = iota + 1
	TCP
)

func (t Transport) String() string {
	switch t {
	case UDP:
		return "udp"
	case TCP:
		return "tcp"
	}
	return "unknown"
}

// Source says who answered a query.
type Source uint8

const (
	// SourceLocal is an answer the resolver made without asking anyone:
	// a refusal, or SERVFAIL after an upstream or hook failure.
	SourceLocal Source = iota + 1
	// SourceZone is an answer from the View.
	SourceZone
	// SourceUpstream is the upstream's answer.
	SourceUpstream
)

func (s Source) String() string {
	switch s {
	case SourceLocal:
		return "local"
	case SourceZone:
		return "zone"
	case SourceUpstream:
		return "upstream"
	}
	return "unknown"
}

// Query is one valid request on its way through the pipeline.
type Query struct {
	Client    netip.AddrPort
	Transport Transport
	Received  time.Time
	// Request is the decoded request with exactly one question; hooks must
	// not modify it.
	Request *dns.Msg
	// Source and Upstream say who answered (Upstream empty unless forwarded).
	Source   Source
	Upstream string
}

// Question is the query's only question.
func (q *Query) Question() dns.Question { return q.Request.Question[0] }

// Hook sits between "answer known" and "answer released to the client":
// policy by DNS name refuses or rewrites answers there, and a dataplane
// that must hold an answer's addresses before the pod connects holds the
// answer there until it does.
//
// Contract: the resolver calls Release from its handling goroutines, many
// at once, for every valid query (answered by the zone, the upstream, or
// locally). It may block, but must return when ctx is done (the resolver's
// shutdown, or Config.HookTimeout). It returns the answer to release: resp
// itself, modified, or a new message for q.Request; an error releases
// SERVFAIL instead. Hooks run in the order configured, each seeing the
// previous one's answer.
type Hook interface {
	Release(ctx context.Context, q *Query, resp *dns.Msg) (*dns.Msg, error)
}

// HookFunc adapts a function to Hook.
type HookFunc func(ctx context.Context, q *Query, resp *dns.Msg) (*dns.Msg, error)

// Release implements Hook.
func (f HookFunc) Release(ctx context.Context, q *Query, resp *dns.Msg) (*dns.Msg, error) {
	return f(ctx, q, resp)
}

// Record is the log line of one answered query.
type Record struct {
	Time      time.Time
	Client    netip.AddrPort
	Pod       string // from Deps.Pods; empty when unknown
	Transport Transport
	Name      string // lower-case, fully qualified
	Type      uint16
	Rcode     int
	Answers   []Answer
	// TTL is the smallest TTL of the answers, or the negative TTL from the
	// SOA of an NXDOMAIN or NODATA answer.
	TTL       uint32
	Latency   time.Duration
	Source    Source
	Upstream  string
	Truncated bool
	Err       error // why the resolver answered SERVFAIL itself
}

// Answer is one record of the answer section.
type Answer struct {
	Name string
	Type uint16
	TTL  uint32
	// Addr for A and AAAA; Target for CNAME, SRV, PTR and the like.
	Addr   netip.Addr
	Target string
}

// Recorder receives one Record per answered query.
//
// Contract: the resolver calls it from its handling goroutines, many at
// once, after the answer is ready; it must not block (queue or drop) and
// must not keep rec.Answers' backing array beyond the call unless it owns
// it (the resolver does not reuse it).
type Recorder interface {
	Record(rec Record)
}

// Pods names the pod behind a client address for records.
//
// Contract: called from handling goroutines, many at once; must not block.
type Pods interface {
	PodByIP(ip netip.Addr) (name string, ok bool)
}

// Handle answers one raw request from client over tr: the whole pipeline
// without the sockets. It returns the response to send, or nil when the
// request is to be dropped unanswered. It never panics on any input.
func (s *Server) Handle(ctx context.Context, raw []byte, client netip.AddrPort, tr Transport) []byte {
	start := s.now()
	if len(raw) < headerLen {
		s.m.dropped.WithLabelValues("short").Inc()
		return nil
	}
	flags := binary.BigEndian.Uint16(raw[2:])
	if flags&(1<<15) != 0 {
		s.m.dropped.WithLabelValues("response").Inc()
		return nil
	}
	opcode := int(flags>>11) & 0xf
	if len(raw) > MaxQuerySize {
		return s.headerError(raw, dns.RcodeFormatError, "oversized")
	}
	if opcode != dns.OpcodeQuery {
		return s.headerError(raw, dns.RcodeNotImplemented, "opcode")
	}
	req := new(dns.Msg)
	if err := req.Unpack(raw); err != nil {
		return s.headerError(raw, dns.RcodeFormatError, "undecodable")
	}
	if len(req.Question) != 1 {
		return s.headerError(raw, dns.RcodeFormatError, "questions")
	}
	if len(req.Answer) != 0 || len(req.Ns) != 0 {
		return s.refuse(req, dns.RcodeFormatError, "sections")
	}
	opts := 0
	for _, rr := range req.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			opts++
		}
	}
	if opts > 1 {
		return s.refuse(req, dns.RcodeFormatError, "opt")
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		return s.refuse(req, dns.RcodeBadVers, "edns-version")
	}
	q := &Query{Client: client, Transport: tr, Received: start, Request: req}
	qn := req.Question[0]
	var (
		resp *dns.Msg
		err  error
	)
	switch {
	case qn.Qtype == dns.TypeAXFR || qn.Qtype == dns.TypeIXFR:
		s.m.badRequests.WithLabelValues("REFUSED", "transfer").Inc()
		resp, q.Source = reply(req, dns.RcodeRefused), SourceLocal
	case s.zone.Contains(qn.Name):
		resp, q.Source = s.zone.Answer(s.View(), req), SourceZone
	default:
		q.Source, q.Upstream = SourceUpstream, s.fwd.addr
		var rtt time.Duration
		resp, rtt, err = s.fwd.forward(ctx, req, tr)
		switch {
		case errors.Is(err, ErrUpstreamTimeout):
			s.m.timeouts.WithLabelValues(tr.String()).Inc()
		case errors.Is(err, ErrUpstreamMismatch):
			s.m.upErrors.WithLabelValues("mismatch").Inc()
		case err != nil:
			s.m.upErrors.WithLabelValues("exchange").Inc()
		default:
			s.m.upstream.WithLabelValues(tr.String()).Observe(rtt.Seconds())
		}
		if err != nil {
			s.log.Debug("forward failed", "name", qn.Name, "client", client, "err", err)
			resp, q.Source = reply(req, dns.RcodeServerFailure), SourceLocal
		}
	}
	if len(s.hooks) > 0 {
		hctx, cancel := context.WithTimeout(ctx, s.cfg.HookTimeout)
		for _, h := range s.hooks {
			next, herr := h.Release(hctx, q, resp)
			if herr != nil || next == nil {
				if herr == nil {
					herr = errors.New("hook released no answer")
				}
				err = herr
				s.log.Warn("dns hook failed", "name", qn.Name, "client", client, "err", herr)
				resp, q.Source = reply(req, dns.RcodeServerFailure), SourceLocal
				break
			}
			resp = next
		}
		cancel()
	}
	out, truncated := s.pack(req, resp, tr)
	if out == nil {
		s.m.upErrors.WithLabelValues("pack").Inc()
		resp, q.Source = reply(req, dns.RcodeServerFailure), SourceLocal
		out, truncated = s.pack(req, resp, tr)
	}
	lat := s.now().Sub(start)
	src := q.Source.String()
	s.m.queries.WithLabelValues(typeLabel(qn.Qtype), rcodeLabel(resp.Rcode), src).Inc()
	s.m.latency.WithLabelValues(src).Observe(lat.Seconds())
	if truncated {
		s.m.truncated.WithLabelValues(src).Inc()
	}
	if s.rec != nil {
		s.rec.Record(s.record(q, resp, truncated, lat, err))
	}
	return out
}

// pack fits resp to what the client can take over tr: the client's EDNS0
// decides whether the answer carries an OPT record and, over UDP, its size
// (512 without EDNS0); an answer that does not fit is truncated with TC
// set. It returns nil when resp cannot be packed.
func (s *Server) pack(req, resp *dns.Msg, tr Transport) ([]byte, bool) {
	size := dns.MinMsgSize
	copt := req.IsEdns0()
	if copt != nil {
		size = min(max(int(copt.UDPSize()), dns.MinMsgSize), MaxUDPSize)
	}
	if tr == TCP {
		size = dns.MaxMsgSize
	}
	var ropt *dns.OPT
	extra := resp.Extra[:0:0]
	for _, rr := range resp.Extra {
		if o, ok := rr.(*dns.OPT); ok {
			ropt = o
			continue
		}
		extra = append(extra, rr)
	}
	if copt != nil {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		if ropt != nil {
			o.Option = ropt.Option
			o.SetDo(ropt.Do())
		}
		o.SetUDPSize(MaxUDPSize)
		extra = append(extra, o)
	} else if resp.Rcode > 0xf {
		// An extended rcode needs an OPT record the client did not ask for.
		resp.Rcode = dns.RcodeServerFailure
	}
	resp.Extra = extra
	resp.Compress = true
	truncated := false
	if resp.Len() > size {
		resp.Truncate(size)
		truncated = true
	}
	truncated = truncated || resp.Truncated
	out, err := resp.Pack()
	if err != nil {
		s.log.Debug("pack answer", "name", req.Question[0].Name, "err", err)
		return nil, false
	}
	return out, truncated && tr == UDP
}

// reply is an empty answer to req with rcode.
func reply(req *dns.Msg, rcode int) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetRcode(req, rcode)
	resp.RecursionAvailable = true
	return resp
}

// refuse answers a request that decoded but is not one the resolver
// serves, echoing its question.
func (s *Server) refuse(req *dns.Msg, rcode int, reason string) []byte {
	s.m.badRequests.WithLabelValues(rcodeLabel(rcode), reason).Inc()
	resp := new(dns.Msg)
	resp.SetRcode(req, rcode)
	if rcode > 0xf {
		resp.SetEdns0(MaxUDPSize, false)
		resp.Rcode = rcode
	}
	out, err := resp.Pack()
	if err != nil {
		// The question came out of a decoded message, so this is not
		// expected; the client gets nothing rather than a wrong answer.
		s.log.Debug("pack refusal", "err", err)
		return nil
	}
	return out
}

// headerError answers from the header alone, for a request that does not
// decode: its ID, opcode and RD echoed, no sections.
func (s *Server) headerError(raw []byte, rcode int, reason string) []byte {
	s.m.badRequests.WithLabelValues(rcodeLabel(rcode), reason).Inc()
	out := make([]byte, headerLen)
	copy(out[:2], raw[:2])
	flags := binary.BigEndian.Uint16(raw[2:])
	flags = 1<<15 | flags&(0xf<<11|1<<8) | 1<<7 | uint16(rcode&0xf) // QR, opcode, RD, RA, rcode
	binary.BigEndian.PutUint16(out[2:], flags)
	return out
}

// record builds the query's Record.
func (s *Server) record(q *Query, resp *dns.Msg, truncated bool, lat time.Duration, err error) Record {
	qn := q.Question()
	r := Record{
		Time: q.Received, Client: q.Client, Transport: q.Transport,
		Name: strings.ToLower(qn.Name), Type: qn.Qtype, Rcode: resp.Rcode,
		Latency: lat, Source: q.Source, Upstream: q.Upstream, Truncated: truncated, Err: err,
	}
	if s.pods != nil {
		r.Pod, _ = s.pods.PodByIP(q.Client.Addr().Unmap())
	}
	first := true
	for _, rr := range resp.Answer {
		h := rr.Header()
		a := Answer{Name: h.Name, Type: h.Rrtype, TTL: h.Ttl}
		switch v := rr.(type) {
		case *dns.A:
			a.Addr, _ = netip.AddrFromSlice(v.A.To4())
		case *dns.AAAA:
			a.Addr, _ = netip.AddrFromSlice(v.AAAA)
		case *dns.CNAME:
			a.Target = v.Target
		case *dns.SRV:
			a.Target = v.Target
		case *dns.PTR:
			a.Target = v.Ptr
		}
		r.Answers = append(r.Answers, a)
		if first || h.Ttl < r.TTL {
			r.TTL, first = h.Ttl, false
		}
	}
	if len(resp.Answer) == 0 {
		for _, rr := range resp.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				r.TTL = min(soa.Hdr.Ttl, soa.Minttl)
			}
		}
	}
	return r
}
