// Command modcheck fails when a module compiled into fedmesh (any package or
// test of the product module) is at a pseudo-version — an untagged commit —
// unless the module is on the allowlist with a reason. Security teams vet
// the dependencies of a network component by release; an untagged commit
// has no release notes, no advisory coverage and no changelog to read.
//
// It checks the modules `go list -deps -test ./...` compiles, not every line
// of `go list -m all`: the full module graph also names modules that only
// dependencies' own tests use (gopkg.in/check.v1, say), which no fedmesh
// binary or test ever builds and which fedmesh cannot change.
//
// With -tools it also fails when the product's go.mod has tool directives or
// the product module itself requires (a `go mod graph` edge from the main
// module) a module that provides a dev tool, so the tools' requirements
// cannot leak into the binaries again. Edges from dependencies are not
// fedmesh's: cilium/ebpf's go.mod requires staticcheck for its own lint,
// which Go never compiles into anything fedmesh builds.
//
// Usage (as make lint runs it):
//
//	go -C tools/devtools run ./modcheck -root ../.. -allow pseudo-allowlist.txt -tools go.mod
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
)

func main() {
	root := flag.String("root", ".", "directory of the product module")
	allowFile := flag.String("allow", "pseudo-allowlist.txt", "allowlist: one module path per line, then a # reason")
	toolsMod := flag.String("tools", "", "go.mod of the dev tools module: none of its tools may be in the product's module graph")
	flag.Parse()
	if *toolsMod != "" {
		if err := checkTools(*root, *toolsMod); err != nil {
			fmt.Fprintln(os.Stderr, "modcheck:", err)
			os.Exit(1)
		}
	}
	if err := run(*root, *allowFile); err != nil {
		fmt.Fprintln(os.Stderr, "modcheck:", err)
		os.Exit(1)
	}
}

func run(root, allowFile string) error {
	allow, err := readAllowlist(allowFile)
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "list", "-deps", "-test", "-f", "{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}}{{with .Replace}} => {{.Path}} {{.Version}}{{end}}{{end}}{{end}}", "./...")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=readonly")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("list the product's compiled modules in %s: %w: %s", root, err, stderr.String())
	}
	mods := map[string]string{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) >= 5 && f[2] == "=>" {
			f = f[3:] // a replacement is what gets compiled
		}
		if len(f) >= 2 {
			mods[f[0]] = f[1]
		}
	}
	bad, stale := check(mods, allow)
	for _, m := range stale {
		fmt.Fprintf(os.Stderr, "modcheck: %s is on the allowlist but no longer compiled at a pseudo-version; remove it from %s\n", m, allowFile)
	}
	if len(bad) > 0 {
		return fmt.Errorf("modules at a pseudo-version (an untagged commit) outside the allowlist:\n  %s\nuse a tagged release, or add the module to %s with the reason no release fits",
			strings.Join(bad, "\n  "), filepath.Clean(allowFile))
	}
	if len(stale) > 0 {
		return errors.New("stale allowlist entries")
	}
	fmt.Printf("modcheck: %d compiled modules, every pseudo-version allowlisted (%d entries)\n", len(mods), len(allow))
	return nil
}

// check returns the modules at a pseudo-version that the allowlist does not
// name ("path version", sorted) and the allowlist entries that name no
// pseudo-versioned module any more (so the list cannot rot into a blanket
// exception).
func check(mods map[string]string, allow map[string]bool) (bad, stale []string) {
	used := map[string]bool{}
	for path, v := range mods {
		if !module.IsPseudoVersion(v) {
			continue
		}
		if allow[path] {
			used[path] = true
			continue
		}
		bad = append(bad, path+" "+v)
	}
	for path := range allow {
		if !used[path] {
			stale = append(stale, path)
		}
	}
	slices.Sort(bad)
	slices.Sort(stale)
	return bad, stale
}

// readAllowlist reads "module/path  # reason" lines; a line without a
// reason is refused, so every exception says why it exists.
func readAllowlist(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read allowlist: %w", err)
	}
	defer f.Close()
	allow := map[string]bool{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, reason, _ := strings.Cut(line, "#")
		mod = strings.TrimSpace(mod)
		if strings.TrimSpace(reason) == "" {
			return nil, fmt.Errorf("%s:%d: %s has no reason; write why no tagged release fits after a #", path, n, mod)
		}
		if err := module.CheckPath(mod); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		allow[mod] = true
	}
	return allow, sc.Err()
}

// checkTools fails when the product module declares tools or its module
// graph reaches a module that provides one of the dev tools. A tool module
// the product also imports for its own code (cilium/ebpf provides bpf2go)
// is exempt: the product needs it anyway.
func checkTools(root, toolsMod string) error {
	product, err := parseModFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return err
	}
	if len(product.Tool) > 0 {
		return fmt.Errorf("%s declares tool %s: development tools belong in %s", filepath.Join(root, "go.mod"), product.Tool[0].Path, toolsMod)
	}
	tools, err := parseModFile(toolsMod)
	if err != nil {
		return err
	}
	direct := map[string]bool{}
	for _, r := range product.Require {
		if !r.Indirect {
			direct[r.Mod.Path] = true
		}
	}
	toolModules := map[string]string{} // module path -> tool package
	for _, t := range tools.Tool {
		if m := providingModule(t.Path, tools.Require); m != "" && !direct[m] {
			toolModules[m] = t.Path
		}
	}
	cmd := exec.Command("go", "mod", "graph")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("go mod graph in %s: %w", root, err)
	}
	found := inGraph(string(out), product.Module.Mod.Path, toolModules)
	if len(found) > 0 {
		return fmt.Errorf("the product's module graph holds dev tool modules:\n  %s\nrun the tool from %s instead of importing it", strings.Join(found, "\n  "), toolsMod)
	}
	return nil
}

// providingModule is the required module whose path is the longest prefix
// of the tool package path.
func providingModule(pkg string, reqs []*modfile.Require) string {
	best := ""
	for _, r := range reqs {
		p := r.Mod.Path
		if (pkg == p || strings.HasPrefix(pkg, p+"/")) && len(p) > len(best) {
			best = p
		}
	}
	return best
}

// inGraph returns "module (provides tool)" for each tool module that the
// main module requires in a `go mod graph` listing, sorted.
func inGraph(graph, main string, toolModules map[string]string) []string {
	seen := map[string]bool{}
	for line := range strings.Lines(graph) {
		from, to, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || from != main {
			continue
		}
		path, _, _ := strings.Cut(to, "@")
		if _, ok := toolModules[path]; ok {
			seen[path] = true
		}
	}
	var found []string
	for path := range seen {
		found = append(found, path+" (provides "+toolModules[path]+")")
	}
	slices.Sort(found)
	return found
}

func parseModFile(path string) (*modfile.File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	f, err := modfile.Parse(path, b, nil)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return f, nil
}
