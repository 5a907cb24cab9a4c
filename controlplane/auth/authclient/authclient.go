// Package authclient owns the credentials of the control plane's
// long-running clients (fedmesh-syncer, fedmesh-agent): resolving their TLS
// flags into an mTLS dial option, exchanging a join token once for a
// certificate stored (0600) in the client's state dir, and rotating that
// certificate before it expires without closing the connections and watch
// streams that use it.
//
// The rules, in order:
//   - --insecure-dev alone means plaintext (development); with any TLS flag
//     it is an error.
//   - Otherwise a CA is required (--ca-file, or ca.crt in --tls-dir).
//   - A certificate comes from --cert-file/--key-file (or client.crt and
//     client.key in --tls-dir), or from the state dir where an earlier join
//     stored it, or from --join-token, exchanged once through
//     AuthService.Join. A stored certificate that still verifies wins over
//     the token, so a restart with the same (now used) token keeps working.
package authclient

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// File names inside a --tls-dir.
const (
	TLSDirCA   = "ca.crt"
	TLSDirCert = "client.crt"
	TLSDirKey  = "client.key"
)

// ErrNoCredentials is returned when neither TLS credentials nor
// --insecure-dev were given.
var ErrNoCredentials = errors.New("no control-plane credentials: give --ca-file with --cert-file and --key-file (or --tls-dir), or --join-token with --ca-file to obtain a certificate; --insecure-dev only against a development control plane")

// Flags are a client's credential flags.
type Flags struct {
	InsecureDev bool
	TLSDir      string
	CAFile      string
	CertFile    string
	KeyFile     string
	JoinToken   string
	// JoinTokenFile holds the token instead (a mounted Secret): read when
	// a join is needed, so a missing file is no error while a stored
	// certificate is usable.
	JoinTokenFile string
}

// AddFlags registers the credential flags on fs.
func (f *Flags) AddFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&f.InsecureDev, "insecure-dev", false, "talk to the control plane without TLS (development only; excludes the TLS flags)")
	fs.StringVar(&f.TLSDir, "tls-dir", "", "directory holding ca.crt, client.crt and client.key")
	fs.StringVar(&f.CAFile, "ca-file", "", "CA certificate verifying the control plane (default <tls-dir>/ca.crt)")
	fs.StringVar(&f.CertFile, "cert-file", "", "client certificate (default <tls-dir>/client.crt, or the one a join stored in the state dir)")
	fs.StringVar(&f.KeyFile, "key-file", "", "client key (default <tls-dir>/client.key, or the one a join stored in the state dir)")
	fs.StringVar(&f.JoinToken, "join-token", "", "single-use token from 'fedctl cluster register' or 'fedctl node token', exchanged once for a certificate kept in the state dir (needs --ca-file)")
	fs.StringVar(&f.JoinTokenFile, "join-token-file", "", "file holding the join token (a mounted Secret), read only when no usable certificate is stored; excludes --join-token")
}

// Config says where a joined certificate lives and whom it must name.
type Config struct {
	// StateDir holds <Name>.crt and <Name>.key after a join.
	StateDir string
	// Name is the file stem in StateDir ("agent", "syncer").
	Name string
	// Want is the principal the certificate must name (the client's
	// --cluster/--node); a mismatch is an error before anything runs.
	Want auth.Principal
	// Replicas are the control plane's host:port addresses, tried in
	// order for Join.
	Replicas []string
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Credentials are resolved client credentials.
type Credentials struct {
	// Insecure is plaintext (--insecure-dev); every other field is empty.
	Insecure bool
	Roots    *x509.CertPool
	Cert     *auth.Certificate
	// CertPath and KeyPath are where Cert is stored; rotation rewrites them.
	CertPath, KeyPath string
	// Joined reports that this run obtained Cert with the join token.
	Joined bool
}

// DialOption is the transport credentials for grpc.NewClient.
func (c *Credentials) DialOption() grpc.DialOption {
	if c.Insecure {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(c.Roots, c.Cert)))
}

// resolved is what the flags name, before any file is read.
type resolved struct {
	insecure          bool
	caFile            string
	certFile, keyFile string
	explicitCert      bool
	token             string
	tokenFile         string
}

// resolve checks the flags' combination; pure.
func resolve(f Flags, cfg Config) (resolved, error) {
	tlsGiven := f.TLSDir != "" || f.CAFile != "" || f.CertFile != "" || f.KeyFile != "" || f.JoinToken != "" || f.JoinTokenFile != ""
	if f.InsecureDev {
		if tlsGiven {
			return resolved{}, errors.New("--insecure-dev excludes --tls-dir, --ca-file, --cert-file, --key-file, --join-token and --join-token-file")
		}
		return resolved{insecure: true}, nil
	}
	if !tlsGiven {
		return resolved{}, ErrNoCredentials
	}
	if f.JoinToken != "" && f.JoinTokenFile != "" {
		return resolved{}, errors.New("give --join-token or --join-token-file, not both")
	}
	r := resolved{caFile: f.CAFile, certFile: f.CertFile, keyFile: f.KeyFile, token: f.JoinToken, tokenFile: f.JoinTokenFile}
	hasToken := r.token != "" || r.tokenFile != ""
	if f.TLSDir != "" {
		if r.caFile == "" {
			r.caFile = filepath.Join(f.TLSDir, TLSDirCA)
		}
		if r.certFile == "" && r.keyFile == "" && !hasToken {
			r.certFile, r.keyFile = filepath.Join(f.TLSDir, TLSDirCert), filepath.Join(f.TLSDir, TLSDirKey)
		}
	}
	if r.caFile == "" {
		return resolved{}, errors.New("no CA: give --ca-file (or --tls-dir holding ca.crt) to verify the control plane")
	}
	if (r.certFile == "") != (r.keyFile == "") {
		return resolved{}, errors.New("give --cert-file and --key-file together")
	}
	if r.certFile != "" {
		if r.token != "" {
			return resolved{}, errors.New("--join-token excludes --cert-file/--key-file: a joined certificate is kept in the state dir")
		}
		if r.tokenFile != "" {
			return resolved{}, errors.New("--join-token-file excludes --cert-file/--key-file: a joined certificate is kept in the state dir")
		}
		r.explicitCert = true
		return r, nil
	}
	if !hasToken {
		return resolved{}, ErrNoCredentials
	}
	if cfg.StateDir == "" {
		return resolved{}, errors.New("--join-token needs a state dir to keep the certificate in")
	}
	r.certFile = filepath.Join(cfg.StateDir, cfg.Name+".crt")
	r.keyFile = filepath.Join(cfg.StateDir, cfg.Name+".key")
	return r, nil
}

