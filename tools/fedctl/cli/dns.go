package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// dnsVerdicts are --verdict's words for DNSPolicyVerdict.
var dnsVerdicts = map[string]fedmeshv1.DNSPolicyVerdict{
	"allowed":   fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ALLOWED,
	"refused":   fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_REFUSED,
	"denied":    fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_DENIED,
	"unpoliced": fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_UNPOLICED,
	"error":     fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ERROR,
}

// dnsVerdictWord is the verdict's --verdict word, "-" when the agent did
// not report one.
func dnsVerdictWord(v fedmeshv1.DNSPolicyVerdict) string {
	for w, x := range dnsVerdicts {
		if x == v {
			return w
		}
	}
	return "-"
}

// dnsCmd reads the DNS queries the agents' resolvers answered, as the
// control plane's FlowService keeps them (agents ship them with their
// flows).
func dnsCmd(g *globals) *cobra.Command {
	var (
		f                                    fedmeshv1.DNSFilter
		verdict, since, until                string
		follow                               bool
		limit                                uint32
		cluster, namespace, pod, node, rcode string
	)
	cmd := &cobra.Command{
		Use:   "dns",
		Short: "Show the DNS queries pods asked the node agents' resolvers, with the answers and the policy verdict",
		Example: `  fedctl dns --pod demo/web --since 15m
  fedctl dns --name '*.example.com' --follow
  fedctl dns --verdict refused --cluster cluster-a -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.Cluster, f.Namespace, f.Pod, f.Node, f.Rcode = cluster, namespace, pod, node, rcode
			if verdict != "" {
				v, ok := dnsVerdicts[strings.ToLower(verdict)]
				if !ok {
					return fmt.Errorf("--verdict %q: want allowed, refused, denied, unpoliced or error", verdict)
				}
				f.Verdict = v
			}
			now := time.Now()
			s, err := parseWhen("since", since, now)
			if err != nil {
				return err
			}
			u, err := parseWhen("until", until, now)
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
			stream, err := fedmeshv1.NewFlowServiceClient(c.cc).GetDNS(ctx, &fedmeshv1.GetDNSRequest{
				Filter: &f, Since: s, Until: u, Follow: follow, Limit: limit})
			if err != nil {
				return err
			}
			return g.printDNS(ctx, stream, follow)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Name, "name", "", "queries for this name, or under it with a leading *. (*.example.com)")
	fl.StringVar(&pod, "pod", "", "queries of this pod (name or namespace/name)")
	fl.StringVarP(&namespace, "namespace", "n", "", "queries of the pods of this namespace")
	fl.StringVar(&cluster, "cluster", "", "queries of the pods of this cluster")
	fl.StringVar(&node, "node", "", "queries this node's resolver answered")
	fl.StringVar(&rcode, "rcode", "", "answers with this response code (NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ...)")
	fl.StringVar(&verdict, "verdict", "", "policy by name: allowed, refused, denied (not refused, nothing learned), unpoliced or error")
	fl.StringVar(&since, "since", "", "oldest query: a duration back from now (15m) or a time (RFC 3339)")
	fl.StringVar(&until, "until", "", "newest query: a duration back from now or a time (RFC 3339)")
	fl.BoolVarP(&follow, "follow", "f", false, "keep streaming new queries")
	fl.Uint32Var(&limit, "limit", 0, "how many of the newest stored queries (default 1000)")
	return cmd
}

// printDNS writes the stream: a table, or one JSON object per query
// (json), or YAML documents (yaml); following, each as it arrives.
func (g *globals) printDNS(ctx context.Context, stream interface {
	Recv() (*fedmeshv1.GetDNSResponse, error)
}, follow bool) error {
	header := false
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) || (follow && ctx.Err() != nil) {
			return nil
		}
		if err != nil {
			return err
		}
		if m.GetLagged() > 0 {
			fmt.Fprintf(g.errOut, "missed %d DNS records: this client read too slowly\n", m.GetLagged())
		}
		for _, r := range m.GetRecords() {
			switch g.output {
			case "json", "yaml":
				b, err := protojson.Marshal(r)
				if err != nil {
					return err
				}
				if g.output == "json" {
					fmt.Fprintln(g.out, string(b))
					continue
				}
				y, err := yaml.JSONToYAML(b)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.out, "---\n%s", y)
			case "table", "":
				if !header {
					fmt.Fprintf(g.out, "%-13s %-18s %-24s %-34s %-5s %-8s %-9s %-9s %s\n", "TIME", "NODE", "POD", "NAME", "TYPE", "RCODE", "LATENCY", "VERDICT", "ANSWERS")
					header = true
				}
				fmt.Fprintf(g.out, "%-13s %-18s %-24s %-34s %-5s %-8s %-9s %-9s %s\n", r.GetTime().AsTime().Local().Format("15:04:05.000"),
					r.GetCluster()+"/"+r.GetNode(), dnsClient(r), r.GetName(), r.GetType(), r.GetRcode(),
					r.GetLatency().AsDuration().Round(10*time.Microsecond).String(), dnsVerdictWord(r.GetVerdict()), dnsAnswers(r))
			default:
				return fmt.Errorf("unknown output format %q: use table, json or yaml", g.output)
			}
		}
		if st := m.GetStatus(); st != nil && st.GetDroppedRate()+st.GetDroppedAgent() > 0 && g.output != "json" && g.output != "yaml" {
			fmt.Fprintf(g.errOut, "replica %s: %d DNS records stored; %d lost by agents before shipping, %d refused over a node's rate, %d evicted\n",
				st.GetReplica(), st.GetStored(), st.GetDroppedAgent(), st.GetDroppedRate(), st.GetEvicted())
		}
	}
}

// dnsClient is the asking pod as namespace/pod, or its address.
func dnsClient(r *fedmeshv1.DNSRecord) string {
	if r.GetPod() != "" {
		return r.GetNamespace() + "/" + r.GetPod()
	}
	return r.GetClientIp()
}

// dnsAnswers is the answer section in brief: addresses and targets with
// their TTLs ("edge.cdn.test.(300s) 192.0.2.80(60s)"), the error of a
// SERVFAIL the resolver made, or the negative TTL.
func dnsAnswers(r *fedmeshv1.DNSRecord) string {
	var parts []string
	for _, a := range r.GetAnswers() {
		v := a.GetAddr()
		if v == "" {
			v = a.GetTarget()
		}
		if v == "" {
			v = a.GetType()
		}
		parts = append(parts, fmt.Sprintf("%s(%ds)", v, a.GetTtl()))
	}
	if r.GetError() != "" {
		parts = append(parts, "error: "+r.GetError())
	}
	if len(parts) == 0 && r.GetTtl() > 0 {
		return fmt.Sprintf("negative TTL %ds", r.GetTtl())
	}
	if n := r.GetLearned(); n > 0 {
		parts = append(parts, fmt.Sprintf("[%d learned]", n))
	}
	return strings.Join(parts, " ")
}
