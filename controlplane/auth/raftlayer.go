package auth

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// TLSStreamLayer is a raft.StreamLayer over mutual TLS 1.3: the Raft
// NetworkTransport between replicas runs on it, so only holders of a
// replica certificate of the federation's CA can exchange Raft messages
// (vote, append, snapshot) with a replica. raft's NetworkTransport calls
// Accept from its one listen goroutine and Dial from any goroutine.
type TLSStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	client    *tls.Config
}

var _ raft.StreamLayer = (*TLSStreamLayer)(nil)

// NewTLSStreamLayer listens on bind; advertise (may be nil: the listen
// address) is the address other replicas dial. server and client come from
// ReplicaTLS.
func NewTLSStreamLayer(bind string, advertise net.Addr, server, client *tls.Config) (*TLSStreamLayer, error) {
	if server == nil || client == nil {
		return nil, errors.New("raft TLS stream layer: server and client TLS configs are required")
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("listen for raft on %s: %w", bind, err)
	}
	if advertise == nil {
		advertise = ln.Addr()
	}
	if ta, ok := advertise.(*net.TCPAddr); ok && ta.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("raft advertise address %s is unspecified; give a routable address", advertise)
	}
	return &TLSStreamLayer{ln: tls.NewListener(ln, server), advertise: advertise, client: client}, nil
}

// Accept returns the next connection; the handshake runs on its first
// read, in the transport's per-connection goroutine, so one slow or
// hostile peer cannot stall accepting the others. A peer without a valid
// replica certificate fails there and is disconnected.
func (l *TLSStreamLayer) Accept() (net.Conn, error) { return l.ln.Accept() }

// Close stops listening.
func (l *TLSStreamLayer) Close() error { return l.ln.Close() }

// Addr is the advertised address.
func (l *TLSStreamLayer) Addr() net.Addr { return l.advertise }

// Dial connects to a replica and completes the handshake, so a peer with a
// foreign certificate fails the dial with a clear error.
func (l *TLSStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(address))
	if err != nil {
		return nil, fmt.Errorf("dial raft peer %s: %w", address, err)
	}
	cfg := l.client.Clone()
	cfg.ServerName = host
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	c, err := d.Dial("tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("dial raft peer %s over mTLS: %w", address, err)
	}
	return c, nil
}
