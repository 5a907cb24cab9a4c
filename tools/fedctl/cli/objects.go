package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func nodeCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "node", Short: "List and inspect nodes"}
	var cluster string
	list := &cobra.Command{
		Use:   "list",
		Short: "List nodes with their underlay address, pod CIDRs and enforced revision",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.nodes.ListNodes(ctx, &fedmeshv1.ListNodesRequest{Cluster: cluster})
				if err != nil {
					return err
				}
				t := &table{header: []string{"CLUSTER", "NODE", "UNDERLAY", "POD CIDRS", "WIREGUARD KEY", "ENFORCED"}}
				var objs []proto.Message
				for _, n := range resp.GetNodes() {
					key := n.GetWireguardPublicKey()
					if len(key) > 10 {
						key = key[:10] + "…"
					}
					t.add(n.GetCluster(), n.GetName(), n.GetUnderlayIp(), orNone(n.GetPodCidrs()), key,
						strconv.FormatUint(n.GetStatus().GetEnforcedRevision(), 10))
					objs = append(objs, n)
				}
				return g.print(t, objs...)
			})
		},
	}
	list.Flags().StringVar(&cluster, "cluster", "", "only this cluster's nodes")
	var ttl time.Duration
	token := &cobra.Command{
		Use:   "token CLUSTER NODE",
		Short: "Create a single-use join token for one node's agent (needs an admin certificate)",
		Example: `  fedctl --ca ca.crt --cert admin.crt --key admin.key node token east node-1
  fedmesh-agent --cluster east --node node-1 --ca-file ca.crt --join-token <token> ...`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				if !g.isAdmin() {
					return fmt.Errorf("node token needs mTLS as admin: give --ca, --cert and --key of an admin certificate ('fedctl ca issue-admin')")
				}
				tok, err := createJoinToken(ctx, c, args[0], args[1], ttl)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.errOut, "join token for %s, single use, expires %s\n", tok.GetPrincipal(), tok.GetExpireTime().AsTime().UTC().Format(time.RFC3339))
				fmt.Fprintln(g.out, tok.GetToken())
				return nil
			})
		},
	}
	token.Flags().DurationVar(&ttl, "ttl", auth.DefaultTokenTTL, "how long the token may be used")
	c.AddCommand(list, token)
	return c
}

func endpointCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "endpoint", Aliases: []string{"endpoints", "ep"}, Short: "List federation endpoints (pods) and their identities"}
	var cluster, namespace, node, selector string
	list := &cobra.Command{
		Use:   "list",
		Short: "List endpoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel, err := labels.Parse(selector)
			if err != nil {
				return fmt.Errorf("selector %q: %w", selector, err)
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.eps.ListEndpoints(ctx, &fedmeshv1.ListEndpointsRequest{Cluster: cluster, Namespace: namespace, Node: node})
				if err != nil {
					return err
				}
				t := &table{header: []string{"CLUSTER", "NAMESPACE", "NAME", "IPS", "IDENTITY", "NODE", "LABELS"}}
				var objs []proto.Message
				for _, e := range resp.GetEndpoints() {
					if !sel.Matches(labels.Set(e.GetLabels())) {
						continue
					}
					t.add(e.GetCluster(), e.GetNamespace(), e.GetName(), orNone(e.GetIps()),
						strconv.FormatUint(uint64(e.GetIdentity()), 10), e.GetNode(), labelString(e.GetLabels()))
					objs = append(objs, e)
				}
				return g.print(t, objs...)
			})
		},
	}
	list.Flags().StringVar(&cluster, "cluster", "", "only this cluster's endpoints")
	list.Flags().StringVarP(&namespace, "namespace", "n", "", "only this namespace")
	list.Flags().StringVar(&node, "node", "", "only this node's endpoints (needs --cluster)")
	list.Flags().StringVarP(&selector, "selector", "l", "", "only endpoints whose labels match this selector (app=web,tier!=db)")
	c.AddCommand(list)
	return c
}

func svcType(t fedmeshv1.ServiceType) string {
	switch t {
	case fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS:
		return "Headless"
	case fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP:
		return "ClusterSetIP"
	}
	return "-"
}

func protoName(p fedmeshv1.Protocol) string {
	if p == fedmeshv1.Protocol_PROTOCOL_UNSPECIFIED {
		return "TCP"
	}
	return strings.TrimPrefix(p.String(), "PROTOCOL_")
}

func portsString(ports []*fedmeshv1.ServicePort) string {
	var parts []string
	for _, p := range ports {
		s := fmt.Sprintf("%d/%s", p.GetPort(), protoName(p.GetProtocol()))
		if p.GetName() != "" {
			s = p.GetName() + ":" + s
		}
		parts = append(parts, s)
	}
	return orNone(parts)
}

func conditionsString(cs []*fedmeshv1.ServiceCondition) string {
	var parts []string
	for _, c := range cs {
		s := c.GetType() + "=" + c.GetStatus()
		if c.GetReason() != "" {
			s += "(" + c.GetReason() + ")"
		}
		parts = append(parts, s)
	}
	return orNone(parts)
}
