// Command fedmesh-syncer publishes one Kubernetes cluster's endpoints, policies and exported services to the federation and writes imported services back.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/fedmesh/fedmesh/federation/buildinfo"
)

func main() {
	cmd := &cobra.Command{
		Use:          "fedmesh-syncer",
		Short:        "The fedmesh federation syncer for one member cluster",
		Version:      buildinfo.Version(),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fmt.Errorf("fedmesh-syncer has no behaviour yet; see its issue")
		},
	}
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}
