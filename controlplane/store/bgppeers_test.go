package store

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func bgpNode(cluster, name, cidr string, labels map[string]string) Command {
	return Command{Type: CmdRegisterNode, Payload: &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{
		Cluster: cluster, Name: name, UnderlayIp: "198.18.0.9", PodCidrs: []string{cidr}, Labels: labels}}}
}

func bgpPeerCmd(name string, nodeSel map[string]string, filters ...string) Command {
	p := &fedmeshv1.BGPPeerConfig{Name: name, Address: "198.18.1.1", Asn: 65000, Filters: filters}
	if nodeSel != nil {
		p.NodeSelector = &fedmeshv1.LabelSelector{MatchLabels: nodeSel}
	}
	return Command{Type: CmdApplyBGPPeer, Payload: &fedmeshv1.ApplyBGPPeerRequest{Peer: p}}
}

func TestBGPPeerStatusCountsTheNodesItSelects(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"), cluster("b", "10.2.0.0/16"),
		bgpNode("a", "n1", "10.1.1.0/24", map[string]string{"rack": "r1"}),
		bgpNode("a", "n2", "10.1.2.0/24", map[string]string{"rack": "r2"}),
		bgpNode("b", "m1", "10.2.1.0/24", map[string]string{"rack": "r1"}),
		bgpPeerCmd("tor-r1", map[string]string{"rack": "r1"}),
		bgpPeerCmd("tor-r9", map[string]string{"rack": "r9"}),
		bgpPeerCmd("everyone", nil))
	for name, want := range map[string]uint32{"tor-r1": 2, "tor-r9": 0, "everyone": 3} {
		st := s.BGPPeer(name).GetStatus()
		if st.GetSelectedNodes() != want || (want == 0) != (st.GetMessage() != "") {
			t.Errorf("%s: status %v, want %d selected nodes and a message only when none", name, st, want)
		}
	}
	n2 := s.Node("a", "n2")
	if got := s.BGPPeersSelecting(n2); len(got) != 1 || got[0] != "everyone" {
		t.Errorf("peers selecting a/n2 = %v, want [everyone]", got)
	}
	// Status is computed on read, never stored.
	if s.bgp.peers["tor-r1"].GetStatus() != nil {
		t.Error("the stored peer carries a status")
	}
}

func TestBGPFilterInUseCannotBeDeleted(t *testing.T) {
	s := NewState(100)
	apply(t, s, Command{Type: CmdApplyBGPFilter, Payload: &fedmeshv1.ApplyBGPFilterRequest{Filter: &fedmeshv1.BGPFilter{Name: "f"}}},
		bgpPeerCmd("p1", nil, "f"), bgpPeerCmd("p2", nil, "f"))
	rev := s.Revision()
	res := applyEncoded(t, s, Command{Type: CmdDeleteBGPFilter, Payload: &fedmeshv1.DeleteBGPFilterRequest{Name: "f"}})
	if status.Code(res.Err) != codes.FailedPrecondition || s.Revision() != rev || s.BGPFilter("f") == nil {
		t.Fatalf("delete of a used filter: %v at revision %d (was %d)", res.Err, s.Revision(), rev)
	}
	if want := `BGP filter "f" is referenced by peers p1, p2; remove it from their filters first`; res.Err.Error() != want {
		t.Fatalf("error %q, want %q", res.Err, want)
	}
	res = applyEncoded(t, s, bgpPeerCmd("p3", nil, "f", "missing"))
	if status.Code(res.Err) != codes.InvalidArgument || s.BGPPeer("p3") != nil {
		t.Fatalf("peer naming a missing filter: %v", res.Err)
	}
}

func TestSnapshotCarriesBGPObjects(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"),
		Command{Type: CmdApplyBGPFilter, Payload: &fedmeshv1.ApplyBGPFilterRequest{Filter: &fedmeshv1.BGPFilter{Name: "f",
			ExportV4: []*fedmeshv1.BGPFilterRule{{Action: fedmeshv1.BGPFilterAction_BGP_FILTER_ACTION_REJECT}}}}},
		bgpPeerCmd("p1", map[string]string{"rack": "r1"}, "f"))
	var buf bytes.Buffer
	if _, err := s.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	snap := bytes.Clone(buf.Bytes())
	r, err := ReadSnapshot(&buf, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(r.BGPPeer("p1"), s.BGPPeer("p1")) || !proto.Equal(r.BGPFilter("f"), s.BGPFilter("f")) {
		t.Fatalf("restored %v %v, want %v %v", r.BGPPeer("p1"), r.BGPFilter("f"), s.BGPPeer("p1"), s.BGPFilter("f"))
	}
	// Without BGP objects the snapshot stays at the version older
	// replicas read.
	var plain bytes.Buffer
	if _, err := NewState(100).Freeze().WriteTo(&plain); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(plain.Bytes(), []byte(`"version":2`)) || !bytes.Contains(snap, []byte(`"version":5`)) {
		t.Fatal("snapshot versions: want 2 without BGP objects, 5 with")
	}
}
