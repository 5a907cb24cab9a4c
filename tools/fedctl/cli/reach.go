package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func reachCmd(g *globals) *cobra.Command {
	var protocol string
	var port, family uint32
	var staged bool
	cmd := &cobra.Command{
		Use:   "reach SOURCE DESTINATION",
		Short: "Explain whether SOURCE may reach DESTINATION, and which rule of which policy decides",
		Long: `Explain a verdict across clusters with the same compiler the node agents load
into the dataplane. SOURCE and DESTINATION are CLUSTER/NAMESPACE/POD or any IP
(IPv4 or IPv6). A dual-stack pod named by CLUSTER/NAMESPACE/POD stands for its
address of --family, else of the family of the other side's IP, else its first
(IPv4) address. With --staged the answer is as if every staged policy were
enforced (fedctl policy promote), naming the staged policies that would deny.
Exit status 0 means allowed, 2 denied.`,
		Example: `  fedctl reach east/shop/web-0 west/db/postgres-0 --port 5432
  fedctl reach east/shop/web-0 west/db/postgres-0 --port 5432 --family 6
  fedctl reach 192.0.2.7 east/shop/web-0 --port 443
  fedctl reach fd00:10:1:1::b west/db/postgres-0 --port 5432
  fedctl reach east/shop/web-0 west/db/postgres-0 --port 5432 --staged`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := parseTarget(args[0])
			if err != nil {
				return err
			}
			dst, err := parseTarget(args[1])
			if err != nil {
				return err
			}
			proto, ok := map[string]fedmeshv1.Protocol{"tcp": fedmeshv1.Protocol_PROTOCOL_TCP, "udp": fedmeshv1.Protocol_PROTOCOL_UDP,
				"sctp": fedmeshv1.Protocol_PROTOCOL_SCTP, "icmp": fedmeshv1.Protocol_PROTOCOL_ICMP}[strings.ToLower(protocol)]
			if !ok {
				return fmt.Errorf("protocol %q: want tcp, udp, sctp or icmp", protocol)
			}
			if family != 0 && family != 4 && family != 6 {
				return fmt.Errorf("--family %d: want 4 or 6", family)
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.reach.Reach(ctx, &fedmeshv1.ReachRequest{Source: src, Destination: dst, Protocol: proto, Port: port, Family: family, Staged: staged})
				if err != nil {
					return err
				}
				if staged && !resp.GetStaged() {
					return fmt.Errorf("reach --staged: the control plane does not evaluate staged policies in reach (an older version); upgrade it, or use fedctl policy preview")
				}
				if g.output != "table" {
					return g.print(nil, resp)
				}
				printReach(g.out, args[0], args[1], protocol, port, resp)
				if resp.GetVerdict() != fedmeshv1.Verdict_VERDICT_ALLOW {
					return ErrDenied
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&protocol, "protocol", "tcp", "tcp, udp, sctp or icmp")
	cmd.Flags().Uint32Var(&port, "port", 0, "destination port")
	cmd.Flags().BoolVar(&staged, "staged", false, "answer as if every staged policy were enforced")
	cmd.Flags().Uint32Var(&family, "family", 0, "4 or 6: the address of a dual-stack pod to explain (default: the family of an IP argument, else IPv4)")
	return cmd
}

// ErrDenied makes `fedctl reach` exit non-zero on a deny, for scripts.
var ErrDenied = errors.New("denied")

func parseTarget(s string) (*fedmeshv1.ReachTarget, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return &fedmeshv1.ReachTarget{Target: &fedmeshv1.ReachTarget_Ip{Ip: a.String()}}, nil
	}
	parts := strings.Split(s, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return nil, fmt.Errorf("%q: want CLUSTER/NAMESPACE/POD or an IP address", s)
	}
	return &fedmeshv1.ReachTarget{Target: &fedmeshv1.ReachTarget_Endpoint{Endpoint: &fedmeshv1.EndpointRef{Cluster: parts[0], Namespace: parts[1], Name: parts[2]}}}, nil
}

func verdictWord(v fedmeshv1.Verdict) string {
	switch v {
	case fedmeshv1.Verdict_VERDICT_ALLOW:
		return "ALLOWED"
	case fedmeshv1.Verdict_VERDICT_DENY:
		return "DENIED"
	}
	return "UNKNOWN"
}

func printReach(w io.Writer, src, dst, protocol string, port uint32, r *fedmeshv1.ReachResponse) {
	flow := fmt.Sprintf("%s/%d", strings.ToLower(protocol), port)
	if strings.EqualFold(protocol, "icmp") {
		flow = "icmp" // ICMP has no port; the server ignores --port for it
	}
	fmt.Fprintf(w, "%s -> %s %s: %s (revision %d)\n", src, dst, flow, verdictWord(r.GetVerdict()), r.GetRevision())
	side := func(name string, d *fedmeshv1.DirectionVerdict, t *fedmeshv1.ResolvedTarget) {
		fmt.Fprintf(w, "  %-8s %s", name, verdictWord(d.GetVerdict()))
		layer := d.GetLayer()
		if layer != fedmeshv1.PolicyLayer_POLICY_LAYER_UNSPECIFIED {
			fmt.Fprintf(w, " [%s]", layerWord(layer))
		}
		if tr := d.GetTierRule(); tr != nil {
			fmt.Fprintf(w, " by %s", tierRuleString(tr))
		}
		for _, p := range d.GetPassed() {
			fmt.Fprintf(w, " after Pass by %s", tierRuleString(p))
		}
		// The NetworkPolicy rule is the answer only where that layer
		// decided (an older control plane names no layer).
		if rule := d.GetRule(); rule != nil && (layer == fedmeshv1.PolicyLayer_POLICY_LAYER_UNSPECIFIED || layer == fedmeshv1.PolicyLayer_POLICY_LAYER_NETWORK_POLICY) {
			k := rule.GetPolicy()
			fmt.Fprintf(w, " by %s rule %s[%d]", policyName(k.GetCluster(), k.GetNamespace(), k.GetName()),
				strings.ToLower(strings.TrimPrefix(rule.GetDirection().String(), "POLICY_TYPE_")), rule.GetIndex())
		}
		if d.GetExplanation() != "" {
			fmt.Fprintf(w, ": %s", d.GetExplanation())
		}
		fmt.Fprintf(w, " [%s, identity %d]\n", t.GetIp(), t.GetIdentity())
	}
	side("egress", r.GetEgress(), r.GetSource())
	side("ingress", r.GetIngress(), r.GetDestination())
	if r.GetStaged() {
		fmt.Fprintln(w, "  (with the staged policies in force)")
	}
	if ks := r.GetStagedDeniedBy(); len(ks) > 0 {
		names := make([]string, len(ks))
		for i, k := range ks {
			names[i] = stagedKeyString(k)
		}
		fmt.Fprintf(w, "  would be denied by staged %s\n", strings.Join(names, ", "))
	}
}

func watchCmd(g *globals) *cobra.Command {
	var from uint64
	var kinds, clusters []string
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Stream changes of the federation from a revision",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &fedmeshv1.WatchRequest{FromRevision: from, Filter: &fedmeshv1.WatchFilter{Clusters: clusters}}
			for _, k := range kinds {
				v, ok := fedmeshv1.ResourceKind_value["RESOURCE_KIND_"+strings.ToUpper(strings.ReplaceAll(k, "-", "_"))]
				if !ok {
					return fmt.Errorf("kind %q: want cluster, node, endpoint, service-export, service-import, policy or cluster-network-policy", k)
				}
				req.Kinds = append(req.Kinds, fedmeshv1.ResourceKind(v))
			}
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.cc.Close()
			stream, err := c.watch.Watch(cmd.Context(), req)
			if err != nil {
				return err
			}
			for {
				resp, err := stream.Recv()
				if err != nil {
					if errors.Is(err, io.EOF) || cmd.Context().Err() != nil {
						return nil
					}
					return err
				}
				if g.output != "table" {
					if err := g.print(nil, resp); err != nil {
						return err
					}
					continue
				}
				kind := strings.ToLower(strings.TrimPrefix(resp.GetType().String(), "WATCH_RESPONSE_TYPE_"))
				for _, e := range resp.GetEvents() {
					fmt.Fprintf(g.out, "%d\t%s\t%s\t%s\n", e.GetRevision(), kind, strings.TrimPrefix(e.GetType().String(), "EVENT_TYPE_"), eventObject(e))
				}
				if len(resp.GetEvents()) == 0 {
					fmt.Fprintf(g.out, "%d\t%s\n", resp.GetRevision(), kind)
				}
			}
		},
	}
	cmd.Flags().Uint64Var(&from, "from", 0, "last revision already seen (0: start with a snapshot)")
	cmd.Flags().StringSliceVar(&kinds, "kind", nil, "kinds to watch (default all)")
	cmd.Flags().StringSliceVar(&clusters, "cluster", nil, "only these clusters' objects")
	return cmd
}

