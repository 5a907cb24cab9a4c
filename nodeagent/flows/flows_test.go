package flows

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

var (
	webEp = &fedmeshv1.Endpoint{Cluster: "c1", Namespace: "x", Name: "web", Identity: 7, Ips: []string{"10.0.0.1"}, Labels: map[string]string{"app": "web"}}
	dbEp  = &fedmeshv1.Endpoint{Cluster: "c1", Namespace: "x", Name: "db", Identity: 8, Ips: []string{"10.0.0.2"}, Labels: map[string]string{"app": "db"}}
	dbKey = policy.EndpointKey{Cluster: "c1", Namespace: "x", Name: "db"}
)

// compiled runs the real compiler: db is selected by allow-web (ingress
// from app=web on tcp/5432) and by audit-egress (one egress rule).
func compiled(t *testing.T) *policy.Compiled {
	t.Helper()
	e := policy.NewEngine()
	e.UpsertCluster(&fedmeshv1.Cluster{Name: "c1"})
	e.UpsertEndpoint(webEp)
	e.UpsertEndpoint(dbEp)
	sel := func(app string) *fedmeshv1.LabelSelector {
		return &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": app}}
	}
	for _, p := range []*fedmeshv1.Policy{
		{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "c1", Namespace: "x", Name: "allow-web", Spec: &fedmeshv1.NetworkPolicySpec{
			PodSelector: sel("db"),
			Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{From: []*fedmeshv1.NetworkPolicyPeer{{PodSelector: sel("web")}},
				Ports: []*fedmeshv1.NetworkPolicyPort{{Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 5432}}}}}}},
		{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "c1", Namespace: "x", Name: "audit-egress", Spec: &fedmeshv1.NetworkPolicySpec{
			PodSelector: sel("db"), PolicyTypes: []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_EGRESS},
			Egress: []*fedmeshv1.NetworkPolicyEgressRule{{To: []*fedmeshv1.NetworkPolicyPeer{{PodSelector: sel("web")}}}}}},
	} {
		if err := e.UpsertPolicy(p); err != nil {
			t.Fatal(err)
		}
	}
	e.Recompute()
	c, ok := e.Rules(dbKey)
	if !ok {
		t.Fatal("db not compiled")
	}
	return c
}

// ruleFor is the RuleID the dataplane would report for a packet from peer
// on tcp/port into the endpoint.
func ruleFor(t *testing.T, c *policy.Compiled, peer uint32, port uint16) policy.RuleID {
	t.Helper()
	for _, r := range c.Rules.Ingress.Identities {
		if r.Peer == peer && r.Ports.Contains(port) {
			return r.Rule
		}
	}
	t.Fatalf("no ingress rule for identity %d port %d in %+v", peer, port, c.Rules.Ingress)
	return 0
}

func dir(t *testing.T) (*Directory, *policy.Compiled) {
	d := NewDirectory()
	d.UpsertEndpoint(webEp)
	d.UpsertEndpoint(dbEp)
	c := compiled(t)
	d.Stage(dbKey.String(), c)
	d.Commit()
	return d, c
}

func event(src, dst string, srcID, dstID uint32, dirn policy.Direction, r dataplane.Reason, rule policy.RuleID) dataplane.Event {
	return dataplane.Event{EndpointID: dbKey.String(), Direction: dirn, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst),
		SrcIdentity: srcID, DstIdentity: dstID, Proto: 6, SrcPort: 40000, DstPort: 5432, Verdict: r.Verdict(), Reason: r, Rule: rule}
}

func TestFlowsNameTheDecidingRuleOrTheSelectingPolicies(t *testing.T) {
	d, c := dir(t)
	allowRule := ruleFor(t, c, 7, 5432)
	for _, tc := range []struct {
		name    string
		ev      dataplane.Event
		kind    fedmeshv1.FlowDecisionKind
		explain string
	}{
		{"allowed by the rule whose RuleID the dataplane reports",
			event("10.0.0.1", "10.0.0.2", 7, 8, policy.Ingress, dataplane.ReasonAllowPolicy, allowRule),
			fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE, "ingress rule 0 of c1/x/allow-web"},
		{"denied: selected and no rule allowed, naming the policies of that direction only",
			event("192.0.2.9", "10.0.0.2", 2, 8, policy.Ingress, dataplane.ReasonDenyPolicy, 0),
			fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NO_RULE_ALLOWS, "ingress: selected by c1/x/allow-web and no rule allowed"},
		{"egress denied names the egress policy",
			event("10.0.0.2", "192.0.2.9", 8, 2, policy.Egress, dataplane.ReasonDenyPolicy, 0),
			fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NO_RULE_ALLOWS, "egress: selected by c1/x/audit-egress and no rule allowed"},
		{"open direction: not selected",
			event("10.0.0.2", "10.0.0.1", 8, 7, policy.Egress, dataplane.ReasonAllowOpen, 0),
			fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NOT_SELECTED, "egress: not selected by any policy (open)"},
		{"dataplane reasons are named",
			event("10.0.0.1", "10.0.0.2", 7, 8, policy.Ingress, dataplane.ReasonDenyMalformed, 0),
			fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_DATAPLANE, "ingress: deny-malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := d.Attribute(tc.ev, "c1", "n1", time.Unix(1, 0))
			if f.GetDecision().GetKind() != tc.kind || Explain(f.GetDecision()) != tc.explain {
				t.Fatalf("decision %v (%q), want %v %q", f.GetDecision(), Explain(f.GetDecision()), tc.kind, tc.explain)
			}
		})
	}
}

