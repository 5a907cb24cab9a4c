// Package tlstest runs a real fedmesh-controlplane replica over mTLS, with
// a fresh CA whose key the replica holds (so it serves Join and
// RenewCertificate), for the tests of the control plane's clients. The
// binary comes from cptest.Binary; call cptest.Main from TestMain.
package tlstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	"github.com/fedmesh/fedmesh/controlplane/cptest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ControlPlane is one TLS replica and its CA.
type ControlPlane struct {
	Addr   string
	CA     *ca.CA
	CAFile string // ca.crt, for clients' --ca-file
	// Admin is an admin connection.
	Admin *grpc.ClientConn
}

// Start starts a single-replica control plane over mTLS on loopback and
// waits until an admin can list clusters. Stopped (by PID) in t.Cleanup.
func Start(t testing.TB) *ControlPlane {
	t.Helper()
	bin, err := cptest.Binary()
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	caDir, tlsDir, dataDir := t.TempDir(), t.TempDir(), t.TempDir()
	c, err := ca.Init(caDir, "fedmesh tlstest CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ca.CertFile, ca.KeyFile} {
		b, err := os.ReadFile(filepath.Join(caDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tlsDir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	certPEM, keyPEM, err := c.Issue(ca.Leaf{ID: auth.Replica("r1").URI(), Usage: ca.UsageReplica, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteCredentials(filepath.Join(tlsDir, "replica.crt"), filepath.Join(tlsDir, "replica.key"), certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	addrs := cptest.FreeAddrs(t, 2)
	raftAddr, grpcAddr := addrs[0], addrs[1]
	logPath := filepath.Join(dataDir, "replica.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--node-id", "r1", "--data-dir", filepath.Join(dataDir, "r1"),
		"--raft-addr", raftAddr, "--grpc-addr", grpcAddr,
		"--bootstrap-peers", fmt.Sprintf("r1=%s/%s", raftAddr, grpcAddr),
		"--raft-timeout", "300ms", "--tls-dir", tlsDir, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("tlstest: start control plane: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	cp := &ControlPlane{Addr: grpcAddr, CA: c, CAFile: filepath.Join(caDir, ca.CertFile)}
	t.Cleanup(func() {
		if cp.Admin != nil {
			cp.Admin.Close()
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("--- TLS control plane log ---\n%s", b)
			}
		}
	})
	cp.Admin = cp.Dial(t, auth.Admin(), time.Hour)
	clusters := fedmeshv1.NewClusterServiceClient(cp.Admin)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := clusters.ListClusters(ctx, &fedmeshv1.ListClustersRequest{})
		cancel()
		if err == nil {
			return cp
		}
		if time.Now().After(deadline) {
			t.Fatalf("tlstest: control plane not serving: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Dial connects as principal p with a certificate of the given lifetime.
func (cp *ControlPlane) Dial(t testing.TB, p auth.Principal, lifetime time.Duration) *grpc.ClientConn {
	t.Helper()
	certPEM, keyPEM, err := cp.CA.Issue(ca.Leaf{ID: p.URI(), Usage: ca.UsageClient, Lifetime: lifetime})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.NewCertificate(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(cp.Addr, grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(cp.CA.Pool(), cert))))
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// Token creates a join token as admin (node empty: a syncer's).
func (cp *ControlPlane) Token(t testing.TB, cluster, node string, ttl time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := fedmeshv1.NewAuthServiceClient(cp.Admin).CreateJoinToken(ctx, &fedmeshv1.CreateJoinTokenRequest{Cluster: cluster, Node: node, Ttl: durationpb.New(ttl)})
	if err != nil {
		t.Fatalf("tlstest: create join token: %v", err)
	}
	return resp.GetToken()
}