func eventObject(e *fedmeshv1.Event) string {
	switch o := e.GetObject().(type) {
	case *fedmeshv1.Event_Cluster:
		return "cluster " + o.Cluster.GetName()
	case *fedmeshv1.Event_Node:
		return "node " + o.Node.GetCluster() + "/" + o.Node.GetName()
	case *fedmeshv1.Event_Endpoint:
		return fmt.Sprintf("endpoint %s/%s/%s %v id=%d", o.Endpoint.GetCluster(), o.Endpoint.GetNamespace(), o.Endpoint.GetName(), o.Endpoint.GetIps(), o.Endpoint.GetIdentity())
	case *fedmeshv1.Event_ServiceExport:
		return "service-export " + o.ServiceExport.GetCluster() + "/" + o.ServiceExport.GetNamespace() + "/" + o.ServiceExport.GetName()
	case *fedmeshv1.Event_ServiceImport:
		return "service-import " + o.ServiceImport.GetNamespace() + "/" + o.ServiceImport.GetName()
	case *fedmeshv1.Event_Policy:
		return "policy " + policyName(o.Policy.GetCluster(), o.Policy.GetNamespace(), o.Policy.GetName())
	case *fedmeshv1.Event_ClusterNetworkPolicy:
		return "cluster-network-policy " + clusterPolicyName(o.ClusterNetworkPolicy.GetCluster(), o.ClusterNetworkPolicy.GetName())
	}
	return "?"
}

func waitCmd(g *globals) *cobra.Command {
	var clusters []string
	var w waitFlags
	cmd := &cobra.Command{
		Use:   "wait REVISION",
		Short: "Wait until every node (of --cluster) enforces REVISION",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var rev uint64
			if _, err := fmt.Sscan(args[0], &rev); err != nil {
				return fmt.Errorf("revision %q is not a number", args[0])
			}
			w.wait = true
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				return g.waitEnforced(ctx, c, w, rev, clusters)
			})
		},
	}
	cmd.Flags().StringSliceVar(&clusters, "cluster", nil, "only these clusters' nodes")
	cmd.Flags().DurationVar(&w.timeout, "wait-timeout", 60*time.Second, "how long to wait")
	return cmd
}
