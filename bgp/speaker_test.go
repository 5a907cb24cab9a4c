package bgp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

// freeLoopbackPort finds a TCP port on 127.0.0.1 for the in-process speaker.
func freeLoopbackPort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// The in-process speaker needs no root: it listens on loopback and its one
// peer (also on loopback) never answers.
func TestSpeakerAppliesOnceAndRejectsBadInputWithoutChanges(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	s := New()
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(runCtx) }()

	d := Desired{
		LocalASN:        65010,
		RouterID:        netip.MustParseAddr("198.18.0.2"),
		ListenPort:      freeLoopbackPort(t),
		ListenAddresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		GracefulRestart: GracefulRestart{RestartTime: 30 * time.Second},
		Peers:           []Peer{{Address: netip.MustParseAddr("127.0.0.1"), ASN: 65000, Port: freeLoopbackPort(t), Password: "pw"}},
		PodCIDRs:        []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		Prefixes:        []Prefix{{CIDR: netip.MustParsePrefix("10.244.1.0/24")}},
	}
	acts, err := s.Apply(ctx, d)
	if err != nil || len(acts) != 4 {
		t.Fatalf("first Apply = %q, %v; want start, set-policy, add-path, add-peer", plan(acts), err)
	}
	if acts, err := s.Apply(ctx, d); err != nil || len(acts) != 0 {
		t.Fatalf("same Apply again = %q, %v; want nothing", plan(acts), err)
	}
	if acts, err := s.SetHealthy(ctx, true); err != nil || len(acts) != 0 {
		t.Fatalf("SetHealthy(true) while healthy = %q, %v; want nothing", plan(acts), err)
	}

	bad := d
	bad.Peers = append([]Peer{}, d.Peers...)
	bad.Peers = append(bad.Peers, d.Peers[0])
	bad.Prefixes = []Prefix{{CIDR: netip.MustParsePrefix("10.9.0.0/24")}}
	_, err = s.Apply(ctx, bad)
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("Apply(bad) = %v, want a FieldError", err)
	}
	st, err := s.Status(ctx)
	if err != nil || len(st) != 1 || st[0].Address != d.Peers[0].Address || st[0].State == StateEstablished {
		t.Fatalf("Status after rejected Apply = %+v, %v; want the one original peer, not established", st, err)
	}
	if acts, err := s.Apply(ctx, d); err != nil || len(acts) != 0 {
		t.Fatalf("a rejected Apply changed state: next Apply = %q, %v", plan(acts), err)
	}

	if acts, err := s.SetHealthy(ctx, false); err != nil || len(acts) != 1 || acts[0].Kind != ActionDeletePath {
		t.Fatalf("SetHealthy(false) = %q, %v; want one withdrawal", plan(acts), err)
	}

	stop()
	if err := <-runErr; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if _, err := s.Apply(ctx, d); !errors.Is(err, ErrStopped) {
		t.Fatalf("Apply after Run returned = %v, want ErrStopped", err)
	}
}

// GoBGP v4 ends a server for good at StopBgp: a disable followed by an
// enable, or a router ID change (stop, then start), gets a fresh one.
func TestSpeakerStartsAgainAfterAStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	s := New()
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(runCtx) }()
	defer func() { stop(); <-runErr }()

	d := Desired{
		LocalASN: 65010, RouterID: netip.MustParseAddr("198.18.0.2"),
		ListenPort: freeLoopbackPort(t), ListenAddresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Peers:    []Peer{{Address: netip.MustParseAddr("127.0.0.1"), ASN: 65000, Port: freeLoopbackPort(t)}},
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		Prefixes: []Prefix{{CIDR: netip.MustParsePrefix("10.244.1.0/24")}},
	}
	moved := d
	moved.RouterID = netip.MustParseAddr("198.18.0.3")
	for i, want := range []Desired{d, {}, d, moved} {
		if _, err := s.Apply(ctx, want); err != nil {
			t.Fatalf("apply %d (enabled %v): %v", i, want.Enabled(), err)
		}
		st, err := s.Status(ctx)
		if err != nil || len(st) != len(want.Peers) {
			t.Fatalf("status after apply %d: %+v %v, want %d peers", i, st, err, len(want.Peers))
		}
	}
}
