package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestInitWritesKeyOwnerOnlyAndRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	c, err := Init(dir, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v, want 0600", st.Mode().Perm())
	}
	if c.Certificate().PublicKeyAlgorithm != x509.ECDSA || c.Certificate().PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Fatalf("CA key is not ECDSA P-256")
	}
	if _, err := Init(dir, "", 0); !errors.Is(err, ErrExists) {
		t.Fatalf("second Init: %v, want ErrExists", err)
	}
	loaded, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.CanSign() || !loaded.Certificate().Equal(c.Certificate()) {
		t.Fatalf("Load did not return the CA Init wrote")
	}
}

func TestLoadRejectsGroupReadableKey(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(dir, "", 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, KeyFile), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); !errors.Is(err, ErrInsecureKeyFile) {
		t.Fatalf("Load: %v, want ErrInsecureKeyFile", err)
	}
}

func TestLoadWithoutKeyVerifiesButCannotSign(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(dir, "", 0); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, KeyFile))
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Issue(Leaf{ID: mustURL(t, "spiffe://fedmesh/admin")}); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Issue without key: %v, want ErrNoKey", err)
	}
}

func TestReplicaCertificateServesAndDials(t *testing.T) {
	c, err := Init(t.TempDir(), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := c.Issue(Leaf{ID: mustURL(t, "spiffe://fedmesh/controlplane/cp1"), Usage: UsageReplica,
		IPs: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"cp1.fedmesh.internal"}})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: c.Pool(), KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Fatalf("verify for usage %v: %v", u, err)
		}
	}
	if err := cert.VerifyHostname("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := cert.VerifyHostname("cp1.fedmesh.internal"); err != nil {
		t.Fatal(err)
	}
}

func TestSignCSRTakesIdentityFromCallerNotRequest(t *testing.T) {
	c, err := Init(t.TempDir(), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs: []*url.URL{mustURL(t, "spiffe://fedmesh/admin")}, DNSNames: []string{"evil"},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := c.SignCSR(csr, mustURL(t, "spiffe://fedmesh/cluster/a/syncer"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://fedmesh/cluster/a/syncer" || len(cert.DNSNames) != 0 {
		t.Fatalf("cert names %v %v, want only the syncer URI", cert.URIs, cert.DNSNames)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Fatalf("client cert usages %v", cert.ExtKeyUsage)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: c.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatal("a client certificate verified as a server certificate")
	}
}

func TestLeafDoesNotOutliveCA(t *testing.T) {
	c, err := Init(t.TempDir(), "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := c.Issue(Leaf{ID: mustURL(t, "spiffe://fedmesh/admin"), Lifetime: 1000 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := ParseCertPEM(certPEM)
	if cert.NotAfter.After(c.Certificate().NotAfter) {
		t.Fatalf("leaf expires %v after its CA %v", cert.NotAfter, c.Certificate().NotAfter)
	}
}

func TestSignRejectsOtherKeyTypes(t *testing.T) {
	c, err := Init(t.TempDir(), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	k384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, _, err := c.Sign(&k384.PublicKey, Leaf{ID: mustURL(t, "spiffe://fedmesh/admin")}); err == nil {
		t.Fatal("signed a P-384 key")
	}
}
