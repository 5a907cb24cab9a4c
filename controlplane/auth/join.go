package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// TokenLedger records that a join token was used.
//
// Called by the AuthService's Join handler, from gRPC goroutines,
// concurrently; it may block (on the control plane it waits for a Raft
// commit) and must honour ctx. Consume must be linearizable across every
// replica: of any number of concurrent or later calls with the same id, on
// any replicas, exactly one returns nil and the others ErrTokenUsed. A
// ledger may forget an id once expires has passed: such a token no longer
// verifies anyway.
//
// On the control plane this is a Raft command (see the package README for
// what the store must add): the used-token record is replicated, so a token
// presented to two replicas is still accepted only once.
type TokenLedger interface {
	Consume(ctx context.Context, id [16]byte, expires time.Time) error
}

// MemoryLedger is a TokenLedger for a single process (tests, single-replica
// development). Safe for concurrent use.
type MemoryLedger struct {
	mu   sync.Mutex
	used map[[16]byte]time.Time
	now  func() time.Time
}

// NewMemoryLedger returns an empty ledger reading time from now.
func NewMemoryLedger(now func() time.Time) *MemoryLedger {
	if now == nil {
		now = time.Now
	}
	return &MemoryLedger{used: map[[16]byte]time.Time{}, now: now}
}

// Consume implements TokenLedger.
func (l *MemoryLedger) Consume(_ context.Context, id [16]byte, expires time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for k, exp := range l.used {
		if now.After(exp) {
			delete(l.used, k)
		}
	}
	if _, ok := l.used[id]; ok {
		return ErrTokenUsed
	}
	l.used[id] = expires
	return nil
}

// AuthService serves fedmeshv1.AuthService: join tokens, their exchange for
// a certificate, and certificate renewal. Authorization (who may create
// tokens, who may renew) is the Guard's; the handlers check the token.
type AuthService struct {
	fedmeshv1.UnimplementedAuthServiceServer
	ca       *ca.CA
	ledger   TokenLedger
	now      func() time.Time
	certLife time.Duration
}

// AuthOption configures an AuthService.
type AuthOption func(*AuthService)

// WithAuthClock injects the clock (tests).
func WithAuthClock(now func() time.Time) AuthOption { return func(s *AuthService) { s.now = now } }

// WithCertLifetime sets the lifetime of issued client certificates.
func WithCertLifetime(d time.Duration) AuthOption { return func(s *AuthService) { s.certLife = d } }

// NewAuthService serves tokens signed by, and certificates issued by, c.
func NewAuthService(c *ca.CA, ledger TokenLedger, opts ...AuthOption) *AuthService {
	s := &AuthService{ca: c, ledger: ledger, now: time.Now, certLife: ca.DefaultClientLifetime}
	for _, o := range opts {
		o(s)
	}
	return s
}

