package policy

import (
	"errors"
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

const denyTCP80 = `{"tier":"Admin","priority":5,"subject":{"namespaces":{}},` +
	`"ingress":[{"name":"no-80","action":"Deny","from":[{"namespaces":{}}],"protocols":[{"tcp":{"destinationPort":{"number":80}}}]}]}`

// TestClusterPolicyEventsDecideThroughTheTiers feeds ClusterNetworkPolicy
// watch events through ApplyEvent, the path agents and Reach share: a put
// makes the Admin Deny decide, a put whose spec does not decode is a
// rejection that keeps the previous version, and a delete opens the flow.
func TestClusterPolicyEventsDecideThroughTheTiers(t *testing.T) {
	e := NewEngine()
	ev := func(typ fedmeshv1.EventType, o any) *fedmeshv1.Event {
		x := &fedmeshv1.Event{Type: typ}
		switch o := o.(type) {
		case *fedmeshv1.Cluster:
			x.Object = &fedmeshv1.Event_Cluster{Cluster: o}
		case *fedmeshv1.Endpoint:
			x.Object = &fedmeshv1.Event_Endpoint{Endpoint: o}
		case *fedmeshv1.ClusterNetworkPolicy:
			x.Object = &fedmeshv1.Event_ClusterNetworkPolicy{ClusterNetworkPolicy: o}
		}
		return x
	}
	put, del := fedmeshv1.EventType_EVENT_TYPE_PUT, fedmeshv1.EventType_EVENT_TYPE_DELETE
	for _, x := range []*fedmeshv1.Event{
		ev(put, &fedmeshv1.Cluster{Name: "c1"}),
		ev(put, &fedmeshv1.Endpoint{Cluster: "c1", Namespace: "x", Name: "a", Identity: 7, Ips: []string{"10.0.0.1"}, NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "x"}}),
		ev(put, &fedmeshv1.ClusterNetworkPolicy{Cluster: "c1", Name: "guard", SpecJson: []byte(denyTCP80)}),
	} {
		if err := ApplyEvent(e, x); err != nil {
			t.Fatal(err)
		}
	}
	flow := Flow{Src: Target{IP: netip.MustParseAddr("192.0.2.1")}, Dst: Target{IP: netip.MustParseAddr("10.0.0.1")}, Proto: ProtoTCP, Port: 80}
	decide := func() TieredVerdict {
		x, err := e.Tiers().Explain(e, flow)
		if err != nil {
			t.Fatal(err)
		}
		return x.Ingress
	}
	// The source is outside the federation: a namespaces peer does not
	// match it, so the rule does not decide; a pod of the federation does.
	if v := decide(); v.Layer == LayerAdmin {
		t.Fatalf("an external source matched a namespaces peer: %v", v)
	}
	if err := ApplyEvent(e, ev(put, &fedmeshv1.Endpoint{Cluster: "c1", Namespace: "y", Name: "b", Identity: 8, Ips: []string{"10.0.0.2"}, NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "y"}})); err != nil {
		t.Fatal(err)
	}
	flow.Src = Target{IP: netip.MustParseAddr("10.0.0.2")}
	v := decide()
	if v.Allowed || v.Layer != LayerAdmin || v.Rule.Name != "no-80" || v.Rule.Policy != (ClusterPolicyKey{"c1", "guard"}) || v.Rule.Priority != 5 {
		t.Fatalf("after the put: %+v, want denied by Admin rule no-80 of c1/guard at priority 5", v)
	}
	err := ApplyEvent(e, ev(put, &fedmeshv1.ClusterNetworkPolicy{Cluster: "c1", Name: "guard", SpecJson: []byte(`{"tier":"Admin","bogus":1}`)}))
	var rej *RejectedPolicyError
	if !errors.Is(err, ErrPolicyRejected) || !errors.As(err, &rej) || rej.ClusterKey != (ClusterPolicyKey{"c1", "guard"}) {
		t.Fatalf("undecodable spec: err %v, want a RejectedPolicyError for c1/guard", err)
	}
	if v := decide(); v.Layer != LayerAdmin || v.Allowed {
		t.Fatalf("after a rejected put the previous version no longer decides: %+v", v)
	}
	if err := ApplyEvent(e, ev(del, &fedmeshv1.ClusterNetworkPolicy{Cluster: "c1", Name: "guard"})); err != nil {
		t.Fatal(err)
	}
	if v := decide(); !v.Allowed || v.Layer != LayerDefault {
		t.Fatalf("after the delete: %+v, want allowed by default", v)
	}
}

// TestClusterPolicyConversionRoundTrips: federated policies keep their
// cluster scopes both ways; a synced policy never carries any (its peers
// are in its own cluster even when the object says otherwise).
func TestClusterPolicyConversionRoundTrips(t *testing.T) {
	prod := &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}
	fed := &fedmeshv1.ClusterNetworkPolicy{Name: "g", ClusterSelector: prod, SpecJson: []byte(denyTCP80),
		IngressPeerClusters: []*fedmeshv1.ClusterPolicyRulePeers{{Peers: []*fedmeshv1.ClusterPolicyPeerScope{{ClusterSelector: &fedmeshv1.LabelSelector{}}}}}}
	cp, err := ClusterPolicyFromProto(fed)
	if err != nil {
		t.Fatal(err)
	}
	if cp.ClusterSelector == nil || cp.ClusterSelector.MatchLabels["env"] != "prod" || len(cp.IngressPeerClusters) != 1 || cp.IngressPeerClusters[0][0] == nil {
		t.Fatalf("federated scopes lost: %+v", cp)
	}
	back, err := ClusterPolicyToProto(cp)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(back, fed) {
		t.Fatalf("round trip:\n got %v\nwant %v", back, fed)
	}
	synced := proto.CloneOf(fed)
	synced.Cluster = "c1"
	cp, err = ClusterPolicyFromProto(synced)
	if err != nil {
		t.Fatal(err)
	}
	if cp.ClusterSelector != nil || cp.IngressPeerClusters != nil {
		t.Fatalf("a synced policy kept federated scopes: %+v", cp)
	}
}
