package agent

import (
	"slices"
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func bgpPeerEv(typ fedmeshv1.EventType, rev uint64, name string) *fedmeshv1.Event {
	return &fedmeshv1.Event{Type: typ, Revision: rev, Object: &fedmeshv1.Event_BgpPeer{BgpPeer: &fedmeshv1.BGPPeerConfig{
		Name: name, Address: "198.18.1.1", Asn: 65000, Meta: &fedmeshv1.ObjectMeta{Revision: rev}}}}
}

func bgpFilterEv(typ fedmeshv1.EventType, rev uint64, name string) *fedmeshv1.Event {
	return &fedmeshv1.Event{Type: typ, Revision: rev, Object: &fedmeshv1.Event_BgpFilter{BgpFilter: &fedmeshv1.BGPFilter{
		Name: name, Meta: &fedmeshv1.ObjectMeta{Revision: rev}}}}
}

func bgpNames[T interface{ GetName() string }](m map[string]T) []string {
	var out []string
	for _, v := range m {
		out = append(out, v.GetName())
	}
	slices.Sort(out)
	return out
}

// The view holds the BGP peers and filters the control plane sends, drops
// a peer it deletes (also one that stopped selecting the node), and a new
// snapshot replaces them whole; BGPFor hands them to the port with the
// node and cluster they are resolved against.
func TestViewKeepsBGPObjectsForThePort(t *testing.T) {
	const put, del = fedmeshv1.EventType_EVENT_TYPE_PUT, fedmeshv1.EventType_EVENT_TYPE_DELETE
	v := NewView()
	self := &fedmeshv1.Node{Cluster: "a", Name: "n1", PodCidrs: []string{"10.0.1.0/24"}}
	stored := &fedmeshv1.Node{Cluster: "a", Name: "n1", PodCidrs: []string{"10.0.1.0/24"}, Labels: map[string]string{"rack": "r1"}}
	ch, bad, err := v.Apply(snap(5, false, putEv(1, cluster("a", "10.0.0.0/16")), putEv(2, stored),
		bgpFilterEv(put, 3, "f"), bgpPeerEv(put, 4, "tor-r1"), bgpPeerEv(put, 5, "tor-x")))
	if err != nil || len(bad) > 0 || len(ch) != 5 {
		t.Fatalf("snapshot: %d changes, bad %v, %v", len(ch), bad, err)
	}
	if got := bgpNames(v.BGPPeers); !slices.Equal(got, []string{"tor-r1", "tor-x"}) {
		t.Fatalf("peers %v", got)
	}
	ch, _, err = v.Apply(events(6, bgpPeerEv(del, 6, "tor-x")))
	if err != nil || len(ch) != 1 || !ch[0].Delete || ch[0].Object() != "bgp-peer/tor-x" {
		t.Fatalf("delete: %+v %v", ch, err)
	}
	// The same object again is no change; a new snapshot without the
	// filter deletes it.
	if ch, _, _ := v.Apply(snap(7, false, putEv(1, cluster("a", "10.0.0.0/16")), putEv(2, stored), bgpPeerEv(put, 4, "tor-r1"))); len(ch) != 1 ||
		ch[0].Kind != fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER || !ch[0].Delete {
		t.Fatalf("second snapshot changes %+v, want only the filter's delete", ch)
	}
	cfg := BGPFor(v, self, netipMust("198.18.0.1"))
	if len(cfg.Peers) != 1 || cfg.Peers[0].GetName() != "tor-r1" || len(cfg.Filters) != 0 ||
		cfg.Node.GetLabels()["rack"] != "r1" || cfg.Cluster.GetName() != "a" {
		t.Fatalf("BGPFor = %+v", cfg)
	}
	if !slices.Contains(watchedKinds, fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER) || !slices.Contains(watchedKinds, fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER) {
		t.Fatal("the agent does not watch the BGP kinds")
	}
}
