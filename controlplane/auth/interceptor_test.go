package auth

// These tests run the Guard's interceptors and TLS configs on a real
// grpc.Server with real certificates, serving the generated fedmeshv1
// services through a recorder that only notes which calls reached it.
// They test the security edge, not the control plane behind it.

import (
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func endpointOf(cluster string) *fedmeshv1.UpsertEndpointsRequest {
	return &fedmeshv1.UpsertEndpointsRequest{Cluster: cluster, Endpoints: []*fedmeshv1.Endpoint{{Cluster: cluster, Namespace: "ns", Name: "pod", Ips: []string{"10.0.0.1"}}}}
}

func wantCode(t *testing.T, err error, code codes.Code, substr string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("error %v: code %v, want %v", err, status.Code(err), code)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("error %q does not say %q", err, substr)
	}
}

func TestGuardAuthorizesByCertificatePrincipal(t *testing.T) {
	k := newPKI(t)
	addr, rec := serveRecorder(t, k, false)
	syncerA := fedmeshv1.NewEndpointServiceClient(dial(t, addr, k.pool(), k.cert(Syncer("a"))))
	ctx := ctxT(t)

	_, err := syncerA.UpsertEndpoints(ctx, endpointOf("b"))
	wantCode(t, err, codes.PermissionDenied, `target cluster "b" is not the syncer's own cluster "a"`)
	if len(rec.Calls()) != 0 {
		t.Fatalf("a denied call reached the service: %v", rec.Calls())
	}
	if _, err := syncerA.UpsertEndpoints(ctx, endpointOf("a")); err != nil {
		t.Fatal(err)
	}
	if got := rec.Calls(); len(got) != 1 || got[0] != "UpsertEndpoints by spiffe://fedmesh/cluster/a/syncer" {
		t.Fatalf("calls %v", got)
	}

	node := dial(t, addr, k.pool(), k.cert(Node("a", "n1")))
	_, err = fedmeshv1.NewPolicyServiceClient(node).ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Cluster: "a",
		Policies: []*fedmeshv1.Policy{{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Namespace: "ns", Name: "p"}}})
	wantCode(t, err, codes.PermissionDenied, "only an admin or the cluster's own syncer")
	if _, err := fedmeshv1.NewNodeServiceClient(node).ReportNodeStatus(ctx, &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "n1"}); err != nil {
		t.Fatal(err)
	}
	_, err = fedmeshv1.NewNodeServiceClient(node).ReportNodeStatus(ctx, &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "n2"})
	wantCode(t, err, codes.PermissionDenied, "not the agent's own node")
}

func TestGuardRejectsBadCredentials(t *testing.T) {
	k := newPKI(t)
	other := newPKI(t)
	strict, _ := serveRecorder(t, k, false)
	joinable, rec := serveRecorder(t, k, true)
	ctx := ctxT(t)

	tests := []struct {
		name   string
		addr   string
		cert   *Certificate
		code   codes.Code
		substr string
	}{
		{"no certificate on an mTLS-only listener", strict, nil, codes.Unavailable, "certificate required"},
		{"no certificate on a listener that allows joining", joinable, nil, codes.Unauthenticated, "no client certificate presented"},
		{"an expired certificate", strict, k.expiredCert(Syncer("a")), codes.Unavailable, "expired certificate"},
		{"a certificate of another CA", strict, other.cert(Syncer("a")), codes.Unavailable, "unknown certificate authority"},
		{"a certificate of another CA where joining is allowed", joinable, other.cert(Syncer("a")), codes.Unavailable, "unknown certificate authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fedmeshv1.NewEndpointServiceClient(dial(t, tt.addr, k.pool(), tt.cert))
			_, err := c.UpsertEndpoints(ctx, endpointOf("a"))
			if tt.code == codes.Unavailable && status.Code(err) == codes.Unavailable && !strings.Contains(err.Error(), tt.substr) {
				// TLS 1.3: the server checks the client certificate after
				// the client's handshake finished, so the client may see
				// its write fail before it reads the server's alert.
				t.Logf("rejected at the TLS layer, alert not read: %v", err)
				return
			}
			wantCode(t, err, tt.code, tt.substr)
		})
	}
	if len(rec.Calls()) != 0 {
		t.Fatalf("rejected calls reached the service: %v", rec.Calls())
	}
	// Joining needs no certificate.
	if _, err := fedmeshv1.NewAuthServiceClient(dial(t, joinable, k.pool(), nil)).Join(ctx, &fedmeshv1.JoinRequest{}); err != nil {
		t.Fatalf("Join without a certificate: %v", err)
	}
}

func TestGuardRejectsCertificateThatExpiredAfterHandshake(t *testing.T) {
	k := newPKI(t)
	later := time.Now().Add(48 * time.Hour)
	addr, _ := serveRecorder(t, k, false, WithGuardClock(func() time.Time { return later }))
	c := fedmeshv1.NewEndpointServiceClient(dial(t, addr, k.pool(), k.cert(Syncer("a"))))
	_, err := c.UpsertEndpoints(ctxT(t), endpointOf("a"))
	wantCode(t, err, codes.Unauthenticated, "client certificate expired")
}

