package cli

import (
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	"github.com/fedmesh/fedmesh/controlplane/cptest"
	"github.com/fedmesh/fedmesh/controlplane/server"
)

// `members add --nonvoter` joins a replica as a read replica and `members
// list` shows its suffrage.
func TestMembersAddNonvoterJoinsAReadReplica(t *testing.T) {
	p := startTLSPlane(t)
	certPEM, keyPEM, err := p.ca.Issue(ca.Leaf{ID: auth.Replica("reader").URI(), Usage: ca.UsageReplica, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := filepath.Join(p.dir, "reader.crt"), filepath.Join(p.dir, "reader.key")
	if err := ca.WriteCredentials(certPath, keyPath, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	raftAddr := cptest.FreeAddrs(t, 1)[0]
	reader, err := server.Start(server.Config{
		NodeID: "reader", DataDir: t.TempDir(), RaftAddr: raftAddr, GRPCAddr: "127.0.0.1:0", RaftTimeout: 100 * time.Millisecond,
		TLS:    &server.TLSConfig{CAFile: filepath.Join(p.dir, ca.CertFile), CertFile: certPath, KeyFile: keyPath},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reader.Stop)

	if _, stderr, err := p.fedctl(t, auth.Admin(), "controlplane", "members", "add", "reader", raftAddr, "--grpc-address", reader.GRPCAddr(), "--nonvoter"); err != nil {
		t.Fatalf("members add --nonvoter: %v\n%s", err, stderr)
	}
	out, stderr, err := p.fedctl(t, auth.Admin(), "controlplane", "members", "list")
	if err != nil {
		t.Fatalf("members list: %v\n%s", err, stderr)
	}
	for _, want := range []string{`(?m)^ID\s+RAFT\s+GRPC\s+SUFFRAGE\s+LEADER$`, `(?m)^reader\s+\S+\s+\S+\s+nonvoter\s+false$`, `(?m)^solo\s+\S+\s+\S+\s+voter\s+true$`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("members list does not match %s:\n%s", want, out)
		}
	}
}
