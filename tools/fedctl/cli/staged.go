package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// stagedKind is the KIND column of a staged policy in `policy list`.
const stagedKind = "staged"

// parseStagedKey reads federated/[NAMESPACE/]NAME (a staged
// NetworkPolicy) or cnp/federated/NAME (a staged ClusterNetworkPolicy):
// staged policies are federated.
func parseStagedKey(s string) (*fedmeshv1.StagedPolicyKey, error) {
	if ck, ok, err := parseClusterPolicyKey(s); ok {
		if err != nil {
			return nil, err
		}
		if ck.GetCluster() != "" {
			return nil, fmt.Errorf("staged policy %q: staged policies are federated; want cnp/federated/NAME", s)
		}
		return &fedmeshv1.StagedPolicyKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY, Name: ck.GetName()}, nil
	}
	k, err := parsePolicyKey(s)
	if err != nil {
		return nil, err
	}
	if k.GetCluster() != "" {
		return nil, fmt.Errorf("staged policy %q: staged policies are federated; want federated/[NAMESPACE/]NAME or cnp/federated/NAME", s)
	}
	return &fedmeshv1.StagedPolicyKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_NETWORK_POLICY, Namespace: k.GetNamespace(), Name: k.GetName()}, nil
}

// stagedKeyString is how fedctl names a staged policy (as it names the
// enforced one it becomes).
func stagedKeyString(k *fedmeshv1.StagedPolicyKey) string {
	if k.GetKind() == fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY {
		return clusterPolicyName("", k.GetName())
	}
	return policyName("", k.GetNamespace(), k.GetName())
}

func stagedPolicyName(p *fedmeshv1.StagedPolicy) string {
	if np := p.GetNetworkPolicy(); np != nil {
		return policyName("", np.GetNamespace(), np.GetName())
	}
	return clusterPolicyName("", p.GetClusterNetworkPolicy().GetName())
}

// stagePolicies stages every federated policy of the manifests in one
// write: the server checks them all first, so a bad one stages none.
func (g *globals) stagePolicies(ctx context.Context, c *conn, m policyManifests) error {
	var ps []*fedmeshv1.StagedPolicy
	for owner, pols := range m.byOwner {
		if owner != "" {
			return fmt.Errorf("cluster %s's NetworkPolicies are not staged (its syncer copies them from its Kubernetes API): stage a FederatedNetworkPolicy whose namespace and clusterSelector pick %s", owner, owner)
		}
		for _, p := range pols {
			ps = append(ps, &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_NetworkPolicy{NetworkPolicy: p}})
		}
	}
	for _, p := range m.clusterPolicies {
		ps = append(ps, &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_ClusterNetworkPolicy{ClusterNetworkPolicy: p}})
	}
	if len(ps) == 0 {
		return nil
	}
	resp, err := fedmeshv1.NewStagedPolicyServiceClient(c.cc).StagePolicy(ctx, &fedmeshv1.StagePolicyRequest{Policies: ps})
	if err != nil {
		return fmt.Errorf("stage %s: nothing staged: %w", stagedNames(ps), err)
	}
	for _, p := range ps {
		fmt.Fprintf(g.out, "policy %s staged at revision %d (not enforced; fedctl policy preview/promote %s)\n", stagedPolicyName(p), resp.GetRevision(), stagedPolicyName(p))
	}
	return nil
}

// stagedNames lists the policies of a stage request, in its order (the
// order a policies[i] in an error counts).
func stagedNames(ps []*fedmeshv1.StagedPolicy) string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = fmt.Sprintf("[%d] %s", i, stagedPolicyName(p))
	}
	return strings.Join(names, ", ")
}

// listStagedPolicies adds the staged policies (of namespace, when given:
// then no ClusterNetworkPolicy) to a `policy list` table with KIND staged.
// A control plane without staged policies lists none.
func listStagedPolicies(ctx context.Context, c *conn, namespace string, t *table, objs []any) ([]any, error) {
	resp, err := fedmeshv1.NewStagedPolicyServiceClient(c.cc).ListStagedPolicies(ctx, &fedmeshv1.ListStagedPoliciesRequest{})
	if status.Code(err) == codes.Unimplemented {
		return objs, nil
	}
	if err != nil {
		return objs, err
	}
	for _, sp := range resp.GetPolicies() {
		if np := sp.GetNetworkPolicy(); np != nil {
			if namespace != "" && np.GetNamespace() != namespace {
				continue
			}
			addPolicyRow(t, np, stagedKind)
		} else if cp := sp.GetClusterNetworkPolicy(); cp != nil {
			if namespace != "" {
				continue
			}
			if _, err := addClusterPolicyRow(t, cp, stagedKind); err != nil {
				return objs, err
			}
		}
		objs = append(objs, sp)
	}
	return objs, nil
}

// getStagedPolicy prints one staged policy (YAML by default).
func (g *globals) getStagedPolicy(ctx context.Context, c *conn, k *fedmeshv1.StagedPolicyKey) error {
	resp, err := fedmeshv1.NewStagedPolicyServiceClient(c.cc).GetStagedPolicy(ctx, &fedmeshv1.GetStagedPolicyRequest{Key: k})
	if err != nil {
		return err
	}
	if g.output == "table" {
		g.output = "yaml"
	}
	return g.print(nil, resp.GetPolicy())
}