func TestClientRefusesServerWithoutReplicaCertificate(t *testing.T) {
	k := newPKI(t)
	// A certificate of the right CA with server usage but an admin's
	// identity: chain and host name verify, the principal does not.
	certPEM, keyPEM, err := k.ca.Issue(ca.Leaf{ID: Admin().URI(), Usage: ca.UsageReplica, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	impostor, err := NewCertificate(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	s := grpc.NewServer(append(NewGuard().ServerOptions(), grpc.Creds(credentials.NewTLS(ServerTLS(k.pool(), impostor, false))))...)
	fedmeshv1.RegisterEndpointServiceServer(s, rec)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	c := fedmeshv1.NewEndpointServiceClient(dial(t, lis.Addr().String(), k.pool(), k.cert(Syncer("a"))))
	_, err = c.UpsertEndpoints(ctxT(t), endpointOf("a"))
	wantCode(t, err, codes.Unavailable, "want a replica")
}

func TestForwardedCallIsAuthorizedAsOriginalCaller(t *testing.T) {
	k := newPKI(t)
	addr, rec := serveRecorder(t, k, false)
	ctx := ctxT(t)
	// The replica's outgoing connection, with the forwarding interceptors.
	replica := fedmeshv1.NewEndpointServiceClient(dial(t, addr, k.pool(), k.cert(Replica("cp2")), ForwardingDialOptions()...))

	// Without a caller in ctx the replica is itself the principal, and a
	// replica does not write federation objects on its own.
	_, err := replica.UpsertEndpoints(ctx, endpointOf("a"))
	wantCode(t, err, codes.PermissionDenied, "replica spiffe://fedmesh/controlplane/cp2")

	// A header smuggled by the caller is replaced by the caller's
	// authenticated principal.
	asSyncerA := WithPrincipal(metadata.NewOutgoingContext(ctx, metadata.Pairs(OnBehalfOfKey, Admin().String())), Syncer("a"))
	_, err = replica.UpsertEndpoints(asSyncerA, endpointOf("b"))
	wantCode(t, err, codes.PermissionDenied, "syncer spiffe://fedmesh/cluster/a/syncer")
	if _, err := replica.UpsertEndpoints(asSyncerA, endpointOf("a")); err != nil {
		t.Fatal(err)
	}
	if got := rec.Calls(); len(got) != 1 || got[0] != "UpsertEndpoints by spiffe://fedmesh/cluster/a/syncer" {
		t.Fatalf("calls %v", got)
	}

	// Only replicas may speak for someone else.
	syncer := fedmeshv1.NewEndpointServiceClient(dial(t, addr, k.pool(), k.cert(Syncer("a"))))
	_, err = syncer.UpsertEndpoints(metadata.AppendToOutgoingContext(ctx, OnBehalfOfKey, Admin().String()), endpointOf("b"))
	wantCode(t, err, codes.PermissionDenied, "only control-plane replicas act on behalf")
}

func TestWatchStreamIsAuthorized(t *testing.T) {
	k := newPKI(t)
	addr, rec := serveRecorder(t, k, false)
	ctx := ctxT(t)
	w, err := fedmeshv1.NewWatchServiceClient(dial(t, addr, k.pool(), k.cert(Node("a", "n1")))).Watch(ctx, &fedmeshv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatalf("node agent watch: %v", err)
	}
	w, err = fedmeshv1.NewWatchServiceClient(dial(t, addr, k.pool(), k.cert(Replica("cp9")))).Watch(ctx, &fedmeshv1.WatchRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	wantCode(t, err, codes.PermissionDenied, "on a caller's behalf")
	if got := rec.Calls(); len(got) != 1 {
		t.Fatalf("calls %v", got)
	}
}

func TestGuardLimitsRateAndMessageSizePerPrincipal(t *testing.T) {
	k := newPKI(t)
	lim := DefaultLimits()
	lim.Rate[KindNode] = Limit{Rate: 0.001, Burst: 3}
	lim.MaxMessage[KindNode] = 1024
	addr, _ := serveRecorder(t, k, false, WithLimits(lim))
	ctx := ctxT(t)
	n1 := fedmeshv1.NewNodeServiceClient(dial(t, addr, k.pool(), k.cert(Node("a", "n1"))))
	n2 := fedmeshv1.NewNodeServiceClient(dial(t, addr, k.pool(), k.cert(Node("a", "n2"))))
	report := func(c fedmeshv1.NodeServiceClient, name string, msg string) error {
		_, err := c.ReportNodeStatus(ctx, &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: name, Status: &fedmeshv1.NodeStatus{Message: msg}})
		return err
	}
	wantCode(t, report(n1, "n1", strings.Repeat("x", 2000)), codes.ResourceExhausted, "exceeds the 1024 bytes a node may send")
	for i := 0; i < 2; i++ {
		if err := report(n1, "n1", "ok"); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	wantCode(t, report(n1, "n1", "ok"), codes.ResourceExhausted, "rate limit of spiffe://fedmesh/cluster/a/node/n1 exceeded")
	// Another principal has its own bucket.
	if err := report(n2, "n2", "ok"); err != nil {
		t.Fatalf("n2 starved by n1: %v", err)
	}
}

func TestRateLimiterRefills(t *testing.T) {
	r := newRateLimiter()
	t0 := time.Unix(1000, 0)
	lim := Limit{Rate: 10, Burst: 2}
	for i, tc := range []struct {
		at   time.Duration
		want bool
	}{{0, true}, {0, true}, {0, false}, {50 * time.Millisecond, false}, {100 * time.Millisecond, true}, {100 * time.Millisecond, false}, {time.Hour, true}, {time.Hour, true}, {time.Hour, false}} {
		if ok, _ := r.allow("k", lim, t0.Add(tc.at)); ok != tc.want {
			t.Fatalf("step %d at %v: allowed=%v, want %v", i, tc.at, ok, tc.want)
		}
	}
}
