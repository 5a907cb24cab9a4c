package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
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
	Client netip.AddrPort
	// Pod is the client's pod from Deps.Pods (empty when unknown): what
	// policy by name is decided for.
	Pod       string
	Transport Transport
	Received  time.Time
	// Request is the decoded request with exactly one question; hooks must
	// not modify it.
	Request *dns.Msg
	// Source and Upstream say who answered (Upstream empty unless forwarded).
	Source   Source
	Upstream string
	// Verdict and Learned are what a policy hook decided (Verdict*) and
	// how many addresses it handed the dataplane; the hook sets them, the
	// Record carries them. Empty without a policy hook.
	Verdict string
	Learned int
}

// The verdicts of policy by DNS name, as Record.Verdict carries them.
const (
	// VerdictAllowed: a name rule of the pod's matched the name; the
	// answer's addresses were learned (Learned says how many; 0 for an
	// answer without A or AAAA records).
	VerdictAllowed = "allowed"
	// VerdictRefused: the pod has name rules and none matched; the query
	// was answered REFUSED without asking anyone.
	VerdictRefused = "refused"
	// VerdictDenied: as refused, but refusing is off: the answer went to
	// the pod and nothing was learned, so its addresses stay closed.
	VerdictDenied = "denied"
	// VerdictUnpoliced: the client is not a local pod, the pod has no name
	// rules, or the name is in one of the cluster's own zones (reached by
	// other rules): nothing to decide, nothing learned.
	VerdictUnpoliced = "unpoliced"
	// VerdictError: learning the answer's addresses failed; the pod got
	// SERVFAIL, never an answer the dataplane does not hold.
	VerdictError = "error"
)

// Question is the query's only question.
func (q *Query) Question() dns.Question { return q.Request.Question[0] }

// Hook is where policy and the dataplane join the pipeline, at its two
// points: Query between "query received" and "resolved" (policy by DNS
// name refuses a denied name there, before it leaks to the upstream), and
// Release between "answer known" and "answer released to the client" (a
// dataplane that must hold an answer's addresses before the pod connects
// holds the answer there until it does).
//
// Contract: the resolver calls both from its handling goroutines, many at
// once. They may block, but must return when ctx is done (the resolver's
// HookTimeout for the query's hooks together). Query sees every valid
// query and returns nil to let it through, or the answer to release
// instead of resolving. Release sees every answer the resolver has (the
// zone's, the upstream's, a hook's; not the SERVFAIL of a failure before
// it) and returns the answer to release: resp itself, modified, or a new
// message for q.Request. An error from either releases SERVFAIL. Hooks run
// in the order configured, each seeing the previous one's answer; an
// answer made by Query still passes every Release.
type Hook interface {
	Query(ctx context.Context, q *Query) (*dns.Msg, error)
	Release(ctx context.Context, q *Query, resp *dns.Msg) (*dns.Msg, error)
}

// HookFuncs adapts functions to Hook; a nil one lets everything through.
type HookFuncs struct {
	OnQuery   func(ctx context.Context, q *Query) (*dns.Msg, error)
	OnRelease func(ctx context.Context, q *Query, resp *dns.Msg) (*dns.Msg, error)
}

// Query implements Hook.
func (h HookFuncs) Query(ctx context.Context, q *Query) (*dns.Msg, error) {
	if h.OnQuery == nil {
		return nil, nil
	}
	return h.OnQuery(ctx, q)
}

// Release implements Hook.
func (h HookFuncs) Release(ctx context.Context, q *Query, resp *dns.Msg) (*dns.Msg, error) {
	if h.OnRelease == nil {
		return resp, nil
	}
	return h.OnRelease(ctx, q, resp)
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
	// Verdict of policy by DNS name (Verdict*; empty without a policy
	// hook) and the number of the answer's addresses handed to the
	// dataplane for Pod.
	Verdict string
	Learned int
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
	req, early := s.decode(raw)
	if req == nil {
		return early
	}
	q := &Query{Client: client, Transport: tr, Received: start, Request: req}
	if s.pods != nil {
		// A pod's address has no zone; a link-local source would.
		q.Pod, _ = s.pods.PodByIP(client.Addr().Unmap().WithZone(""))
	}
	var (
		hctx   = ctx
		cancel = func() {}
	)
	if len(s.hooks) > 0 {
		hctx, cancel = context.WithTimeout(ctx, s.cfg.HookTimeout)
	}
	resp, err := s.resolve(ctx, hctx, q)
	for _, h := range s.hooks {
		if err != nil {
			break
		}
		var next *dns.Msg
		if next, err = h.Release(hctx, q, resp); err == nil && next == nil {
			err = errors.New("hook released no answer")
		}
		if err != nil {
			err = fmt.Errorf("release %s: %w", req.Question[0].Name, err)
			s.log.Warn("dns hook failed", "client", client, "err", err)
			break
		}
		resp = next
	}
	cancel()
	if err != nil {
		resp, q.Source = reply(req, dns.RcodeServerFailure), SourceLocal
	}
	qn := req.Question[0]
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
	if q.Verdict != "" {
		s.m.verdicts.WithLabelValues(verdictLabel(q.Verdict)).Inc()
	}
	if s.rec != nil {
		s.rec.Record(s.record(q, resp, truncated, lat, err))
	}
	return out
}

