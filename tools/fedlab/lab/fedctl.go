package lab

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"

	"github.com/fedmesh/fedmesh/tools/fedctl/config"
)

// A lab is a context in fedctl's config file: `fedlab up` adds it, `fedlab
// down` removes it, and `fedlab fedctl ARGS` runs fedctl with it inside the
// management namespace (the lab adds no route to the root namespace, so the
// replicas are reachable only from there).

// DefaultName is the lab's name when --name is not given.
const DefaultName = "fl"

// ContextName is the fedctl context of the lab called name.
func ContextName(name string) string { return "fedlab-" + name }

// FedctlContext is the lab's fedctl context: its replicas and the admin
// certificate.
func (l *Lab) FedctlContext() config.Context {
	certPath, keyPath := l.adminCert()
	return config.Context{
		Name:    ContextName(l.Topo.Name),
		Servers: l.Topo.ControlPlaneAddrs(),
		CA:      caFile(l.Dir),
		Cert:    certPath,
		Key:     keyPath,
	}
}

// WriteFedctlContext adds (or refreshes) the lab's context in the config
// file at path, unless it is there already.
func (l *Lab) WriteFedctlContext(path string) error {
	want := l.FedctlContext()
	if f, err := config.Load(path); err == nil {
		if have, err := f.Context(want.Name); err == nil && sameContext(have, want) {
			return nil
		}
	}
	if err := config.Update(path, func(f *config.File) error { f.Set(want); return nil }); err != nil {
		return fmt.Errorf("write fedctl context %s: %w", want.Name, err)
	}
	return nil
}

func sameContext(a, b config.Context) bool {
	return a.Name == b.Name && strings.Join(a.Servers, ",") == strings.Join(b.Servers, ",") &&
		a.CA == b.CA && a.Cert == b.Cert && a.Key == b.Key && a.InsecureDev == b.InsecureDev
}

// RemoveFedctlContext removes the context of lab name from the config file
// at path; a file or context that is not there is not an error, and a
// missing file is not created.
func RemoveFedctlContext(path, name string) error {
	f, err := config.Load(path)
	if err != nil {
		return fmt.Errorf("remove fedctl context %s: %w", ContextName(name), err)
	}
	if _, err := f.Context(ContextName(name)); err != nil {
		return nil
	}
	err = config.Update(path, func(f *config.File) error {
		var unknown *config.UnknownContextError
		if err := f.Delete(ContextName(name)); err != nil && !errors.As(err, &unknown) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove fedctl context %s: %w", ContextName(name), err)
	}
	return nil
}

// ExecFedctl replaces this process by the lab's fedctl running args with
// the lab's context, inside the management namespace: stdin, stdout, the
// terminal, signals and the exit status are fedctl's own. It writes the
// context first when the config file at path lacks it (a lab brought up by
// the e2e tests, or before contexts existed). fedctl's FEDMESH_* variables
// are dropped so they cannot point it elsewhere; flags in args still
// override the context. It returns only on failure.
func (l *Lab) ExecFedctl(path string, args []string) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	if l.State.Config.BinDir == "" {
		return fmt.Errorf("lab %q runs no control plane (it was brought up without --bin-dir)", l.Topo.Name)
	}
	bin := l.bin("fedctl")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("find fedctl: %w (make build puts it next to fedlab)", err)
	}
	if err := l.WriteFedctlContext(path); err != nil {
		return err
	}
	target, err := netns.GetFromName(l.Topo.Mgmt.NS)
	if err != nil {
		return fmt.Errorf("open the lab's management namespace %s: %w", l.Topo.Mgmt.NS, err)
	}
	defer target.Close()
	// The namespace belongs to the thread: stay on it until execve, which
	// keeps the calling thread's namespaces. The thread is never unlocked,
	// so if exec fails the runtime retires it instead of reusing it.
	runtime.LockOSThread()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter the lab's management namespace %s: %w", l.Topo.Mgmt.NS, err)
	}
	argv := append([]string{"fedctl", "--context", ContextName(l.Topo.Name)}, args...)
	if err := syscall.Exec(bin, argv, fedctlEnv(os.Environ())); err != nil {
		return fmt.Errorf("run %s: %w", bin, err)
	}
	return nil
}

// fedctlEnv is env without the variables that would override the lab's
// context.
func fedctlEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case config.EnvContext, config.EnvServer, config.EnvCA, config.EnvCert, config.EnvKey:
			continue
		}
		out = append(out, kv)
	}
	return out
}

// FedctlCommand is how a user runs fedctl in the lab called name, e.g.
// "sudo ./bin/fedlab fedctl"; fedlab is the path to the fedlab binary.
func FedctlCommand(fedlab, name string) string {
	if name == DefaultName {
		return "sudo " + fedlab + " fedctl"
	}
	return "sudo " + fedlab + " --name " + name + " fedctl"
}
