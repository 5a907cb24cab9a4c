package authclient_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/authclient"
	"github.com/fedmesh/fedmesh/controlplane/auth/authclient/tlstest"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	"github.com/fedmesh/fedmesh/controlplane/cptest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestMain(m *testing.M) { os.Exit(cptest.Main(m)) }

func dial(t *testing.T, cp *tlstest.ControlPlane, c *authclient.Credentials) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(cp.Addr, c.DialOption())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func registerCluster(t *testing.T, cp *tlstest.ControlPlane, name, cidr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := fedmeshv1.NewClusterServiceClient(cp.Admin).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
		Cluster: &fedmeshv1.Cluster{Name: name, PodCidrs: []string{cidr}}}); err != nil {
		t.Fatalf("register cluster %s: %v", name, err)
	}
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestJoinTokenIsExchangedOnceAndTheStoredCertificateServesRestarts(t *testing.T) {
	cp := tlstest.Start(t)
	registerCluster(t, cp, "east", "10.1.0.0/16")
	ctx := context.Background()
	tests := []struct {
		name string
		want auth.Principal
		node string
	}{
		{"syncer", auth.Syncer("east"), ""},
		{"agent", auth.Node("east", "n1"), "n1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := t.TempDir()
			flags := authclient.Flags{CAFile: cp.CAFile, JoinToken: cp.Token(t, "east", tt.node, time.Minute)}
			cfg := authclient.Config{StateDir: state, Name: tt.name, Want: tt.want, Replicas: []string{cp.Addr}}
			c, err := authclient.Load(ctx, flags, cfg)
			if err != nil {
				t.Fatalf("join: %v", err)
			}
			if !c.Joined {
				t.Fatal("first run did not join")
			}
			for _, f := range []string{tt.name + ".crt", tt.name + ".key"} {
				if m := mode(t, filepath.Join(state, f)); m != 0o600 {
					t.Errorf("%s mode %v, want 0600", f, m)
				}
			}
			if _, err := fedmeshv1.NewClusterServiceClient(dial(t, cp, c)).GetCluster(ctx, &fedmeshv1.GetClusterRequest{Name: "east"}); err != nil {
				t.Fatalf("read with the joined certificate: %v", err)
			}
			// A restart with the same (used) token reads the stored certificate.
			again, err := authclient.Load(ctx, flags, cfg)
			if err != nil {
				t.Fatalf("restart: %v", err)
			}
			if again.Joined || !again.Cert.Leaf().Equal(c.Cert.Leaf()) {
				t.Fatal("restart joined again instead of using the stored certificate")
			}
		})
	}
}

// TestJoinTokenFileIsReadOnlyWhenAJoinIsNeeded: a token mounted from a
// Secret (the Helm chart's agents and syncer) joins once; afterwards the
// stored certificate serves restarts, with the file gone or not.
func TestJoinTokenFileIsReadOnlyWhenAJoinIsNeeded(t *testing.T) {
	cp := tlstest.Start(t)
	registerCluster(t, cp, "east", "10.1.0.0/16")
	ctx := context.Background()
	state := t.TempDir()
	tokenFile := filepath.Join(t.TempDir(), "n1")
	cfg := authclient.Config{StateDir: state, Name: "agent", Want: auth.Node("east", "n1"), Replicas: []string{cp.Addr}}
	flags := authclient.Flags{CAFile: cp.CAFile, JoinTokenFile: tokenFile}
	if _, err := authclient.Load(ctx, flags, cfg); err == nil || !strings.Contains(err.Error(), "read join token") {
		t.Fatalf("no token file and no stored certificate: err = %v, want one saying it read no join token", err)
	}
	if err := os.WriteFile(tokenFile, []byte(cp.Token(t, "east", "n1", time.Minute)+"\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	c, err := authclient.Load(ctx, flags, cfg)
	if err != nil || !c.Joined {
		t.Fatalf("join with the token file: joined %v, err %v", c != nil && c.Joined, err)
	}
	if err := os.Remove(tokenFile); err != nil {
		t.Fatal(err)
	}
	again, err := authclient.Load(ctx, flags, cfg)
	if err != nil || again.Joined {
		t.Fatalf("restart without the token file: joined %v, err %v; want the stored certificate", again != nil && again.Joined, err)
	}
}

func TestJoinIsRefused(t *testing.T) {
	cp := tlstest.Start(t)
	ctx := context.Background()
	used := cp.Token(t, "east", "n1", time.Minute)
	if _, err := authclient.Load(ctx, authclient.Flags{CAFile: cp.CAFile, JoinToken: used},
		authclient.Config{StateDir: t.TempDir(), Name: "agent", Want: auth.Node("east", "n1"), Replicas: []string{cp.Addr}}); err != nil {
		t.Fatalf("first join: %v", err)
	}
	expired := cp.Token(t, "east", "n2", time.Second)
	time.Sleep(2100 * time.Millisecond)
	tests := []struct {
		name   string
		token  string
		want   auth.Principal
		errHas string
	}{
		{"reused token", used, auth.Node("east", "n1"), "already used"},
		{"expired token", expired, auth.Node("east", "n2"), "expired"},
		{"token of another node", cp.Token(t, "east", "n3", time.Minute), auth.Node("east", "n1"), "names spiffe://fedmesh/cluster/east/node/n3"},
		{"garbage", "fmjt1.AAAA.BBBB", auth.Node("east", "n1"), "malformed join token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := authclient.Load(ctx, authclient.Flags{CAFile: cp.CAFile, JoinToken: tt.token},
				authclient.Config{StateDir: t.TempDir(), Name: "agent", Want: tt.want, Replicas: []string{cp.Addr}})
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("err = %v, want one containing %q", err, tt.errHas)
			}
		})
	}
}

