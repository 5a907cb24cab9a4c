package cli

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	"github.com/fedmesh/fedmesh/tools/fedctl/config"
)

// testEnv runs fedctl in-process with an environment of its own: only the
// variables set here, and a config dir in a temp dir, so no test reads or
// writes the real ~/.config.
type testEnv struct {
	t    *testing.T
	vars map[string]string
}

func newTestEnv(t *testing.T) *testEnv {
	return &testEnv{t: t, vars: map[string]string{"XDG_CONFIG_HOME": t.TempDir()}}
}

func (e *testEnv) configPath() string {
	return filepath.Join(e.vars["XDG_CONFIG_HOME"], "fedmesh", "config.yaml")
}

func (e *testEnv) run(args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	var out, errOut bytes.Buffer
	code = Execute(e.t.Context(), args, &out, &errOut, func(k string) string { return e.vars[k] })
	return out.String(), errOut.String(), code
}

func TestErrorsArePrintedOnceWithHelpForCommandLineMistakes(t *testing.T) {
	cases := []struct {
		name     string
		args     []string
		want     string
		wantHelp string // "" for errors of the command's run: no pointer to --help
	}{
		{name: "run error", args: []string{"cluster", "list"}, want: "no credentials for the control plane"},
		{name: "unknown flag", args: []string{"policy", "list", "--nope"}, want: "unknown flag: --nope", wantHelp: "fedctl policy list"},
		{name: "missing argument", args: []string{"policy", "get"}, want: "accepts 1 arg(s), received 0", wantHelp: "fedctl policy get"},
		{name: "unknown command", args: []string{"bogus"}, want: `unknown command "bogus" for "fedctl"`, wantHelp: "fedctl"},
		{name: "required flag", args: []string{"ca", "init"}, want: `required flag(s) "ca-dir" not set`, wantHelp: "fedctl ca init"},
		{name: "unknown context", args: []string{"--context", "nope", "cluster", "list"}, want: `unknown context "nope"`},
		{name: "client-side parse error", args: []string{"reach", "a", "b"}, want: `"a": want CLUSTER/NAMESPACE/POD or an IP address`},
		{name: "address family neither 4 nor 6", args: []string{"reach", "a/b/c", "d/e/f", "--family", "5"}, want: "--family 5: want 4 or 6"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := newTestEnv(t).run(tc.args...)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			if out != "" {
				t.Errorf("stdout = %q, want nothing", out)
			}
			if n := strings.Count(errOut, "error:"); n != 1 {
				t.Errorf("stderr has %d error lines, want exactly 1:\n%s", n, errOut)
			}
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr = %q, want %q", errOut, tc.want)
			}
			help := "see '" + tc.wantHelp + " --help'"
			if gotHelp := strings.Contains(errOut, "--help'"); gotHelp != (tc.wantHelp != "") || (gotHelp && !strings.Contains(errOut, help)) {
				t.Errorf("stderr = %q; want pointer to help %q: %v", errOut, help, tc.wantHelp != "")
			}
		})
	}
}

func TestNewRootPrintsRunErrorsOnce(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	for _, k := range []string{"FEDMESH_CONTEXT", "FEDMESH_SERVER", "FEDMESH_CA", "FEDMESH_CERT", "FEDMESH_KEY"} {
		t.Setenv(k, "")
	}
	var out, errOut bytes.Buffer
	root := NewRoot(&out, &errOut)
	root.SetArgs([]string{"cluster", "list"})
	err := root.Execute()
	if !errors.Is(err, ErrNoCredentials) || strings.Count(errOut.String(), "error:") != 1 || !strings.Contains(errOut.String(), ErrNoCredentials.Error()) {
		t.Fatalf("err %v, stderr %q; want ErrNoCredentials printed once", err, errOut.String())
	}
}

