// Command fedctl is the command-line client of the fedmesh control plane.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/fedmesh/fedmesh/federation/buildinfo"
)

func main() {
	cmd := &cobra.Command{
		Use:          "fedctl",
		Short:        "Command-line client of the fedmesh control plane",
		Version:      buildinfo.Version(),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fmt.Errorf("fedctl has no behaviour yet; see its issue")
		},
	}
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}
