// Command fedmesh-agent runs on every node: it enforces federated policy in eBPF, tunnels to other sites and advertises the node's pod CIDR over BGP.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/fedmesh/fedmesh/federation/buildinfo"
)

func main() {
	cmd := &cobra.Command{
		Use:          "fedmesh-agent",
		Short:        "The fedmesh node agent (eBPF policy, WireGuard, BGP)",
		Version:      buildinfo.Version(),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fmt.Errorf("fedmesh-agent has no behaviour yet; see its issue")
		},
	}
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}
