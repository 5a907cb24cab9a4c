package auth

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// OnBehalfOfKey is the metadata key a replica sets when it forwards a
// caller's request to the leader: the caller's principal URI. The leader
// honours it only from a peer authenticated as a replica and then
// authorizes (and rate-limits) the call as that caller.
const OnBehalfOfKey = "fedmesh-on-behalf-of"

type principalKey struct{}

// WithPrincipal returns ctx carrying p (the interceptors do this).
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the authenticated principal of the call ctx belongs
// to; false for a call without a certificate (only public methods).
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok && p.Kind != KindUnknown
}

// Guard authenticates, limits and authorizes every gRPC call. Its
// interceptors run on gRPC's goroutines, concurrently; Guard is safe for
// that.
type Guard struct {
	limits  Limits
	limiter *rateLimiter
	now     func() time.Time
	log     *slog.Logger
}

// GuardOption configures a Guard.
type GuardOption func(*Guard)

// WithLimits replaces DefaultLimits.
func WithLimits(l Limits) GuardOption { return func(g *Guard) { g.limits = l } }

// WithGuardClock injects the clock (tests).
func WithGuardClock(now func() time.Time) GuardOption { return func(g *Guard) { g.now = now } }

// WithLogger sets where denials are logged.
func WithLogger(l *slog.Logger) GuardOption { return func(g *Guard) { g.log = l } }

// NewGuard returns a Guard with DefaultLimits.
func NewGuard(opts ...GuardOption) *Guard {
	g := &Guard{limits: DefaultLimits(), limiter: newRateLimiter(), now: time.Now, log: slog.Default()}
	for _, o := range opts {
		o(g)
	}
	return g
}

// ServerOptions are the interceptors plus a receive limit as large as the
// largest per-kind limit (the per-kind check gives the clearer error).
func (g *Guard) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(g.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(g.StreamServerInterceptor()),
		grpc.MaxRecvMsgSize(g.limits.maxOfAll()),
	}
}

// UnaryServerInterceptor authenticates, limits and authorizes unary calls.
func (g *Guard) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		p, err := g.admit(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if err := g.check(p, info.FullMethod, req); err != nil {
			return nil, err
		}
		return handler(WithPrincipal(ctx, p), req)
	}
}

// StreamServerInterceptor authenticates and limits the stream once, and
// authorizes the stream and then every message the client sends on it.
func (g *Guard) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		p, err := g.admit(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		if err := g.authorize(p, info.FullMethod, nil); err != nil {
			return err
		}
		return handler(srv, &guardedStream{ServerStream: ss, g: g, p: p, method: info.FullMethod, ctx: WithPrincipal(ss.Context(), p)})
	}
}

type guardedStream struct {
	grpc.ServerStream
	g      *Guard
	p      Principal
	method string
	ctx    context.Context
}

func (s *guardedStream) Context() context.Context { return s.ctx }

func (s *guardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.g.check(s.p, s.method, m)
}

// admit authenticates the caller and takes a token from its bucket.
func (g *Guard) admit(ctx context.Context, method string) (Principal, error) {
	p, err := g.authenticate(ctx, method)
	if err != nil {
		g.log.Warn("unauthenticated call refused", "method", method, "err", err)
		return Principal{}, err
	}
	key := p.String()
	if p.Kind == KindUnknown {
		// Calls without a certificate share one bucket per source address.
		if pr, ok := peer.FromContext(ctx); ok {
			key = "anonymous@" + hostOf(pr.Addr.String())
		}
	}
	if ok, wait := g.limiter.allow(key, g.limits.Rate[p.Kind], g.now()); !ok {
		return Principal{}, status.Errorf(codes.ResourceExhausted, "rate limit of %s exceeded (%g requests/s, burst %d); retry in %v",
			key, g.limits.Rate[p.Kind].Rate, g.limits.Rate[p.Kind].Burst, wait.Round(time.Millisecond))
	}
	return p, nil
}

