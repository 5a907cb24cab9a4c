package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestCheckNamesUnlistedPseudoVersionsAndStaleEntries(t *testing.T) {
	mods := map[string]string{
		"google.golang.org/grpc":      "v1.85.0",
		"golang.zx2c4.com/wireguard":  "v0.0.0-20260522210424-ecfc5a8d5446",
		"google.golang.org/protobuf":  "v1.36.13-0.20261016172727-e9ee2a76ab8e",
		"github.com/davecgh/go-spew":  "v1.1.2-0.20180830191138-d8f796af33cc",
		"github.com/example/released": "v2.0.0+incompatible",
	}
	allow := map[string]bool{"golang.zx2c4.com/wireguard": true, "github.com/davecgh/go-spew": true, "k8s.io/gone": true}
	bad, stale := check(mods, allow)
	if want := []string{"google.golang.org/protobuf v1.36.13-0.20261016172727-e9ee2a76ab8e"}; !slices.Equal(bad, want) {
		t.Errorf("bad = %v, want %v", bad, want)
	}
	if want := []string{"k8s.io/gone"}; !slices.Equal(stale, want) {
		t.Errorf("stale = %v, want %v", stale, want)
	}
}

func TestAllowlistEntriesNeedAReason(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, text string
		ok         bool
	}{
		{"with reason", "# header\ngolang.zx2c4.com/wireguard  # publishes no tags\n", true},
		{"without reason", "golang.zx2c4.com/wireguard\n", false},
		{"not a module path", "not a path!  # why\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := readAllowlist(p)
			if (err == nil) != tc.ok {
				t.Fatalf("readAllowlist(%q) err = %v, want ok=%v", tc.text, err, tc.ok)
			}
		})
	}
}

func TestInGraphFindsToolModulesTheProductRequires(t *testing.T) {
	graph := "github.com/fedmesh/fedmesh google.golang.org/grpc@v1.85.0\n" +
		"github.com/fedmesh/fedmesh honnef.co/go/tools@v0.8.2\n" +
		"honnef.co/go/tools@v0.8.2 golang.org/x/tools@v0.40.0\n" +
		"github.com/cilium/ebpf@v0.22.0 github.com/bufbuild/buf@v1.0.0\n"
	tools := map[string]string{"honnef.co/go/tools": "honnef.co/go/tools/cmd/staticcheck", "github.com/bufbuild/buf": "github.com/bufbuild/buf/cmd/buf"}
	got := inGraph(graph, "github.com/fedmesh/fedmesh", tools)
	if want := []string{"honnef.co/go/tools (provides honnef.co/go/tools/cmd/staticcheck)"}; !slices.Equal(got, want) {
		t.Fatalf("inGraph = %v, want %v", got, want)
	}
}
