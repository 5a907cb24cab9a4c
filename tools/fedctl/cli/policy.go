package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func policyCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "policy", Aliases: []string{"policies"}, Short: "Apply, list and delete network policies (per cluster or federated)"}
	c.AddCommand(policyApplyCmd(g), policyListCmd(g), policyGetCmd(g), policyDeleteCmd(g), policyRecommendCmd(g),
		policyPromoteCmd(g), policyPreviewCmd(g))
	return c
}

// waitFlags are the flags of a write that can wait until it is enforced.
type waitFlags struct {
	wait    bool
	timeout time.Duration
}

func (w *waitFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&w.wait, "wait", false, "wait until every node enforces the change")
	cmd.Flags().DurationVar(&w.timeout, "wait-timeout", 60*time.Second, "how long --wait waits")
}

// waitEnforced blocks until every node of clusters (all when empty)
// enforces revision, and fails naming the nodes still behind.
func (g *globals) waitEnforced(ctx context.Context, c *conn, w waitFlags, revision uint64, clusters []string) error {
	if !w.wait {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, w.timeout+5*time.Second)
	defer cancel()
	start := time.Now()
	stop := g.progress(ctx, c, revision, clusters)
	resp, err := c.nodes.WaitEnforced(ctx, &fedmeshv1.WaitEnforcedRequest{Revision: revision, Clusters: clusters, Timeout: durationpb.New(w.timeout)})
	stop()
	if err != nil {
		return fmt.Errorf("wait for revision %d: %w", revision, err)
	}
	if !resp.GetEnforced() {
		var lag []string
		for _, n := range resp.GetLagging() {
			lag = append(lag, fmt.Sprintf("%s/%s at %d", n.GetCluster(), n.GetName(), n.GetEnforcedRevision()))
		}
		return fmt.Errorf("revision %d not enforced everywhere after %s; behind: %s", revision, w.timeout, strings.Join(lag, ", "))
	}
	fmt.Fprintf(g.out, "revision %d enforced on every node (%s)\n", revision, time.Since(start).Round(time.Millisecond))
	return nil
}

// policyManifests are the policies of a manifest stream: NetworkPolicies
// by owner cluster ("" for federated ones), and federated
// ClusterNetworkPolicies.
type policyManifests struct {
	byOwner         map[string][]*fedmeshv1.Policy
	clusterPolicies []*fedmeshv1.ClusterNetworkPolicy
}

// readManifests reads NetworkPolicy, FederatedNetworkPolicy and
// FederatedClusterNetworkPolicy documents from a multi-document YAML or
// JSON stream; '-' is stdin.
func readManifests(path, cluster string) (policyManifests, error) {
	var m policyManifests
	var err error
	m.byOwner, m.clusterPolicies, err = readPolicyDocs(path, cluster)
	return m, err
}

func readPolicyDocs(path, cluster string) (map[string][]*fedmeshv1.Policy, []*fedmeshv1.ClusterNetworkPolicy, error) {
	var r io.Reader
	if path == "-" {
		r = os.Stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, fmt.Errorf("open %s: %w", path, err)
		}
		defer f.Close()
		r = f
	}
	byOwner := map[string][]*fedmeshv1.Policy{}
	var cnps []*fedmeshv1.ClusterNetworkPolicy
	yr := utilyaml.NewYAMLReader(bufio.NewReader(r))
	for doc := 1; ; doc++ {
		raw, err := yr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", path, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(raw, &tm); err != nil {
			return nil, nil, fmt.Errorf("%s document %d: %w", path, doc, err)
		}
		switch {
		case tm.Kind == "NetworkPolicy" && tm.APIVersion == "networking.k8s.io/v1":
			if cluster == "" {
				return nil, nil, fmt.Errorf("%s document %d: a NetworkPolicy belongs to one cluster: give --cluster (or use kind FederatedNetworkPolicy)", path, doc)
			}
			var np networkingv1.NetworkPolicy
			if err := yaml.UnmarshalStrict(raw, &np); err != nil {
				return nil, nil, fmt.Errorf("%s document %d: %w", path, doc, err)
			}
			if np.Namespace == "" {
				np.Namespace = "default"
			}
			var ports portLists
			for i, r := range np.Spec.Ingress {
				ports.add("ingress", i, r.Ports)
			}
			for i, r := range np.Spec.Egress {
				ports.add("egress", i, r.Ports)
			}
			if err := ports.check(); err != nil {
				return nil, nil, fmt.Errorf("%s document %d: %w", path, doc, err)
			}
			byOwner[cluster] = append(byOwner[cluster], model.PolicyFromK8s(cluster, &np))
		case tm.Kind == "FederatedNetworkPolicy" && tm.APIVersion == "fedmesh.io/v1":
			var fp model.FederatedNetworkPolicy
			if err := yaml.UnmarshalStrict(raw, &fp); err != nil {
				return nil, nil, fmt.Errorf("%s document %d: %w", path, doc, err)
			}
			var ports portLists
			for i, r := range fp.Spec.Ingress {
				ports.add("ingress", i, r.Ports)
			}
			for i, r := range fp.Spec.Egress {
				ports.add("egress", i, r.Ports)
			}
			if err := ports.check(); err != nil {
				return nil, nil, fmt.Errorf("%s document %d: %w", path, doc, err)
			}
			byOwner[""] = append(byOwner[""], model.PolicyFromFederated(&fp))
		case tm.Kind == model.FederatedClusterNetworkPolicyKind && tm.APIVersion == "fedmesh.io/v1":
			p, err := decodeFederatedClusterPolicy(raw)
			if err != nil {
				return nil, nil, fmt.Errorf("%s document %d: %w", path, doc, err)
			}
			cnps = append(cnps, p)
		case tm.Kind == "ClusterNetworkPolicy":
			return nil, nil, fmt.Errorf("%s document %d: a ClusterNetworkPolicy belongs to one cluster: create it in that cluster's API, whose syncer copies it here (or use kind FederatedClusterNetworkPolicy, apiVersion fedmesh.io/v1)", path, doc)
		default:
			return nil, nil, fmt.Errorf("%s document %d: unsupported %s/%s: want networking.k8s.io/v1 NetworkPolicy or fedmesh.io/v1 FederatedNetworkPolicy or FederatedClusterNetworkPolicy", path, doc, tm.APIVersion, tm.Kind)
		}
	}
	if len(byOwner) == 0 && len(cnps) == 0 {
		return nil, nil, fmt.Errorf("%s has no policy", path)
	}
	return byOwner, cnps, nil
}

