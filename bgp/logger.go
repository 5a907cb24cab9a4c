package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
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

// logAdapter implements GoBGP's logger on top of slog and taps the peer
// errors out of it.
type logAdapter struct {
	log  *slog.Logger
	errs *peerErrors
}

var _ gobgplog.Logger = (*logAdapter)(nil)

// errorMessage reports whether a GoBGP log line describes a session
// failure worth showing as the peer's last error.
func errorMessage(level gobgplog.LogLevel, msg string) bool {
	switch msg {
	case "Peer Down", "failed to connect":
		return true
	case "Closed an accepted connection": // a collision or a connect while Idle: not a failure
		return false
	}
	return level <= gobgplog.WarnLevel
}

func (l *logAdapter) emit(level gobgplog.LogLevel, slevel slog.Level, msg string, fields gobgplog.Fields) {
	if key, ok := fields["Key"].(string); ok && errorMessage(level, msg) {
		if a, err := netip.ParseAddr(key); err == nil {
			l.errs.set(a, describe(msg, fields))
		}
	}
	if !l.log.Enabled(context.Background(), slevel) {
		return
	}
	attrs := make([]any, 0, 2*len(fields))
	for _, k := range sortedKeys(fields) {
		attrs = append(attrs, slog.Any(strings.ToLower(k), fields[k]))
	}
	l.log.Log(context.Background(), slevel, "gobgp: "+msg, attrs...)
}

// describe renders "msg (k=v, ...)" without the routing fields.
func describe(msg string, fields gobgplog.Fields) string {
	var parts []string
	for _, k := range sortedKeys(fields) {
		if k == "Topic" || k == "Key" || k == gobgplog.FieldFacility {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%v", strings.ToLower(k), fields[k]))
	}
	if len(parts) == 0 {
		return msg
	}
	return msg + " (" + strings.Join(parts, ", ") + ")"
}

func sortedKeys(f gobgplog.Fields) []string {
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (l *logAdapter) Panic(msg string, f gobgplog.Fields) {
	l.emit(gobgplog.PanicLevel, slog.LevelError, msg, f)
	panic("gobgp: " + msg)
}

func (l *logAdapter) Fatal(msg string, f gobgplog.Fields) {
	l.emit(gobgplog.FatalLevel, slog.LevelError, msg, f)
	os.Exit(1) // GoBGP's contract for Fatal; it only calls it for its gRPC listener, which we do not start
}

func (l *logAdapter) Error(msg string, f gobgplog.Fields) {
	l.emit(gobgplog.ErrorLevel, slog.LevelError, msg, f)
}
func (l *logAdapter) Warn(msg string, f gobgplog.Fields) {
	l.emit(gobgplog.WarnLevel, slog.LevelWarn, msg, f)
}
func (l *logAdapter) Info(msg string, f gobgplog.Fields) {
	l.emit(gobgplog.InfoLevel, slog.LevelInfo, msg, f)
}
func (l *logAdapter) Debug(msg string, f gobgplog.Fields) {
	l.emit(gobgplog.DebugLevel, slog.LevelDebug, msg, f)
}

// SetLevel is ignored: the slog handler decides what is printed.
func (l *logAdapter) SetLevel(gobgplog.LogLevel) {}

// GetLevel tells GoBGP how chatty to be; Debug keeps "failed to connect"
// flowing into the peer errors even when slog prints only Info.
func (l *logAdapter) GetLevel() gobgplog.LogLevel { return gobgplog.DebugLevel }
