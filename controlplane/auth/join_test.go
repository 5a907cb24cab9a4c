package auth

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// fakeClock is a settable clock shared by the server's components.
type fakeClock struct{ ns atomic.Int64 }

func newClock() *fakeClock               { c := &fakeClock{}; c.ns.Store(time.Now().UnixNano()); return c }
func (c *fakeClock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) add(d time.Duration) { c.ns.Add(int64(d)) }

// joinServer is a real gRPC server with the Guard, the real AuthService
// (memory ledger) and the recording fedmesh services behind it.
func joinServer(t *testing.T, k *testPKI, clk *fakeClock) (string, *recorder) {
	t.Helper()
	as := NewAuthService(k.ca, NewMemoryLedger(clk.now), WithAuthClock(clk.now), WithCertLifetime(time.Hour))
	return serveWith(t, k, true, as)
}

func createToken(t *testing.T, addr string, k *testPKI, cluster, node string, ttl time.Duration) string {
	t.Helper()
	resp, err := fedmeshv1.NewAuthServiceClient(dial(t, addr, k.pool(), k.cert(Admin()))).CreateJoinToken(ctxT(t),
		&fedmeshv1.CreateJoinTokenRequest{Cluster: cluster, Node: node, Ttl: durationpb.New(ttl)})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetToken()
}

func TestJoinTokenIsExchangedOnceForAScopedCertificate(t *testing.T) {
	k := newPKI(t)
	clk := newClock()
	addr, rec := joinServer(t, k, clk)
	ctx := ctxT(t)
	tok := createToken(t, addr, k, "a", "", time.Minute)
	anon := fedmeshv1.NewAuthServiceClient(dial(t, addr, k.pool(), nil))

	certPEM, keyPEM, err := JoinWithToken(ctx, anon, tok)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := NewCertificate(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := cert.Principal(); p != Syncer("a") {
		t.Fatalf("joined as %v, want syncer of a", p)
	}
	syncer := fedmeshv1.NewEndpointServiceClient(dial(t, addr, k.pool(), cert))
	if _, err := syncer.UpsertEndpoints(ctx, endpointOf("a")); err != nil {
		t.Fatal(err)
	}
	_, err = syncer.UpsertEndpoints(ctx, endpointOf("b"))
	wantCode(t, err, codes.PermissionDenied, "not the syncer's own cluster")

	_, _, err = JoinWithToken(ctx, anon, tok)
	wantCode(t, errors.Unwrap(err), codes.Unauthenticated, "join token already used")
	if n := len(rec.Calls()); n != 1 {
		t.Fatalf("%d calls reached the service, want 1", n)
	}
}

func TestJoinRejectsBadTokens(t *testing.T) {
	k := newPKI(t)
	other := newPKI(t)
	clk := newClock()
	addr, _ := joinServer(t, k, clk)
	otherAddr, _ := joinServer(t, other, clk)
	ctx := ctxT(t)
	anon := fedmeshv1.NewAuthServiceClient(dial(t, addr, k.pool(), nil))

	expiring := createToken(t, addr, k, "a", "n1", time.Minute)
	forged := createToken(t, otherAddr, other, "a", "", time.Minute)
	clk.add(time.Minute)

	for _, tc := range []struct {
		name, token, substr string
	}{
		{"expired", expiring, "join token expired"},
		{"signed by another CA", forged, "signature does not verify"},
		{"not a token", "hello", "malformed join token"},
		{"empty", "", "malformed join token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := JoinWithToken(ctx, anon, tc.token)
			wantCode(t, errors.Unwrap(err), codes.Unauthenticated, tc.substr)
		})
	}
}

func TestJoinDoesNotBurnTokenOnBadCSR(t *testing.T) {
	k := newPKI(t)
	addr, _ := joinServer(t, k, newClock())
	ctx := ctxT(t)
	tok := createToken(t, addr, k, "a", "n1", time.Minute)
	anon := fedmeshv1.NewAuthServiceClient(dial(t, addr, k.pool(), nil))
	_, err := anon.Join(ctx, &fedmeshv1.JoinRequest{Token: tok, Csr: []byte("junk")})
	wantCode(t, err, codes.InvalidArgument, "csr")
	certPEM, keyPEM, err := JoinWithToken(ctx, anon, tok)
	if err != nil {
		t.Fatalf("token burnt by a bad CSR: %v", err)
	}
	cert, _ := NewCertificate(certPEM, keyPEM)
	if p, _ := cert.Principal(); p != Node("a", "n1") {
		t.Fatalf("joined as %v", p)
	}
}

func TestOnlyAdminsCreateTokens(t *testing.T) {
	k := newPKI(t)
	addr, _ := joinServer(t, k, newClock())
	c := fedmeshv1.NewAuthServiceClient(dial(t, addr, k.pool(), k.cert(Syncer("a"))))
	_, err := c.CreateJoinToken(ctxT(t), &fedmeshv1.CreateJoinTokenRequest{Cluster: "a", Node: "n1"})
	wantCode(t, err, codes.PermissionDenied, "only an admin may")
}

func TestConcurrentJoinsWithOneTokenSucceedOnce(t *testing.T) {
	k := newPKI(t)
	addr, _ := joinServer(t, k, newClock())
	tok := createToken(t, addr, k, "a", "", time.Minute)
	anon := fedmeshv1.NewAuthServiceClient(dial(t, addr, k.pool(), nil))
	var wg sync.WaitGroup
	var ok atomic.Int32
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := JoinWithToken(context.Background(), anon, tok); err == nil {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Fatalf("%d joins succeeded with one token, want 1", ok.Load())
	}
}

func TestRenewalKeepsWatchStreamAndNextHandshakeUsesNewCertificate(t *testing.T) {
	k := newPKI(t)
	addr, rec := joinServer(t, k, newClock())
	ctx := ctxT(t)
	cert := k.cert(Node("a", "n1"))
	old := cert.Leaf().SerialNumber.String()
	cc := dial(t, addr, k.pool(), cert)
	w, err := fedmeshv1.NewWatchServiceClient(cc).Watch(ctx, &fedmeshv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Renew(ctx, fedmeshv1.NewAuthServiceClient(cc), cert); err != nil {
		t.Fatal(err)
	}
	if cert.Leaf().SerialNumber.String() == old {
		t.Fatal("certificate not replaced")
	}
	for i := 0; i < 3; i++ {
		if _, err := w.Recv(); err != nil {
			t.Fatalf("watch stream broke by renewal: %v", err)
		}
	}
	fresh := fedmeshv1.NewNodeServiceClient(dial(t, addr, k.pool(), cert))
	if _, err := fresh.ReportNodeStatus(ctx, &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "n1"}); err != nil {
		t.Fatal(err)
	}
	if got := rec.lastSerial(); got != cert.Leaf().SerialNumber.String() {
		t.Fatalf("new connection presented serial %s, want the renewed %s", got, cert.Leaf().SerialNumber)
	}
}
