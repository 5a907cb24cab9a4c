package bgp

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

func TestLogAdapterKeepsTheLastPeerFailure(t *testing.T) {
	peer := netip.MustParseAddr("198.18.0.1")
	tests := []struct {
		name string
		log  func(*logAdapter)
		want string
	}{
		{"peer down carries the reason", func(l *logAdapter) {
			l.Info("Peer Down", gobgplog.Fields{"Topic": "Peer", "Key": "198.18.0.1", "Reason": "hold timer expired"})
		}, "Peer Down (reason=hold timer expired)"},
		{"dial failure at debug level", func(l *logAdapter) {
			l.Debug("failed to connect", gobgplog.Fields{"Topic": "Peer", "Key": "198.18.0.1", "Error": "connection refused"})
		}, "failed to connect (error=connection refused)"},
		{"warnings count", func(l *logAdapter) {
			l.Warn("received notification", gobgplog.Fields{"Topic": "Peer", "Key": "198.18.0.1", "Code": 6, "Subcode": 2})
		}, "received notification (code=6, subcode=2)"},
		{"collisions and chatter do not", func(l *logAdapter) {
			l.Warn("Closed an accepted connection", gobgplog.Fields{"Topic": "Peer", "Key": "198.18.0.1"})
			l.Info("Peer Up", gobgplog.Fields{"Topic": "Peer", "Key": "198.18.0.1"})
			l.Debug("sent update", gobgplog.Fields{"Topic": "Peer", "Key": "198.18.0.1"})
		}, ""},
		{"lines without a peer key are ignored", func(l *logAdapter) {
			l.Warn("failed to bind", gobgplog.Fields{"Topic": "Server"})
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &logAdapter{log: slog.New(slog.NewTextHandler(io.Discard, nil)), errs: newPeerErrors()}
			tt.log(l)
			if got := l.errs.get(peer); got != tt.want {
				t.Errorf("last error = %q, want %q", got, tt.want)
			}
		})
	}
}
