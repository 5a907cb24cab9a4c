// Package buildinfo owns the version every fedmesh binary reports.
package buildinfo

import "runtime/debug"

// version is set at link time: -ldflags "-X github.com/fedmesh/fedmesh/federation/buildinfo.version=v0.1.0".
var version string

// Version returns the linked version, else the module version or VCS
// revision Go recorded, else "devel".
func Version() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "devel-" + s.Value[:12]
		}
	}
	return "devel"
}
