// Command images builds fedmesh's OCI images without a Docker daemon or a
// registry (make images): it compiles each component as a static binary
// (CGO off, -trimpath, stripped) and wraps it with go-containerregistry into
// an image of two layers, the shared base (CA certificates, passwd, /tmp)
// and the binary. Every timestamp, owner and tar order is fixed, so the same
// sources and version give the same digests (images_test.go checks it). It
// writes one docker-archive tarball per image (what `ctr images import`,
// `docker load` and `crane push` read) and images.json listing every
// image's reference, digest and size, and prints the same table.
//
// It lives in the dev tools module, not in the product's: the binaries
// fedmesh ships never import go-containerregistry, so the product's go.mod
// does not carry it (issue 25).
//
// Usage (as make images runs it):
//
//	go -C tools/devtools run ./images -root $PWD -out $PWD/.cache/images -version $(git describe --always --dirty)
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// component is one image: which package to compile, in which module, and
// how the image runs it.
type component struct {
	name string
	// pkg is the Go package to build, relative to its module's root.
	pkg string
	// devtools: the package is in this module (the lab's pause), not the
	// product's.
	devtools bool
	bin      string   // binary name inside /usr/local/bin
	args     []string // fixed arguments after the binary
	user     string
	title    string
}

// components are the images fedmesh ships and the two the kubelet lab needs.
// Only the agent runs as root: it loads eBPF programs and programs links
// (with a bounded capability set in the chart); the rest need no privilege.
var components = []component{
	{name: "fedmesh-controlplane", pkg: "./controlplane/cmd/fedmesh-controlplane", bin: "fedmesh-controlplane", user: Nonroot, title: "fedmesh control plane (Raft replica, gRPC API)"},
	{name: "fedmesh-syncer", pkg: "./federation/cmd/fedmesh-syncer", bin: "fedmesh-syncer", user: Nonroot, title: "fedmesh syncer (one per member cluster)"},
	{name: "fedmesh-agent", pkg: "./nodeagent/cmd/fedmesh-agent", bin: "fedmesh-agent", user: "0:0", title: "fedmesh node agent (eBPF policy, WireGuard, BGP)"},
	{name: "fedmesh-labapp", pkg: "./tools/fedlab", bin: "fedlab", args: []string{"probe-serve", "--port", "8080"}, user: Nonroot, title: "fedlab probe server: the lab's demo workload (TCP and UDP on 8080)"},
	{name: "fedmesh-pause", pkg: "./images/pause", devtools: true, bin: "pause", user: "65535:65535", title: "pod sandbox for the lab's kubelets"},
}

// Options say what to build and where.
type Options struct {
	Root     string // the fedmesh repository
	Out      string // output directory (tarballs, images.json, bin/)
	Version  string // image tag and the binaries' version
	Registry string // registry part of every reference
	Only     []string
	CABundle string // CA certificates file baked into every image
	Arch     string
}

// Result is one built image, as images.json records it.
type Result struct {
	Name string `json:"name"`
	// Ref is registry/name:version, the name the tarball loads as.
	Ref string `json:"ref"`
	// Digest is the manifest digest (what a registry serves it as).
	Digest string `json:"digest"`
	// ID is the config digest, the image ID runtimes show.
	ID string `json:"id"`
	// Size is the sum of the compressed layers, in bytes.
	Size int64  `json:"size"`
	File string `json:"file"`
}

