package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config is the resolver's configuration; zero fields take the defaults.
type Config struct {
	// Listen is the address served over UDP and TCP, e.g.
	// "169.254.20.10:53", or one address per IP family, comma separated:
	// "169.254.20.10:53,[fd00:169:254::10]:53" (ParseListen says what is
	// accepted). Every address is served by the same pipeline, hooks,
	// recorder, metrics and limits; port 0 picks one free for an address's
	// UDP and TCP sockets.
	Listen string
	// Upstream is the cluster's DNS, "host:port". Empty: only the zone is
	// answered; every other name is REFUSED (counted as
	// fedmesh_dns_bad_requests_total{reason="no_upstream"}).
	Upstream string
	// Zone is the zone answered from the View (DefaultZone).
	Zone string
	// TTL of the zone's records (5s: a withdrawn backend leaves caches
	// within it) and of its negative answers (NegativeTTL, 5s).
	TTL, NegativeTTL time.Duration
	// UpstreamTimeout bounds one forwarded query (2s); the client gets
	// SERVFAIL after it.
	UpstreamTimeout time.Duration
	// HookTimeout bounds the hooks of one query together (2s).
	HookTimeout time.Duration
	// MaxInFlight bounds the queries handled at once (1024); a UDP query
	// beyond it is dropped and counted (the client retries).
	MaxInFlight int
	// MaxTCPConns bounds open TCP connections (256); more are closed at
	// once. TCPIdleTimeout closes a connection idle that long (10s).
	MaxTCPConns    int
	TCPIdleTimeout time.Duration
}

func (c *Config) defaults() {
	if c.Zone == "" {
		c.Zone = DefaultZone
	}
	if c.TTL == 0 {
		c.TTL = 5 * time.Second
	}
	if c.NegativeTTL == 0 {
		c.NegativeTTL = 5 * time.Second
	}
	if c.UpstreamTimeout == 0 {
		c.UpstreamTimeout = 2 * time.Second
	}
	if c.HookTimeout == 0 {
		c.HookTimeout = 2 * time.Second
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 1024
	}
	if c.MaxTCPConns == 0 {
		c.MaxTCPConns = 256
	}
	if c.TCPIdleTimeout == 0 {
		c.TCPIdleTimeout = 10 * time.Second
	}
}

// Deps are the resolver's collaborators; all are optional.
type Deps struct {
	// View is the first view; Server.SetView replaces it.
	View     View
	Hooks    []Hook
	Recorder Recorder
	Pods     Pods
	Logger   *slog.Logger
	Registry prometheus.Registerer
	Now      func() time.Time
}

// Server is the node-local resolver: its sockets and the pipeline behind
// them (see the package doc).
type Server struct {
	cfg   Config
	zone  *Zone
	fwd   *forwarder
	hooks []Hook
	rec   Recorder
	pods  Pods
	log   *slog.Logger
	m     *metrics
	now   func() time.Time
	view  atomic.Pointer[View]

	listen []netip.AddrPort // parsed Config.Listen
	socks  []socketPair     // one per listen address, after Listen

	bufs     sync.Pool // *[]byte of MaxQuerySize+1 for UDP reads
	inflight chan struct{}
	tcpSlots chan struct{}
	handlers sync.WaitGroup
	mu       sync.Mutex
	conns    map[*net.TCPConn]struct{}
	closing  atomic.Bool
}

