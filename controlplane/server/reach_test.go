package server

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func epTarget(cluster, ns, name string) *fedmeshv1.ReachTarget {
	return &fedmeshv1.ReachTarget{Target: &fedmeshv1.ReachTarget_Endpoint{Endpoint: &fedmeshv1.EndpointRef{Cluster: cluster, Namespace: ns, Name: name}}}
}

func ipTarget(ip string) *fedmeshv1.ReachTarget {
	return &fedmeshv1.ReachTarget{Target: &fedmeshv1.ReachTarget_Ip{Ip: ip}}
}

// allowWebToPG is a federated policy: pods app=pg in namespace db of every
// cluster accept TCP 5432 from app=web pods of any namespace and cluster.
func allowWebToPG() *fedmeshv1.Policy {
	return &fedmeshv1.Policy{
		Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Namespace: "db", Name: "allow-web",
		Spec: &fedmeshv1.NetworkPolicySpec{
			PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": "pg"}},
			Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{
				Ports: []*fedmeshv1.NetworkPolicyPort{{Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 5432}}},
				From: []*fedmeshv1.NetworkPolicyPeer{{
					PodSelector:       &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
					NamespaceSelector: &fedmeshv1.LabelSelector{},
					ClusterSelector:   &fedmeshv1.LabelSelector{},
				}},
			}},
			PolicyTypes: []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_INGRESS},
		},
	}
}