func TestConfigCommands(t *testing.T) {
	env := newTestEnv(t)
	pki := t.TempDir()
	for _, f := range []string{"ca.crt", "admin.crt", "admin.key"} {
		if err := os.WriteFile(filepath.Join(pki, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Relative paths are stored absolute.
	t.Chdir(pki)
	abs := func(f string) string { return filepath.Join(pki, f) }

	steps := []struct {
		args                []string
		wantCode            int
		wantOut, wantErrOut string
	}{
		{args: []string{"config", "get-contexts"}, wantOut: "CURRENT  NAME  SERVERS  TRANSPORT  CERT\n"},
		{args: []string{"config", "current-context"}, wantCode: 1, wantErrOut: "has no contexts; create one with 'fedctl config set-context'"},
		{args: []string{"config", "use-context", "lab"}, wantCode: 1, wantErrOut: `unknown context "lab": there are no contexts`},
		{args: []string{"config", "set-context", "lab"}, wantCode: 1, wantErrOut: "nothing to set"},
		{args: []string{"config", "set-context", "lab", "--server", "10.0.0.1:9001,10.0.0.2:9001", "--ca", "ca.crt", "--cert", "admin.crt", "--key", "admin.key"},
			wantOut: `context "lab" created`},
		{args: []string{"config", "current-context"}, wantOut: "lab\n"},
		{args: []string{"config", "set-context", "dev", "--server", "127.0.0.1:9000", "--insecure-dev"}, wantOut: `context "dev" created`},
		{args: []string{"config", "current-context"}, wantOut: "lab\n"},
		{args: []string{"config", "get-contexts"}, wantOut: "*        lab   10.0.0.1:9001,10.0.0.2:9001  mTLS, CA " + abs("ca.crt") + "  " + abs("admin.crt") + "\n" +
			"         dev   127.0.0.1:9000               plaintext (insecure-dev)"},
		{args: []string{"config", "use-context", "stage"}, wantCode: 1, wantErrOut: `unknown context "stage": known contexts are lab, dev`},
		{args: []string{"config", "use-context", "dev"}, wantOut: `switched to context "dev"`},
		{args: []string{"config", "current-context"}, wantOut: "dev\n"},
		{args: []string{"config", "set-context", "lab", "--cert", "missing.crt"}, wantCode: 1, wantErrOut: "--cert: stat " + abs("missing.crt") + ": no such file"},
		{args: []string{"config", "set-context", "other", "--cert", "admin.crt"}, wantCode: 1, wantErrOut: `set context "other": context "other": give cert and key together`},
		{args: []string{"config", "set-context", "dev", "--insecure-dev", "--ca", "ca.crt"}, wantCode: 1, wantErrOut: "--insecure-dev excludes --ca, --cert and --key"},
		{args: []string{"config", "set-context", "lab", "--server", "10.0.0.3:9001"}, wantOut: `context "lab" modified`},
		{args: []string{"config", "delete-context", "dev"}, wantOut: "deleted context \"dev\"\nit was the current context"},
		{args: []string{"config", "delete-context", "dev"}, wantCode: 1, wantErrOut: `unknown context "dev": known contexts are lab`},
		{args: []string{"config", "current-context"}, wantCode: 1, wantErrOut: "no current context; choose one of lab with 'fedctl config use-context NAME'"},
	}
	for _, s := range steps {
		out, errOut, code := env.run(s.args...)
		if code != s.wantCode || !strings.Contains(out, s.wantOut) || !strings.Contains(errOut, s.wantErrOut) {
			t.Fatalf("fedctl %s: exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit %d, stdout containing %q, stderr containing %q",
				strings.Join(s.args, " "), code, out, errOut, s.wantCode, s.wantOut, s.wantErrOut)
		}
	}

	out, _, code := env.run("config", "get-contexts", "-o", "yaml")
	var f config.File
	if err := yaml.Unmarshal([]byte(out), &f); code != 0 || err != nil {
		t.Fatalf("get-contexts -o yaml: exit %d, %v:\n%s", code, err, out)
	}
	want := config.Context{Name: "lab", Servers: []string{"10.0.0.3:9001"}, CA: abs("ca.crt"), Cert: abs("admin.crt"), Key: abs("admin.key")}
	if len(f.Contexts) != 1 || f.CurrentContext != "" || !equalContext(f.Contexts[0], want) {
		t.Errorf("config after the steps = %+v, want only %+v and no current context", f, want)
	}
	st, err := os.Stat(env.configPath())
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("config file: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
}

func equalContext(a, b config.Context) bool {
	return a.Name == b.Name && strings.Join(a.Servers, ",") == strings.Join(b.Servers, ",") &&
		a.CA == b.CA && a.Cert == b.Cert && a.Key == b.Key && a.InsecureDev == b.InsecureDev
}

// replica is a loopback gRPC server speaking mTLS with a replica
// certificate of the test CA; it answers ListClusters with one cluster
// named after itself and records who called.
type replica struct {
	fedmeshv1.UnimplementedClusterServiceServer
	fedmeshv1.UnimplementedReachServiceServer
	name    string
	addr    string
	callers chan auth.Principal
}

func (r *replica) ListClusters(ctx context.Context, _ *fedmeshv1.ListClustersRequest) (*fedmeshv1.ListClustersResponse, error) {
	r.record(ctx)
	return &fedmeshv1.ListClustersResponse{Clusters: []*fedmeshv1.Cluster{{Name: r.name}}}, nil
}

func (r *replica) Reach(ctx context.Context, _ *fedmeshv1.ReachRequest) (*fedmeshv1.ReachResponse, error) {
	r.record(ctx)
	return &fedmeshv1.ReachResponse{Verdict: fedmeshv1.Verdict_VERDICT_DENY}, nil
}

func (r *replica) record(ctx context.Context) {
	p, _ := peer.FromContext(ctx)
	ti, _ := p.AuthInfo.(credentials.TLSInfo)
	var who auth.Principal
	if len(ti.State.PeerCertificates) > 0 {
		who, _ = auth.FromCertificate(ti.State.PeerCertificates[0])
	}
	r.callers <- who
}

func startReplica(t *testing.T, name, pki string) *replica {
	t.Helper()
	roots, err := auth.CAPool(filepath.Join(pki, "ca", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.LoadCertificate(filepath.Join(pki, "replica.crt"), filepath.Join(pki, "replica.key"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{name: name, addr: ln.Addr().String(), callers: make(chan auth.Principal, 10)}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(auth.ServerTLS(roots, cert, false))))
	fedmeshv1.RegisterClusterServiceServer(s, r)
	fedmeshv1.RegisterReachServiceServer(s, r)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return r
}

func TestContextChoosesServerAndCredentialsUnlessEnvOrFlagsSayOtherwise(t *testing.T) {
	env := newTestEnv(t)
	pki := t.TempDir()
	caDir := filepath.Join(pki, "ca")
	for _, args := range [][]string{
		{"ca", "init", "--ca-dir", caDir},
		{"ca", "issue-replica", "--ca-dir", caDir, "--id", "cp1", "--ip", "127.0.0.1", "--out-dir", pki},
		{"ca", "issue-admin", "--ca-dir", caDir, "--out-dir", pki},
	} {
		if _, errOut, code := env.run(args...); code != 0 {
			t.Fatalf("fedctl %v: %s", args, errOut)
		}
	}
	a, b, c := startReplica(t, "from-a", pki), startReplica(t, "from-b", pki), startReplica(t, "from-c", pki)
	if _, errOut, code := env.run("config", "set-context", "lab", "--server", a.addr,
		"--ca", filepath.Join(caDir, "ca.crt"), "--cert", filepath.Join(pki, "admin.crt"), "--key", filepath.Join(pki, "admin.key")); code != 0 {
		t.Fatal(errOut)
	}
	if _, errOut, code := env.run("config", "set-context", "broken", "--server", c.addr, "--insecure-dev"); code != 0 {
		t.Fatal(errOut)
	}

	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		answers *replica
	}{
		{name: "the current context", answers: a},
		{name: "FEDMESH_SERVER beats the context", env: map[string]string{"FEDMESH_SERVER": b.addr}, answers: b},
		{name: "--server beats FEDMESH_SERVER", env: map[string]string{"FEDMESH_SERVER": b.addr}, args: []string{"--server", c.addr}, answers: c},
		{name: "--context with TLS from the environment", env: map[string]string{"FEDMESH_CA": filepath.Join(caDir, "ca.crt"),
			"FEDMESH_CERT": filepath.Join(pki, "admin.crt"), "FEDMESH_KEY": filepath.Join(pki, "admin.key")}, args: []string{"--context", "broken"}, answers: c},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := &testEnv{t: t, vars: map[string]string{"XDG_CONFIG_HOME": env.vars["XDG_CONFIG_HOME"]}}
			for k, v := range tc.env {
				e.vars[k] = v
			}
			out, errOut, code := e.run(append(tc.args, "cluster", "list", "--timeout", "5s")...)
			if code != 0 || !strings.Contains(out, tc.answers.name) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %s to answer", code, out, errOut, tc.answers.name)
			}
			if who := <-tc.answers.callers; who != auth.Admin() {
				t.Errorf("%s was called by %v, want the context's admin certificate", tc.answers.name, who)
			}
		})
	}

	t.Run("a denied reach exits 2 and prints no error", func(t *testing.T) {
		out, errOut, code := env.run("reach", "a/b/c", "10.0.0.1", "--timeout", "5s")
		if code != 2 || errOut != "" || !strings.Contains(out, "DENIED") {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 2, the verdict, no error", code, out, errOut)
		}
		<-a.callers
	})
}
