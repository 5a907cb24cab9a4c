package server

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// validCNP is an Admin policy denying namespace shop's pods TCP 5432 into
// namespace db, and passing 6379 on to the NetworkPolicy layer.
const validCNP = `{"tier":"Admin","priority":7,"subject":{"namespaces":{"matchLabels":{"kubernetes.io/metadata.name":"db"}}},
  "ingress":[
    {"name":"no-shop-pg","action":"Deny","from":[{"namespaces":{"matchLabels":{"kubernetes.io/metadata.name":"shop"}}}],"protocols":[{"tcp":{"destinationPort":{"number":5432}}}]},
    {"name":"cache-to-owner","action":"Pass","from":[{"namespaces":{}}],"protocols":[{"tcp":{"destinationPort":{"number":6379}}}]}]}`

// specWith decodes validCNP, lets edit change it and encodes it again.
func specWith(t *testing.T, edit func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(validCNP), &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rule(m map[string]any, dir string, i int) map[string]any {
	return m[dir].([]any)[i].(map[string]any)
}

func cpClient(c *client) fedmeshv1.ClusterPolicyServiceClient {
	return fedmeshv1.NewClusterPolicyServiceClient(c.cc)
}

// The bad inputs: each is refused at the edge with InvalidArgument
// naming the field path, and nothing of its batch (a valid policy beside
// it included) is applied: the revision does not move.
func TestClusterPolicyBadInputIsRejectedNamingTheFieldWithNothingApplied(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	rev := registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	cp := cpClient(c)
	good := &fedmeshv1.ClusterNetworkPolicy{Name: "good", SpecJson: []byte(validCNP)}
	tests := []struct {
		name    string
		cluster string
		bad     *fedmeshv1.ClusterNetworkPolicy
		field   string
	}{
		{"unknown action", "", &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: specWith(t, func(m map[string]any) {
			rule(m, "ingress", 0)["action"] = "Allow"
		})}, "policies[1].spec.ingress[0].action"},
		{"priority out of range", "", &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: specWith(t, func(m map[string]any) { m["priority"] = 1001 })},
			"policies[1].spec.priority"},
		{"negative priority", "", &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: specWith(t, func(m map[string]any) { m["priority"] = -1 })},
			"policies[1].spec.priority"},
		{"Pass where the spec forbids it (a domainNames peer)", "", &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: specWith(t, func(m map[string]any) {
			m["egress"] = []any{map[string]any{"action": "Pass", "to": []any{map[string]any{"domainNames": []any{"example.com"}}}}}
		})}, "policies[1].spec.egress[0].to[0].domainNames"},
		{"both subject forms", "", &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: specWith(t, func(m map[string]any) {
			m["subject"] = map[string]any{"namespaces": map[string]any{}, "pods": map[string]any{"namespaceSelector": map[string]any{}, "podSelector": map[string]any{}}}
		})}, "policies[1].spec.subject"},
		{"empty policy name", "", &fedmeshv1.ClusterNetworkPolicy{SpecJson: []byte(validCNP)}, "policies[1].metadata.name"},
		{"rule name too long", "", &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: specWith(t, func(m map[string]any) {
			rule(m, "ingress", 0)["name"] = strings.Repeat("n", 101)
		})}, "policies[1].spec.ingress[0].name"},
		{"too many rules", "", &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: specWith(t, func(m map[string]any) {
			var rs []any
			for range 26 {
				rs = append(rs, rule(m, "ingress", 0))
			}
			m["ingress"] = rs
		})}, "policies[1].spec.ingress"},
		{"unmasked CIDR", "", &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: specWith(t, func(m map[string]any) {
			m["egress"] = []any{map[string]any{"action": "Deny", "to": []any{map[string]any{"networks": []any{"10.1.2.3/8"}}}}}
		})}, "policies[1].spec.egress[0].to[0].networks[0]"},
		{"named port with a range", "", &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: specWith(t, func(m map[string]any) {
			rule(m, "ingress", 0)["protocols"] = []any{map[string]any{"destinationNamedPort": "http",
				"tcp": map[string]any{"destinationPort": map[string]any{"range": map[string]any{"start": 80, "end": 90}}}}}
		})}, "policies[1].spec.ingress[0].protocols[0]"},
		{"a field the upstream type does not have", "", &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: specWith(t, func(m map[string]any) { m["order"] = 1 })},
			"policies[1].specJson"},
		{"a synced policy selecting clusters", "east", &fedmeshv1.ClusterNetworkPolicy{Cluster: "east", Name: "p", SpecJson: []byte(validCNP),
			ClusterSelector: &fedmeshv1.LabelSelector{}}, "policies[1].clusterSelector"},
		{"peer scopes for a rule that does not exist", "", &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: []byte(validCNP),
			IngressPeerClusters: []*fedmeshv1.ClusterPolicyRulePeers{{}, {}, {}}}, "policies[1].ingressPeerClusters[2]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &fedmeshv1.ClusterNetworkPolicy{Cluster: tt.cluster, Name: good.GetName(), SpecJson: good.GetSpecJson()}
			_, err := cp.ApplyClusterPolicies(ctx, &fedmeshv1.ApplyClusterPoliciesRequest{Cluster: tt.cluster, Policies: []*fedmeshv1.ClusterNetworkPolicy{g, tt.bad}})
			if status.Code(err) != codes.InvalidArgument || !slices.Contains(badRequestFields(err), tt.field) {
				t.Fatalf("got %v (fields %v), want InvalidArgument naming %s", err, badRequestFields(err), tt.field)
			}
			list, lerr := cp.ListClusterPolicies(linearizable(ctx), &fedmeshv1.ListClusterPoliciesRequest{})
			if lerr != nil || len(list.GetPolicies()) != 0 || list.GetRevision() != rev {
				t.Fatalf("after the refused batch: %v at revision %d (was %d), err %v", list.GetPolicies(), list.GetRevision(), rev, lerr)
			}
		})
	}
}

