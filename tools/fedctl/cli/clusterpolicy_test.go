package cli

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

const prodDB = `apiVersion: fedmesh.io/v1
kind: FederatedClusterNetworkPolicy
metadata:
  name: prod-db
spec:
  clusterSelector:
    matchLabels: {env: prod}
  tier: Admin
  priority: 7
  subject:
    namespaces:
      matchLabels: {kubernetes.io/metadata.name: db}
  ingress:
  - name: no-shop-pg
    action: Deny
    from:
    - namespaces:
        matchLabels: {kubernetes.io/metadata.name: shop}
      clusterSelector: {}
    protocols:
    - tcp: {destinationPort: {number: 5432}}
  - name: cache-to-owner
    action: Pass
    from:
    - namespaces: {}
`

// A FederatedClusterNetworkPolicy goes through fedctl to the control plane
// and back: apply (with --wait), list with its tier and priority beside
// NetworkPolicies, get as the manifest that makes it (which applies to the
// same object), delete; a bad one is refused naming the field, and nothing
// is stored.
func TestFederatedClusterNetworkPolicyApplyListGetDelete(t *testing.T) {
	p := startTLSPlane(t)
	admin := auth.Admin()
	run := func(args ...string) string {
		t.Helper()
		out, errOut, err := p.fedctl(t, admin, args...)
		if err != nil {
			t.Fatalf("fedctl %v: %v\n%s%s", args, err, out, errOut)
		}
		return out
	}
	run("cluster", "register", "east", "--pod-cidr", "10.1.0.0/16", "--label", "env=prod")
	fnp := writeFile(t, "fnp.yaml", `apiVersion: fedmesh.io/v1
kind: FederatedNetworkPolicy
metadata: {name: web, namespace: shop}
spec: {podSelector: {}}
`)
	run("policy", "apply", "-f", fnp)
	file := writeFile(t, "cnp.yaml", prodDB)
	if out := run("policy", "apply", "-f", file, "--wait"); !strings.Contains(out, "cluster network policy cnp/federated/prod-db applied at revision") ||
		!strings.Contains(out, "enforced on every node") {
		t.Fatalf("apply: %s", out)
	}
	list := run("policy", "list")
	var header, row, npRow string
	for _, l := range strings.Split(list, "\n") {
		switch {
		case strings.HasPrefix(l, "POLICY"):
			header = l
		case strings.HasPrefix(l, "cnp/federated/prod-db"):
			row = l
		case strings.HasPrefix(l, "federated/shop/web"):
			npRow = l
		}
	}
	if f := strings.Fields(header); len(f) < 4 || f[2] != "TIER" || f[3] != "PRIORITY" {
		t.Fatalf("list header %q: want TIER and PRIORITY columns\n%s", header, list)
	}
	if f := strings.Fields(row); len(f) < 5 || f[1] != "federated" || f[2] != "Admin" || f[3] != "7" || f[4] != "env=prod" {
		t.Fatalf("list row %q: want federated, Admin, 7, env=prod\n%s", row, list)
	}
	if f := strings.Fields(npRow); len(f) < 4 || f[2] != "-" || f[3] != "-" {
		t.Fatalf("NetworkPolicy row %q: want no tier or priority\n%s", npRow, list)
	}

	if y := run("policy", "list", "-o", "yaml"); !strings.Contains(y, "kind: FederatedClusterNetworkPolicy") || strings.Contains(y, "specJson") ||
		!strings.Contains(y, "podSelector") {
		t.Fatalf("list -o yaml: want the NetworkPolicy object and the ClusterNetworkPolicy as its manifest (no encoded spec)\n%s", y)
	}
	got := run("policy", "get", "cnp/federated/prod-db")
	if !strings.Contains(got, "kind: FederatedClusterNetworkPolicy") || !strings.Contains(got, "no-shop-pg") {
		t.Fatalf("get: %s", got)
	}
	want, err := decodeFederatedClusterPolicy([]byte(prodDB))
	if err != nil {
		t.Fatal(err)
	}
	again, err := decodeFederatedClusterPolicy([]byte(got))
	if err != nil {
		t.Fatalf("the manifest get prints does not read back: %v\n%s", err, got)
	}
	if !proto.Equal(again, want) {
		t.Fatalf("get prints a different policy:\n got %v\nwant %v", again, want)
	}

	bad := writeFile(t, "bad.yaml", strings.Replace(prodDB, "priority: 7", "priority: 1001", 1))
	_, errOut, err := p.fedctl(t, admin, "policy", "apply", "-f", bad)
	if err == nil || !strings.Contains(errOut, "InvalidArgument") || !strings.Contains(errOut, "policies[0].spec.priority") {
		t.Fatalf("bad priority: %v\n%s", err, errOut)
	}
	if out := run("policy", "get", "cnp/federated/prod-db"); !strings.Contains(out, "priority: 7") {
		t.Fatalf("the refused apply changed the stored policy:\n%s", out)
	}

	if out := run("policy", "delete", "cnp/federated/prod-db"); !strings.Contains(out, "cluster network policy cnp/federated/prod-db deleted") {
		t.Fatalf("delete: %s", out)
	}
	if out := run("policy", "list"); strings.Contains(out, "prod-db") {
		t.Fatalf("listed after delete:\n%s", out)
	}
}

