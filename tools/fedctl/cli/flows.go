package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	"github.com/fedmesh/fedmesh/nodeagent/flows"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// flowFlags are the filters shared by `fedctl flows` and its summary.
type flowFlags struct {
	cluster, namespace, pod, verdict, policy, node string
	dnsName                                        string
	since, until                                   string
}

func (f *flowFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.cluster, "cluster", "", "flows with either end in this cluster")
	fl.StringVarP(&f.namespace, "namespace", "n", "", "flows with either end in this namespace")
	fl.StringVar(&f.pod, "pod", "", "flows with either end this pod (name or namespace/name)")
	fl.StringVar(&f.verdict, "verdict", "", "allow or deny")
	fl.StringVar(&f.policy, "policy", "", "flows this policy decided or whose endpoint it selects (name, namespace/name or cluster/namespace/name; //name for a federated one)")
	fl.StringVar(&f.node, "node", "", "flows this node reported")
	fl.StringVar(&f.dnsName, "dns-name", "", "flows to a destination resolved from this DNS name (api.example.com, or *.example.com for the names under it)")
	fl.StringVar(&f.since, "since", "", "oldest flow: a duration back from now (15m) or a time (RFC 3339)")
	fl.StringVar(&f.until, "until", "", "newest flow: a duration back from now or a time (RFC 3339)")
}

// parseWhen reads a flag's time: a duration ago, or RFC 3339.
func parseWhen(flag, v string, now time.Time) (*timestamppb.Timestamp, error) {
	if v == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return nil, fmt.Errorf("--%s %q: give a positive duration (how long ago)", flag, v)
		}
		return timestamppb.New(now.Add(-d)), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return nil, fmt.Errorf("--%s %q: want a duration (15m) or an RFC 3339 time (2026-12-06T15:04:05Z)", flag, v)
	}
	return timestamppb.New(t), nil
}

func (f *flowFlags) request(now time.Time) (*fedmeshv1.FlowFilter, *timestamppb.Timestamp, *timestamppb.Timestamp, error) {
	filter := &fedmeshv1.FlowFilter{Cluster: f.cluster, Namespace: f.namespace, Pod: f.pod, Policy: f.policy, Node: f.node, DnsName: f.dnsName}
	switch strings.ToLower(f.verdict) {
	case "":
	case "allow", "allowed":
		filter.Verdict = fedmeshv1.Verdict_VERDICT_ALLOW
	case "deny", "denied":
		filter.Verdict = fedmeshv1.Verdict_VERDICT_DENY
	default:
		return nil, nil, nil, fmt.Errorf("--verdict %q: want allow or deny", f.verdict)
	}
	since, err := parseWhen("since", f.since, now)
	if err != nil {
		return nil, nil, nil, err
	}
	until, err := parseWhen("until", f.until, now)
	if err != nil {
		return nil, nil, nil, err
	}
	return filter, since, until, nil
}