func TestFlowsResolveBothWorkloads(t *testing.T) {
	d, c := dir(t)
	f := d.Attribute(event("10.0.0.1", "10.0.0.2", 7, 8, policy.Ingress, dataplane.ReasonAllowPolicy, ruleFor(t, c, 7, 5432)), "c1", "n1", time.Unix(1, 0))
	s, dst := f.GetSource(), f.GetDestination()
	if s.GetPod() != "web" || len(s.GetLabels()) != 0 || s.GetIdentity() != 7 || s.GetPort() != 40000 ||
		dst.GetPod() != "db" || dst.GetNamespace() != "x" || dst.GetCluster() != "c1" || dst.GetPort() != 5432 || dst.GetIp() != "10.0.0.2" ||
		f.GetVerdict() != fedmeshv1.Verdict_VERDICT_ALLOW || f.GetNode() != "n1" || f.GetProtocol() != 6 {
		t.Fatalf("flow = %v", f)
	}
	ext := d.Attribute(event("192.0.2.9", "10.0.0.2", 2, 8, policy.Ingress, dataplane.ReasonDenyPolicy, 0), "c1", "n1", time.Unix(1, 0))
	if ext.GetSource().GetCluster() != "" || ext.GetSource().GetIp() != "192.0.2.9" || ext.GetVerdict() != fedmeshv1.Verdict_VERDICT_DENY {
		t.Fatalf("external source = %v", ext.GetSource())
	}
	d.DeleteEndpoint(policy.EndpointKey{Cluster: "c1", Namespace: "x", Name: "web"})
	if gone := d.Attribute(event("10.0.0.1", "10.0.0.2", 7, 8, policy.Ingress, dataplane.ReasonDenyPolicy, 0), "c1", "n1", time.Unix(1, 0)); gone.GetSource().GetPod() != "" {
		t.Fatalf("deleted endpoint still resolved: %v", gone.GetSource())
	}
}

func TestRulesAttributeOnlyOnceCommitted(t *testing.T) {
	d := NewDirectory()
	c := compiled(t)
	ev := event("10.0.0.1", "10.0.0.2", 7, 8, policy.Ingress, dataplane.ReasonAllowPolicy, ruleFor(t, c, 7, 5432))
	d.Stage(dbKey.String(), c)
	if k := d.Attribute(ev, "c1", "n1", time.Unix(1, 0)).GetDecision().GetKind(); k == fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE {
		t.Fatal("staged rules attributed an event before the dataplane enforced them")
	}
	d.Commit()
	if k := d.Attribute(ev, "c1", "n1", time.Unix(1, 0)).GetDecision().GetKind(); k != fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE {
		t.Fatalf("after commit kind %v, want RULE", k)
	}
	d.Stage(dbKey.String(), nil)
	d.Commit()
	if k := d.Attribute(ev, "c1", "n1", time.Unix(1, 0)).GetDecision().GetKind(); k == fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE {
		t.Fatal("removed endpoint's rules still attribute")
	}
}

type sliceSink struct{ got chan *fedmeshv1.Flow }

func (s sliceSink) Offer(b []byte) {
	var f fedmeshv1.Flow
	if err := proto.Unmarshal(b, &f); err != nil {
		panic(err)
	}
	s.got <- &f
}

func TestReaderAttributesEveryEvent(t *testing.T) {
	d, _ := dir(t)
	sink := sliceSink{make(chan *fedmeshv1.Flow, 2)}
	r := &Reader{Cluster: "c1", Node: "n1", Dir: d, Sink: sink}
	events := make(chan dataplane.Event, 2)
	events <- event("192.0.2.9", "10.0.0.2", 2, 8, policy.Ingress, dataplane.ReasonDenyPolicy, 0)
	close(events)
	r.Run(context.Background(), events)
	f := <-sink.got
	if !strings.Contains(Explain(f.GetDecision()), "allow-web") || r.Events() != 1 {
		t.Fatalf("flow %v, events %d", f, r.Events())
	}
}

