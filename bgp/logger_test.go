package bgp

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
)

// The log calls below are shaped like GoBGP v4's: a peer's FSM logs through
// logger.With("Topic", "Peer", "Key", <address>), the server passes Key
// inline.
func TestLogHandlerKeepsTheLastPeerFailure(t *testing.T) {
	peer := netip.MustParseAddr("198.18.0.1")
	peerLog := func(l *slog.Logger) *slog.Logger {
		return l.With(slog.String("Topic", "Peer"), slog.String("Key", peer.String()))
	}
	tests := []struct {
		name string
		log  func(*slog.Logger)
		want string
	}{
		{"peer down carries the reason", func(l *slog.Logger) {
			peerLog(l).Info("Peer Down", slog.String("Reason", "hold timer expired"))
		}, "Peer Down (reason=hold timer expired)"},
		{"dial failure at debug level", func(l *slog.Logger) {
			peerLog(l).Debug("failed to connect", slog.String("Error", "connection refused"))
		}, "failed to connect (error=connection refused)"},
		{"notifications count although GoBGP logs them at info", func(l *slog.Logger) {
			peerLog(l).Info("received notification", slog.Int("Code", 6), slog.Int("Subcode", 2))
		}, "received notification (code=6, subcode=2)"},
		{"warnings count", func(l *slog.Logger) {
			peerLog(l).Warn("failed to send", slog.String("Data", "broken pipe"))
		}, "failed to send (data=broken pipe)"},
		{"an inline key counts too", func(l *slog.Logger) {
			l.Warn("failed to set md5", slog.String("Topic", "Peer"), slog.String("Key", peer.String()), slog.String("Err", "EPERM"))
		}, "failed to set md5 (err=EPERM)"},
		{"the last failure wins", func(l *slog.Logger) {
			peerLog(l).Debug("failed to connect", slog.String("Error", "connection refused"))
			peerLog(l).Info("Peer Down", slog.String("Reason", "notification-received"))
		}, "Peer Down (reason=notification-received)"},
		{"collisions and chatter do not", func(l *slog.Logger) {
			peerLog(l).Warn("Closed an accepted connection")
			peerLog(l).Info("Peer Up")
			peerLog(l).Debug("sent update")
		}, ""},
		{"lines without a peer key are ignored", func(l *slog.Logger) {
			l.Warn("failed to bind", slog.String("Topic", "Server"))
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := newPeerErrors()
			tt.log(slog.New(newLogHandler(slog.NewTextHandler(&bytes.Buffer{}, nil), errs)))
			if got := errs.get(peer); got != tt.want {
				t.Errorf("last error = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestLogHandlerForwardsPrefixedLinesAtTheInnerLevel(t *testing.T) {
	var buf bytes.Buffer
	inner := slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})
	l := slog.New(newLogHandler(inner, newPeerErrors())).With(slog.String("Topic", "Peer"), slog.String("Key", "198.18.0.1"))
	l.Info("Peer Up")
	l.Debug("failed to connect", slog.String("Error", "connection refused"))
	out := buf.String()
	if !strings.Contains(out, `msg="gobgp: Peer Up"`) || !strings.Contains(out, "topic=Peer key=198.18.0.1") {
		t.Errorf("forwarded line = %q, want the gobgp: prefix and lower-cased keys", out)
	}
	if strings.Contains(out, "failed to connect") {
		t.Errorf("a debug line passed an info-level handler: %q", out)
	}
}
