package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
)

// peerErrors remembers the last error per peer. GoBGP reports a session's
// failures (NOTIFICATIONs, dial errors, hold-timer expiry) only through its
// logger, from its own FSM goroutines, so this is the one piece of state
// shared across goroutines and it has its own lock.
type peerErrors struct {
	mu   sync.Mutex
	last map[netip.Addr]string
}

func newPeerErrors() *peerErrors { return &peerErrors{last: map[netip.Addr]string{}} }

func (e *peerErrors) set(a netip.Addr, msg string) {
	e.mu.Lock()
	e.last[a] = msg
	e.mu.Unlock()
}

func (e *peerErrors) get(a netip.Addr) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.last[a]
}

func (e *peerErrors) forget(a netip.Addr) {
	e.mu.Lock()
	delete(e.last, a)
	e.mu.Unlock()
}

// logHandler is the slog.Handler GoBGP logs through: it prefixes GoBGP's
// lines with "gobgp: ", lower-cases their keys (GoBGP writes "Key",
// "Topic"), hands them to the speaker's handler, and taps the peer errors
// out of them. GoBGP gives each peer a logger made with
// With("Topic", "Peer", "Key", <address>), so the peer's address arrives
// through WithAttrs, not with each record.
type logHandler struct {
	inner slog.Handler
	errs  *peerErrors
	key   string // the "Key" attribute bound by WithAttrs; a peer address for peer loggers
	group bool   // WithGroup was called: keys below are not GoBGP's top-level ones
}

func newLogHandler(inner slog.Handler, errs *peerErrors) *logHandler {
	return &logHandler{inner: inner, errs: errs}
}

// Enabled is true at every level: "failed to connect", a peer error worth
// keeping, is a Debug line; Handle drops what the inner handler does not want.
func (h *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := *h
	for _, a := range attrs {
		if !h.group && a.Key == "Key" {
			n.key = a.Value.String()
		}
	}
	n.inner = h.inner.WithAttrs(lowerKeys(attrs))
	return &n
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	n := *h
	n.group = true
	n.inner = h.inner.WithGroup(name)
	return &n
}

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	if errorMessage(r.Level, r.Message) {
		key := h.key
		if !h.group {
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "Key" {
					key = a.Value.String()
				}
				return true
			})
		}
		if a, err := netip.ParseAddr(key); err == nil {
			h.errs.set(a, describe(r))
		}
	}
	if !h.inner.Enabled(ctx, r.Level) {
		return nil
	}
	out := slog.NewRecord(r.Time, r.Level, "gobgp: "+r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(slog.Attr{Key: strings.ToLower(a.Key), Value: a.Value})
		return true
	})
	return h.inner.Handle(ctx, out)
}

func lowerKeys(attrs []slog.Attr) []slog.Attr {
	out := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		out[i] = slog.Attr{Key: strings.ToLower(a.Key), Value: a.Value}
	}
	return out
}

// errorMessage reports whether a GoBGP log line describes a session
// failure worth showing as the peer's last error.
func errorMessage(level slog.Level, msg string) bool {
	switch msg {
	case "Peer Down", "failed to connect", "sent notification", "received notification":
		return true
	case "Closed an accepted connection": // a collision or a connect while Idle: not a failure
		return false
	}
	return level >= slog.LevelWarn
}

// describe renders "msg (k=v, ...)" without the routing fields, in the
// order GoBGP wrote them.
func describe(r slog.Record) string {
	var parts []string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "Topic" && a.Key != "Key" {
			parts = append(parts, fmt.Sprintf("%s=%v", strings.ToLower(a.Key), a.Value))
		}
		return true
	})
	if len(parts) == 0 {
		return r.Message
	}
	return r.Message + " (" + strings.Join(parts, ", ") + ")"
}