func policyPromoteCmd(g *globals) *cobra.Command {
	var w waitFlags
	var replace bool
	cmd := &cobra.Command{
		Use:   "promote federated/[NAMESPACE/]NAME | cnp/federated/NAME",
		Short: "Enforce a staged policy: it leaves the staged set and is enforced in one write",
		Long: `Enforce a staged policy. In one write it leaves the staged set and enters the
enforced one: there is no moment with both or neither. An enforced policy of
the same name is replaced only with --replace; without it the promote fails
and the policy stays staged.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := parseStagedKey(args[0])
			if err != nil {
				return err
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := fedmeshv1.NewStagedPolicyServiceClient(c.cc).PromotePolicy(ctx, &fedmeshv1.PromotePolicyRequest{Key: k, Replace: replace})
				if err != nil {
					return err
				}
				what := "enforced"
				if resp.GetReplaced() {
					what = "enforced, replacing the enforced version"
				}
				fmt.Fprintf(g.out, "policy %s promoted at revision %d: %s\n", stagedKeyString(k), resp.GetRevision(), what)
				return g.waitEnforced(ctx, c, w, resp.GetRevision(), nil)
			})
		},
	}
	cmd.Flags().BoolVar(&replace, "replace", false, "replace an enforced policy of the same name")
	w.register(cmd)
	return cmd
}

func policyPreviewCmd(g *globals) *cobra.Command {
	var ff flowFlags
	cmd := &cobra.Command{
		Use:   "preview federated/[NAMESPACE/]NAME | cnp/federated/NAME --since 1h",
		Short: "What a staged policy would deny (and newly allow) among the stored flows",
		Long: `Evaluate the stored flows of a time range with the staged policy in force
alongside the enforced policies (replacing an enforced policy of the same
name, as promote --replace would), with the compiler the agents and reach
use. Lists, per source -> destination:port, the flows the enforced policies
allow that it would deny, and those they deny that it would allow.`,
		Example: `  fedctl policy preview federated/demo/db-lockdown --since 1h
  fedctl policy preview cnp/federated/no-telnet --since 30m -o yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := parseStagedKey(args[0])
			if err != nil {
				return err
			}
			if ff.since == "" {
				return fmt.Errorf("give the flows to evaluate with --since (1h, or an RFC 3339 time)")
			}
			filter, since, until, err := ff.request(time.Now())
			if err != nil {
				return err
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := fedmeshv1.NewStagedPolicyServiceClient(c.cc).PreviewStagedPolicy(ctx, &fedmeshv1.PreviewStagedPolicyRequest{
					Key: k, Since: since, Until: until, Filter: filter})
				if err != nil {
					return err
				}
				if g.output == "json" || g.output == "yaml" {
					return g.print(nil, resp)
				}
				t := &table{header: []string{"CHANGE", "SOURCE", "DESTINATION", "PROTO", "FLOWS", "LAST", "DECIDED BY (STAGED)"}}
				add := func(change string, rows []*fedmeshv1.PreviewRow) {
					for _, r := range rows {
						dst := workloadName(r.GetDestination())
						if p := r.GetDestination().GetPort(); p != 0 {
							dst += ":" + strconv.Itoa(int(p))
						}
						t.add(change, workloadName(r.GetSource()), dst, protoWord(uint8(r.GetProtocol())), strconv.FormatUint(r.GetFlows(), 10),
							r.GetLast().AsTime().Local().Format("15:04:05"), r.GetExplanation())
					}
				}
				add("would deny", resp.GetWouldDeny())
				add("would allow", resp.GetWouldAllow())
				if err := g.print(t); err != nil {
					return err
				}
				note := ""
				if resp.GetTruncated() {
					note = " (only the newest; narrow --since or the filters)"
				}
				fmt.Fprintf(g.errOut, "%d flows evaluated%s at revision %d; %d with workloads no longer known were skipped\n",
					resp.GetEvaluated(), note, resp.GetRevision(), resp.GetUnresolved())
				return nil
			})
		},
	}
	ff.add(cmd)
	return cmd
}

// stagedNote is what `fedctl flows` adds to a flow the staged policies
// would decide otherwise: "would be denied by staged P".
func stagedNote(f *fedmeshv1.Flow) string {
	s := f.GetStaged()
	switch {
	case s == nil:
		return ""
	case len(s.GetDeniedBy()) > 0:
		names := make([]string, len(s.GetDeniedBy()))
		for i, k := range s.GetDeniedBy() {
			names[i] = stagedKeyString(k)
		}
		return "; would be denied by staged " + strings.Join(names, ", ")
	case s.GetVerdict() == fedmeshv1.Verdict_VERDICT_ALLOW && f.GetVerdict() == fedmeshv1.Verdict_VERDICT_DENY:
		return "; would be allowed with the staged policies"
	}
	return ""
}
