// Package buildinfo owns what every fedmesh binary reports about itself: its
// version, the Go toolchain that built it and the versions of the
// dependencies a bug report needs (gRPC, Raft, GoBGP, cilium/ebpf,
// client-go). Everything comes from the build info Go embeds in the binary
// (the same data `go version -m` prints), plus the version linked in with
// -ldflags, so what a binary says about itself cannot drift from what it
// was built from.
package buildinfo

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// version is set at link time: -ldflags "-X github.com/fedmesh/fedmesh/federation/buildinfo.version=v0.1.0".
var version string

// KeyModules are the dependencies whose versions a bug report needs, in the
// order they are printed. A binary that does not link one leaves it out.
var KeyModules = []string{
	"google.golang.org/grpc",
	"github.com/hashicorp/raft",
	"github.com/osrg/gobgp/v4",
	"github.com/cilium/ebpf",
	"k8s.io/client-go",
}

// Info is a binary's account of itself.
type Info struct {
	// Version is the linked version, else the module version or VCS
	// revision Go recorded, else "devel".
	Version string `json:"version"`
	// GoVersion is the toolchain that built the binary.
	GoVersion string `json:"goVersion"`
	// Revision and Modified are the VCS state Go recorded at build time.
	Revision string `json:"revision,omitempty"`
	Modified bool   `json:"modified,omitempty"`
	// Dependencies maps each of KeyModules the binary links to its version.
	Dependencies map[string]string `json:"dependencies,omitempty"`
}

// Read returns the running binary's Info.
func Read() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(bi, version)
}

func fromBuildInfo(bi *debug.BuildInfo, linked string) Info {
	info := Info{Version: linked}
	if bi == nil {
		if info.Version == "" {
			info.Version = "devel"
		}
		return info
	}
	info.GoVersion = bi.GoVersion
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	if info.Version == "" {
		switch {
		case bi.Main.Version != "" && bi.Main.Version != "(devel)":
			info.Version = bi.Main.Version
		case len(info.Revision) >= 12:
			info.Version = "devel-" + info.Revision[:12]
		default:
			info.Version = "devel"
		}
	}
	linkedMods := map[string]string{}
	for _, d := range bi.Deps {
		if d.Replace != nil {
			d = d.Replace
		}
		linkedMods[d.Path] = d.Version
	}
	for _, m := range KeyModules {
		if v, ok := linkedMods[m]; ok {
			if info.Dependencies == nil {
				info.Dependencies = map[string]string{}
			}
			info.Dependencies[m] = v
		}
	}
	return info
}

// Version returns the running binary's version (Info.Version).
func Version() string { return Read().Version }

// String is the one-paragraph form `--version` prints: the version, then
// the Go version and each key dependency on a line of its own.
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", i.Version)
	if i.GoVersion != "" {
		fmt.Fprintf(&b, "  go: %s\n", i.GoVersion)
	}
	if i.Revision != "" {
		rev := i.Revision
		if i.Modified {
			rev += " (modified)"
		}
		fmt.Fprintf(&b, "  revision: %s\n", rev)
	}
	for _, m := range KeyModules {
		if v, ok := i.Dependencies[m]; ok {
			fmt.Fprintf(&b, "  %s: %s\n", m, v)
		}
	}
	return b.String()
}

// VersionTemplate is a cobra version template that prints the command's
// name and Info.String, so every binary's --version carries the same
// details as `fedctl version`.
func VersionTemplate() string {
	return "{{.Name}} " + strings.ReplaceAll(Read().String(), "{{", "{{`{{`}}")
}
