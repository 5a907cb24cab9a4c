package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func TestPathFollowsXDGThenHome(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		want    string
		wantErr bool
	}{
		{name: "XDG_CONFIG_HOME wins", env: map[string]string{"XDG_CONFIG_HOME": "/x", "HOME": "/home/u"}, want: "/x/fedmesh/config.yaml"},
		{name: "HOME without XDG", env: map[string]string{"HOME": "/home/u"}, want: "/home/u/.config/fedmesh/config.yaml"},
		{name: "a relative XDG_CONFIG_HOME is ignored, as the spec says", env: map[string]string{"XDG_CONFIG_HOME": "rel", "HOME": "/home/u"}, want: "/home/u/.config/fedmesh/config.yaml"},
		{name: "neither", env: map[string]string{}, wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Path(func(k string) string { return tc.env[k] })
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("Path = %q, %v; want %q (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestUpdateWritesPrivateFileThatLoadsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fedmesh", "config.yaml")
	// Names YAML 1.1 would read as booleans must survive the round trip.
	want := []Context{
		{Name: "on", Servers: []string{"a:1", "b:2"}, CA: "/ca.crt", Cert: "/c.crt", Key: "/c.key"},
		{Name: "y", Servers: []string{"127.0.0.1:9000"}, InsecureDev: true},
	}
	for _, c := range want {
		if err := Update(path, func(f *File) error { f.Set(c); return nil }); err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("config mode = %v, want 0600 (it names private keys)", st.Mode().Perm())
	}
	f, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !reflect.DeepEqual(f.Contexts, want) || f.CurrentContext != "on" {
		t.Errorf("loaded %+v, want contexts %+v with the first one current", f, want)
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".config-*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func TestUpdateThatFailsLeavesTheFileAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := Update(path, func(f *File) error { f.Set(Context{Name: "a"}); return nil }); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	cases := map[string]func(*File) error{
		"change errs":             func(f *File) error { f.Set(Context{Name: "b"}); return errors.New("no") },
		"change makes it invalid": func(f *File) error { f.Set(Context{Name: "b", Cert: "/only-cert"}); return nil },
		"unknown context":         func(f *File) error { return f.Use("nope") },
	}
	for name, change := range cases {
		if err := Update(path, change); err == nil {
			t.Errorf("%s: Update succeeded", name)
		}
		if after, _ := os.ReadFile(path); string(after) != string(before) {
			t.Errorf("%s: file changed:\n%s", name, after)
		}
	}
}

func TestConcurrentUpdatesLoseNoContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- Update(path, func(f *File) error {
				f.Set(Context{Name: "c" + string(rune('a'+i))})
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Contexts) != 20 {
		t.Errorf("%d contexts after 20 concurrent adds: %v", len(f.Contexts), f.Names())
	}
}

func TestLoadRejectsBadFiles(t *testing.T) {
	cases := []struct{ name, body, wantErr string }{
		{name: "misspelt key", body: "contexts:\n- name: a\n  sever: [x:1]\n", wantErr: "field sever not found"},
		{name: "duplicate context", body: "contexts:\n- name: a\n- name: a\n", wantErr: `context "a" appears twice`},
		{name: "insecure with TLS", body: "contexts:\n- name: a\n  insecure-dev: true\n  ca: /ca\n", wantErr: "insecure-dev excludes ca, cert and key"},
		{name: "cert without key", body: "contexts:\n- name: a\n  cert: /c\n", wantErr: "give cert and key together"},
		{name: "nameless context", body: "contexts:\n- servers: [a:1]\n", wantErr: "context has no name"},
		{name: "not YAML", body: "contexts: [", wantErr: "fix or remove the file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), path) {
				t.Errorf("Load error = %v, want it to name %s and say %q", err, path, tc.wantErr)
			}
		})
	}
}

func TestMissingOrEmptyFileIsAnEmptyConfig(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.yaml")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(dir, "missing.yaml"), empty} {
		f, err := Load(p)
		if err != nil || len(f.Contexts) != 0 || f.CurrentContext != "" {
			t.Errorf("Load(%s) = %+v, %v; want an empty config", p, f, err)
		}
	}
}

func TestDeleteAndUse(t *testing.T) {
	f := &File{}
	f.Set(Context{Name: "a"})
	f.Set(Context{Name: "b"})
	if f.CurrentContext != "a" {
		t.Fatalf("current = %q, want the first context a", f.CurrentContext)
	}
	if err := f.Use("b"); err != nil || f.CurrentContext != "b" {
		t.Fatalf("Use(b) = %v, current %q", err, f.CurrentContext)
	}
	if err := f.Delete("b"); err != nil || f.CurrentContext != "" || !reflect.DeepEqual(f.Names(), []string{"a"}) {
		t.Fatalf("Delete(current b) = %v, current %q, names %v; want current cleared", err, f.CurrentContext, f.Names())
	}
	var u *UnknownContextError
	if err := f.Delete("b"); !errors.As(err, &u) || !reflect.DeepEqual(u.Known, []string{"a"}) {
		t.Errorf("Delete(unknown) = %v, want UnknownContextError listing a", err)
	}
	if err := f.Use("zz"); !errors.As(err, &u) {
		t.Errorf("Use(unknown) = %v, want UnknownContextError", err)
	}
}
