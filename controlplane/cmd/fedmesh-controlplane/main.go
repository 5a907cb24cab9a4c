// Command fedmesh-controlplane runs one replica of the Raft-replicated fedmesh control plane.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/fedmesh/fedmesh/federation/buildinfo"
)

func main() {
	cmd := &cobra.Command{
		Use:          "fedmesh-controlplane",
		Short:        "One replica of the fedmesh control plane (Raft store, gRPC API, watch fan-out)",
		Version:      buildinfo.Version(),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fmt.Errorf("fedmesh-controlplane has no behaviour yet; see its issue")
		},
	}
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}
