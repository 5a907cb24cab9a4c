package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/fedmesh/fedmesh", Version: "(devel)"},
		Deps: []*debug.Module{
			{Path: "google.golang.org/grpc", Version: "v1.85.0"},
			{Path: "github.com/hashicorp/raft", Version: "v1.8.0"},
			{Path: "github.com/cilium/ebpf", Version: "v0.22.0", Replace: &debug.Module{Path: "github.com/cilium/ebpf", Version: "v0.22.1"}},
			{Path: "github.com/spf13/cobra", Version: "v1.10.2"},
		},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}},
	}
	tests := []struct {
		name, linked, wantVersion string
		bi                        *debug.BuildInfo
	}{
		{"linked version wins", "v0.3.0", "v0.3.0", bi},
		{"devel build names its revision", "", "devel-0123456789ab", bi},
		{"no build info", "", "devel", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := fromBuildInfo(tc.bi, tc.linked)
			if got.Version != tc.wantVersion {
				t.Fatalf("Version = %q, want %q", got.Version, tc.wantVersion)
			}
			if tc.bi == nil {
				return
			}
			want := map[string]string{"google.golang.org/grpc": "v1.85.0", "github.com/hashicorp/raft": "v1.8.0", "github.com/cilium/ebpf": "v0.22.1"}
			if len(got.Dependencies) != len(want) {
				t.Fatalf("Dependencies = %v, want %v (only key modules, replacements applied)", got.Dependencies, want)
			}
			for m, v := range want {
				if got.Dependencies[m] != v {
					t.Errorf("Dependencies[%s] = %q, want %q", m, got.Dependencies[m], v)
				}
			}
			s := got.String()
			for _, line := range []string{"go: go1.26.8", "revision: 0123456789abcdef0123 (modified)", "google.golang.org/grpc: v1.85.0"} {
				if !strings.Contains(s, line) {
					t.Errorf("String() lacks %q:\n%s", line, s)
				}
			}
			if strings.Contains(s, "cobra") {
				t.Errorf("String() lists a module that is not a key module:\n%s", s)
			}
		})
	}
}

// The test binary links testing but none of the key modules; Read must still
// name the Go version it was built with.
func TestReadNamesGoVersion(t *testing.T) {
	if got := Read(); !strings.HasPrefix(got.GoVersion, "go") {
		t.Fatalf("Read().GoVersion = %q, want the toolchain version", got.GoVersion)
	}
}
