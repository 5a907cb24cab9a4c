package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	"sigs.k8s.io/yaml"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ClusterNetworkPolicies in `fedctl policy`: a fedmesh.io/v1
// FederatedClusterNetworkPolicy manifest is applied as a federated
// ClusterNetworkPolicy; a cluster's own ClusterNetworkPolicies come from
// its syncer. They are named cnp/CLUSTER/NAME or cnp/federated/NAME
// (cluster-scoped, so no namespace; the prefix keeps them apart from
// federated NetworkPolicies).

// cnpPrefix starts the name of a ClusterNetworkPolicy.
const cnpPrefix = "cnp/"

// annotationCluster names, on a synced ClusterNetworkPolicy shown by
// `fedctl policy get`, the cluster it was synced from.
const annotationCluster = "fedmesh.io/cluster"

// decodeFederatedClusterPolicy reads one FederatedClusterNetworkPolicy
// document strictly (an unknown field is an error, not a dropped rule).
func decodeFederatedClusterPolicy(raw []byte) (*fedmeshv1.ClusterNetworkPolicy, error) {
	var f model.FederatedClusterNetworkPolicy
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		return nil, err
	}
	if f.Namespace != "" {
		return nil, fmt.Errorf("metadata.namespace: a FederatedClusterNetworkPolicy is cluster-scoped; remove the namespace")
	}
	return model.ClusterPolicyFromFederated(&f)
}

func clusterPolicyName(cluster, name string) string {
	if cluster == "" {
		cluster = "federated"
	}
	return cnpPrefix + cluster + "/" + name
}

// parseClusterPolicyKey reads cnp/CLUSTER/NAME or cnp/federated/NAME; false
// when s does not start with cnp/.
func parseClusterPolicyKey(s string) (*fedmeshv1.ClusterPolicyKey, bool, error) {
	rest, ok := strings.CutPrefix(s, cnpPrefix)
	if !ok {
		return nil, false, nil
	}
	owner, name, ok := strings.Cut(rest, "/")
	if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
		return nil, true, fmt.Errorf("cluster network policy %q: want cnp/CLUSTER/NAME or cnp/federated/NAME", s)
	}
	if owner == "federated" {
		owner = ""
	}
	return &fedmeshv1.ClusterPolicyKey{Cluster: owner, Name: name}, true, nil
}

// applyClusterPolicies applies the manifests' federated
// ClusterNetworkPolicies as one batch and returns its revision.
func (g *globals) applyClusterPolicies(ctx context.Context, c *conn, ps []*fedmeshv1.ClusterNetworkPolicy) (uint64, error) {
	if len(ps) == 0 {
		return 0, nil
	}
	resp, err := fedmeshv1.NewClusterPolicyServiceClient(c.cc).ApplyClusterPolicies(ctx, &fedmeshv1.ApplyClusterPoliciesRequest{Policies: ps})
	if err != nil {
		return 0, err
	}
	for _, p := range ps {
		fmt.Fprintf(g.out, "cluster network policy %s applied at revision %d\n", clusterPolicyName(p.GetCluster(), p.GetName()), resp.GetRevision())
	}
	return resp.GetRevision(), nil
}

// listClusterPolicies adds the ClusterNetworkPolicies matching a `policy
// list` to its table and objects. A control plane without them (older than
// the API) lists none.
func listClusterPolicies(ctx context.Context, c *conn, cluster string, federatedOnly bool, t *table, objs []any) ([]any, error) {
	req := &fedmeshv1.ListClusterPoliciesRequest{Cluster: cluster}
	if federatedOnly {
		req.Source = fedmeshv1.ClusterPolicySource_CLUSTER_POLICY_SOURCE_FEDERATED
	}
	resp, err := fedmeshv1.NewClusterPolicyServiceClient(c.cc).ListClusterPolicies(ctx, req)
	if status.Code(err) == codes.Unimplemented {
		return objs, nil
	}
	if err != nil {
		return objs, err
	}
	for _, p := range resp.GetPolicies() {
		kind := "kubernetes"
		if p.GetCluster() == "" {
			kind = "federated"
		}
		m, err := addClusterPolicyRow(t, p, kind)
		if err != nil {
			return objs, err
		}
		objs = append(objs, m)
	}
	return objs, nil
}