// portLists are a manifest's rule ports, each with where it is.
type portLists []rulePorts

type rulePorts struct {
	where string // spec.ingress[0].ports
	ports []networkingv1.NetworkPolicyPort
}

func (l *portLists) add(dir string, rule int, ports []networkingv1.NetworkPolicyPort) {
	*l = append(*l, rulePorts{fmt.Sprintf("spec.%s[%d].ports", dir, rule), ports})
}

// check refuses a protocol name the API has no value for, naming it: the
// conversion would turn it into a number the server could only echo back.
// Names the API has (ICMP too) go to the server, which decides.
func (l portLists) check() error {
	for _, pl := range l {
		for i, p := range pl.ports {
			if p.Protocol == nil {
				continue
			}
			if _, known := fedmeshv1.Protocol_name[int32(model.ProtocolFromK8s(*p.Protocol))]; !known {
				return fmt.Errorf("%s[%d].protocol: unknown protocol %q: want TCP, UDP or SCTP (names are upper case)", pl.where, i, *p.Protocol)
			}
		}
	}
	return nil
}

func policyApplyCmd(g *globals) *cobra.Command {
	var file, cluster string
	var w waitFlags
	var staged bool
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or replace policies from NetworkPolicy / FederatedNetworkPolicy / FederatedClusterNetworkPolicy manifests",
		Long: `Create or replace policies. A networking.k8s.io/v1 NetworkPolicy is a policy of
the cluster given by --cluster and stays local to it; its one writer is that
cluster's syncer, which copies it from the cluster's Kubernetes API, so the
control plane refuses it from anyone else (apply it in the cluster's API). A
fedmesh.io/v1 FederatedNetworkPolicy is stored once and enforced in every
cluster its clusterSelector matches. A fedmesh.io/v1
FederatedClusterNetworkPolicy is an upstream ClusterNetworkPolicy spec
(policy.networking.k8s.io/v1alpha2: tier, priority, subject, rules with
Accept, Deny or Pass) plus a clusterSelector, and a clusterSelector on each
peer (absent: the subject pod's own cluster; empty: every cluster); it is
stored once and enforced in every cluster its clusterSelector matches. Each
owner's policies, and the ClusterNetworkPolicies, are applied as one atomic
batch each.

With --staged the federated policies are staged instead (as Calico's staged
policies): stored, validated and compiled like enforced ones, evaluated on
the flows (fedctl flows says "would be denied by staged P"; fedctl policy
preview P), never enforced until fedctl policy promote P. The file's
policies are staged in one write: if one is refused, none is staged. A cluster's
NetworkPolicy is not staged (its syncer owns it): stage a
FederatedNetworkPolicy whose namespace and clusterSelector pick that cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("give the manifests with -f FILE (or -f - for stdin)")
			}
			m, err := readManifests(file, cluster)
			if err != nil {
				return err
			}
			if staged {
				if w.wait {
					return fmt.Errorf("--wait with --staged: a staged policy is never enforced; wait on fedctl policy promote")
				}
				return g.run(cmd.Context(), func(ctx context.Context, c *conn) error { return g.stagePolicies(ctx, c, m) })
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				var last uint64
				for owner, pols := range m.byOwner {
					resp, err := c.policies.ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Cluster: owner, Policies: pols})
					if err != nil {
						return err
					}
					for _, p := range pols {
						fmt.Fprintf(g.out, "policy %s applied at revision %d\n", policyName(p.GetCluster(), p.GetNamespace(), p.GetName()), resp.GetRevision())
					}
					last = max(last, resp.GetRevision())
				}
				rev, err := g.applyClusterPolicies(ctx, c, m.clusterPolicies)
				if err != nil {
					return err
				}
				return g.waitEnforced(ctx, c, w, max(last, rev), nil)
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "manifest file (multi-document YAML or JSON; - for stdin)")
	cmd.Flags().StringVar(&cluster, "cluster", "", "owner cluster of NetworkPolicy documents")
	cmd.Flags().BoolVar(&staged, "staged", false, "stage the federated policies: evaluated on flows, never enforced until promoted")
	w.register(cmd)
	return cmd
}

func policyName(cluster, namespace, name string) string {
	owner := cluster
	if owner == "" {
		owner = "federated"
	}
	if namespace == "" {
		return owner + "/" + name
	}
	return owner + "/" + namespace + "/" + name
}

// parsePolicyKey reads CLUSTER/NAMESPACE/NAME, federated/NAMESPACE/NAME or
// federated/NAME.
func parsePolicyKey(s string) (*fedmeshv1.PolicyKey, error) {
	parts := strings.Split(s, "/")
	k := &fedmeshv1.PolicyKey{}
	switch {
	case len(parts) == 3:
		k.Cluster, k.Namespace, k.Name = parts[0], parts[1], parts[2]
	case len(parts) == 2 && parts[0] == "federated":
		k.Name = parts[1]
	default:
		return nil, fmt.Errorf("policy %q: want CLUSTER/NAMESPACE/NAME, federated/NAMESPACE/NAME or federated/NAME", s)
	}
	if k.Cluster == "federated" {
		k.Cluster = ""
	}
	return k, nil
}

func policyListCmd(g *globals) *cobra.Command {
	var cluster, namespace string
	var federatedOnly, stagedOnly bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List policies (enforced, then staged ones with KIND staged)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if stagedOnly {
				if cluster != "" {
					return fmt.Errorf("--staged with --cluster: staged policies are federated")
				}
				return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
					t := &table{header: policyListHeader}
					objs, err := listStagedPolicies(ctx, c, namespace, t, nil)
					if err != nil {
						return err
					}
					return g.printAny(t, objs...)
				})
			}
			req := &fedmeshv1.ListPoliciesRequest{Cluster: cluster, Namespace: namespace}
			if federatedOnly {
				req.Kind = fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.policies.ListPolicies(ctx, req)
				if err != nil {
					return err
				}
				t := &table{header: policyListHeader}
				var objs []any
				for _, p := range resp.GetPolicies() {
					kind := "kubernetes"
					if p.GetKind() == fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED {
						kind = "federated"
					}
					addPolicyRow(t, p, kind)
					objs = append(objs, p)
				}
				// ClusterNetworkPolicies are cluster-scoped: a namespace
				// filter leaves them out.
				if namespace == "" {
					if objs, err = listClusterPolicies(ctx, c, cluster, federatedOnly, t, objs); err != nil {
						return err
					}
				}
				// Staged policies are federated: a cluster filter leaves
				// them out.
				if cluster == "" {
					if objs, err = listStagedPolicies(ctx, c, namespace, t, objs); err != nil {
						return err
					}
				}
				return g.printAny(t, objs...)
			})
		},
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "only this cluster's policies")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "only this namespace")
	cmd.Flags().BoolVar(&federatedOnly, "federated", false, "only federated policies")
	cmd.Flags().BoolVar(&stagedOnly, "staged", false, "only staged policies")
	return cmd
}

var policyListHeader = []string{"POLICY", "KIND", "TIER", "PRIORITY", "CLUSTERS", "TYPES", "INGRESS", "EGRESS", "REVISION"}

// addPolicyRow adds a NetworkPolicy's row to a `policy list` table, with
// kind in the KIND column.
func addPolicyRow(t *table, p *fedmeshv1.Policy, kind string) {
	scope := p.GetCluster()
	if p.GetKind() == fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED {
		scope = selectorString(p.GetClusterSelector())
	}
	var types []string
	for _, t := range p.GetSpec().GetPolicyTypes() {
		types = append(types, strings.ToLower(strings.TrimPrefix(t.String(), "POLICY_TYPE_")))
	}
	t.add(policyName(p.GetCluster(), p.GetNamespace(), p.GetName()), kind, "-", "-", scope, orNone(types),
		strconv.Itoa(len(p.GetSpec().GetIngress())), strconv.Itoa(len(p.GetSpec().GetEgress())),
		strconv.FormatUint(p.GetMeta().GetRevision(), 10))
}

func selectorString(s *fedmeshv1.LabelSelector) string {
	if s == nil {
		return "<all>"
	}
	parts := []string{}
	if len(s.GetMatchLabels()) > 0 {
		parts = append(parts, labelString(s.GetMatchLabels()))
	}
	for _, r := range s.GetMatchExpressions() {
		parts = append(parts, fmt.Sprintf("%s %s (%s)", r.GetKey(), r.GetOperator(), strings.Join(r.GetValues(), ",")))
	}
	if len(parts) == 0 {
		return "<all>"
	}
	return strings.Join(parts, ",")
}

func policyGetCmd(g *globals) *cobra.Command {
	var staged bool
	cmd := &cobra.Command{
		Use:   "get CLUSTER/NAMESPACE/NAME | federated/[NAMESPACE/]NAME | cnp/CLUSTER/NAME | cnp/federated/NAME",
		Short: "Show one policy (YAML by default); --staged: the staged one",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if staged {
				k, err := parseStagedKey(args[0])
				if err != nil {
					return err
				}
				return g.run(cmd.Context(), func(ctx context.Context, c *conn) error { return g.getStagedPolicy(ctx, c, k) })
			}
			if ck, ok, err := parseClusterPolicyKey(args[0]); ok {
				if err != nil {
					return err
				}
				return g.run(cmd.Context(), func(ctx context.Context, c *conn) error { return g.getClusterPolicy(ctx, c, ck) })
			}
			k, err := parsePolicyKey(args[0])
			if err != nil {
				return err
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.policies.GetPolicy(ctx, &fedmeshv1.GetPolicyRequest{Key: k})
				if err != nil {
					return err
				}
				if g.output == "table" {
					g.output = "yaml"
				}
				return g.print(nil, resp.GetPolicy())
			})
		},
	}
	cmd.Flags().BoolVar(&staged, "staged", false, "the staged policy of that name")
	return cmd
}

func policyDeleteCmd(g *globals) *cobra.Command {
	var w waitFlags
	var staged bool
	cmd := &cobra.Command{
		Use:   "delete CLUSTER/NAMESPACE/NAME | federated/[NAMESPACE/]NAME | cnp/CLUSTER/NAME | cnp/federated/NAME",
		Short: "Delete one policy; --staged: the staged one (the enforced one stays)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if staged {
				k, err := parseStagedKey(args[0])
				if err != nil {
					return err
				}
				return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
					resp, err := fedmeshv1.NewStagedPolicyServiceClient(c.cc).DeleteStagedPolicy(ctx, &fedmeshv1.DeleteStagedPolicyRequest{Key: k})
					if err != nil {
						return err
					}
					fmt.Fprintf(g.out, "staged policy %s deleted at revision %d\n", args[0], resp.GetRevision())
					return nil
				})
			}
			if ck, ok, err := parseClusterPolicyKey(args[0]); ok {
				if err != nil {
					return err
				}
				return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
					rev, err := g.deleteClusterPolicy(ctx, c, ck)
					if err != nil {
						return err
					}
					return g.waitEnforced(ctx, c, w, rev, nil)
				})
			}
			k, err := parsePolicyKey(args[0])
			if err != nil {
				return err
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.policies.DeletePolicy(ctx, &fedmeshv1.DeletePolicyRequest{Key: k})
				if err != nil {
					return err
				}
				fmt.Fprintf(g.out, "policy %s deleted at revision %d\n", args[0], resp.GetRevision())
				return g.waitEnforced(ctx, c, w, resp.GetRevision(), nil)
			})
		},
	}
	cmd.Flags().BoolVar(&staged, "staged", false, "delete the staged policy of that name")
	w.register(cmd)
	return cmd
}

// progress prints "enforced on N/M nodes" on stderr whenever the count
// changes while a --wait runs, so a user sees it converge (or which part
// hangs); the returned func stops it.
func (g *globals) progress(ctx context.Context, c *conn, revision uint64, clusters []string) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		want := map[string]bool{}
		for _, cl := range clusters {
			want[cl] = true
		}
		last := ""
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			resp, err := c.nodes.ListNodes(ctx, &fedmeshv1.ListNodesRequest{})
			if err == nil {
				n, ok := 0, 0
				for _, node := range resp.GetNodes() {
					if len(want) > 0 && !want[node.GetCluster()] {
						continue
					}
					n++
					if node.GetStatus().GetEnforcedRevision() >= revision {
						ok++
					}
				}
				if line := fmt.Sprintf("enforced on %d/%d nodes", ok, n); line != last {
					fmt.Fprintf(g.errOut, "  %s\n", line)
					last = line
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}