// Manifests fedctl refuses before any call: a cluster's own
// ClusterNetworkPolicy (its syncer's), a namespaced or misspelled one.
func TestClusterNetworkPolicyManifestsFedctlRefuses(t *testing.T) {
	for name, tc := range map[string]struct{ doc, want string }{
		"a cluster's ClusterNetworkPolicy": {"apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: x}\n",
			"create it in that cluster's API"},
		"namespaced":       {strings.Replace(prodDB, "name: prod-db", "name: prod-db\n  namespace: db", 1), "metadata.namespace"},
		"misspelled field": {strings.Replace(prodDB, "priority: 7", "priorty: 7", 1), "priorty"},
	} {
		if _, err := readManifests(writeFile(t, "x.yaml", tc.doc), ""); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", name, err, tc.want)
		}
	}
}

// fedctl reach names the layer that decided each direction, the tier rule
// (policy, rule, action, tier, priority) and a Pass before the later layer;
// a NetworkPolicy rule is named only when that layer decided.
func TestReachPrintsTheTierExplanation(t *testing.T) {
	deny := &fedmeshv1.TierRuleRef{Policy: &fedmeshv1.ClusterPolicyKey{Name: "prod-db"}, Tier: "Admin", Priority: 7,
		Direction: fedmeshv1.PolicyType_POLICY_TYPE_INGRESS, Index: 0, Name: "no-shop-pg", Action: "Deny"}
	pass := &fedmeshv1.TierRuleRef{Policy: &fedmeshv1.ClusterPolicyKey{Cluster: "east", Name: "guard"}, Tier: "Admin", Priority: 3,
		Direction: fedmeshv1.PolicyType_POLICY_TYPE_EGRESS, Index: 1, Action: "Pass"}
	npRule := &fedmeshv1.RuleRef{Policy: &fedmeshv1.PolicyKey{Namespace: "db", Name: "allow"}, Direction: fedmeshv1.PolicyType_POLICY_TYPE_INGRESS}
	resp := &fedmeshv1.ReachResponse{Verdict: fedmeshv1.Verdict_VERDICT_DENY, Revision: 9,
		Egress: &fedmeshv1.DirectionVerdict{Verdict: fedmeshv1.Verdict_VERDICT_ALLOW, Layer: fedmeshv1.PolicyLayer_POLICY_LAYER_NETWORK_POLICY,
			Passed: []*fedmeshv1.TierRuleRef{pass}, Rule: &fedmeshv1.RuleRef{Policy: &fedmeshv1.PolicyKey{Cluster: "east", Namespace: "shop", Name: "out"}}},
		Ingress: &fedmeshv1.DirectionVerdict{Verdict: fedmeshv1.Verdict_VERDICT_DENY, Layer: fedmeshv1.PolicyLayer_POLICY_LAYER_ADMIN,
			TierRule: deny, Rule: npRule},
	}
	var b strings.Builder
	printReach(&b, "a", "b", "tcp", 5432, resp)
	out := b.String()
	for _, want := range []string{
		`ingress  DENIED [admin] by cnp/federated/prod-db rule ingress[0] "no-shop-pg" (Deny; Admin tier, priority 7)`,
		`egress   ALLOWED [network-policy] after Pass by cnp/east/guard rule egress[1] "#1" (Pass; Admin tier, priority 3) by east/shop/out`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("reach output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "federated/db/allow") {
		t.Errorf("names the NetworkPolicy rule although the Admin tier decided:\n%s", out)
	}
}