// addClusterPolicyRow adds a ClusterNetworkPolicy's row to a `policy
// list` table, with kind in the KIND column, and returns its manifest.
func addClusterPolicyRow(t *table, p *fedmeshv1.ClusterNetworkPolicy, kind string) (any, error) {
	scope := p.GetCluster()
	if p.GetCluster() == "" {
		scope = selectorString(p.GetClusterSelector())
	}
	spec, err := model.DecodeClusterPolicySpec(p.GetSpecJson())
	if err != nil {
		return nil, fmt.Errorf("cluster network policy %s: %w", clusterPolicyName(p.GetCluster(), p.GetName()), err)
	}
	var types []string
	if len(spec.Ingress) > 0 {
		types = append(types, "ingress")
	}
	if len(spec.Egress) > 0 {
		types = append(types, "egress")
	}
	t.add(clusterPolicyName(p.GetCluster(), p.GetName()), kind, string(spec.Tier), strconv.Itoa(int(spec.Priority)), scope, orNone(types),
		strconv.Itoa(len(spec.Ingress)), strconv.Itoa(len(spec.Egress)), strconv.FormatUint(p.GetMeta().GetRevision(), 10))
	return clusterPolicyManifest(p)
}

// clusterPolicyManifest is how fedctl shows a stored ClusterNetworkPolicy:
// the manifest that makes it (a FederatedClusterNetworkPolicy), or the
// cluster's ClusterNetworkPolicy with its cluster as an annotation, so the
// spec reads as the upstream API writes it.
func clusterPolicyManifest(p *fedmeshv1.ClusterNetworkPolicy) (any, error) {
	rev := strconv.FormatUint(p.GetMeta().GetRevision(), 10)
	if p.GetCluster() == "" {
		f, err := model.FederatedFromClusterPolicy(p)
		if err != nil {
			return nil, fmt.Errorf("cluster network policy %s: %w", clusterPolicyName("", p.GetName()), err)
		}
		f.Annotations = map[string]string{"fedmesh.io/revision": rev}
		return f, nil
	}
	spec, err := model.DecodeClusterPolicySpec(p.GetSpecJson())
	if err != nil {
		return nil, fmt.Errorf("cluster network policy %s: %w", clusterPolicyName(p.GetCluster(), p.GetName()), err)
	}
	return &cnpv1.ClusterNetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: cnpv1.GroupVersion.String(), Kind: "ClusterNetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: p.GetName(), Annotations: map[string]string{annotationCluster: p.GetCluster(), "fedmesh.io/revision": rev}},
		Spec:       *spec,
	}, nil
}

// printAny is print for lists that mix API objects (protojson) and
// manifests (their JSON).
func (g *globals) printAny(t *table, objs ...any) error {
	if g.output != "json" && g.output != "yaml" {
		return g.print(t)
	}
	items := make([]json.RawMessage, 0, len(objs))
	for _, o := range objs {
		var b []byte
		var err error
		if m, ok := o.(proto.Message); ok {
			b, err = protojson.Marshal(m)
		} else {
			b, err = json.Marshal(o)
		}
		if err != nil {
			return fmt.Errorf("encode %T: %w", o, err)
		}
		items = append(items, b)
	}
	return g.printItems(items)
}

// getClusterPolicy prints one ClusterNetworkPolicy (YAML by default).
func (g *globals) getClusterPolicy(ctx context.Context, c *conn, k *fedmeshv1.ClusterPolicyKey) error {
	resp, err := fedmeshv1.NewClusterPolicyServiceClient(c.cc).GetClusterPolicy(ctx, &fedmeshv1.GetClusterPolicyRequest{Key: k})
	if err != nil {
		return err
	}
	m, err := clusterPolicyManifest(resp.GetPolicy())
	if err != nil {
		return err
	}
	if g.output == "table" {
		g.output = "yaml"
	}
	return g.printAny(nil, m)
}

// deleteClusterPolicy deletes one ClusterNetworkPolicy and returns the
// revision of the delete.
func (g *globals) deleteClusterPolicy(ctx context.Context, c *conn, k *fedmeshv1.ClusterPolicyKey) (uint64, error) {
	resp, err := fedmeshv1.NewClusterPolicyServiceClient(c.cc).DeleteClusterPolicy(ctx, &fedmeshv1.DeleteClusterPolicyRequest{Key: k})
	if err != nil {
		return 0, err
	}
	fmt.Fprintf(g.out, "cluster network policy %s deleted at revision %d\n", clusterPolicyName(k.GetCluster(), k.GetName()), resp.GetRevision())
	return resp.GetRevision(), nil
}

// tierRuleString names a ClusterNetworkPolicy rule for `fedctl reach`.
func tierRuleString(r *fedmeshv1.TierRuleRef) string {
	k := r.GetPolicy()
	name := r.GetName()
	if name == "" {
		name = fmt.Sprintf("#%d", r.GetIndex())
	}
	dir := strings.ToLower(strings.TrimPrefix(r.GetDirection().String(), "POLICY_TYPE_"))
	return fmt.Sprintf("%s rule %s[%d] %q (%s; %s tier, priority %d)", clusterPolicyName(k.GetCluster(), k.GetName()), dir, r.GetIndex(), name,
		r.GetAction(), r.GetTier(), r.GetPriority())
}

// layerWord is the decided layer for `fedctl reach`.
func layerWord(l fedmeshv1.PolicyLayer) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(l.String(), "POLICY_LAYER_")), "_", "-")
}
