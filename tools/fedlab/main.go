// Command fedlab runs a whole fedmesh federation on one machine inside network namespaces.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/fedmesh/fedmesh/federation/buildinfo"
)

func main() {
	cmd := &cobra.Command{
		Use:          "fedlab",
		Short:        "A local multi-site fedmesh lab in network namespaces",
		Version:      buildinfo.Version(),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fmt.Errorf("fedlab has no behaviour yet; see its issue")
		},
	}
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}
