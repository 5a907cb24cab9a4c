package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func testSpec() Spec {
	return Spec{
		Name: "fedmesh-test", Entrypoint: []string{"/usr/local/bin/x"}, User: Nonroot, Arch: "amd64",
		Labels: map[string]string{"org.opencontainers.image.version": "v1"},
		Base:   BaseFiles([]byte("-----BEGIN CERTIFICATE-----\n")),
		App:    []File{{Path: "usr/local/bin/x", Mode: 0o755, Data: []byte("\x7fELF binary")}},
	}
}

func digestOf(t *testing.T, s Spec) string {
	t.Helper()
	img, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestBuildTwiceGivesTheSameDigestAndTarball(t *testing.T) {
	dir := t.TempDir()
	tag, _ := name.NewTag("fedmesh.local/fedmesh-test:v1")
	var files [2][]byte
	for i := range files {
		img, err := Build(testSpec())
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "img.tar")
		if err := tarball.WriteToFile(p, tag, img); err != nil {
			t.Fatal(err)
		}
		if files[i], err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
		// Whatever time it is, nothing of it may reach the image.
		time.Sleep(1100 * time.Millisecond)
	}
	if !bytes.Equal(files[0], files[1]) {
		t.Error("two builds of one spec wrote different tarballs")
	}
	if a, b := digestOf(t, testSpec()), digestOf(t, testSpec()); a != b {
		t.Errorf("digests differ: %s, %s", a, b)
	}
}

func TestDigestChangesWithWhatGoesIn(t *testing.T) {
	base := digestOf(t, testSpec())
	for _, tc := range []struct {
		name   string
		change func(*Spec)
	}{
		{"one byte of the binary", func(s *Spec) { s.App[0].Data = []byte("\x7fELF binarY") }},
		{"the binary's mode", func(s *Spec) { s.App[0].Mode = 0o750 }},
		{"the entrypoint", func(s *Spec) { s.Entrypoint = append(s.Entrypoint, "--flag") }},
		{"the user", func(s *Spec) { s.User = "0:0" }},
		{"the CA bundle", func(s *Spec) { s.Base = BaseFiles([]byte("other")) }},
		{"the version label", func(s *Spec) { s.Labels = map[string]string{"org.opencontainers.image.version": "v2"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testSpec()
			tc.change(&s)
			if got := digestOf(t, s); got == base {
				t.Errorf("changing %s kept digest %s", tc.name, got)
			}
		})
	}
}

func TestLayerIsSortedRootOwnedAndDatedEpoch(t *testing.T) {
	b, err := layerTar([]File{
		{Path: "usr/local/bin/x", Mode: 0o755, Data: []byte("x")},
		{Path: "etc/passwd", Mode: 0o644, Data: []byte("p")},
		{Path: "tmp", Mode: 0o1777, Dir: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(b))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s owned by %d:%d (%q:%q), want 0:0", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		if !h.ModTime.Equal(epoch) {
			t.Errorf("%s dated %s, want %s", h.Name, h.ModTime, epoch)
		}
		if h.Name == "tmp/" && h.Mode != 0o1777 {
			t.Errorf("tmp mode %o, want 1777", h.Mode)
		}
	}
	want := "etc/ etc/passwd tmp/ usr/ usr/local/ usr/local/bin/ usr/local/bin/x"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("entries %q, want %q (sorted, parents added)", got, want)
	}
}

func TestLayerRejectsUncleanOrDuplicatePaths(t *testing.T) {
	for _, files := range [][]File{
		{{Path: "/etc/passwd"}},
		{{Path: "etc/../passwd"}},
		{{Path: ""}},
		{{Path: "etc/passwd"}, {Path: "etc/passwd"}},
	} {
		if _, err := layerTar(files); err == nil {
			t.Errorf("layer of %+v built, want an error", files)
		}
	}
}

// TestRunTwiceGivesTheSameImages runs the whole pipeline, compiling the
// pause binary with go build and writing the tarball and images.json,
// twice, and compares the results byte for byte.
func TestRunTwiceGivesTheSameImages(t *testing.T) {
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, []byte("test bundle"), 0o644); err != nil {
		t.Fatal(err)
	}
	var res [2][]Result
	var tars [2][]byte
	for i := range res {
		o := Options{Root: root, Out: t.TempDir(), Version: "v0.0.0-test", Registry: "fedmesh.local", Only: []string{"fedmesh-pause"}, CABundle: ca, Arch: "amd64"}
		if res[i], err = Run(o); err != nil {
			t.Fatal(err)
		}
		if tars[i], err = os.ReadFile(res[i][0].File); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(o.Out, "images.json"))
		if err != nil {
			t.Fatal(err)
		}
		var listed []Result
		if err := json.Unmarshal(b, &listed); err != nil || len(listed) != 1 || listed[0].Digest != res[i][0].Digest {
			t.Fatalf("images.json lists %s (err %v), want the built image %+v", b, err, res[i][0])
		}
	}
	if res[0][0].Digest != res[1][0].Digest || res[0][0].ID != res[1][0].ID {
		t.Errorf("two runs built %s and %s", res[0][0].Digest, res[1][0].Digest)
	}
	if !bytes.Equal(tars[0], tars[1]) {
		t.Error("two runs wrote different tarballs")
	}
	if want := "fedmesh.local/fedmesh-pause:v0.0.0-test"; res[0][0].Ref != want {
		t.Errorf("ref %s, want %s", res[0][0].Ref, want)
	}
}

func TestRunRejectsBadInputNamingIt(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Version: "-dirty"}, "-version"},
		{Options{Version: "v1", Only: []string{"nope"}}, "-only"},
		{Options{Version: "v1", CABundle: "/nonexistent/ca.crt"}, "CA bundle"},
	} {
		if _, err := Run(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%+v) = %v, want an error naming %s", tc.o, err, tc.want)
		}
	}
}
