package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/fedmesh/fedmesh/tools/fedctl/config"
)

func configCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Contexts: named control planes with their credentials ($XDG_CONFIG_HOME/fedmesh/config.yaml)",
		Long: `Manage the contexts of fedctl's config file, $XDG_CONFIG_HOME/fedmesh/config.yaml
(default ~/.config/fedmesh/config.yaml). A context names the control-plane
replicas and the CA, certificate and key that reach them; the current context
is used unless --context (env FEDMESH_CONTEXT) names another, and flags and
environment variables override what a context says (see 'fedctl --help').`,
		Example: `  fedctl config set-context prod --server cp1.example:9000,cp2.example:9000 --ca ca.crt --cert admin.crt --key admin.key
  fedctl config use-context prod
  fedctl --context staging policy list`,
	}
	c.AddCommand(getContextsCmd(g), currentContextCmd(g), useContextCmd(g), setContextCmd(g), deleteContextCmd(g))
	return c
}

// configPath is the config file's path, or an error saying which variable
// to set.
func (g *globals) configPath() (string, error) { return config.Path(g.getenv) }

func (g *globals) loadConfig() (string, *config.File, error) {
	path, err := g.configPath()
	if err != nil {
		return "", nil, err
	}
	f, err := config.Load(path)
	return path, f, err
}

func getContextsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get-contexts",
		Short: "List the contexts; * marks the current one",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, f, err := g.loadConfig()
			if err != nil {
				return err
			}
			switch g.output {
			case "json":
				b, err := json.MarshalIndent(f, "", "  ")
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(g.out, string(b))
				return err
			case "yaml":
				enc := yaml.NewEncoder(g.out)
				enc.SetIndent(2)
				if err := enc.Encode(f); err != nil {
					return err
				}
				return enc.Close()
			}
			t := &table{header: []string{"CURRENT", "NAME", "SERVERS", "TRANSPORT", "CERT"}}
			for _, c := range f.Contexts {
				cur := ""
				if c.Name == f.CurrentContext {
					cur = "*"
				}
				servers := strings.Join(c.Servers, ",")
				if servers == "" {
					servers = "<default>"
				}
				transport := "mTLS, CA " + c.CA
				switch {
				case c.InsecureDev:
					transport = "plaintext (insecure-dev)"
				case c.CA == "":
					transport = "<none>"
				}
				t.add(cur, c.Name, servers, transport, orNone(nonEmpty(c.Cert)))
			}
			return g.print(t)
		},
	}
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

func currentContextCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "current-context",
		Short: "Print the current context's name",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			path, f, err := g.loadConfig()
			if err != nil {
				return err
			}
			if f.CurrentContext == "" {
				if len(f.Contexts) == 0 {
					return fmt.Errorf("no current context: %s has no contexts; create one with 'fedctl config set-context'", path)
				}
				return fmt.Errorf("no current context; choose one of %s with 'fedctl config use-context NAME'", strings.Join(f.Names(), ", "))
			}
			fmt.Fprintln(g.out, f.CurrentContext)
			return nil
		},
	}
}

func useContextCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "use-context NAME",
		Short: "Make NAME the current context",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			path, err := g.configPath()
			if err != nil {
				return err
			}
			if err := config.Update(path, func(f *config.File) error { return f.Use(args[0]) }); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "switched to context %q\n", args[0])
			return nil
		},
	}
}

func deleteContextCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete-context NAME",
		Short: "Remove a context (the files it names stay)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			path, err := g.configPath()
			if err != nil {
				return err
			}
			wasCurrent := false
			err = config.Update(path, func(f *config.File) error {
				wasCurrent = f.CurrentContext == args[0]
				return f.Delete(args[0])
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "deleted context %q\n", args[0])
			if wasCurrent {
				fmt.Fprintln(g.out, "it was the current context; choose another with 'fedctl config use-context NAME'")
			}
			return nil
		},
	}
}

func setContextCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "set-context NAME [--server HOST:PORT,...] [--ca FILE --cert FILE --key FILE | --insecure-dev]",
		Short: "Create a context, or change the settings given of an existing one",
		Long: `Create the context NAME from the global flags given on this command line
(--server, --ca, --cert, --key, --insecure-dev; environment variables are not
stored), or change just those settings of an existing context. File paths are
stored absolute. The first context becomes the current one.`,
		Example: `  fedctl config set-context prod --server 10.0.0.1:9000,10.0.0.2:9000 --ca ca.crt --cert admin.crt --key admin.key
  fedctl config set-context prod --server 10.0.0.3:9000
  fedctl config set-context dev --server 127.0.0.1:9000 --insecure-dev`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			fl := cmd.Flags()
			given := func(n string) bool { return fl.Changed(n) }
			if !given("server") && !given("ca") && !given("cert") && !given("key") && !given("insecure-dev") {
				return errors.New("nothing to set: give --server, --ca, --cert, --key or --insecure-dev")
			}
			var servers []string
			if given("server") {
				if servers = config.SplitServers(g.servers); len(servers) == 0 {
					return errors.New("--server: give at least one host:port")
				}
			}
			files := map[string]*string{"ca": &g.creds.caFile, "cert": &g.creds.certFile, "key": &g.creds.keyFile}
			for _, flag := range []string{"ca", "cert", "key"} {
				if !given(flag) {
					continue
				}
				p := files[flag]
				abs, err := filepath.Abs(*p)
				if err != nil {
					return fmt.Errorf("--%s %s: %w", flag, *p, err)
				}
				if _, err := os.Stat(abs); err != nil {
					return fmt.Errorf("--%s: %w", flag, err)
				}
				*p = abs
			}
			path, err := g.configPath()
			if err != nil {
				return err
			}
			created := false
			err = config.Update(path, func(f *config.File) error {
				c, err := f.Context(name)
				if err != nil {
					c, created = config.Context{Name: name}, true
				}
				if servers != nil {
					c.Servers = servers
				}
				if given("insecure-dev") {
					c.InsecureDev = g.insecure
					if g.insecure {
						c.CA, c.Cert, c.Key = "", "", ""
					}
				}
				if given("ca") || given("cert") || given("key") {
					if given("insecure-dev") && g.insecure {
						return errors.New("--insecure-dev excludes --ca, --cert and --key")
					}
					c.InsecureDev = false
					if given("ca") {
						c.CA = g.creds.caFile
					}
					if given("cert") {
						c.Cert = g.creds.certFile
					}
					if given("key") {
						c.Key = g.creds.keyFile
					}
				}
				f.Set(c)
				return nil
			})
			if err != nil {
				return fmt.Errorf("set context %q: %w", name, err)
			}
			verb := "modified"
			if created {
				verb = "created"
			}
			fmt.Fprintf(g.out, "context %q %s in %s\n", name, verb, path)
			return nil
		},
	}
}
