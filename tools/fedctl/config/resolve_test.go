package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestResolvePrecedenceIsFlagEnvContextDefault(t *testing.T) {
	file := &File{
		CurrentContext: "lab",
		Contexts: []Context{
			{Name: "lab", Servers: []string{"10.0.0.1:9001", "10.0.0.2:9001"}, CA: "/lab/ca.crt", Cert: "/lab/admin.crt", Key: "/lab/admin.key"},
			{Name: "dev", Servers: []string{"127.0.0.1:9100"}, InsecureDev: true},
			{Name: "prod", Servers: []string{"prod:9000"}, CA: "/prod/ca.crt"},
		},
	}
	labTLS := Settings{Context: "lab", Servers: []string{"10.0.0.1:9001", "10.0.0.2:9001"},
		CA: "/lab/ca.crt", Cert: "/lab/admin.crt", Key: "/lab/admin.key", CAFrom: `context "lab"`, CertFrom: `context "lab"`}
	with := func(s Settings, f func(*Settings)) Settings { f(&s); return s }

	cases := []struct {
		name       string
		file       *File
		flags, env Overrides
		want       Settings
		wantErr    string
	}{
		{
			name: "nothing anywhere gives the default server and no credentials",
			file: &File{},
			want: Settings{Servers: []string{DefaultServer}},
		},
		{
			name: "the current context supplies everything",
			file: file,
			want: labTLS,
		},
		{
			name: "env server beats the context",
			file: file, env: Overrides{Servers: []string{"env:1"}},
			want: with(labTLS, func(s *Settings) { s.Servers = []string{"env:1"} }),
		},
		{
			name: "flag server beats env and context",
			file: file, env: Overrides{Servers: []string{"env:1"}}, flags: Overrides{Servers: []string{"flag:1", "flag:2"}},
			want: with(labTLS, func(s *Settings) { s.Servers = []string{"flag:1", "flag:2"} }),
		},
		{
			name: "env CA beats the context's, the certificate still comes from the context",
			file: file, env: Overrides{CA: "/env/ca.crt"},
			want: with(labTLS, func(s *Settings) { s.CA, s.CAFrom = "/env/ca.crt", EnvCA }),
		},
		{
			name: "flag CA beats env CA",
			file: file, env: Overrides{CA: "/env/ca.crt"}, flags: Overrides{CA: "/flag/ca.crt"},
			want: with(labTLS, func(s *Settings) { s.CA, s.CAFrom = "/flag/ca.crt", "--ca" }),
		},
		{
			name: "env certificate and key replace the context's as a pair",
			file: file, env: Overrides{Cert: "/env/me.crt", Key: "/env/me.key"},
			want: with(labTLS, func(s *Settings) { s.Cert, s.Key, s.CertFrom = "/env/me.crt", "/env/me.key", EnvCert }),
		},
		{
			name: "a certificate without its key in one layer is refused, not paired with the context's key",
			file: file, env: Overrides{Cert: "/env/me.crt"},
			wantErr: "give FEDMESH_CERT and FEDMESH_KEY together",
		},
		{
			name: "flag --insecure-dev beats a TLS context",
			file: file, flags: Overrides{InsecureDev: true},
			want: Settings{Context: "lab", Servers: labTLS.Servers, InsecureDev: true},
		},
		{
			name: "flag --insecure-dev beats TLS from the environment",
			file: &File{}, flags: Overrides{InsecureDev: true}, env: Overrides{CA: "/env/ca.crt"},
			want: Settings{Servers: []string{DefaultServer}, InsecureDev: true},
		},
		{
			name: "--insecure-dev with --ca in the same layer is refused",
			file: &File{}, flags: Overrides{InsecureDev: true, CA: "/flag/ca.crt"},
			wantErr: "--insecure-dev excludes --ca, --cert and --key",
		},
		{
			name: "env CA beats an insecure-dev context",
			file: file, flags: Overrides{Context: "dev"}, env: Overrides{CA: "/env/ca.crt"},
			want: Settings{Context: "dev", Servers: []string{"127.0.0.1:9100"}, CA: "/env/ca.crt", CAFrom: EnvCA},
		},
		{
			name: "an insecure-dev context is plaintext",
			file: file, flags: Overrides{Context: "dev"},
			want: Settings{Context: "dev", Servers: []string{"127.0.0.1:9100"}, InsecureDev: true},
		},
		{
			name: "FEDMESH_CONTEXT beats the current context",
			file: file, env: Overrides{Context: "prod"},
			want: Settings{Context: "prod", Servers: []string{"prod:9000"}, CA: "/prod/ca.crt", CAFrom: `context "prod"`},
		},
		{
			name: "--context beats FEDMESH_CONTEXT",
			file: file, env: Overrides{Context: "prod"}, flags: Overrides{Context: "lab"},
			want: labTLS,
		},
		{
			name: "an unknown --context is refused naming the known ones",
			file: file, flags: Overrides{Context: "stage"},
			wantErr: `unknown context "stage": known contexts are lab, dev, prod`,
		},
		{
			name:    "a current context the file lacks is refused, said to be the current one",
			file:    &File{CurrentContext: "gone", Contexts: []Context{{Name: "lab"}}},
			wantErr: `current context: unknown context "gone": known contexts are lab`,
		},
		{
			name: "environment credentials work without any context",
			file: &File{}, env: Overrides{Servers: []string{"a:1"}, CA: "/e/ca", Cert: "/e/c", Key: "/e/k"},
			want: Settings{Servers: []string{"a:1"}, CA: "/e/ca", Cert: "/e/c", Key: "/e/k", CAFrom: EnvCA, CertFrom: EnvCert},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.file, tc.flags, tc.env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Resolve error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Resolve =\n  %+v\nwant\n  %+v", got, tc.want)
			}
		})
	}
}

func TestUnknownContextIsTyped(t *testing.T) {
	_, err := Resolve(&File{}, Overrides{Context: "x"}, Overrides{})
	var u *UnknownContextError
	if !errors.As(err, &u) || u.Name != "x" || len(u.Known) != 0 {
		t.Fatalf("err = %v, want *UnknownContextError for x with no known contexts", err)
	}
	if !strings.Contains(err.Error(), "fedctl config set-context") {
		t.Errorf("message %q does not say how to create a context", err)
	}
}

func TestFromEnvSplitsServers(t *testing.T) {
	env := map[string]string{EnvServer: " a:1, ,b:2 ", EnvContext: "lab", EnvCA: "/ca"}
	got := FromEnv(func(k string) string { return env[k] })
	want := Overrides{Context: "lab", Servers: []string{"a:1", "b:2"}, CA: "/ca"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("FromEnv = %+v, want %+v", got, want)
	}
}
