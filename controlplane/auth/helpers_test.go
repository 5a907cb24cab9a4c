package auth

import (
	"context"
	"crypto/x509"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// testPKI is a real CA in a temp dir that issues real certificates.
type testPKI struct {
	t   *testing.T
	dir string
	ca  *ca.CA
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	c, err := ca.Init(dir, "test CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{t: t, dir: dir, ca: c}
}

func (k *testPKI) pool() *x509.CertPool { return k.ca.Pool() }

// cert issues a certificate for p; replicas get server usage and loopback
// SANs.
func (k *testPKI) cert(p Principal) *Certificate {
	k.t.Helper()
	return k.certWith(k.ca, p, 0)
}

func (k *testPKI) certWith(c *ca.CA, p Principal, lifetime time.Duration) *Certificate {
	k.t.Helper()
	l := ca.Leaf{ID: p.URI(), Lifetime: lifetime}
	if p.Kind == KindReplica {
		l.Usage = ca.UsageReplica
		l.IPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		l.DNSNames = []string{"localhost"}
	}
	certPEM, keyPEM, err := c.Issue(l)
	if err != nil {
		k.t.Fatal(err)
	}
	cert, err := NewCertificate(certPEM, keyPEM)
	if err != nil {
		k.t.Fatal(err)
	}
	return cert
}

// expiredCert is a certificate of this CA that expired a day ago.
func (k *testPKI) expiredCert(p Principal) *Certificate {
	k.t.Helper()
	past, err := ca.Load(k.dir, ca.WithClock(func() time.Time { return time.Now().Add(-48 * time.Hour) }))
	if err != nil {
		k.t.Fatal(err)
	}
	return k.certWith(past, p, time.Hour)
}

// recorder implements the fedmesh services by only recording which RPCs
// reached it, and with which principal. It is NOT the control plane: tests
// using it test the interceptors in front of a real grpc.Server, no more.
type recorder struct {
	fedmeshv1.UnimplementedEndpointServiceServer
	fedmeshv1.UnimplementedPolicyServiceServer
	fedmeshv1.UnimplementedNodeServiceServer
	fedmeshv1.UnimplementedWatchServiceServer
	fedmeshv1.UnimplementedAuthServiceServer

	mu      sync.Mutex
	calls   []string // "method by principal"
	serials []string // client certificate serials, in call order
}

func (r *recorder) record(ctx context.Context, m string) {
	p, _ := PrincipalFrom(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, m+" by "+p.String())
	if pr, ok := peer.FromContext(ctx); ok {
		if ti, ok := pr.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			r.serials = append(r.serials, ti.State.PeerCertificates[0].SerialNumber.String())
		}
	}
}

// lastSerial is the serial of the client certificate of the last call.
func (r *recorder) lastSerial() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.serials) == 0 {
		return ""
	}
	return r.serials[len(r.serials)-1]
}

func (r *recorder) Calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

func (r *recorder) UpsertEndpoints(ctx context.Context, _ *fedmeshv1.UpsertEndpointsRequest) (*fedmeshv1.UpsertEndpointsResponse, error) {
	r.record(ctx, "UpsertEndpoints")
	return &fedmeshv1.UpsertEndpointsResponse{Revision: 1}, nil
}

func (r *recorder) ApplyPolicies(ctx context.Context, _ *fedmeshv1.ApplyPoliciesRequest) (*fedmeshv1.ApplyPoliciesResponse, error) {
	r.record(ctx, "ApplyPolicies")
	return &fedmeshv1.ApplyPoliciesResponse{Revision: 1}, nil
}

func (r *recorder) ReportNodeStatus(ctx context.Context, _ *fedmeshv1.ReportNodeStatusRequest) (*fedmeshv1.ReportNodeStatusResponse, error) {
	r.record(ctx, "ReportNodeStatus")
	return &fedmeshv1.ReportNodeStatusResponse{Revision: 1}, nil
}

// Watch sends a progress message every 10ms until the client goes away.
func (r *recorder) Watch(_ *fedmeshv1.WatchRequest, s grpc.ServerStreamingServer[fedmeshv1.WatchResponse]) error {
	r.record(s.Context(), "Watch")
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for rev := uint64(1); ; rev++ {
		if err := s.Send(&fedmeshv1.WatchResponse{Revision: rev}); err != nil {
			return err
		}
		select {
		case <-s.Context().Done():
			return nil
		case <-tick.C:
		}
	}
}

func (r *recorder) Join(ctx context.Context, _ *fedmeshv1.JoinRequest) (*fedmeshv1.JoinResponse, error) {
	r.record(ctx, "Join")
	return &fedmeshv1.JoinResponse{}, nil
}

// serveRecorder starts a real gRPC server with TLS and the guard in front
// of a recorder, on loopback.
func serveRecorder(t *testing.T, k *testPKI, allowJoin bool, opts ...GuardOption) (string, *recorder) {
	t.Helper()
	return serveWith(t, k, allowJoin, nil, opts...)
}

// serveWith is serveRecorder with a real AuthService when as is not nil.
func serveWith(t *testing.T, k *testPKI, allowJoin bool, as *AuthService, opts ...GuardOption) (string, *recorder) {
	t.Helper()
	rec := &recorder{}
	srvCert := k.cert(Replica("cp1"))
	g := NewGuard(opts...)
	s := grpc.NewServer(append(g.ServerOptions(), grpc.Creds(credentials.NewTLS(ServerTLS(k.pool(), srvCert, allowJoin))))...)
	fedmeshv1.RegisterEndpointServiceServer(s, rec)
	fedmeshv1.RegisterPolicyServiceServer(s, rec)
	fedmeshv1.RegisterNodeServiceServer(s, rec)
	fedmeshv1.RegisterWatchServiceServer(s, rec)
	if as != nil {
		fedmeshv1.RegisterAuthServiceServer(s, as)
	} else {
		fedmeshv1.RegisterAuthServiceServer(s, rec)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String(), rec
}

// dial connects with cert (nil: none) trusting roots.
func dial(t *testing.T, addr string, roots *x509.CertPool, cert *Certificate, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, append(opts, grpc.WithTransportCredentials(credentials.NewTLS(ClientTLS(roots, cert))))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}
