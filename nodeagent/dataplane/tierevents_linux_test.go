package dataplane

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// TestTierVerdictEventsNameTheirRule: a packet an Admin Deny drops and one
// an Admin Accept lets through raise verdict events, in the kernel and in
// the twin, whose RuleID Compiled.Origin maps back to the tier, policy,
// rule name and action that decided.
func TestTierVerdictEventsNameTheirRule(t *testing.T) {
	requireKernel(t)
	ns, nsPath := newNetNS(t)
	run(t, "ip", "-n", ns, "link", "add", "tv0", "type", "veth", "peer", "name", "ptv0")
	run(t, "ip", "-n", ns, "link", "set", "tv0", "up")
	e := policy.NewEngine(policy.WithLocal(func(ep *fedmeshv1.Endpoint) bool { return ep.Name == "web" }))
	e.UpsertCluster(&fedmeshv1.Cluster{Name: "c"})
	web := &fedmeshv1.Endpoint{Cluster: "c", Namespace: "shop", Name: "web", Identity: 300, Node: "n",
		Labels: map[string]string{"app": "web"}, NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "shop"},
		Ips: []string{"198.18.0.1"}}
	cli := &fedmeshv1.Endpoint{Cluster: "c", Namespace: "other", Name: "cli", Identity: 301, Node: "m",
		Labels: map[string]string{"app": "cli"}, NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "other"},
		Ips: []string{"198.18.0.2"}}
	e.UpsertEndpoint(web)
	e.UpsertEndpoint(cli)
	other := &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "other"}}
	cnp := &policy.ClusterPolicy{Name: "guard", Spec: cnpv1.ClusterNetworkPolicySpec{Tier: cnpv1.AdminTier, Priority: 5,
		Subject: cnpv1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "shop"}}},
		Ingress: []cnpv1.ClusterNetworkPolicyIngressRule{
			{Name: "http-ok", Action: cnpv1.ClusterNetworkPolicyRuleActionAccept, From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: other}},
				Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: 80}}}}},
			{Name: "rest-denied", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny, From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: other}}},
		}}}
	if err := e.UpsertClusterPolicy(cnp); err != nil {
		t.Fatal(err)
	}
	e.Recompute()
	key := policy.EndpointKey{Cluster: "c", Namespace: "shop", Name: "web"}
	c, ok := e.Rules(key)
	if !ok {
		t.Fatal("web has no rules")
	}
	ipc := NewIPCacheBuilder(IPCache{})
	ipc.Set(netip.MustParsePrefix("198.18.0.1/32"), 300)
	ipc.Set(netip.MustParsePrefix("198.18.0.2/32"), 301)
	rev := &Revision{Number: 1, IPCache: ipc.IPCache(), Rules: map[string]policy.EndpointRules{key.String(): c.Rules}}
	ctx := context.Background()
	kern, _ := newEBPF(t, nsPath)
	mem := NewMemory(WithIfindexResolver(func(iface string) (uint32, error) { return ifindexIn(nsPath, iface) }))
	for _, dp := range []Dataplane{kern, mem} {
		if err := dp.Attach(ctx, Endpoint{ID: key.String(), Interface: "tv0"}); err != nil {
			t.Fatal(err)
		}
		if err := dp.Apply(ctx, rev); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := ifindexIn(nsPath, "tv0")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		port     uint16
		verdict  Verdict
		ruleName string
		action   policy.Action
	}{
		{80, Allow, "http-ok", policy.ActionAccept},
		{22, Deny, "rest-denied", policy.ActionDeny},
	}
	for _, tc := range cases {
		p := pktSpec{src: netip.MustParseAddr("198.18.0.2"), dst: netip.MustParseAddr("198.18.0.1"), proto: protoTCP,
			sport: 40000, dport: tc.port, tcpFlags: 2}
		err := inNetNS(nsPath, func() error {
			_, err := kern.runProg(uint8(policy.Ingress), idx, p.frame())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := mem.Process(key.String(), policy.Ingress, p.frame()); err != nil {
			t.Fatal(err)
		}
		for name, dp := range map[string]Dataplane{"kernel": kern, "memory": mem} {
			ev := waitEvent(t, dp, tc.port)
			o, ok := c.Origin(ev.Rule)
			tr, isTier := o.TierRule()
			if ev.Verdict != tc.verdict || !ok || !isTier || tr.Policy.Name != "guard" || o.RuleName != tc.ruleName ||
				o.Action != tc.action || o.Tier != policy.TierAdmin || o.Priority != 5 {
				t.Errorf("%s: port %d: event %+v maps to %+v (%v), want %s by admin rule %s (%s) of guard",
					name, tc.port, ev, o, ok, tc.verdict, tc.ruleName, tc.action)
			}
		}
	}
}

func waitEvent(t *testing.T, dp Dataplane, port uint16) Event {
	t.Helper()
	deadline := time.After(2 * time.Second)
	for {
		select {
		case ev := <-dp.Events():
			if ev.DstPort == port {
				return ev
			}
		case <-deadline:
			t.Fatalf("no verdict event for port %d", port)
		}
	}
}
