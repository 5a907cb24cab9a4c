package cli

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/fedmesh/fedmesh/federation/buildinfo"
)

// versionCmd prints fedctl's own build: version, Go version and the key
// dependency versions a bug report needs. It does not contact the control
// plane.
func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print fedctl's version, Go version and key dependency versions (-o json|yaml for a bug report)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return printVersion(g, buildinfo.Read())
		},
	}
}

func printVersion(g *globals, info buildinfo.Info) error {
	switch g.output {
	case "table", "":
		_, err := fmt.Fprint(g.out, "fedctl ", info.String())
		return err
	case "json", "yaml":
		b, err := json.MarshalIndent(info, "", "  ")
		if err != nil {
			return fmt.Errorf("encode version: %w", err)
		}
		if g.output == "yaml" {
			if b, err = yaml.JSONToYAML(b); err != nil {
				return fmt.Errorf("encode version: %w", err)
			}
		}
		_, err = fmt.Fprintln(g.out, string(b))
		return err
	}
	return fmt.Errorf("unknown output format %q: use table, json or yaml", g.output)
}
