// Package ca owns the fedmesh certificate authority: an ECDSA P-256 key and
// self-signed certificate kept in a replica's data dir, and the issuing of
// leaf certificates (replicas, admins, syncers, node agents) whose identity
// is a single SPIFFE-style URI SAN.
//
// Replicas share the CA by operator copy, not through Raft: a replica needs
// a certificate signed by the CA before it may speak Raft at all (the Raft
// transport is mTLS), so the CA cannot arrive through the log it protects;
// and a private key in the replicated log would also be in every snapshot,
// every raft.db and every backup of them. `fedctl ca init` writes the CA
// once; the operator copies ca.crt and ca.key into each replica's data dir
// (or only ca.crt on replicas that must not sign join requests).
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// File names inside a CA directory.
const (
	CertFile = "ca.crt"
	KeyFile  = "ca.key"
)

// Default lifetimes.
const (
	DefaultCALifetime      = 10 * 365 * 24 * time.Hour
	DefaultReplicaLifetime = 365 * 24 * time.Hour
	DefaultClientLifetime  = 24 * time.Hour
	// backdate tolerates clock skew between the CA and its verifiers.
	backdate = 5 * time.Minute
)

// ErrExists is returned by Init when the directory already holds a CA.
var ErrExists = errors.New("a CA already exists")

// ErrInsecureKeyFile is returned by Load when the key file is readable by
// anyone but its owner.
var ErrInsecureKeyFile = errors.New("CA key file is readable by group or others")

// CA is a loaded certificate authority. Safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey // nil when only the certificate was loaded
	now     func() time.Time
}

// Option configures a CA.
type Option func(*CA)

// WithClock makes the CA read time from now (tests).
func WithClock(now func() time.Time) Option { return func(c *CA) { c.now = now } }