// Load resolves the flags into credentials, joining with the token when no
// usable certificate is stored yet.
func Load(ctx context.Context, f Flags, cfg Config) (*Credentials, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r, err := resolve(f, cfg)
	if err != nil {
		return nil, err
	}
	if r.insecure {
		return &Credentials{Insecure: true}, nil
	}
	roots, err := auth.CAPool(r.caFile)
	if err != nil {
		return nil, err
	}
	c := &Credentials{Roots: roots, CertPath: r.certFile, KeyPath: r.keyFile}
	cert, err := auth.LoadCertificate(r.certFile, r.keyFile)
	switch {
	case err == nil:
		if verr := usable(cert, roots, cfg.Now()); verr != nil {
			if r.explicitCert || (r.token == "" && r.tokenFile == "") {
				return nil, fmt.Errorf("certificate %s: %w", r.certFile, verr)
			}
			cfg.Logger.Warn("stored certificate is unusable; joining with the token", "cert", r.certFile, "err", verr)
			cert = nil
		} else if r.token != "" || r.tokenFile != "" {
			cfg.Logger.Info("using the certificate stored by an earlier join; the join token is not needed", "cert", r.certFile)
		}
	case r.explicitCert || !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	if cert == nil {
		if r.token == "" {
			b, err := os.ReadFile(r.tokenFile)
			if err != nil {
				return nil, fmt.Errorf("read join token: %w (no certificate is stored in %s yet: put a token from 'fedctl node token' or 'fedctl cluster register' there)", err, filepath.Dir(r.certFile))
			}
			if r.token = strings.TrimSpace(string(b)); r.token == "" {
				return nil, fmt.Errorf("read join token: %s is empty", r.tokenFile)
			}
		}
		certPEM, keyPEM, err := join(ctx, roots, cfg, r.token)
		if err != nil {
			return nil, err
		}
		if err := store(r.certFile, r.keyFile, certPEM, keyPEM); err != nil {
			return nil, err
		}
		if cert, err = auth.NewCertificate(certPEM, keyPEM); err != nil {
			return nil, fmt.Errorf("load joined certificate: %w", err)
		}
		c.Joined = true
		cfg.Logger.Info("joined the control plane", "cert", r.certFile, "expires", cert.Leaf().NotAfter)
	}
	p, err := cert.Principal()
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", r.certFile, err)
	}
	if p != cfg.Want {
		return nil, fmt.Errorf("certificate %s names %s, but the flags say this is %s; use the credentials (or a join token) of %s", r.certFile, p, cfg.Want, cfg.Want)
	}
	c.Cert = cert
	return c, nil
}

// usable reports why cert cannot be used now: expired, or not from roots.
func usable(cert *auth.Certificate, roots *x509.CertPool, now time.Time) error {
	l := cert.Leaf()
	if now.After(l.NotAfter) {
		return fmt.Errorf("expired at %s", l.NotAfter.UTC().Format(time.RFC3339))
	}
	if _, err := l.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("does not verify against the CA: %w", err)
	}
	return nil
}

// join exchanges token for a certificate, trying the replicas in order
// until one answers; a rejected token is final.
func join(ctx context.Context, roots *x509.CertPool, cfg Config, token string) (certPEM, keyPEM []byte, err error) {
	if len(cfg.Replicas) == 0 {
		return nil, nil, errors.New("join: no control-plane address")
	}
	creds := grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(roots, nil)))
	var errs []error
	for _, addr := range cfg.Replicas {
		cc, err := grpc.NewClient(addr, creds)
		if err != nil {
			return nil, nil, fmt.Errorf("join through %s: %w", addr, err)
		}
		jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		certPEM, keyPEM, err = auth.JoinWithToken(jctx, fedmeshv1.NewAuthServiceClient(cc), token)
		cancel()
		cc.Close()
		if err == nil {
			return certPEM, keyPEM, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		switch status.Code(err) {
		case codes.Unauthenticated, codes.InvalidArgument, codes.PermissionDenied:
			// The token itself is refused: another replica will say the same.
			return nil, nil, errors.Join(errs...)
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, nil, errors.Join(errs...)
}

// store writes the key pair, both 0600.
func store(certPath, keyPath string, certPEM, keyPEM []byte) error {
	if err := ca.WriteCredentials(certPath, keyPath, certPEM, keyPEM); err != nil {
		return fmt.Errorf("store certificate: %w", err)
	}
	if err := os.Chmod(certPath, 0o600); err != nil {
		return fmt.Errorf("store certificate: %w", err)
	}
	return nil
}

// Check validates the flags' combination without reading any file, so a
// command can report every flag error at once before it opens anything.
func Check(f Flags, cfg Config) error {
	_, err := resolve(f, cfg)
	return err
}
