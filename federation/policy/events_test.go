package policy

import (
	"errors"
	"net/netip"
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// TestApplyRejectedPolicyUpdateKeepsThePreviousVersion holds the failure
// rule of Apply: an update the compiler refuses changes nothing (the old
// version still denies) and is reported as ErrPolicyRejected; a later
// delete still removes the policy.
func TestApplyRejectedPolicyUpdateKeepsThePreviousVersion(t *testing.T) {
	e := NewEngine()
	put := func(obj any) *fedmeshv1.Event {
		ev := &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT}
		switch o := obj.(type) {
		case *fedmeshv1.Cluster:
			ev.Object = &fedmeshv1.Event_Cluster{Cluster: o}
		case *fedmeshv1.Endpoint:
			ev.Object = &fedmeshv1.Event_Endpoint{Endpoint: o}
		case *fedmeshv1.Policy:
			ev.Object = &fedmeshv1.Event_Policy{Policy: o}
		}
		return ev
	}
	pol := func(proto fedmeshv1.Protocol) *fedmeshv1.Policy {
		return &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "c1", Namespace: "x", Name: "deny-in",
			Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: &fedmeshv1.LabelSelector{},
				Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{Ports: []*fedmeshv1.NetworkPolicyPort{{Protocol: proto,
					Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 9}}}}}}}
	}
	for _, ev := range []*fedmeshv1.Event{
		put(&fedmeshv1.Cluster{Name: "c1"}),
		put(&fedmeshv1.Endpoint{Cluster: "c1", Namespace: "x", Name: "a", Identity: 7, Ips: []string{"10.0.0.1"}}),
		put(pol(fedmeshv1.Protocol_PROTOCOL_TCP)),
	} {
		if err := ApplyEvent(e, ev); err != nil {
			t.Fatal(err)
		}
	}
	flow := Flow{Src: Target{IP: netip.MustParseAddr("192.0.2.1")}, Dst: Target{IP: netip.MustParseAddr("10.0.0.1")}, Proto: ProtoTCP, Port: 80}
	allowed := func() bool {
		x, err := e.Explain(flow)
		if err != nil {
			t.Fatal(err)
		}
		return x.Allowed
	}
	if allowed() {
		t.Fatal("tcp/80 allowed before the update; the policy should deny it")
	}
	err := ApplyEvent(e, put(pol(fedmeshv1.Protocol_PROTOCOL_ICMP)))
	var rej *RejectedPolicyError
	if !errors.Is(err, ErrPolicyRejected) || !errors.As(err, &rej) || rej.Key != (PolicyKey{"c1", "x", "deny-in"}) {
		t.Fatalf("uncompilable update: err %v, want a RejectedPolicyError for c1/x/deny-in", err)
	}
	if allowed() {
		t.Fatal("after a rejected update tcp/80 is allowed: the previous version was dropped")
	}
	del := &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_DELETE, Object: &fedmeshv1.Event_Policy{Policy: pol(fedmeshv1.Protocol_PROTOCOL_ICMP)}}
	if err := ApplyEvent(e, del); err != nil || !allowed() {
		t.Fatalf("after the delete: err %v, allowed %v; want nil, true", err, allowed())
	}
}
