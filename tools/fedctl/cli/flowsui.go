package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// flowUICmd prints a one-time sign-in link to the service-graph page of
// the replica fedctl talks to (controlplane/flowui): the browser session
// reads what this fedctl's certificate may read.
func flowUICmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ui",
		Short: "A one-time link to the service-graph page (clusters, workloads and the flows between them)",
		Long: `Prints a link that signs a browser in to the service-graph page of the
replica fedctl talks to (started with --ui-addr), as this fedctl's principal:
an admin sees every flow, a cluster's principal the flows touching its cluster.
The link works once, within a minute, on that replica only. The page is served
with the replica's certificate from the federation CA: trust that CA in the
browser (or accept the certificate once).`,
		Example: `  fedctl flows ui`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.cc.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			resp, err := fedmeshv1.NewUIServiceClient(c.cc).CreateUISession(ctx, &fedmeshv1.CreateUISessionRequest{})
			if err != nil {
				return err
			}
			if g.output == "json" || g.output == "yaml" {
				return g.print(nil, resp)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n(valid once, until %s)\n", resp.GetUrl(), resp.GetExpires().AsTime().Local().Format("15:04:05"))
			return err
		},
	}
}
