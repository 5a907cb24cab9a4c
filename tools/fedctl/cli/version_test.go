package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/fedmesh/fedmesh/federation/buildinfo"
)

func TestVersionPrintsBuildAndKeyDependencies(t *testing.T) {
	var out, errOut bytes.Buffer
	root := NewRoot(&out, &errOut)
	root.SetArgs([]string{"version", "-o", "json"})
	if err := root.Execute(); err != nil {
		t.Fatalf("fedctl version -o json: %v (%s)", err, errOut.String())
	}
	var got buildinfo.Info
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("decode %q: %v", out.String(), err)
	}
	want := buildinfo.Read()
	if got.Version != want.Version || got.GoVersion != want.GoVersion || got.GoVersion == "" {
		t.Fatalf("version -o json = %+v, want %+v", got, want)
	}
	// A test binary records no dependency versions (TestFromBuildInfo
	// covers how they are read from a real binary's build info).

	out.Reset()
	root = NewRoot(&out, &errOut)
	root.SetArgs([]string{"version"})
	if err := root.Execute(); err != nil {
		t.Fatalf("fedctl version: %v", err)
	}
	if !strings.HasPrefix(out.String(), "fedctl "+want.Version) || !strings.Contains(out.String(), "go: "+want.GoVersion) {
		t.Fatalf("fedctl version printed %q", out.String())
	}
}