// New checks cfg and returns a resolver; it opens no socket until Listen.
func New(cfg Config, deps Deps) (*Server, error) {
	cfg.defaults()
	if cfg.Upstream != "" {
		if _, _, err := net.SplitHostPort(cfg.Upstream); err != nil {
			return nil, fmt.Errorf("new dns resolver: upstream %q: want host:port of the cluster's DNS (or empty: answer only the zone): %w", cfg.Upstream, err)
		}
	}
	listen, err := ParseListen(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("new dns resolver: %w", err)
	}
	if cfg.UpstreamTimeout < 0 || cfg.HookTimeout < 0 || cfg.MaxInFlight < 0 || cfg.MaxTCPConns < 0 || cfg.TCPIdleTimeout < 0 {
		return nil, errors.New("new dns resolver: timeouts and limits must not be negative")
	}
	zone, err := NewZone(cfg.Zone, cfg.TTL, cfg.NegativeTTL)
	if err != nil {
		return nil, fmt.Errorf("new dns resolver: %w", err)
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	s := &Server{
		cfg: cfg, zone: zone, listen: listen,
		hooks: deps.Hooks, rec: deps.Recorder, pods: deps.Pods,
		log: deps.Logger.With("component", "dns"), m: newMetrics(deps.Registry), now: deps.Now,
		inflight: make(chan struct{}, cfg.MaxInFlight),
		tcpSlots: make(chan struct{}, cfg.MaxTCPConns),
		conns:    map[*net.TCPConn]struct{}{},
	}
	if cfg.Upstream != "" {
		s.fwd = newForwarder(cfg.Upstream, cfg.UpstreamTimeout)
	}
	// One byte more than a query may have tells an oversized datagram.
	s.bufs.New = func() any { b := make([]byte, MaxQuerySize+1); return &b }
	if deps.View != nil {
		s.SetView(deps.View)
	}
	return s, nil
}

// SetView makes v the view every later query reads. The agent calls it
// from its sync goroutine whenever its services change; v must obey the
// View contract (immutable once handed over).
func (s *Server) SetView(v View) { s.view.Store(&v) }

// View is the view in force, nil before the first SetView.
func (s *Server) View() View {
	if p := s.view.Load(); p != nil {
		return *p
	}
	return nil
}

// socketPair is the UDP socket and TCP listener of one listen address.
type socketPair struct {
	udp *net.UDPConn
	tcp *net.TCPListener
}

// Listen opens the UDP and TCP sockets on every address of Config.Listen
// (the same port for both, also when it is 0). On an error it closes what
// it opened.
func (s *Server) Listen() error {
	if s.socks != nil {
		return errors.New("listen dns: already listening")
	}
	socks := make([]socketPair, 0, len(s.listen))
	for _, ap := range s.listen {
		p, err := listenSockets(ap)
		if err != nil {
			for _, p := range socks {
				p.udp.Close()
				p.tcp.Close()
			}
			return err
		}
		socks = append(socks, p)
	}
	s.socks = socks
	return nil
}

// listenSockets opens the UDP socket and the TCP listener of ap.
func listenSockets(ap netip.AddrPort) (socketPair, error) {
	addr := net.UDPAddrFromAddrPort(ap)
	for attempt := 0; ; attempt++ {
		udp, err := net.ListenUDP("udp", addr)
		if err != nil {
			return socketPair{}, fmt.Errorf("listen dns on udp %s: %w%s", ap, err, bindHint(err))
		}
		bound := udp.LocalAddr().(*net.UDPAddr)
		tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: bound.IP, Port: bound.Port, Zone: bound.Zone})
		if err != nil {
			udp.Close()
			// Port 0 chose a UDP port whose TCP twin is taken: try another.
			if addr.Port == 0 && attempt < 10 {
				continue
			}
			return socketPair{}, fmt.Errorf("listen dns on tcp %s: %w%s", bound, err, bindHint(err))
		}
		return socketPair{udp: udp, tcp: tcp}, nil
	}
}

// bindHint says what to do about a failed bind.
func bindHint(err error) string {
	switch {
	case errors.Is(err, syscall.EACCES):
		return " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
	case errors.Is(err, syscall.EADDRINUSE):
		return " (another DNS server, e.g. a node-local cache or systemd-resolved, holds it; stop it or choose another address)"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return " (no interface has that address; add it, e.g. to a dummy interface, first)"
	}
	return ""
}

// Addrs are the addresses served, in the order of Config.Listen, with the
// ports bound; valid after Listen.
func (s *Server) Addrs() []netip.AddrPort {
	out := make([]netip.AddrPort, len(s.socks))
	for i, p := range s.socks {
		out[i] = p.udp.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	return out
}

// Addr is the first of Addrs (the only one for a single-family resolver);
// valid after Listen.
func (s *Server) Addr() netip.AddrPort { return s.Addrs()[0] }

// Run listens and serves until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		return err
	}
	return s.Serve(ctx)
}