func main() {
	var o Options
	var only string
	flag.StringVar(&o.Root, "root", "../..", "the fedmesh repository")
	flag.StringVar(&o.Out, "out", "../../.cache/images", "output directory")
	flag.StringVar(&o.Version, "version", "dev", "image tag and binary version")
	flag.StringVar(&o.Registry, "registry", "fedmesh.local", "registry part of the image references")
	flag.StringVar(&only, "only", "", "comma-separated image names to build (default: all)")
	flag.StringVar(&o.CABundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA certificates to put in every image (Debian: ca-certificates)")
	flag.StringVar(&o.Arch, "arch", runtime.GOARCH, "GOARCH of the images")
	flag.Parse()
	if only != "" {
		o.Only = strings.Split(only, ",")
	}
	res, err := Run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
	printTable(os.Stdout, res)
}

// tagPattern is what a tag may hold (the distribution spec's rule).
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// Run compiles the binaries, builds every image and writes the tarballs
// and images.json into o.Out.
func Run(o Options) ([]Result, error) {
	if !tagPattern.MatchString(o.Version) {
		return nil, fmt.Errorf("-version %q: an image tag is letters, digits, '_', '.' and '-', at most 128, not starting with '.' or '-'", o.Version)
	}
	var comps []component
	for _, c := range components {
		if len(o.Only) == 0 || slices.Contains(o.Only, c.name) {
			comps = append(comps, c)
		}
	}
	if len(comps) == 0 {
		return nil, fmt.Errorf("-only %v names no image; have %s", o.Only, strings.Join(names(), ", "))
	}
	ca, err := os.ReadFile(o.CABundle)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w (install Debian's ca-certificates or pass -ca-bundle)", err)
	}
	binDir := filepath.Join(o.Out, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, fmt.Errorf("create output directory: %w", err)
	}
	if err := compile(o, comps, binDir); err != nil {
		return nil, err
	}
	var out []Result
	for _, c := range comps {
		r, err := buildOne(o, c, ca, binDir)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(o.Out, "images.json"), append(b, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("write images.json: %w", err)
	}
	return out, nil
}

func names() []string {
	var n []string
	for _, c := range components {
		n = append(n, c.name)
	}
	return n
}

// compile builds the static binaries: the product's in one go build, the
// dev tools module's in another.
func compile(o Options, comps []component, binDir string) error {
	var product, dev []string
	for _, c := range comps {
		if c.devtools {
			dev = append(dev, c.pkg)
		} else {
			product = append(product, c.pkg)
		}
	}
	for _, b := range []struct {
		dir  string
		pkgs []string
	}{{o.Root, product}, {filepath.Join(o.Root, "tools", "devtools"), dev}} {
		if len(b.pkgs) == 0 {
			continue
		}
		args := append([]string{"build", "-trimpath",
			"-ldflags", "-s -w -X github.com/fedmesh/fedmesh/federation/buildinfo.version=" + o.Version,
			"-o", binDir + "/"}, b.pkgs...)
		cmd := exec.Command("go", args...)
		cmd.Dir = b.dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.Arch)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build %s in %s: %w: %s", strings.Join(b.pkgs, " "), b.dir, err, strings.TrimSpace(stderr.String()))
		}
	}
	return nil
}

func buildOne(o Options, c component, ca []byte, binDir string) (Result, error) {
	bin, err := os.ReadFile(filepath.Join(binDir, c.bin))
	if err != nil {
		return Result{}, fmt.Errorf("read binary of %s: %w", c.name, err)
	}
	img, err := Build(spec(c, o, ca, bin))
	if err != nil {
		return Result{}, err
	}
	ref := o.Registry + "/" + c.name + ":" + o.Version
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return Result{}, fmt.Errorf("image reference %s: %w", ref, err)
	}
	file := filepath.Join(o.Out, c.name+".tar")
	// Write then rename: a reader (the lab importing it) never sees half.
	tmp := file + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		return Result{}, fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return Result{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return Result{}, err
	}
	id, err := img.ConfigName()
	if err != nil {
		return Result{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return Result{}, err
	}
	var size int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return Result{}, err
		}
		size += n
	}
	return Result{Name: c.name, Ref: ref, Digest: digest.String(), ID: id.String(), Size: size, File: file}, nil
}

// spec is the image of component c around its binary.
func spec(c component, o Options, ca, bin []byte) Spec {
	path := "/usr/local/bin/" + c.bin
	return Spec{
		Name:       c.name,
		Entrypoint: append([]string{path}, c.args...),
		User:       c.user,
		Arch:       o.Arch,
		Labels: map[string]string{
			"org.opencontainers.image.title":       c.name,
			"org.opencontainers.image.description": c.title,
			"org.opencontainers.image.version":     o.Version,
			"org.opencontainers.image.source":      "https://github.com/fedmesh/fedmesh",
		},
		Base: BaseFiles(ca),
		App:  []File{{Path: path[1:], Mode: 0o755, Data: bin}},
	}
}

func printTable(w io.Writer, res []Result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tSIZE\tFILE")
	for _, r := range res {
		fmt.Fprintf(tw, "%s\t%s\t%.1f MB\t%s\n", r.Ref, r.Digest, float64(r.Size)/1e6, r.File)
	}
	tw.Flush()
}