// Init creates a new CA in dir: ca.key (0600) and ca.crt (0644). It refuses
// to overwrite an existing CA, because every certificate issued by the old
// one would stop verifying.
func Init(dir, name string, lifetime time.Duration, opts ...Option) (*CA, error) {
	if lifetime <= 0 {
		lifetime = DefaultCALifetime
	}
	for _, f := range []string{CertFile, KeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return nil, fmt.Errorf("init CA in %s: %w (remove %s and %s first to start over; every issued certificate becomes invalid)", dir, ErrExists, CertFile, KeyFile)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create CA dir %s: %w", dir, err)
	}
	c := &CA{now: time.Now}
	for _, o := range opts {
		o(c)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	if name == "" {
		name = "fedmesh CA"
	}
	now := c.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"fedmesh"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          keyID(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode CA key: %w", err)
	}
	// Key first, exclusively created with 0600 so it is never readable by
	// others, not even between create and chmod.
	if err := writeExclusive(filepath.Join(dir, KeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeExclusive(filepath.Join(dir, CertFile), certPEM, 0o644); err != nil {
		return nil, err
	}
	c.cert, _ = x509.ParseCertificate(der)
	c.certPEM = certPEM
	c.key = key
	return c, nil
}

func writeExclusive(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

// Load reads the CA of dir. The key is optional (a replica that only
// verifies needs ca.crt alone); when present it must be mode 0600 or
// stricter and match the certificate.
func Load(dir string, opts ...Option) (*CA, error) {
	c := &CA{now: time.Now}
	for _, o := range opts {
		o(c)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w (create one with 'fedctl ca init' and copy it into the data dir)", err)
	}
	if c.cert, err = ParseCertPEM(certPEM); err != nil {
		return nil, fmt.Errorf("parse CA certificate %s: %w", filepath.Join(dir, CertFile), err)
	}
	if !c.cert.IsCA {
		return nil, fmt.Errorf("load CA %s: certificate is not a CA", filepath.Join(dir, CertFile))
	}
	c.certPEM = certPEM
	keyPath := filepath.Join(dir, KeyFile)
	st, err := os.Stat(keyPath)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stat CA key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load CA key %s (mode %v): %w; run chmod 600 %s", keyPath, st.Mode().Perm(), ErrInsecureKeyFile, keyPath)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse CA key %s: %w", keyPath, err)
	}
	if !key.PublicKey.Equal(c.cert.PublicKey) {
		return nil, fmt.Errorf("load CA in %s: %s does not belong to %s", dir, KeyFile, CertFile)
	}
	c.key = key
	return c, nil
}

// Certificate is the CA certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// CertPEM is the CA certificate, PEM encoded.
func (c *CA) CertPEM() []byte { return c.certPEM }

// CanSign reports whether the CA's private key is loaded.
func (c *CA) CanSign() bool { return c.key != nil }

// Pool is a cert pool holding only this CA.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

// Signer is the CA private key, for signing join tokens; nil when only the
// certificate is loaded.
func (c *CA) Signer() crypto.Signer {
	if c.key == nil {
		return nil
	}
	return c.key
}

// Usage says what a leaf certificate may be used for.
type Usage int

// Usages.
const (
	// UsageClient is for callers: admins, syncers, node agents.
	UsageClient Usage = iota
	// UsageReplica is for control-plane replicas: they serve gRPC and Raft
	// and dial each other, so they are both TLS server and client.
	UsageReplica
)

// Leaf describes a certificate to issue.
type Leaf struct {
	// ID is the principal URI, the certificate's only URI SAN.
	ID *url.URL
	// Usage selects the extended key usages.
	Usage Usage
	// IPs and DNSNames are server SANs (UsageReplica only).
	IPs      []net.IP
	DNSNames []string
	Lifetime time.Duration
}

// ErrNoKey is returned when signing with a CA loaded without its key.
var ErrNoKey = errors.New("CA private key not loaded")

// Sign issues a certificate for pub as described by l. The identity comes
// only from l, never from whatever a CSR asked for.
func (c *CA) Sign(pub crypto.PublicKey, l Leaf) (*x509.Certificate, []byte, error) {
	if c.key == nil {
		return nil, nil, fmt.Errorf("sign certificate for %v: %w (copy %s into the data dir)", l.ID, ErrNoKey, KeyFile)
	}
	if l.ID == nil {
		return nil, nil, errors.New("sign certificate: no principal URI")
	}
	switch pub.(type) {
	case *ecdsa.PublicKey:
	default:
		// Ed25519 and RSA would verify too, but one key type keeps the
		// TLS configs and the audit simple.
		return nil, nil, fmt.Errorf("sign certificate for %v: key type %T not accepted; use ECDSA P-256", l.ID, pub)
	}
	if p := pub.(*ecdsa.PublicKey); p.Curve != elliptic.P256() {
		return nil, nil, fmt.Errorf("sign certificate for %v: curve %s not accepted; use P-256", l.ID, p.Curve.Params().Name)
	}
	lifetime := l.Lifetime
	if lifetime <= 0 {
		lifetime = DefaultClientLifetime
		if l.Usage == UsageReplica {
			lifetime = DefaultReplicaLifetime
		}
	}
	now := c.now()
	notAfter := now.Add(lifetime)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter // a leaf cannot outlive its CA
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial(),
		Subject:        pkix.Name{CommonName: l.ID.String()},
		NotBefore:      now.Add(-backdate),
		NotAfter:       notAfter,
		KeyUsage:       x509.KeyUsageDigitalSignature,
		URIs:           []*url.URL{l.ID},
		AuthorityKeyId: c.cert.SubjectKeyId,
	}
	switch l.Usage {
	case UsageReplica:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.IPAddresses = l.IPs
		tmpl.DNSNames = l.DNSNames
	default:
		if len(l.IPs) > 0 || len(l.DNSNames) > 0 {
			return nil, nil, fmt.Errorf("sign certificate for %v: client certificates carry no IP or DNS names", l.ID)
		}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate for %v: %w", l.ID, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse issued certificate: %w", err)
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// SignCSR checks a CSR's self-signature and issues a client certificate for
// its key with identity id. Everything else the CSR asks for is ignored.
func (c *CA) SignCSR(csrDER []byte, id *url.URL, lifetime time.Duration) (*x509.Certificate, []byte, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, nil, fmt.Errorf("parse certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, fmt.Errorf("check certificate request signature: %w", err)
	}
	return c.Sign(csr.PublicKey, Leaf{ID: id, Usage: UsageClient, Lifetime: lifetime})
}

// Issue generates a fresh key and a certificate for it, both PEM encoded.
// Used for replicas (operator-issued) and for admin credentials.
func (c *CA) Issue(l Leaf) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	_, certPEM, err = c.Sign(&key.PublicKey, l)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// NewCSR generates a P-256 key and a CSR for it; the CA ignores the CSR's
// subject, so it carries none.
func NewCSR() (csrDER, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	csrDER, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate request: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return csrDER, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteCredentials writes a certificate (0644) and key (0600) pair
// atomically: a reader never sees a new certificate with an old key.
func WriteCredentials(certPath, keyPath string, certPEM, keyPEM []byte) error {
	if err := writeAtomic(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return writeAtomic(certPath, certPEM, 0o644)
}

func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create dir of %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("create temp file for %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename into %s: %w", path, err)
	}
	return nil
}

// ParseCertPEM parses the first CERTIFICATE block.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no CERTIFICATE block")
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

// ParseKeyPEM parses a PKCS#8 or SEC1 ECDSA private key.
func ParseKeyPEM(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	switch blk.Type {
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, err
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("key is %T, want ECDSA", k)
		}
		return ek, nil
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", blk.Type)
	}
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("read random serial: %v", err)) // crypto/rand never fails on Linux
	}
	return n.Add(n, big.NewInt(1))
}

func keyID(pub *ecdsa.PublicKey) []byte {
	b, _ := x509.MarshalPKIXPublicKey(pub)
	s := sha256.Sum256(b)
	return s[:20]
}
