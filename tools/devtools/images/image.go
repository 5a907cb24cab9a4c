package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// epoch is the time every file, layer and config of an image carries: a
// constant, so an image depends only on the bytes that go into it.
var epoch = time.Unix(0, 0).UTC()

// File is one regular file or directory of a layer.
type File struct {
	Path string // relative, slash separated, no leading slash
	Mode int64  // permission bits (and sticky)
	Dir  bool
	Data []byte
}

// Spec describes one image: its files and how it runs. It is plain data;
// Build turns it into the same image every time.
type Spec struct {
	Name       string   // image name without registry, e.g. fedmesh-agent
	Entrypoint []string // absolute path of the program, then fixed arguments
	User       string   // "uid:gid"; "0:0" only where the component needs root
	Labels     map[string]string
	Arch       string // GOARCH of the binaries
	// Base holds what every image shares (CA certificates, /etc/passwd,
	// /tmp): its own layer, so a runtime stores it once.
	Base []File
	// App holds the component's binary.
	App []File
}

// Build assembles the image: the base layer, the app layer and a config
// with the entrypoint, user and labels. Timestamps, owners and the order
// of tar entries are fixed, so equal specs give equal digests.
func Build(s Spec) (v1.Image, error) {
	cfg := &v1.ConfigFile{
		Architecture: s.Arch,
		OS:           "linux",
		Created:      v1.Time{Time: epoch},
		Config: v1.Config{
			Entrypoint: s.Entrypoint,
			User:       s.User,
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
			WorkingDir: "/",
			Labels:     s.Labels,
		},
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, fmt.Errorf("set config of %s: %w", s.Name, err)
	}
	for _, l := range []struct {
		what  string
		files []File
	}{{"base: CA certificates, passwd, tmp", s.Base}, {"app: " + s.Name, s.App}} {
		layer, err := Layer(l.files)
		if err != nil {
			return nil, fmt.Errorf("build %s layer of %s: %w", l.what, s.Name, err)
		}
		img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
			Created: v1.Time{Time: epoch}, CreatedBy: "fedmesh images (" + l.what + ")"}})
		if err != nil {
			return nil, fmt.Errorf("append layer to %s: %w", s.Name, err)
		}
	}
	return img, nil
}

// Layer makes a gzip layer of files with every parent directory, sorted by
// path, owned by 0:0 and dated epoch.
func Layer(files []File) (v1.Layer, error) {
	b, err := layerTar(files)
	if err != nil {
		return nil, err
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
}

func layerTar(files []File) ([]byte, error) {
	all := map[string]File{}
	for _, f := range files {
		if f.Path == "" || path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return nil, fmt.Errorf("file path %q: want a clean relative path", f.Path)
		}
		if _, dup := all[f.Path]; dup {
			return nil, fmt.Errorf("file path %q given twice", f.Path)
		}
		all[f.Path] = f
		for d := path.Dir(f.Path); d != "."; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = File{Path: d, Dir: true, Mode: 0o755}
			}
		}
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := all[p]
		h := &tar.Header{Name: p, Mode: f.Mode, ModTime: epoch, Format: tar.FormatPAX}
		if f.Dir {
			h.Typeflag, h.Name = tar.TypeDir, p+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("write tar header of %s: %w", p, err)
		}
		if !f.Dir {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, fmt.Errorf("write %s into the layer: %w", p, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

// Nonroot is the uid and gid of the images that need no privilege.
const Nonroot = "65532:65532"

// BaseFiles are the files every image carries: the CA bundle (TLS to
// anything outside fedmesh's own CA), passwd and group naming root and
// nonroot (so tools that resolve the uid work), and a world-writable /tmp.
func BaseFiles(caBundle []byte) []File {
	return []File{
		{Path: "etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Data: caBundle},
		{Path: "etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n")},
		{Path: "etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{Path: "tmp", Mode: 0o1777, Dir: true},
	}
}