func TestRotationRenewsBeforeExpiryWithoutDroppingTheWatch(t *testing.T) {
	cp := tlstest.Start(t)
	dir := t.TempDir()
	// A certificate that expires 4s from now: renewal is due at once.
	certPEM, keyPEM, err := cp.CA.Issue(ca.Leaf{ID: auth.Syncer("east").URI(), Usage: ca.UsageClient, Lifetime: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	if err := ca.WriteCredentials(certPath, keyPath, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := authclient.Load(ctx, authclient.Flags{CAFile: cp.CAFile, CertFile: certPath, KeyFile: keyPath},
		authclient.Config{Want: auth.Syncer("east"), Replicas: []string{cp.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	old := c.Cert.Leaf()
	cc := dial(t, cp, c)
	stream, err := fedmeshv1.NewWatchServiceClient(cc).Watch(ctx, &fedmeshv1.WatchRequest{Kinds: []fedmeshv1.ResourceKind{fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // the initial snapshot
		t.Fatalf("watch: %v", err)
	}
	renewed := make(chan struct{}, 1)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go c.Rotate(rctx, fedmeshv1.NewAuthServiceClient(cc), authclient.RotateOptions{Renewed: func() { renewed <- struct{}{} }})
	select {
	case <-renewed:
	case <-ctx.Done():
		t.Fatal("no renewal")
	}
	if !c.Cert.Leaf().NotAfter.After(old.NotAfter) {
		t.Fatalf("renewed certificate expires %v, not after the old %v", c.Cert.Leaf().NotAfter, old.NotAfter)
	}
	stored, err := auth.LoadCertificate(certPath, keyPath)
	if err != nil || !stored.Leaf().Equal(c.Cert.Leaf()) {
		t.Fatalf("renewed certificate not stored: %v", err)
	}
	if p, _ := c.Cert.Principal(); p != auth.Syncer("east") {
		t.Fatalf("renewed certificate names %v", p)
	}
	// Past the old certificate's expiry, the stream opened with it still
	// delivers, and a new connection handshakes with the renewed one.
	time.Sleep(time.Until(old.NotAfter) + 500*time.Millisecond)
	registerCluster(t, cp, "east", "10.1.0.0/16")
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch dropped after rotation: %v", err)
		}
		if len(resp.GetEvents()) > 0 {
			break
		}
	}
	if _, err := fedmeshv1.NewClusterServiceClient(dial(t, cp, c)).GetCluster(ctx, &fedmeshv1.GetClusterRequest{Name: "east"}); err != nil {
		t.Fatalf("new connection with the renewed certificate: %v", err)
	}
}

func TestLoadSaysWhichFlagsToGive(t *testing.T) {
	tests := []struct {
		name   string
		flags  authclient.Flags
		errHas string
	}{
		{"nothing", authclient.Flags{}, "--insecure-dev only against a development control plane"},
		{"token without CA", authclient.Flags{JoinToken: "t"}, "give --ca-file"},
		{"token and cert", authclient.Flags{CAFile: "ca", JoinToken: "t", CertFile: "c", KeyFile: "k"}, "--join-token excludes --cert-file"},
		{"insecure and TLS", authclient.Flags{InsecureDev: true, TLSDir: "d"}, "--insecure-dev excludes"},
		{"token and token file", authclient.Flags{CAFile: "ca", JoinToken: "t", JoinTokenFile: "f"}, "not both"},
		{"token file and cert", authclient.Flags{CAFile: "ca", JoinTokenFile: "f", CertFile: "c", KeyFile: "k"}, "--join-token-file excludes --cert-file"},
		{"missing CA file", authclient.Flags{CAFile: "/nonexistent/ca.crt", CertFile: "c", KeyFile: "k"}, "read CA certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := authclient.Load(context.Background(), tt.flags, authclient.Config{StateDir: t.TempDir(), Name: "x"})
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("err = %v, want one containing %q", err, tt.errHas)
			}
		})
	}
	c, err := authclient.Load(context.Background(), authclient.Flags{InsecureDev: true}, authclient.Config{})
	if err != nil || !c.Insecure {
		t.Fatalf("--insecure-dev alone: %v, %+v", err, c)
	}
}
