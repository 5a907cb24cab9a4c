package cli

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// controlPlaneCmd administers the replicas: list them, add one, remove one.
func controlPlaneCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "controlplane", Aliases: []string{"cp"}, Short: "Administer the control-plane replicas (Raft membership)"}
	members := &cobra.Command{Use: "members", Short: "List, add and remove control-plane replicas"}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the replicas and which one leads",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := fedmeshv1.NewControlPlaneServiceClient(c.cc).ListMembers(ctx, &fedmeshv1.ListMembersRequest{})
				if err != nil {
					return err
				}
				t := &table{header: []string{"ID", "RAFT", "GRPC", "SUFFRAGE", "LEADER"}}
				var objs []proto.Message
				for _, m := range resp.GetMembers() {
					t.add(m.GetId(), m.GetRaftAddress(), m.GetGrpcAddress(), suffrage(m), strconv.FormatBool(m.GetLeader()))
					objs = append(objs, m)
				}
				return g.print(t, objs...)
			})
		},
	}
	var grpcAddr string
	var nonVoter bool
	add := &cobra.Command{
		Use:   "add ID RAFT_ADDRESS",
		Short: "Add a replica (start it first with an empty data dir and no --bootstrap-peers)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				_, err := fedmeshv1.NewControlPlaneServiceClient(c.cc).AddMember(ctx, &fedmeshv1.AddMemberRequest{
					Id: args[0], RaftAddress: args[1], GrpcAddress: grpcAddr, Nonvoter: nonVoter})
				if err != nil {
					return err
				}
				fmt.Fprintf(g.out, "replica %s added\n", args[0])
				return nil
			})
		},
	}
	add.Flags().StringVar(&grpcAddr, "grpc-address", "", "the new replica's --grpc-addr, so others can forward to it")
	add.Flags().BoolVar(&nonVoter, "nonvoter", false, "add it as a non-voting read replica: it applies the log and serves reads and watches (point agents at it) but never votes or leads, so it adds fan-out capacity without slowing commits")
	add.Flags().BoolVar(&nonVoter, "non-voter", false, "same as --nonvoter")
	_ = add.Flags().MarkHidden("non-voter")
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a replica from the Raft group",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				if _, err := fedmeshv1.NewControlPlaneServiceClient(c.cc).RemoveMember(ctx, &fedmeshv1.RemoveMemberRequest{Id: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(g.out, "replica %s removed\n", args[0])
				return nil
			})
		},
	}
	members.AddCommand(list, add, remove)
	c.AddCommand(members)
	return c
}

// suffrage names a member's part in Raft: a voter counts for quorum and
// may lead; a nonvoter only replicates (a read replica).
func suffrage(m *fedmeshv1.Member) string {
	if m.GetVoter() {
		return "voter"
	}
	return "nonvoter"
}
