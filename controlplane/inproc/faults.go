package inproc

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Faults injects failures into the gRPC calls of the connections dialled
// with its DialOptions. The agent's and the syncer's control-plane ports
// (agent.Client, syncer.NewControlPlane) are thin adapters over such
// connections, so injecting below them lets the ports' own retry, failover
// and resync paths meet the failure, the way a replica that refuses, times
// out or resets a stream would cause it. One Faults serves both ports,
// which keeps the fault model in one place and needs no test double of
// either interface.
//
// Safe for concurrent use: tests inject while the agent or syncer runs.
type Faults struct {
	mu      sync.Mutex
	rules   []*faultRule
	streams map[*faultStream]struct{}
	calls   map[string]int
}

// Rule says which calls fail and how. A call is matched against the rules
// in the order they were injected; the first match decides it.
type Rule struct {
	// Method is a full gRPC method name (the generated
	// fedmeshv1.*_FullMethodName constants); "" matches every method.
	Method string
	// Target is a replica's gRPC address as dialled; "" matches every
	// replica.
	Target string
	// Code is the status a matching call fails with. codes.OK lets the call
	// through (after Delay): a pure delay.
	Code codes.Code
	// LoseAnswer sends the call and lets the control plane handle it, then
	// replaces its answer with Code: a write that committed although the
	// client saw it fail. Streams ignore it.
	LoseAnswer bool
	// Times is how many calls the rule affects; 0 means until it is
	// removed.
	Times int
	// Delay holds each matching call (or stream opening) this long first.
	Delay time.Duration
}

type faultRule struct {
	Rule
	used int
}

// NewFaults returns a Faults that injects nothing yet.
func NewFaults() *Faults {
	return &Faults{streams: map[*faultStream]struct{}{}, calls: map[string]int{}}
}

// DialOptions install the injection on a connection.
func (f *Faults) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithChainUnaryInterceptor(f.unary), grpc.WithChainStreamInterceptor(f.stream)}
}

// Inject adds a rule and returns a function that removes it.
func (f *Faults) Inject(r Rule) (remove func()) {
	fr := &faultRule{Rule: r}
	f.mu.Lock()
	f.rules = append(f.rules, fr)
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i, x := range f.rules {
			if x == fr {
				f.rules = append(f.rules[:i], f.rules[i+1:]...)
				return
			}
		}
	}
}

// Unreachable makes every call and every new stream fail with Unavailable
// and breaks the streams already open, as if no replica could be reached;
// calling the function it returns makes the control plane reachable again.
func (f *Faults) Unreachable() (heal func()) {
	remove := f.Inject(Rule{Code: codes.Unavailable})
	f.BreakStreams("", "", codes.Unavailable)
	return remove
}

// Clear removes every rule. Streams already broken stay broken.
func (f *Faults) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = nil
}

// BreakStreams ends every open stream of method to target ("" matches any)
// with code, as a reset connection or a replica going away would. It
// returns how many it broke.
func (f *Faults) BreakStreams(method, target string, code codes.Code) int {
	f.mu.Lock()
	var hit []*faultStream
	for s := range f.streams {
		if match(method, s.method) && match(target, s.target) {
			hit = append(hit, s)
			delete(f.streams, s)
		}
	}
	f.mu.Unlock()
	for _, s := range hit {
		s.breakWith(status.Errorf(code, "inproc: stream %s to %s broken by fault injection", s.method, s.target))
	}
	return len(hit)
}

// OpenStreams is how many streams of method ("" for any) are open.
func (f *Faults) OpenStreams(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for s := range f.streams {
		if match(method, s.method) {
			n++
		}
	}
	return n
}

// Calls is how many calls and stream openings of method ("" for any) the
// clients attempted, failed ones included.
func (f *Faults) Calls(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if method != "" {
		return f.calls[method]
	}
	n := 0
	for _, c := range f.calls {
		n += c
	}
	return n
}

func match(want, got string) bool { return want == "" || want == got }

// decide counts the attempt and returns the rule that applies, if any.
func (f *Faults) decide(method, target string) (Rule, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
	for i, r := range f.rules {
		if !match(r.Method, method) || !match(r.Target, target) {
			continue
		}
		r.used++
		if r.Times > 0 && r.used >= r.Times {
			f.rules = append(f.rules[:i], f.rules[i+1:]...)
		}
		return r.Rule, true
	}
	return Rule{}, false
}

func injected(code codes.Code, method, target string) error {
	return status.Errorf(code, "inproc: %s to %s failed by fault injection", method, target)
}

func wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

func (f *Faults) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	r, ok := f.decide(method, cc.Target())
	if !ok {
		return invoke(ctx, method, req, reply, cc, opts...)
	}
	if err := wait(ctx, r.Delay); err != nil {
		return err
	}
	if r.Code == codes.OK {
		return invoke(ctx, method, req, reply, cc, opts...)
	}
	if r.LoseAnswer {
		if err := invoke(ctx, method, req, reply, cc, opts...); err != nil {
			return err
		}
	}
	return injected(r.Code, method, cc.Target())
}

func (f *Faults) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, open grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if r, ok := f.decide(method, cc.Target()); ok {
		if err := wait(ctx, r.Delay); err != nil {
			return nil, err
		}
		if r.Code != codes.OK {
			return nil, injected(r.Code, method, cc.Target())
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	cs, err := open(sctx, desc, cc, method, opts...)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &faultStream{ClientStream: cs, method: method, target: cc.Target(), cancel: cancel}
	f.mu.Lock()
	f.streams[s] = struct{}{}
	f.mu.Unlock()
	// The stream is forgotten once its context ends (the caller cancelled,
	// or it ended and the client released it).
	context.AfterFunc(sctx, func() {
		f.mu.Lock()
		delete(f.streams, s)
		f.mu.Unlock()
	})
	return s, nil
}

// faultStream is a client stream BreakStreams can end.
type faultStream struct {
	grpc.ClientStream
	method, target string
	cancel         context.CancelFunc

	mu     sync.Mutex
	broken error
}

func (s *faultStream) breakWith(err error) {
	s.mu.Lock()
	if s.broken == nil {
		s.broken = err
	}
	s.mu.Unlock()
	s.cancel()
}

func (s *faultStream) brokenErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.broken
}

func (s *faultStream) RecvMsg(m any) error {
	if err := s.brokenErr(); err != nil {
		return err
	}
	err := s.ClientStream.RecvMsg(m)
	if err != nil {
		// The stream is over either way; ending its context releases it
		// and forgets it.
		s.cancel()
		if b := s.brokenErr(); b != nil {
			return b
		}
	}
	return err
}

func (s *faultStream) SendMsg(m any) error {
	if err := s.brokenErr(); err != nil {
		return err
	}
	return s.ClientStream.SendMsg(m)
}