// flowsCmd reads the flows the control plane's FlowService keeps (agents
// ship them to every replica over their node certificates).
func flowsCmd(g *globals) *cobra.Command {
	var ff flowFlags
	var follow bool
	var limit uint32
	cmd := &cobra.Command{
		Use:   "flows",
		Short: "Show the verdicts the agents' dataplanes took, with the policy rule that decided each",
		Example: `  fedctl flows --verdict deny --since 15m
  fedctl flows --cluster cluster-b --namespace demo --follow
  fedctl flows --policy demo/allow-web -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, since, until, err := ff.request(time.Now())
			if err != nil {
				return err
			}
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.cc.Close()
			ctx := cmd.Context()
			if !follow {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, g.timeout)
				defer cancel()
			}
			stream, err := fedmeshv1.NewFlowServiceClient(c.cc).GetFlows(ctx, &fedmeshv1.GetFlowsRequest{
				Filter: filter, Since: since, Until: until, Follow: follow, Limit: limit})
			if err != nil {
				return err
			}
			return g.printFlows(ctx, stream, follow)
		},
	}
	ff.add(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep streaming new flows")
	cmd.Flags().Uint32Var(&limit, "limit", 0, "how many of the newest stored flows (default 1000)")
	cmd.AddCommand(flowSummaryCmd(g), flowUICmd(g))
	return cmd
}

// printFlows writes the stream: a table, or one JSON object per flow
// (json), or YAML documents (yaml); following, each as it arrives.
func (g *globals) printFlows(ctx context.Context, stream interface {
	Recv() (*fedmeshv1.GetFlowsResponse, error)
}, follow bool) error {
	var header bool
	var lagged uint64
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) || (follow && ctx.Err() != nil) {
			break
		}
		if err != nil {
			return err
		}
		lagged += m.GetLagged()
		if m.GetLagged() > 0 {
			fmt.Fprintf(g.errOut, "missed %d flows: this client read too slowly\n", m.GetLagged())
		}
		for _, f := range m.GetFlows() {
			switch g.output {
			case "json":
				b, err := protojson.Marshal(f)
				if err != nil {
					return err
				}
				fmt.Fprintln(g.out, string(b))
			case "yaml":
				b, err := protojson.Marshal(f)
				if err != nil {
					return err
				}
				y, err := yaml.JSONToYAML(b)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.out, "---\n%s", y)
			case "table", "":
				if !header {
					fmt.Fprintln(g.out, "TIME          NODE                   SOURCE -> DESTINATION                                   VERDICT  DECIDED BY")
					header = true
				}
				fmt.Fprintf(g.out, "%-13s %-22s %-55s %-8s %s\n", f.GetTime().AsTime().Local().Format("15:04:05.000"),
					f.GetCluster()+"/"+f.GetNode(), flowTuple(f), strings.ToLower(verdictWord(f.GetVerdict())), flows.Explain(f.GetDecision())+stagedNote(f))
			default:
				return fmt.Errorf("unknown output format %q: use table, json or yaml", g.output)
			}
		}
		if st := m.GetStatus(); st != nil && (st.GetDroppedRate()+st.GetDroppedAgent() > 0) && g.output != "json" && g.output != "yaml" {
			fmt.Fprintf(g.errOut, "replica %s: %d flows stored; %d lost by agents before shipping, %d refused over a node's rate, %d evicted\n",
				st.GetReplica(), st.GetStored(), st.GetDroppedAgent(), st.GetDroppedRate(), st.GetEvicted())
		}
	}
	return nil
}

func flowSummaryCmd(g *globals) *cobra.Command {
	var ff flowFlags
	var window time.Duration
	cmd := &cobra.Command{
		Use:   "summary",
		Short: "Who talks to whom: allowed and denied flows per source -> destination:port",
		Example: `  fedctl flows summary --namespace demo --since 1h
  fedctl flows summary --since 10m --window 1m -o yaml
  fedctl flows summary --dns-name '*.stripe.com'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, since, until, err := ff.request(time.Now())
			if err != nil {
				return err
			}
			req := &fedmeshv1.GetFlowSummaryRequest{Filter: filter, Since: since, Until: until}
			if window > 0 {
				req.Window = durationpb.New(window)
			}
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.cc.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			resp, err := fedmeshv1.NewFlowServiceClient(c.cc).GetFlowSummary(ctx, req)
			if err != nil {
				return err
			}
			if g.output == "json" || g.output == "yaml" {
				return g.print(nil, resp)
			}
			t := &table{header: []string{"SOURCE", "DESTINATION", "PROTO", "ALLOWED", "DENIED", "DENIED BY"}}
			// The staged columns show only when a staged policy would deny
			// some flow: flows the staged policies would deny were they
			// enforced now, and which.
			staged := slices.ContainsFunc(resp.GetEdges(), func(e *fedmeshv1.FlowEdge) bool { return e.GetStagedDenied() > 0 })
			if staged {
				t.header = append(t.header, "STAGED DENY", "STAGED BY")
			}
			for _, e := range resp.GetEdges() {
				var by []string
				for _, k := range e.GetDeniedBy() {
					by = append(by, flows.PolicyString(k))
				}
				row := []string{workloadName(e.GetSource()), edgeDestination(e), protoWord(uint8(e.GetProtocol())), strconv.FormatUint(e.GetAllowed(), 10),
					strconv.FormatUint(e.GetDenied(), 10), strings.Join(by, ",")}
				if staged {
					var sby []string
					for _, k := range e.GetStagedDeniedBy() {
						sby = append(sby, stagedKeyString(k))
					}
					row = append(row, strconv.FormatUint(e.GetStagedDenied(), 10), strings.Join(sby, ","))
				}
				t.add(row...)
			}
			return g.print(t)
		},
	}
	ff.add(cmd)
	cmd.Flags().DurationVar(&window, "window", 0, "count per window of this width (default: one count over the range; json/yaml show the windows)")
	return cmd
}

// workloadName is cluster/namespace/pod, or the address outside the
// federation.
func workloadName(w *fedmeshv1.Workload) string {
	if w.GetCluster() == "" {
		if w.GetIp() == "" {
			return "world"
		}
		return w.GetIp()
	}
	return w.GetCluster() + "/" + w.GetNamespace() + "/" + w.GetPod()
}

// edgeDestination is a summary edge's destination with its port: the
// workload, the address, or the DNS name the edge's flows resolved it from
// with its addresses, name(address,...), as flows writes a named
// destination.
func edgeDestination(e *fedmeshv1.FlowEdge) string {
	dst := workloadName(e.GetDestination())
	if n := e.GetDnsName(); n != "" {
		const shown = 3
		addrs := e.GetDnsAddresses()
		if len(addrs) > shown {
			addrs = append(slices.Clip(addrs[:shown]), "+"+strconv.Itoa(len(addrs)-shown))
		}
		dst = n + "(" + strings.Join(addrs, ",") + ")"
	}
	if p := e.GetDestination().GetPort(); p != 0 {
		dst += ":" + strconv.Itoa(int(p))
	}
	return dst
}

// flowTuple is "SRC:PORT -> DST:PORT proto" with each side's workload
// when it has one, without ports for ICMP, which has none.
func flowTuple(f *fedmeshv1.Flow) string {
	p := protoWord(uint8(f.GetProtocol()))
	side := func(w *fedmeshv1.Workload) string {
		a := w.GetIp()
		if p != "icmp" {
			a = net.JoinHostPort(a, strconv.Itoa(int(w.GetPort())))
		}
		if w.GetCluster() != "" {
			return w.GetCluster() + "/" + w.GetNamespace() + "/" + w.GetPod() + "(" + a + ")"
		}
		return a
	}
	dst := side(f.GetDestination())
	if n := f.GetDnsName(); n != "" && f.GetDestination().GetCluster() == "" {
		dst = n + "(" + dst + ")" // the name the source resolved it from
	}
	return side(f.GetSource()) + " -> " + dst + " " + p
}

// protoWord names an IP protocol number as fedctl's flags spell it.
func protoWord(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 132:
		return "sctp"
	case 1, 58:
		return "icmp"
	}
	return "proto " + strconv.Itoa(int(p))
}