// CreateJoinToken implements fedmeshv1.AuthServiceServer.
func (s *AuthService) CreateJoinToken(_ context.Context, req *fedmeshv1.CreateJoinTokenRequest) (*fedmeshv1.CreateJoinTokenResponse, error) {
	ttl := DefaultTokenTTL
	if req.GetTtl() != nil {
		ttl = req.GetTtl().AsDuration()
	}
	if ttl <= 0 || ttl > MaxTokenTTL {
		return nil, status.Errorf(codes.InvalidArgument, "ttl %v: must be positive and at most %v", ttl, MaxTokenTTL)
	}
	tok, t, err := NewToken(s.ca.Signer(), req.GetCluster(), req.GetNode(), s.now().Add(ttl))
	if err != nil {
		if errors.Is(err, ErrBadPrincipal) {
			return nil, status.Errorf(codes.InvalidArgument, "%v", err)
		}
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	return &fedmeshv1.CreateJoinTokenResponse{Token: tok, Principal: t.Principal().String(), ExpireTime: timestamppb.New(t.Expires)}, nil
}

// Join implements fedmeshv1.AuthServiceServer: the CSR is checked before the
// token is consumed, so a malformed request does not burn the token.
func (s *AuthService) Join(ctx context.Context, req *fedmeshv1.JoinRequest) (*fedmeshv1.JoinResponse, error) {
	caKey, ok := s.ca.Certificate().PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, status.Error(codes.Internal, "CA key is not ECDSA")
	}
	t, err := VerifyToken(req.GetToken(), caKey, s.now())
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "join: %v", err)
	}
	if err := checkCSR(req.GetCsr()); err != nil {
		return nil, err
	}
	if !s.ca.CanSign() {
		return nil, status.Error(codes.FailedPrecondition, "join: this replica has no CA key to sign with; copy ca.key into its data dir or join through another replica")
	}
	if err := s.ledger.Consume(ctx, t.ID, t.Expires); err != nil {
		if errors.Is(err, ErrTokenUsed) {
			return nil, status.Errorf(codes.Unauthenticated, "join: %v (token %s); ask an admin for a new one", err, hex.EncodeToString(t.ID[:4]))
		}
		return nil, status.Errorf(status.Code(err), "join: record token use: %v", err)
	}
	p := t.Principal()
	_, certPEM, err := s.ca.SignCSR(req.GetCsr(), p.URI(), s.certLife)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "join: %v", err)
	}
	return &fedmeshv1.JoinResponse{Certificate: certPEM, CaCertificate: s.ca.CertPEM(), Principal: p.String()}, nil
}

// RenewCertificate implements fedmeshv1.AuthServiceServer: the new
// certificate names the caller's own principal, nothing else.
func (s *AuthService) RenewCertificate(ctx context.Context, req *fedmeshv1.RenewCertificateRequest) (*fedmeshv1.RenewCertificateResponse, error) {
	p, ok := PrincipalFrom(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "renew: no authenticated principal")
	}
	if err := checkCSR(req.GetCsr()); err != nil {
		return nil, err
	}
	if !s.ca.CanSign() {
		return nil, status.Error(codes.FailedPrecondition, "renew: this replica has no CA key to sign with")
	}
	_, certPEM, err := s.ca.SignCSR(req.GetCsr(), p.URI(), s.certLife)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "renew: %v", err)
	}
	return &fedmeshv1.RenewCertificateResponse{Certificate: certPEM, CaCertificate: s.ca.CertPEM()}, nil
}

func checkCSR(der []byte) error {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return status.Errorf(codes.InvalidArgument, "csr signature: %v", err)
	}
	if _, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok {
		return status.Errorf(codes.InvalidArgument, "csr key is %T; use ECDSA P-256", csr.PublicKey)
	}
	return nil
}

// JoinWithToken is the client side of Join: it makes a key, exchanges the
// token for a certificate and returns the PEM pair.
func JoinWithToken(ctx context.Context, c fedmeshv1.AuthServiceClient, token string) (certPEM, keyPEM []byte, err error) {
	csr, keyPEM, err := ca.NewCSR()
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.Join(ctx, &fedmeshv1.JoinRequest{Token: token, Csr: csr})
	if err != nil {
		return nil, nil, fmt.Errorf("join the control plane: %w", err)
	}
	return resp.GetCertificate(), keyPEM, nil
}

// Renew is the client side of RenewCertificate: it makes a new key, gets it
// certified for the caller's principal and swaps it into cert, so the next
// handshakes use it while open connections and streams go on.
func Renew(ctx context.Context, c fedmeshv1.AuthServiceClient, cert *Certificate) (certPEM, keyPEM []byte, err error) {
	csr, keyPEM, err := ca.NewCSR()
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.RenewCertificate(ctx, &fedmeshv1.RenewCertificateRequest{Csr: csr})
	if err != nil {
		return nil, nil, fmt.Errorf("renew certificate: %w", err)
	}
	if err := cert.Set(resp.GetCertificate(), keyPEM); err != nil {
		return nil, nil, fmt.Errorf("renew certificate: %w", err)
	}
	return resp.GetCertificate(), keyPEM, nil
}