// The encoder writes exactly the record Attribute builds, for every kind
// of decision, known and unknown workloads, both families.
func TestAppendFlowEncodesAttribute(t *testing.T) {
	d, c := dir(t)
	rule := ruleFor(t, c, 7, 5432)
	now := time.Unix(1796558400, 123456789)
	for _, ev := range []dataplane.Event{
		event("10.0.0.1", "10.0.0.2", 7, 8, policy.Ingress, dataplane.ReasonAllowPolicy, rule),
		event("192.0.2.9", "10.0.0.2", 2, 8, policy.Ingress, dataplane.ReasonDenyPolicy, 0),
		event("10.0.0.2", "192.0.2.9", 8, 2, policy.Egress, dataplane.ReasonDenyPolicy, 0),
		event("10.0.0.2", "10.0.0.1", 8, 7, policy.Egress, dataplane.ReasonAllowOpen, 0),
		event("10.0.0.1", "10.0.0.2", 7, 8, policy.Ingress, dataplane.ReasonDenyMalformed, 0),
		event("10.0.0.1", "10.0.0.2", 0, 0, policy.Ingress, dataplane.ReasonAllowPolicy, 999), // a rule the endpoint does not have
		event("fd00::1", "fd00::2", 0, 8, policy.Ingress, dataplane.ReasonDenyPolicy, 0),
		{EndpointID: "c1/x/unknown", Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.9"), Proto: 1, Verdict: dataplane.Deny, Reason: dataplane.ReasonDenyPolicy},
	} {
		want := d.Attribute(ev, "c1", "n1", now)
		var got fedmeshv1.Flow
		if err := proto.Unmarshal(d.AppendFlow(nil, ev, "c1", "n1", now), &got); err != nil {
			t.Fatalf("%+v: decode: %v", ev, err)
		}
		if !proto.Equal(&got, want) {
			t.Errorf("%+v:\nencoded %v\nwant    %v", ev, &got, want)
		}
	}
	var req fedmeshv1.ShipFlowsRequest
	ev := event("10.0.0.1", "10.0.0.2", 7, 8, policy.Ingress, dataplane.ReasonAllowPolicy, rule)
	b := AppendShipped(AppendShipped(nil, d.AppendFlow(nil, ev, "c1", "n1", now)), d.AppendFlow(nil, ev, "c1", "n1", now))
	if err := proto.Unmarshal(b, &req); err != nil || len(req.GetFlows()) != 2 || !proto.Equal(req.GetFlows()[1], d.Attribute(ev, "c1", "n1", now)) {
		t.Fatalf("shipped batch %v (%v)", &req, err)
	}
}

// TestFlowsNameTheDecidingTierRule: an event a ClusterNetworkPolicy rule
// decided (the dataplane reports its RuleID) names the tier, the policy and
// the rule, and encodes as it attributes.
func TestFlowsNameTheDecidingTierRule(t *testing.T) {
	e := policy.NewEngine()
	e.UpsertCluster(&fedmeshv1.Cluster{Name: "c1"})
	e.UpsertEndpoint(webEp)
	e.UpsertEndpoint(dbEp)
	if err := e.UpsertClusterPolicy(&policy.ClusterPolicy{Name: "guard", Spec: cnpv1.ClusterNetworkPolicySpec{
		Tier: cnpv1.AdminTier, Priority: 3,
		Subject: cnpv1.ClusterNetworkPolicySubject{Pods: &cnpv1.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}},
		Ingress: []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "no-ssh", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
			From:      []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}},
			Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: 22}}}}}},
	}}); err != nil {
		t.Fatal(err)
	}
	e.Recompute()
	c, _ := e.Rules(dbKey)
	ok, rule := c.Rules.Evaluate(policy.Ingress, 7, netip.MustParseAddr("10.0.0.1"), 6, 22)
	if ok || rule == 0 {
		t.Fatalf("the compiled rules do not deny ssh by a rule: %v %d", ok, rule)
	}
	d := NewDirectory()
	d.UpsertEndpoint(webEp)
	d.UpsertEndpoint(dbEp)
	d.Stage(dbKey.String(), c)
	d.Commit()
	ev := event("10.0.0.1", "10.0.0.2", 7, 8, policy.Ingress, dataplane.ReasonDenyPolicy, rule)
	ev.DstPort = 22
	now := time.Unix(1796558400, 0)
	f := d.Attribute(ev, "c1", "n1", now)
	dec := f.GetDecision()
	if dec.GetKind() != fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE || dec.GetTier() != "Admin" ||
		dec.GetRule().GetPolicy().GetName() != "guard" || dec.GetRule().GetIndex() != 0 || len(dec.GetSelectedBy()) != 0 {
		t.Fatalf("decision %v (%q), want the Admin rule 0 of guard", dec, Explain(dec))
	}
	var got fedmeshv1.Flow
	if err := proto.Unmarshal(d.AppendFlow(nil, ev, "c1", "n1", now), &got); err != nil || !proto.Equal(&got, f) {
		t.Fatalf("encoded %v (%v), want %v", &got, err, f)
	}
}