func TestReachExplainsVerdictsAcrossClustersWithTheCompiler(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	registerCluster(t, ctx, c, "west", "10.2.0.0/16")
	upsert := func(cluster string, eps ...*fedmeshv1.Endpoint) {
		t.Helper()
		if _, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: cluster, Endpoints: eps}); err != nil {
			t.Fatal(err)
		}
	}
	upsert("east", &fedmeshv1.Endpoint{Namespace: "shop", Name: "web-0", Ips: []string{"10.1.1.5"}, Labels: map[string]string{"app": "web"}, Node: "n1"})
	upsert("west",
		&fedmeshv1.Endpoint{Namespace: "db", Name: "pg-0", Ips: []string{"10.2.1.5"}, Labels: map[string]string{"app": "pg"}, Node: "n1"},
		&fedmeshv1.Endpoint{Namespace: "db", Name: "cache-0", Ips: []string{"10.2.1.6"}, Labels: map[string]string{"app": "cache"}, Node: "n1"})
	pol, err := c.policy.ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{allowWebToPG()}})
	if err != nil {
		t.Fatal(err)
	}
	eps, err := c.endpoint.ListEndpoints(ctx, &fedmeshv1.ListEndpointsRequest{Cluster: "west"})
	if err != nil {
		t.Fatal(err)
	}
	pgIdentity := eps.GetEndpoints()[1].GetIdentity() // sorted: cache-0, pg-0
	polKey := "/db/allow-web"
	key := func(k *fedmeshv1.PolicyKey) string {
		return k.GetCluster() + "/" + k.GetNamespace() + "/" + k.GetName()
	}

	tests := []struct {
		name            string
		req             *fedmeshv1.ReachRequest
		verdict         fedmeshv1.Verdict
		egress, ingress fedmeshv1.VerdictReason
		rule            string // deciding ingress rule's policy
		selecting       string // ingress selecting policy
		srcIdentity     uint32 // checked when set
		dstIdentity     uint32
		dstEndpoint     string
	}{
		{name: "allowed across clusters by a federated rule",
			req:     &fedmeshv1.ReachRequest{Source: epTarget("east", "shop", "web-0"), Destination: epTarget("west", "db", "pg-0"), Port: 5432},
			verdict: fedmeshv1.Verdict_VERDICT_ALLOW, egress: fedmeshv1.VerdictReason_VERDICT_REASON_NOT_SELECTED,
			ingress: fedmeshv1.VerdictReason_VERDICT_REASON_RULE_ALLOWS, rule: polKey, selecting: polKey, dstIdentity: pgIdentity, dstEndpoint: "west/db/pg-0"},
		{name: "denied on another port",
			req:     &fedmeshv1.ReachRequest{Source: epTarget("east", "shop", "web-0"), Destination: epTarget("west", "db", "pg-0"), Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: 80},
			verdict: fedmeshv1.Verdict_VERDICT_DENY, egress: fedmeshv1.VerdictReason_VERDICT_REASON_NOT_SELECTED,
			ingress: fedmeshv1.VerdictReason_VERDICT_REASON_NO_RULE_ALLOWS, selecting: polKey},
		{name: "allowed to an endpoint no policy selects",
			req:     &fedmeshv1.ReachRequest{Source: epTarget("east", "shop", "web-0"), Destination: epTarget("west", "db", "cache-0"), Port: 6379},
			verdict: fedmeshv1.Verdict_VERDICT_ALLOW, egress: fedmeshv1.VerdictReason_VERDICT_REASON_NOT_SELECTED,
			ingress: fedmeshv1.VerdictReason_VERDICT_REASON_NOT_SELECTED},
		{name: "external address is world and denied",
			req:     &fedmeshv1.ReachRequest{Source: ipTarget("192.0.2.7"), Destination: ipTarget("10.2.1.5"), Port: 5432},
			verdict: fedmeshv1.Verdict_VERDICT_DENY, egress: fedmeshv1.VerdictReason_VERDICT_REASON_NOT_ENFORCED,
			ingress: fedmeshv1.VerdictReason_VERDICT_REASON_NO_RULE_ALLOWS, selecting: polKey, srcIdentity: 2, dstIdentity: pgIdentity, dstEndpoint: "west/db/pg-0"},
		{name: "source address resolves to its endpoint",
			req:     &fedmeshv1.ReachRequest{Source: ipTarget("10.1.1.5"), Destination: epTarget("west", "db", "pg-0"), Port: 5432},
			verdict: fedmeshv1.Verdict_VERDICT_ALLOW, egress: fedmeshv1.VerdictReason_VERDICT_REASON_NOT_SELECTED,
			ingress: fedmeshv1.VerdictReason_VERDICT_REASON_RULE_ALLOWS, rule: polKey, selecting: polKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.reach.Reach(ctx, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetRevision() < pol.GetRevision() {
				t.Errorf("answered at revision %d, before the policy's %d", resp.GetRevision(), pol.GetRevision())
			}
			if resp.GetVerdict() != tt.verdict || resp.GetEgress().GetReason() != tt.egress || resp.GetIngress().GetReason() != tt.ingress {
				t.Fatalf("got %s (egress %s, ingress %s), want %s (%s, %s): %v", resp.GetVerdict(), resp.GetEgress().GetReason(),
					resp.GetIngress().GetReason(), tt.verdict, tt.egress, tt.ingress, resp)
			}
			in := resp.GetIngress()
			if tt.rule != "" {
				r := in.GetRule()
				if key(r.GetPolicy()) != tt.rule || r.GetKind() != fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED ||
					r.GetDirection() != fedmeshv1.PolicyType_POLICY_TYPE_INGRESS || r.GetIndex() != 0 {
					t.Errorf("deciding rule %v, want ingress rule 0 of %s", r, tt.rule)
				}
			} else if in.GetRule() != nil {
				t.Errorf("rule %v without RULE_ALLOWS", in.GetRule())
			}
			var sel []string
			for _, k := range in.GetSelectingPolicies() {
				sel = append(sel, key(k))
			}
			if strings.Join(sel, ",") != tt.selecting {
				t.Errorf("selecting %v, want %q", sel, tt.selecting)
			}
			if in.GetExplanation() == "" || resp.GetEgress().GetExplanation() == "" {
				t.Error("no explanation")
			}
			if tt.srcIdentity != 0 && resp.GetSource().GetIdentity() != tt.srcIdentity {
				t.Errorf("source identity %d, want %d", resp.GetSource().GetIdentity(), tt.srcIdentity)
			}
			if tt.dstIdentity != 0 && resp.GetDestination().GetIdentity() != tt.dstIdentity {
				t.Errorf("destination identity %d, want %d", resp.GetDestination().GetIdentity(), tt.dstIdentity)
			}
			if d := resp.GetDestination().GetEndpoint(); tt.dstEndpoint != "" && d.GetCluster()+"/"+d.GetNamespace()+"/"+d.GetName() != tt.dstEndpoint {
				t.Errorf("destination resolved to %v, want %s", d, tt.dstEndpoint)
			}
		})
	}

	// The engine follows writes: right after the policy is deleted, the
	// answer (at a revision >= the delete's) no longer denies.
	del, err := c.policy.DeletePolicy(ctx, &fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Namespace: "db", Name: "allow-web"}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.reach.Reach(ctx, &fedmeshv1.ReachRequest{Source: epTarget("east", "shop", "web-0"), Destination: epTarget("west", "db", "pg-0"), Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetRevision() < del.GetRevision() || resp.GetVerdict() != fedmeshv1.Verdict_VERDICT_ALLOW {
		t.Fatalf("after delete at %d: %v", del.GetRevision(), resp)
	}
}

func TestReachRejectsBadRequestsAndUnknownEndpoints(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	web := epTarget("east", "shop", "web-0")
	if _, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{
		{Namespace: "shop", Name: "web-0", Ips: []string{"10.1.1.5"}, Node: "n1"}}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		req   *fedmeshv1.ReachRequest
		code  codes.Code
		field string
	}{
		{"no source", &fedmeshv1.ReachRequest{Destination: web, Port: 80}, codes.InvalidArgument, "source"},
		{"bad destination address", &fedmeshv1.ReachRequest{Source: web, Destination: ipTarget("10.1.1"), Port: 80}, codes.InvalidArgument, "destination.ip"},
		{"endpoint without name", &fedmeshv1.ReachRequest{Source: epTarget("east", "shop", ""), Destination: web, Port: 80}, codes.InvalidArgument, "source.endpoint.name"},
		{"port out of range", &fedmeshv1.ReachRequest{Source: web, Destination: web, Port: 70000}, codes.InvalidArgument, "port"},
		{"unknown protocol", &fedmeshv1.ReachRequest{Source: web, Destination: web, Protocol: 99, Port: 80}, codes.InvalidArgument, "protocol"},
		{"unknown endpoint", &fedmeshv1.ReachRequest{Source: web, Destination: epTarget("east", "shop", "ghost"), Port: 80}, codes.NotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.reach.Reach(ctx, tt.req)
			st := status.Convert(err)
			if st.Code() != tt.code {
				t.Fatalf("code %s, want %s: %v", st.Code(), tt.code, err)
			}
			if tt.field == "" {
				return
			}
			var fields []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
					}
				}
			}
			if !strings.Contains(" "+strings.Join(fields, " ")+" ", " "+tt.field+" ") {
				t.Errorf("violations %v do not name %s (%v)", fields, tt.field, err)
			}
		})
	}
}
