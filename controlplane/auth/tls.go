package auth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
)

// Certificate holds the current key pair of a process; Set swaps it
// atomically, so a renewed certificate is used by the next TLS handshake
// while established connections (and the watch streams on them) go on.
// Safe for concurrent use.
type Certificate struct {
	cur atomic.Pointer[tls.Certificate]
}

// NewCertificate parses a PEM certificate and key.
func NewCertificate(certPEM, keyPEM []byte) (*Certificate, error) {
	c := &Certificate{}
	if err := c.Set(certPEM, keyPEM); err != nil {
		return nil, err
	}
	return c, nil
}

// LoadCertificate reads a PEM certificate and key from files.
func LoadCertificate(certPath, keyPath string) (*Certificate, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	c, err := NewCertificate(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load %s and %s: %w", certPath, keyPath, err)
	}
	return c, nil
}

// Set replaces the key pair.
func (c *Certificate) Set(certPEM, keyPEM []byte) error {
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("parse key pair: %w", err)
	}
	if kp.Leaf == nil {
		if kp.Leaf, err = x509.ParseCertificate(kp.Certificate[0]); err != nil {
			return fmt.Errorf("parse certificate: %w", err)
		}
	}
	c.cur.Store(&kp)
	return nil
}

// Leaf is the current certificate.
func (c *Certificate) Leaf() *x509.Certificate { return c.cur.Load().Leaf }

// Principal is the principal the current certificate names.
func (c *Certificate) Principal() (Principal, error) { return FromCertificate(c.Leaf()) }

// RenewAt is when a holder should renew: two thirds into the lifetime, so
// a renewal failing for a while still leaves time before expiry.
func (c *Certificate) RenewAt() time.Time {
	l := c.Leaf()
	return l.NotBefore.Add(l.NotAfter.Sub(l.NotBefore) * 2 / 3)
}

func (c *Certificate) get() (*tls.Certificate, error) {
	if kp := c.cur.Load(); kp != nil {
		return kp, nil
	}
	return nil, errors.New("no certificate loaded")
}

// ServerTLS is the TLS 1.3 config of the control plane's gRPC listener.
// Client certificates are required and verified against roots, except
// when allowJoin is set: then a client may connect without one, and the
// Guard admits such calls only to the public methods (Join), where the
// join token authenticates.
func ServerTLS(roots *x509.CertPool, cert *Certificate, allowJoin bool) *tls.Config {
	auth := tls.RequireAndVerifyClientCert
	if allowJoin {
		auth = tls.VerifyClientCertIfGiven
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		ClientAuth:     auth,
		ClientCAs:      roots,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.get() },
		NextProtos:     []string{"h2"},
	}
}

// BrowserTLS is the TLS config of a replica's HTTPS page for browsers:
// the replica's certificate, no client certificate asked (browsers sign in
// with a session, controlplane/flowui), TLS 1.2 at least.
func BrowserTLS(cert *Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.get() },
	}
}

// ClientTLS is the TLS 1.3 config of a client of the control plane. It
// verifies the server's chain against roots and its host name, and that
// the server is a control-plane replica (a client certificate of the same
// CA cannot pose as one: it lacks the server usage and the replica URI).
// cert may be nil for a client that has none yet (Join).
func ClientTLS(roots *x509.CertPool, cert *Certificate) *tls.Config {
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		RootCAs:          roots,
		VerifyConnection: requirePeerKind(KindReplica),
	}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert.get() }
	}
	return cfg
}

// requirePeerKind checks, after chain verification, that the peer's
// certificate names a principal of kind k.
func requirePeerKind(k Kind) func(cs tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("peer presented no certificate, want a %s certificate", k)
		}
		p, err := FromCertificate(cs.PeerCertificates[0])
		if err != nil {
			return fmt.Errorf("peer certificate: %w", err)
		}
		if p.Kind != k {
			return fmt.Errorf("peer is %s, want a %s", p, k)
		}
		return nil
	}
}

// ReplicaTLS returns the server and client configs replicas use between
// themselves (the Raft transport): mutual, TLS 1.3, both sides must be
// replicas of the same CA.
func ReplicaTLS(roots *x509.CertPool, cert *Certificate) (server, client *tls.Config) {
	server = &tls.Config{
		MinVersion:       tls.VersionTLS13,
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        roots,
		GetCertificate:   func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.get() },
		VerifyConnection: requirePeerKind(KindReplica),
	}
	client = ClientTLS(roots, cert)
	return server, client
}

// CAPool reads a CA certificate file into a pool.
func CAPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	c, err := ca.ParseCertPEM(b)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate %s: %w", path, err)
	}
	p := x509.NewCertPool()
	p.AddCert(c)
	return p, nil
}
