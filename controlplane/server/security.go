package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	"github.com/fedmesh/fedmesh/controlplane/store"
)

// TLSConfig locates a replica's credentials. The CA is shared by operator
// copy (see controlplane/auth/README.md): CAFile is its certificate; when a
// ca.key (mode 0600) sits next to it, the replica also signs join and
// renewal requests.
type TLSConfig struct {
	CAFile   string
	CertFile string // replica certificate (fedctl ca issue-replica)
	KeyFile  string
}

// security is a replica's loaded credentials; nil when insecure.
type security struct {
	pool      *x509.CertPool
	cert      *auth.Certificate
	ca        *ca.CA
	allowJoin bool
}

func loadSecurity(c *TLSConfig) (*security, error) {
	pool, err := auth.CAPool(c.CAFile)
	if err != nil {
		return nil, err
	}
	cert, err := auth.LoadCertificate(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load replica certificate: %w", err)
	}
	if p, err := cert.Principal(); err != nil || p.Kind != auth.KindReplica {
		return nil, fmt.Errorf("certificate %s is not a replica certificate (%v %v); issue one with 'fedctl ca issue-replica'", c.CertFile, p, err)
	}
	s := &security{pool: pool, cert: cert}
	if filepath.Base(c.CAFile) == ca.CertFile {
		if s.ca, err = ca.Load(filepath.Dir(c.CAFile)); err != nil {
			return nil, err
		}
		s.allowJoin = s.ca.CanSign()
	}
	return s, nil
}

// dialCreds are the credentials a replica dials other replicas with.
func (s *security) dialOptions() []grpc.DialOption {
	if s == nil {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	return append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(s.pool, s.cert)))},
		auth.ForwardingDialOptions()...)
}

// raftLedger is auth.TokenLedger over the store: consuming a token is a
// Raft command, so a token is accepted once across every replica.
type raftLedger struct{ c *Core }

var _ auth.TokenLedger = raftLedger{}

func (l raftLedger) Consume(ctx context.Context, id [16]byte, expires time.Time) error {
	_, data, err := l.c.command(ctx, store.CmdConsumeJoinToken, store.ConsumeJoinTokenPayload(id, expires.UnixNano()))
	if err != nil {
		return err
	}
	_, err = l.c.proposeEncoded(ctx, data, nil)
	if errors.Is(err, store.ErrTokenUsed) || status.Code(err) == codes.AlreadyExists {
		return auth.ErrTokenUsed
	}
	return err
}
