package authclient

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Renewer is the one RPC rotation needs. fedmeshv1.AuthServiceClient
// satisfies it; a client with its own failover between replicas may too.
// Called from the Rotate goroutine only.
type Renewer interface {
	RenewCertificate(ctx context.Context, in *fedmeshv1.RenewCertificateRequest, opts ...grpc.CallOption) (*fedmeshv1.RenewCertificateResponse, error)
}

// RotateOptions tune Rotate.
type RotateOptions struct {
	Logger *slog.Logger
	// Now and After are the clock (default time.Now, time.After).
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
	// Retry is the first wait after a failed renewal, doubling up to
	// MaxRetry (defaults 2s and 1m).
	Retry, MaxRetry time.Duration
	// Renewed, if set, is called after each successful renewal (tests,
	// metrics).
	Renewed func()
}

// Rotate renews the certificate at its RenewAt (two thirds into its
// lifetime) until ctx ends, retrying failures with backoff. A renewed
// certificate is swapped into c.Cert, so the next TLS handshake uses it
// while open connections and the watch streams on them go on, and written
// to CertPath/KeyPath (0600), so a restart uses it. Does nothing for
// insecure credentials. Blocks; run it in its own goroutine.
func (c *Credentials) Rotate(ctx context.Context, r Renewer, o RotateOptions) {
	if c.Insecure || c.Cert == nil {
		return
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.After == nil {
		o.After = time.After
	}
	if o.Retry <= 0 {
		o.Retry = 2 * time.Second
	}
	if o.MaxRetry <= 0 {
		o.MaxRetry = time.Minute
	}
	retry := o.Retry
	wait := c.Cert.RenewAt().Sub(o.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.After(max(wait, 0)):
		}
		if err := c.renewOnce(ctx, r); err != nil {
			if ctx.Err() != nil {
				return
			}
			o.Logger.Warn("certificate renewal failed; retrying", "err", err, "retry_in", retry, "expires", c.Cert.Leaf().NotAfter)
			wait, retry = retry, min(retry*2, o.MaxRetry)
			continue
		}
		retry = o.Retry
		wait = c.Cert.RenewAt().Sub(o.Now())
		o.Logger.Info("certificate renewed", "expires", c.Cert.Leaf().NotAfter, "next_renewal", c.Cert.RenewAt())
		if o.Renewed != nil {
			o.Renewed()
		}
	}
}

// renewOnce gets a fresh key certified, stores it, then swaps it in.
func (c *Credentials) renewOnce(ctx context.Context, r Renewer) error {
	csr, keyPEM, err := ca.NewCSR()
	if err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := r.RenewCertificate(rctx, &fedmeshv1.RenewCertificateRequest{Csr: csr})
	if err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	if err := store(c.CertPath, c.KeyPath, resp.GetCertificate(), keyPEM); err != nil {
		return err
	}
	if err := c.Cert.Set(resp.GetCertificate(), keyPEM); err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	return nil
}
