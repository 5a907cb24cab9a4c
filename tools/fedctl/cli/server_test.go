package cli

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	"github.com/fedmesh/fedmesh/controlplane/cptest"
	"github.com/fedmesh/fedmesh/controlplane/server"
)

// tlsPlane is one real control-plane replica in this process, serving
// mTLS with a test CA, for running fedctl commands as any principal.
type tlsPlane struct {
	dir  string
	ca   *ca.CA
	addr string
	r    *server.Replica
}

func startTLSPlane(t *testing.T) *tlsPlane {
	t.Helper()
	dir := t.TempDir()
	c, err := ca.Init(dir, "fedctl test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &tlsPlane{dir: dir, ca: c}
	certPEM, keyPEM, err := c.Issue(ca.Leaf{ID: auth.Replica("solo").URI(), Usage: ca.UsageReplica, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := filepath.Join(dir, "replica.crt"), filepath.Join(dir, "replica.key")
	if err := ca.WriteCredentials(certPath, keyPath, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	raftAddr := cptest.FreeAddrs(t, 1)[0]
	p.r, err = server.Start(server.Config{
		NodeID: "solo", DataDir: t.TempDir(), RaftAddr: raftAddr, GRPCAddr: "127.0.0.1:0",
		BootstrapPeers: []server.Peer{{ID: "solo", RaftAddr: raftAddr}}, RaftTimeout: 100 * time.Millisecond, UIAddr: "127.0.0.1:0",
		TLS:    &server.TLSConfig{CAFile: filepath.Join(dir, ca.CertFile), CertFile: certPath, KeyFile: keyPath},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.r.Stop)
	p.addr = p.r.GRPCAddr()
	deadline := time.Now().Add(10 * time.Second)
	for p.r.Raft().State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatal("the replica did not become leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

// fedctl runs fedctl as principal pr against the replica, retrying while
// the just-elected leader is not ready for writes.
func (p *tlsPlane) fedctl(t *testing.T, pr auth.Principal, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	dir := filepath.Join(p.dir, strings.ReplaceAll(strings.TrimPrefix(pr.String(), "spiffe://"), "/", "_"))
	certPath, keyPath := filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	if _, err := os.Stat(certPath); err != nil {
		certPEM, keyPEM, err := p.ca.Issue(ca.Leaf{ID: pr.URI(), Usage: ca.UsageClient, Lifetime: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := ca.WriteCredentials(certPath, keyPath, certPEM, keyPEM); err != nil {
			t.Fatal(err)
		}
	}
	// Only the flags count: no context file, no environment.
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(p.dir, "config"))
	for _, k := range []string{"FEDMESH_CONTEXT", "FEDMESH_CA", "FEDMESH_CERT", "FEDMESH_KEY", "FEDMESH_SERVER"} {
		t.Setenv(k, "")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var out, errOut bytes.Buffer
		root := NewRoot(&out, &errOut)
		root.SetArgs(append([]string{"--server", p.addr, "--ca", filepath.Join(p.dir, ca.CertFile), "--cert", certPath, "--key", keyPath, "--timeout", "10s"}, args...))
		err = root.Execute()
		if err == nil || !strings.Contains(errOut.String(), "leader not ready") || time.Now().After(deadline) {
			return out.String(), errOut.String(), err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// An admin's NetworkPolicy for a cluster would be enforced, then deleted by
// the cluster's syncer on its next resync: the control plane refuses it,
// and fedctl says whose it is and where to apply it, once.
func TestPolicyApplyOfAClustersNetworkPolicySaysWhereItBelongs(t *testing.T) {
	p := startTLSPlane(t)
	if _, errOut, err := p.fedctl(t, auth.Admin(), "cluster", "register", "cluster-a", "--pod-cidr", "10.1.0.0/16"); err != nil {
		t.Fatalf("register: %v\n%s", err, errOut)
	}
	np := writeFile(t, "np.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x, namespace: default}
spec: {podSelector: {}}
`)
	out, errOut, err := p.fedctl(t, auth.Admin(), "policy", "apply", "-f", np, "--cluster", "cluster-a")
	want := "error: FailedPrecondition: NetworkPolicy default/x belongs to cluster cluster-a; apply it in cluster-a's API"
	if err == nil || strings.Count(errOut, want) != 1 || strings.Count(errOut, "error:") != 1 {
		t.Fatalf("admin's apply: err %v\nstdout %q\nstderr %q\nwant once on stderr: %q", err, out, errOut, want)
	}
	if out, errOut, err := p.fedctl(t, auth.Admin(), "policy", "list", "--cluster", "cluster-a"); err != nil || strings.Contains(out, "cluster-a/default/x") {
		t.Fatalf("the refused policy is stored: %v\n%s%s", err, out, errOut)
	}
	// The cluster's own syncer is its writer.
	if out, errOut, err := p.fedctl(t, auth.Syncer("cluster-a"), "policy", "apply", "-f", np, "--cluster", "cluster-a"); err != nil || !strings.Contains(out, "policy cluster-a/default/x applied") {
		t.Fatalf("syncer's apply: %v\n%s%s", err, out, errOut)
	}
	_, errOut, err = p.fedctl(t, auth.Admin(), "policy", "delete", "cluster-a/default/x")
	if want := "NetworkPolicy default/x belongs to cluster cluster-a; delete it in cluster-a's API"; err == nil || !strings.Contains(errOut, want) {
		t.Fatalf("admin's delete: %v\n%s", err, errOut)
	}
}