// resolve answers q: a hook's answer, the zone's, or the upstream's. An
// error means SERVFAIL; q.Source and q.Upstream say who failed.
func (s *Server) resolve(ctx, hctx context.Context, q *Query) (*dns.Msg, error) {
	req, qn := q.Request, q.Request.Question[0]
	for _, h := range s.hooks {
		resp, err := h.Query(hctx, q)
		if err != nil {
			q.Source = SourceLocal
			err = fmt.Errorf("query %s: %w", qn.Name, err)
			s.log.Warn("dns hook failed", "client", q.Client, "err", err)
			return nil, err
		}
		if resp != nil {
			q.Source = SourceLocal
			return resp, nil
		}
	}
	switch {
	case qn.Qtype == dns.TypeAXFR || qn.Qtype == dns.TypeIXFR:
		s.m.badRequests.WithLabelValues("REFUSED", "transfer").Inc()
		q.Source = SourceLocal
		return reply(req, dns.RcodeRefused), nil
	case s.zone.Contains(qn.Name):
		q.Source = SourceZone
		return s.zone.Answer(s.View(), req), nil
	case s.fwd == nil:
		// No upstream configured: the resolver answers only its zone, and
		// says so rather than time the client out.
		s.m.badRequests.WithLabelValues("REFUSED", "no_upstream").Inc()
		q.Source = SourceLocal
		return reply(req, dns.RcodeRefused), nil
	}
	q.Source, q.Upstream = SourceUpstream, s.fwd.addr
	resp, rtt, err := s.fwd.forward(ctx, req, q.Transport)
	switch {
	case errors.Is(err, ErrUpstreamTimeout):
		s.m.timeouts.WithLabelValues(q.Transport.String()).Inc()
	case errors.Is(err, ErrUpstreamMismatch):
		s.m.upErrors.WithLabelValues("mismatch").Inc()
	case err != nil:
		s.m.upErrors.WithLabelValues("exchange").Inc()
	default:
		s.m.upstream.WithLabelValues(q.Transport.String()).Observe(rtt.Seconds())
	}
	if err != nil {
		s.log.Debug("forward failed", "name", qn.Name, "client", q.Client, "err", err)
	}
	return resp, err
}

// decode validates raw as a query the resolver serves. It returns the
// decoded request, or nil and the answer to send instead (nil: drop it).
func (s *Server) decode(raw []byte) (*dns.Msg, []byte) {
	if len(raw) < headerLen {
		s.m.dropped.WithLabelValues("short").Inc()
		return nil, nil
	}
	flags := binary.BigEndian.Uint16(raw[2:])
	if flags&(1<<15) != 0 {
		s.m.dropped.WithLabelValues("response").Inc()
		return nil, nil
	}
	if len(raw) > MaxQuerySize {
		return nil, s.headerError(raw, dns.RcodeFormatError, "oversized")
	}
	if opcode := int(flags>>11) & 0xf; opcode != dns.OpcodeQuery {
		return nil, s.headerError(raw, dns.RcodeNotImplemented, "opcode")
	}
	req := new(dns.Msg)
	if err := req.Unpack(raw); err != nil {
		return nil, s.headerError(raw, dns.RcodeFormatError, "undecodable")
	}
	if len(req.Question) != 1 {
		return nil, s.headerError(raw, dns.RcodeFormatError, "questions")
	}
	if len(req.Answer) != 0 || len(req.Ns) != 0 {
		return nil, s.refuse(req, dns.RcodeFormatError, "sections")
	}
	opts := 0
	for _, rr := range req.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			opts++
		}
	}
	if opts > 1 {
		return nil, s.refuse(req, dns.RcodeFormatError, "opt")
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		return nil, s.refuse(req, dns.RcodeBadVers, "edns-version")
	}
	return req, nil
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
	// miekg/dns decodes some records it cannot encode back the same way
	// (an upstream's NSEC3 with a salt it reads one way and writes
	// another, found by FuzzUpstreamAnswerThroughTheReleaseHook): a client
	// must never get an answer it cannot decode, so check ours.
	if err := new(dns.Msg).Unpack(out); err != nil {
		s.log.Debug("packed answer does not decode", "name", req.Question[0].Name, "err", err)
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
		Time: q.Received, Client: q.Client, Pod: q.Pod, Transport: q.Transport,
		Name: strings.ToLower(qn.Name), Type: qn.Qtype, Rcode: resp.Rcode,
		Latency: lat, Source: q.Source, Upstream: q.Upstream, Truncated: truncated, Err: err,
		Verdict: q.Verdict, Learned: q.Learned,
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
