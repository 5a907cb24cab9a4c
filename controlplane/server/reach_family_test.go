package server

import (
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// TestReachExplainsTheFamilyOfDualStackPods: a policy whose peer is an
// IPv6 block allows the flow between two dual-stack pods over IPv6 only, so
// the verdict tells which family Reach resolved the pods to.
func TestReachExplainsTheFamilyOfDualStackPods(t *testing.T) {
	_, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16", "fd00:1::/48")
	registerCluster(t, ctx, c, "west", "10.2.0.0/16", "fd00:2::/48")
	for cluster, eps := range map[string][]*fedmeshv1.Endpoint{
		"east": {
			{Namespace: "shop", Name: "web-0", Ips: []string{"10.1.1.5", "fd00:1::5"}, Labels: map[string]string{"app": "web"}, Node: "n1"},
			{Namespace: "shop", Name: "old-0", Ips: []string{"10.1.1.6"}, Labels: map[string]string{"app": "old"}, Node: "n1"},
		},
		"west": {{Namespace: "db", Name: "pg-0", Ips: []string{"10.2.1.5", "fd00:2::5"}, Labels: map[string]string{"app": "pg"}, Node: "n1"}},
	} {
		if _, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: cluster, Endpoints: eps}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.policy.ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Cluster: "west", Policies: []*fedmeshv1.Policy{{
		Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "west", Namespace: "db", Name: "v6-only",
		Spec: &fedmeshv1.NetworkPolicySpec{
			PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": "pg"}},
			Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{
				Ports: []*fedmeshv1.NetworkPolicyPort{{Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 5432}}},
				From:  []*fedmeshv1.NetworkPolicyPeer{{IpBlock: &fedmeshv1.IPBlock{Cidr: "fd00:1::/48"}}},
			}},
			PolicyTypes: []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_INGRESS},
		},
	}}}); err != nil {
		t.Fatal(err)
	}
	web, pg := epTarget("east", "shop", "web-0"), epTarget("west", "db", "pg-0")
	tests := []struct {
		name     string
		req      *fedmeshv1.ReachRequest
		verdict  fedmeshv1.Verdict
		src, dst string // resolved addresses
	}{
		{"family 6 resolves both pods to their IPv6 addresses",
			&fedmeshv1.ReachRequest{Source: web, Destination: pg, Port: 5432, Family: 6}, fedmeshv1.Verdict_VERDICT_ALLOW, "fd00:1::5", "fd00:2::5"},
		{"family 4 resolves both pods to their IPv4 addresses",
			&fedmeshv1.ReachRequest{Source: web, Destination: pg, Port: 5432, Family: 4}, fedmeshv1.Verdict_VERDICT_DENY, "10.1.1.5", "10.2.1.5"},
		{"no family takes each pod's first address, IPv4",
			&fedmeshv1.ReachRequest{Source: web, Destination: pg, Port: 5432}, fedmeshv1.Verdict_VERDICT_DENY, "10.1.1.5", "10.2.1.5"},
		{"an IPv6 source address picks the destination pod's IPv6 address",
			&fedmeshv1.ReachRequest{Source: ipTarget("fd00:1::5"), Destination: pg, Port: 5432}, fedmeshv1.Verdict_VERDICT_ALLOW, "fd00:1::5", "fd00:2::5"},
		{"an IPv4 destination address picks the source pod's IPv4 address",
			&fedmeshv1.ReachRequest{Source: web, Destination: ipTarget("10.2.1.5"), Port: 5432}, fedmeshv1.Verdict_VERDICT_DENY, "10.1.1.5", "10.2.1.5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.reach.Reach(ctx, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetVerdict() != tt.verdict || resp.GetSource().GetIp() != tt.src || resp.GetDestination().GetIp() != tt.dst {
				t.Fatalf("got %s for %s -> %s, want %s for %s -> %s", resp.GetVerdict(), resp.GetSource().GetIp(), resp.GetDestination().GetIp(), tt.verdict, tt.src, tt.dst)
			}
			if resp.GetDestination().GetEndpoint().GetName() != "pg-0" {
				t.Errorf("destination resolved to %v, want pg-0", resp.GetDestination().GetEndpoint())
			}
		})
	}

	bad := []struct {
		name  string
		req   *fedmeshv1.ReachRequest
		field string
	}{
		{"family neither 4 nor 6", &fedmeshv1.ReachRequest{Source: web, Destination: pg, Port: 5432, Family: 5}, "family"},
		{"family 4 with an IPv6 address", &fedmeshv1.ReachRequest{Source: ipTarget("fd00:1::5"), Destination: pg, Port: 5432, Family: 4}, "source.ip"},
		{"family 6 to a pod without an IPv6 address", &fedmeshv1.ReachRequest{Source: pg, Destination: epTarget("east", "shop", "old-0"), Port: 80, Family: 6}, "destination.endpoint"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.reach.Reach(ctx, tt.req)
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("code %s, want InvalidArgument: %v", st.Code(), err)
			}
			var fields []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
					}
				}
			}
			if len(fields) != 1 || fields[0] != tt.field {
				t.Fatalf("fields %v, want [%s]: %v", fields, tt.field, err)
			}
		})
	}
}