// A federated policy round-trips (stored canonical, listed, got), Reach
// names the tier, policy, priority, rule and action that decided, and for
// a Pass the later layer; a delete opens the flow again.
func TestClusterPolicyIsStoredCanonicalAndReachExplainsTheTier(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	for _, cl := range []*fedmeshv1.Cluster{
		{Name: "east", PodCidrs: []string{"10.1.0.0/16"}, Labels: map[string]string{"env": "prod"}},
		{Name: "west", PodCidrs: []string{"10.2.0.0/16"}, Labels: map[string]string{"env": "dev"}},
	} {
		if _, err := c.cluster.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: cl}); err != nil {
			t.Fatal(err)
		}
	}
	ns := func(n string) map[string]string { return map[string]string{"kubernetes.io/metadata.name": n} }
	for _, cl := range []string{"east", "west"} {
		net := map[string]string{"east": "10.1", "west": "10.2"}[cl]
		if _, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: cl, Endpoints: []*fedmeshv1.Endpoint{
			{Namespace: "shop", Name: "web-0", Ips: []string{net + ".1.5"}, Labels: map[string]string{"app": "web"}, NamespaceLabels: ns("shop"), Node: "n1"},
			{Namespace: "db", Name: "pg-0", Ips: []string{net + ".1.6"}, Labels: map[string]string{"app": "pg"}, NamespaceLabels: ns("db"), Node: "n1"},
		}}); err != nil {
			t.Fatal(err)
		}
	}
	cp := cpClient(c)
	applied, err := cp.ApplyClusterPolicies(ctx, &fedmeshv1.ApplyClusterPoliciesRequest{Policies: []*fedmeshv1.ClusterNetworkPolicy{{
		Name: "prod-db", SpecJson: []byte(validCNP), ClusterSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	stored := applied.GetPolicies()[0].GetSpecJson()
	if strings.ContainsAny(string(stored), "\n ") || !json.Valid(stored) {
		t.Fatalf("spec not stored canonical: %s", stored)
	}
	got, err := cp.GetClusterPolicy(linearizable(ctx), &fedmeshv1.GetClusterPolicyRequest{Key: &fedmeshv1.ClusterPolicyKey{Name: "prod-db"}})
	if err != nil || string(got.GetPolicy().GetSpecJson()) != string(stored) || got.GetPolicy().GetMeta().GetRevision() != applied.GetRevision() {
		t.Fatalf("get: %v %v", got, err)
	}
	reach := func(cluster string, port uint32) *fedmeshv1.ReachResponse {
		t.Helper()
		r, err := c.reach.Reach(ctx, &fedmeshv1.ReachRequest{Source: epTarget(cluster, "shop", "web-0"), Destination: epTarget(cluster, "db", "pg-0"), Port: port})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := reach("east", 5432)
	in := r.GetIngress()
	tr := in.GetTierRule()
	if r.GetVerdict() != fedmeshv1.Verdict_VERDICT_DENY || in.GetLayer() != fedmeshv1.PolicyLayer_POLICY_LAYER_ADMIN ||
		in.GetReason() != fedmeshv1.VerdictReason_VERDICT_REASON_CLUSTER_POLICY || tr.GetPolicy().GetName() != "prod-db" ||
		tr.GetTier() != "Admin" || tr.GetPriority() != 7 || tr.GetName() != "no-shop-pg" || tr.GetIndex() != 0 || tr.GetAction() != "Deny" ||
		tr.GetDirection() != fedmeshv1.PolicyType_POLICY_TYPE_INGRESS || !strings.Contains(in.GetExplanation(), "no-shop-pg") {
		t.Fatalf("east 5432: %v, want denied by Admin rule no-shop-pg of prod-db at priority 7", r)
	}
	if r.GetEgress().GetLayer() != fedmeshv1.PolicyLayer_POLICY_LAYER_DEFAULT {
		t.Fatalf("egress: %v, want the default layer", r.GetEgress())
	}
	r = reach("east", 6379)
	in = r.GetIngress()
	if r.GetVerdict() != fedmeshv1.Verdict_VERDICT_ALLOW || in.GetLayer() != fedmeshv1.PolicyLayer_POLICY_LAYER_DEFAULT ||
		len(in.GetPassed()) != 1 || in.GetPassed()[0].GetName() != "cache-to-owner" || in.GetPassed()[0].GetAction() != "Pass" || in.GetTierRule() != nil {
		t.Fatalf("east 6379: %v, want passed on by cache-to-owner to the default allow", r)
	}
	if r := reach("west", 5432); r.GetVerdict() != fedmeshv1.Verdict_VERDICT_ALLOW || r.GetIngress().GetLayer() != fedmeshv1.PolicyLayer_POLICY_LAYER_DEFAULT {
		t.Fatalf("west (not prod) 5432: %v, want allowed: the cluster selector does not match", r)
	}
	if _, err := cp.DeleteClusterPolicy(ctx, &fedmeshv1.DeleteClusterPolicyRequest{Key: &fedmeshv1.ClusterPolicyKey{Name: "prod-db"}}); err != nil {
		t.Fatal(err)
	}
	if r := reach("east", 5432); r.GetVerdict() != fedmeshv1.Verdict_VERDICT_ALLOW {
		t.Fatalf("after the delete: %v, want allowed", r)
	}
	if _, err := cp.GetClusterPolicy(ctx, &fedmeshv1.GetClusterPolicyRequest{Key: &fedmeshv1.ClusterPolicyKey{Name: "prod-db"}}); status.Code(err) != codes.NotFound {
		t.Fatalf("get after delete: %v, want NotFound", err)
	}
}

// Until every replica applies log format 5, ClusterNetworkPolicy writes are
// refused (an older replica would stop at the entry), saying what to do.
func TestClusterPolicyWritesWaitForEveryReplicasLogFormat(t *testing.T) {
	for f := uint32(0); f < store.LogFormatClusterPolicies; f++ {
		err := clusterPolicyWritesAt(f)
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "finish upgrading") {
			t.Fatalf("format %d: %v, want FailedPrecondition", f, err)
		}
	}
	if err := clusterPolicyWritesAt(store.LogFormatClusterPolicies); err != nil {
		t.Fatal(err)
	}
}

// A cluster's synced policies are written by its syncer only (the admin is
// told where to make the change), federated ones by admins only, and every
// write records its principal in the audit log.
func TestClusterPolicyOwnershipAndAudit(t *testing.T) {
	g := startTLSGroup(t, 1)
	lead := g.leader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := fedmeshv1.NewClusterServiceClient(g.conn(t, lead, auth.Admin())).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
		Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	admin := fedmeshv1.NewClusterPolicyServiceClient(g.conn(t, lead, auth.Admin()))
	syncer := fedmeshv1.NewClusterPolicyServiceClient(g.conn(t, lead, auth.Syncer("a")))
	synced := &fedmeshv1.ApplyClusterPoliciesRequest{Cluster: "a", Policies: []*fedmeshv1.ClusterNetworkPolicy{{Cluster: "a", Name: "guard", SpecJson: []byte(validCNP)}}}
	federated := &fedmeshv1.ApplyClusterPoliciesRequest{Policies: []*fedmeshv1.ClusterNetworkPolicy{{Name: "fed", SpecJson: []byte(validCNP)}}}

	_, err := admin.ApplyClusterPolicies(ctx, synced)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "ClusterNetworkPolicy guard belongs to cluster a") {
		t.Fatalf("admin writes a synced policy: %v, want FailedPrecondition naming the owner", err)
	}
	if _, err := syncer.ApplyClusterPolicies(ctx, federated); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("syncer writes a federated policy: %v, want PermissionDenied", err)
	}
	s, err := syncer.ApplyClusterPolicies(ctx, synced)
	if err != nil {
		t.Fatal(err)
	}
	f, err := admin.ApplyClusterPolicies(ctx, federated)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.DeleteClusterPolicy(ctx, &fedmeshv1.DeleteClusterPolicyRequest{Key: &fedmeshv1.ClusterPolicyKey{Cluster: "a", Name: "guard"}}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("admin deletes a synced policy: %v, want FailedPrecondition", err)
	}
	recs, err := fedmeshv1.NewAuditServiceClient(g.conn(t, lead, auth.Admin())).ListAuditRecords(ctx, &fedmeshv1.ListAuditRecordsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]string{s.GetRevision(): auth.Syncer("a").String(), f.GetRevision(): auth.Admin().String()}
	for _, r := range recs.GetRecords() {
		if p, ok := want[r.GetRevision()]; ok && r.GetOperation() == "ApplyClusterPolicies" && r.GetPrincipal() == p {
			delete(want, r.GetRevision())
		}
	}
	if len(want) != 0 {
		t.Fatalf("audit records missing for revisions %v: %v", want, recs.GetRecords())
	}
	if got := s.GetPolicies()[0].GetMeta().GetUpdatedBy(); got != auth.Syncer("a").String() {
		t.Fatalf("stored policy updated by %q", got)
	}
}

// ClusterNetworkPolicies are watchable by their kind: in the snapshot and
// as events, a cluster filter keeping federated ones and the filtered
// cluster's synced ones.
func TestClusterPoliciesAreWatchableByKind(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	registerCluster(t, ctx, c, "west", "10.2.0.0/16")
	cp := cpClient(c)
	apply := func(cluster, name string) {
		t.Helper()
		if _, err := cp.ApplyClusterPolicies(ctx, &fedmeshv1.ApplyClusterPoliciesRequest{Cluster: cluster,
			Policies: []*fedmeshv1.ClusterNetworkPolicy{{Cluster: cluster, Name: name, SpecJson: []byte(validCNP)}}}); err != nil {
			t.Fatal(err)
		}
	}
	apply("", "fed")
	apply("west", "w")
	w, err := c.watch.Watch(ctx, &fedmeshv1.WatchRequest{Kinds: []fedmeshv1.ResourceKind{fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER_NETWORK_POLICY},
		Filter: &fedmeshv1.WatchFilter{Clusters: []string{"east"}}})
	if err != nil {
		t.Fatal(err)
	}
	snap := recvWatch(t, w)
	if len(snap.GetEvents()) != 1 || snap.GetEvents()[0].GetClusterNetworkPolicy().GetName() != "fed" {
		t.Fatalf("snapshot: %v, want only the federated policy", snap.GetEvents())
	}
	apply("west", "w2")
	apply("east", "e")
	ev := recvWatch(t, w)
	for ev.GetType() == fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_PROGRESS {
		ev = recvWatch(t, w)
	}
	if len(ev.GetEvents()) != 1 || ev.GetEvents()[0].GetClusterNetworkPolicy().GetName() != "e" {
		t.Fatalf("events: %v, want east's policy e only", ev.GetEvents())
	}
}

// A synced policy applies to its own cluster's pods with peers in its own
// cluster, whatever a federated one would do: Reach denies east's shop ->
// db, allows west's, and allows west's shop into east's db (the peer is in
// another cluster).
func TestSyncedClusterPolicyStaysInItsCluster(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	ns := func(n string) map[string]string { return map[string]string{"kubernetes.io/metadata.name": n} }
	for cl, net := range map[string]string{"east": "10.1", "west": "10.2"} {
		registerCluster(t, ctx, c, cl, net+".0.0/16")
		if _, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: cl, Endpoints: []*fedmeshv1.Endpoint{
			{Namespace: "shop", Name: "web-0", Ips: []string{net + ".1.5"}, NamespaceLabels: ns("shop"), Node: "n1"},
			{Namespace: "db", Name: "pg-0", Ips: []string{net + ".1.6"}, NamespaceLabels: ns("db"), Node: "n1"},
		}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cpClient(c).ApplyClusterPolicies(ctx, &fedmeshv1.ApplyClusterPoliciesRequest{Cluster: "east",
		Policies: []*fedmeshv1.ClusterNetworkPolicy{{Cluster: "east", Name: "guard", SpecJson: []byte(validCNP)}}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src, dst string
		want     fedmeshv1.Verdict
	}{
		{"east", "east", fedmeshv1.Verdict_VERDICT_DENY},
		{"west", "west", fedmeshv1.Verdict_VERDICT_ALLOW},
		{"west", "east", fedmeshv1.Verdict_VERDICT_ALLOW},
	} {
		r, err := c.reach.Reach(ctx, &fedmeshv1.ReachRequest{Source: epTarget(tc.src, "shop", "web-0"), Destination: epTarget(tc.dst, "db", "pg-0"), Port: 5432})
		if err != nil {
			t.Fatal(err)
		}
		if r.GetVerdict() != tc.want {
			t.Errorf("%s shop -> %s db: %v, want %v\n%v", tc.src, tc.dst, r.GetVerdict(), tc.want, r.GetIngress())
		}
	}
}