// Serve answers queries on the sockets Listen opened until ctx is done,
// then stops reading, lets the queries in flight finish (each is bounded by
// UpstreamTimeout and HookTimeout), closes everything and returns nil.
func (s *Server) Serve(ctx context.Context) error {
	if s.socks == nil {
		return errors.New("serve dns: Listen first")
	}
	s.log.Info("dns resolver serving", "addrs", s.Addrs(), "zone", s.zone.Origin(), "upstream", s.cfg.Upstream)
	// Queries in flight keep their context when the resolver stops, so a
	// forwarded query finishes instead of turning into SERVFAIL.
	hctx := context.WithoutCancel(ctx)
	var loops sync.WaitGroup
	for _, p := range s.socks {
		loops.Go(func() { s.serveUDP(hctx, p.udp) })
		loops.Go(func() { s.serveTCP(hctx, p.tcp) })
	}
	<-ctx.Done()
	s.closing.Store(true)
	for _, p := range s.socks {
		p.udp.SetReadDeadline(time.Now())
		p.tcp.Close()
	}
	s.mu.Lock()
	for c := range s.conns {
		c.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	loops.Wait()
	s.handlers.Wait()
	// Answers in flight were written on their UDP sockets: close them last.
	for _, p := range s.socks {
		p.udp.Close()
	}
	s.log.Info("dns resolver stopped")
	return nil
}

// serveUDP reads the queries of one UDP socket and answers each on it (so
// the answer's source is the address the client asked).
func (s *Server) serveUDP(ctx context.Context, udp *net.UDPConn) {
	for {
		bp := s.bufs.Get().(*[]byte)
		buf := *bp
		n, from, err := udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			s.bufs.Put(bp)
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("read dns query", "err", err)
			continue
		}
		select {
		case s.inflight <- struct{}{}:
		default:
			s.m.dropped.WithLabelValues("overload").Inc()
			s.bufs.Put(bp)
			continue
		}
		s.handlers.Go(func() {
			client := netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			out := s.Handle(ctx, buf[:n], client, UDP)
			s.bufs.Put(bp)
			// Free the slot before the client can see the answer, so its
			// next query finds it free.
			<-s.inflight
			if out != nil {
				if _, err := udp.WriteToUDPAddrPort(out, from); err != nil {
					s.log.Debug("write dns answer", "client", client, "err", err)
				}
			}
		})
	}
}

// serveTCP accepts the connections of one TCP listener; MaxTCPConns bounds
// them over all listeners together.
func (s *Server) serveTCP(ctx context.Context, ln *net.TCPListener) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept dns connection", "err", err)
			time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		select {
		case s.tcpSlots <- struct{}{}:
		default:
			s.m.dropped.WithLabelValues("tcp-conns").Inc()
			c.Close()
			continue
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.handlers.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				// Free the slot before the client can see the close, so
				// a client reconnecting at once finds it free.
				<-s.tcpSlots
				c.Close()
			}()
			s.serveConn(ctx, c)
		})
	}
}

// serveConn answers the queries of one TCP connection in order (RFC 7766
// allows a server to), until the client closes it, it idles, a request is
// dropped, or the resolver stops.
func (s *Server) serveConn(ctx context.Context, c *net.TCPConn) {
	from := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	var lenBuf [2]byte
	for !s.closing.Load() {
		c.SetReadDeadline(time.Now().Add(s.cfg.TCPIdleTimeout))
		// Serve sets closing before it cuts the read deadlines short, so
		// checking again after extending ours cannot miss the stop.
		if s.closing.Load() {
			return
		}
		if _, err := readFull(c, lenBuf[:]); err != nil {
			return
		}
		n := int(lenBuf[0])<<8 | int(lenBuf[1])
		// Read no more than one byte past the limit: Handle answers
		// FORMERR from the header, and the rest of the stream is not
		// worth reading, so the connection closes after the answer.
		buf := make([]byte, min(n, MaxQuerySize+1))
		if _, err := readFull(c, buf); err != nil {
			return
		}
		out := s.Handle(ctx, buf, from, TCP)
		if out == nil {
			return
		}
		msg := make([]byte, 2+len(out))
		msg[0], msg[1] = byte(len(out)>>8), byte(len(out))
		copy(msg[2:], out)
		c.SetWriteDeadline(time.Now().Add(s.cfg.TCPIdleTimeout))
		if _, err := c.Write(msg); err != nil || n > MaxQuerySize {
			return
		}
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
