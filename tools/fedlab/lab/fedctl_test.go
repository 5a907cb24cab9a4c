package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/fedmesh/fedmesh/tools/fedctl/config"
)

// execHelperEnv makes the test binary act as `fedlab fedctl` (TestMain):
// ExecFedctl replaces the process, so it runs in a child.
const execHelperEnv = "FEDLAB_TEST_EXEC_FEDCTL"

type execHelperArgs struct {
	Config     Config
	ConfigPath string
	Args       []string
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(execHelperEnv); spec != "" {
		var a execHelperArgs
		if err := json.Unmarshal([]byte(spec), &a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(100)
		}
		l, err := testLab(a.Config)
		if err == nil {
			err = l.ExecFedctl(a.ConfigPath, a.Args)
		}
		fmt.Fprintln(os.Stderr, "ExecFedctl returned:", err)
		os.Exit(101)
	}
	os.Exit(m.Run())
}

func testLab(cfg Config) (*Lab, error) {
	topo, err := Plan(cfg)
	if err != nil {
		return nil, err
	}
	return &Lab{Topo: topo, Dir: StateDir(cfg.Name), State: &State{Config: cfg}}, nil
}

func TestLabContextIsWrittenOnceAndRemovedLeavingTheUsersOwn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fedmesh", "config.yaml")
	prod := config.Context{Name: "prod", Servers: []string{"cp.example:9000"}, CA: "/etc/fedmesh/ca.crt"}
	if err := config.Update(path, func(f *config.File) error { f.Set(prod); return nil }); err != nil {
		t.Fatal(err)
	}
	l, err := testLab(Config{Name: "lx", Clusters: 2, Nodes: 2, Pods: 2, BinDir: "/opt/fedmesh/bin"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WriteFedctlContext(path); err != nil {
		t.Fatal(err)
	}
	f, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.Context("fedlab-lx")
	if err != nil {
		t.Fatal(err)
	}
	want := config.Context{Name: "fedlab-lx", Servers: l.Topo.ControlPlaneAddrs(),
		CA: "/run/fedlab/lx/pki/ca.crt", Cert: "/run/fedlab/lx/pki/admin.crt", Key: "/run/fedlab/lx/pki/admin.key"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("lab context = %+v, want %+v", got, want)
	}
	if f.CurrentContext != "prod" {
		t.Errorf("current context = %q: the lab took over the user's current context", f.CurrentContext)
	}

	before := inode(t, path)
	if err := l.WriteFedctlContext(path); err != nil {
		t.Fatal(err)
	}
	if inode(t, path) != before {
		t.Error("writing the same context again rewrote the file")
	}

	for range 2 { // the second removal finds nothing and is not an error
		if err := RemoveFedctlContext(path, "lx"); err != nil {
			t.Fatal(err)
		}
	}
	f, _ = config.Load(path)
	if !reflect.DeepEqual(f.Names(), []string{"prod"}) || f.CurrentContext != "prod" {
		t.Errorf("after removal: %+v, want only prod, current", f)
	}

	missing := filepath.Join(t.TempDir(), "none", "config.yaml")
	if err := RemoveFedctlContext(missing, "lx"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(missing)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("removing from a missing config created %s", filepath.Dir(missing))
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

func TestFedctlCommandIsShortForTheDefaultLab(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{DefaultName, "sudo ./bin/fedlab fedctl"},
		{"lab2", "sudo ./bin/fedlab --name lab2 fedctl"},
	} {
		if got := FedctlCommand("./bin/fedlab", tc.name); got != tc.want {
			t.Errorf("FedctlCommand(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestFedctlEnvDropsOnlyWhatWouldOverrideTheContext(t *testing.T) {
	in := []string{"PATH=/bin", "FEDMESH_SERVER=x:1", "FEDMESH_CA=/ca", "FEDMESH_CERT=/c", "FEDMESH_KEY=/k",
		"FEDMESH_CONTEXT=prod", "FEDMESH_KUBE_BIN_DIR=/k8s", "HOME=/root", "FEDMESH_SERVERS=typo"}
	want := []string{"PATH=/bin", "FEDMESH_KUBE_BIN_DIR=/k8s", "HOME=/root", "FEDMESH_SERVERS=typo"}
	if got := fedctlEnv(in); !reflect.DeepEqual(got, want) {
		t.Errorf("fedctlEnv = %v, want %v", got, want)
	}
}

// TestExecFedctlEntersTheManagementNamespace runs ExecFedctl in a child
// against a fedctl stand-in that reports the namespace, arguments and
// environment it got, and exits 7: fedctl's exit status must come through.
func TestExecFedctlEntersTheManagementNamespace(t *testing.T) {
	requireRootAndIP(t)
	name := fmt.Sprintf("x%d", os.Getpid()%100000)
	binDir := t.TempDir()
	script := "#!/bin/sh\necho \"ns=$(readlink /proc/self/ns/net)\"\necho \"args=$*\"\necho \"server=${FEDMESH_SERVER:-unset}\"\nexit 7\n"
	if err := os.WriteFile(filepath.Join(binDir, "fedctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Name: name, Clusters: 1, Nodes: 1, Pods: 1, BinDir: binDir}
	topo, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "netns", "add", topo.Mgmt.NS).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", topo.Mgmt.NS).CombinedOutput(); err != nil {
			t.Errorf("ip netns del: %v: %s", err, out)
		}
	})
	var st syscall.Stat_t
	if err := syscall.Stat("/var/run/netns/"+topo.Mgmt.NS, &st); err != nil {
		t.Fatal(err)
	}
	configPath := filepath.Join(t.TempDir(), "config.yaml")
	spec, _ := json.Marshal(execHelperArgs{Config: cfg, ConfigPath: configPath, Args: []string{"policy", "list", "-o", "yaml"}})

	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), execHelperEnv+"="+string(spec), "FEDMESH_SERVER=192.0.2.1:9000")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 7 {
		t.Fatalf("child: %v, want fedctl's exit status 7\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	want := fmt.Sprintf("ns=net:[%d]\nargs=--context fedlab-%s policy list -o yaml\nserver=unset\n", st.Ino, name)
	if string(out) != want {
		t.Errorf("fedctl saw:\n%s\nwant:\n%s", out, want)
	}
	f, err := config.Load(configPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Context("fedlab-" + name); err != nil {
		t.Errorf("the lab's context was not written before running fedctl: %v", err)
	}
}

func requireRootAndIP(t *testing.T) {
	t.Helper()
	msg := ""
	if os.Geteuid() != 0 {
		msg = "needs root to create a network namespace"
	} else if _, err := exec.LookPath("ip"); err != nil {
		msg = "needs ip (iproute2; make deps installs it)"
	}
	if msg == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