// check enforces the message size of p's kind, then authorizes, then
// refuses writes of objects another principal owns (CheckOwner).
func (g *Guard) check(p Principal, method string, req any) error {
	if m, ok := req.(proto.Message); ok {
		if lim, set := g.limits.MaxMessage[p.Kind]; set && lim > 0 {
			if n := proto.Size(m); n > lim {
				return status.Errorf(codes.ResourceExhausted, "request of %d bytes exceeds the %d bytes a %s may send to %s; send smaller batches", n, lim, p.Kind, method)
			}
		}
	}
	if err := g.authorize(p, method, req); err != nil {
		return err
	}
	if p.Kind == KindUnknown {
		return nil
	}
	if err := CheckOwner(p, method, req); err != nil {
		g.log.Info("write of an object another principal owns refused", "principal", p.String(), "method", method, "err", status.Convert(err).Message())
		return err
	}
	return nil
}

func (g *Guard) authorize(p Principal, method string, req any) error {
	if p.Kind == KindUnknown {
		if publicMethods[method] {
			return nil
		}
		return status.Errorf(codes.Unauthenticated, "%s needs a client certificate", method)
	}
	if err := Authorize(p, method, req); err != nil {
		g.log.Warn("call denied", "principal", p.String(), "method", method, "err", status.Convert(err).Message())
		return err
	}
	return nil
}

// authenticate maps the verified TLS peer certificate to a principal,
// resolving a replica's on-behalf-of header.
func (g *Guard) authenticate(ctx context.Context, method string) (Principal, error) {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return Principal{}, status.Error(codes.Unauthenticated, "no peer information on the call")
	}
	ti, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Principal{}, status.Error(codes.Unauthenticated, "connection is not TLS; the control plane accepts only mTLS")
	}
	if len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		if publicMethods[method] {
			return Principal{}, nil
		}
		return Principal{}, status.Errorf(codes.Unauthenticated,
			"no client certificate presented for %s; use a certificate issued by the fedmesh CA (join with a token: 'fedctl cluster register' / 'fedctl node token')", method)
	}
	leaf := ti.State.VerifiedChains[0][0]
	// The handshake checked validity then; a long-lived connection must
	// not outlive its certificate for new calls.
	if now := g.now(); now.After(leaf.NotAfter) {
		return Principal{}, status.Errorf(codes.Unauthenticated, "client certificate expired at %s; renew it and reconnect", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	p, err := FromCertificate(leaf)
	if err != nil {
		return Principal{}, status.Errorf(codes.Unauthenticated, "client certificate names no fedmesh principal: %v", err)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	obo := md.Get(OnBehalfOfKey)
	if len(obo) == 0 || (peerMethods[method] && p.Kind == KindReplica) {
		return p, nil
	}
	if p.Kind != KindReplica {
		return Principal{}, status.Errorf(codes.PermissionDenied, "%s sent %s: only control-plane replicas act on behalf of another principal", p, OnBehalfOfKey)
	}
	if len(obo) != 1 {
		return Principal{}, status.Errorf(codes.InvalidArgument, "%d values of %s, want 1", len(obo), OnBehalfOfKey)
	}
	orig, err := ParsePrincipal(obo[0])
	if err != nil {
		return Principal{}, status.Errorf(codes.InvalidArgument, "%s from replica %s: %v", OnBehalfOfKey, p.Replica, err)
	}
	return orig, nil
}

func hostOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[:i]
		}
	}
	return addr
}

// ForwardingDialOptions are the client interceptors a replica installs on
// its connections to the leader: they set OnBehalfOfKey to the principal
// of the call being forwarded (from ctx), replacing whatever the caller
// sent, and remove it when ctx carries no principal (the replica's own
// calls).
func ForwardingDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(onBehalfOf(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(onBehalfOf(ctx), desc, cc, method, opts...)
		}),
	}
}

func onBehalfOf(ctx context.Context) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	if p, ok := PrincipalFrom(ctx); ok {
		md.Set(OnBehalfOfKey, p.String())
	} else {
		delete(md, OnBehalfOfKey)
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// String helps logs print a guard's limits.
func (l Limit) String() string { return fmt.Sprintf("%g/s burst %d", l.Rate, l.Burst) }
