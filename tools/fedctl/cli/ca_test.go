package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fedmesh/fedmesh/controlplane/auth"
)

func TestCAInitAndIssueWriteUsableCredentials(t *testing.T) {
	dir := t.TempDir()
	env := newTestEnv(t)
	run := func(args ...string) string {
		t.Helper()
		out, errOut, code := env.run(args...)
		if code != 0 {
			t.Fatalf("fedctl %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
		}
		return out
	}
	caDir := filepath.Join(dir, "ca")
	run("ca", "init", "--ca-dir", caDir)
	run("ca", "issue-replica", "--ca-dir", caDir, "--id", "cp1", "--ip", "127.0.0.1", "--out-dir", dir)
	run("ca", "issue-admin", "--ca-dir", caDir, "--out-dir", dir)
	for _, f := range []string{filepath.Join(caDir, "ca.key"), filepath.Join(dir, "replica.key"), filepath.Join(dir, "admin.key")} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	for base, want := range map[string]auth.Principal{"replica": auth.Replica("cp1"), "admin": auth.Admin()} {
		c, err := auth.LoadCertificate(filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key"))
		if err != nil {
			t.Fatal(err)
		}
		if p, err := c.Principal(); err != nil || p != want {
			t.Errorf("%s certificate names %v (%v), want %v", base, p, err, want)
		}
	}
	if _, _, code := env.run("ca", "init", "--ca-dir", caDir); code == 0 {
		t.Fatal("a second ca init overwrote the CA")
	}
}
