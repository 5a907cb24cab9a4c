package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/federation/identity"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func cluster(name, cidr string) Command {
	return Command{Type: CmdRegisterCluster, Payload: &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{
		Name: name, PodCidrs: []string{cidr}, Labels: map[string]string{"site": name},
	}}}
}

func ep(ns, name, ip string, labels map[string]string) *fedmeshv1.Endpoint {
	return &fedmeshv1.Endpoint{Namespace: ns, Name: name, Ips: []string{ip}, Labels: labels, Node: "n1"}
}

func upsert(cluster string, gen uint64, final bool, eps ...*fedmeshv1.Endpoint) Command {
	req := &fedmeshv1.UpsertEndpointsRequest{Cluster: cluster, Endpoints: eps}
	if gen > 0 {
		req.Resync = &fedmeshv1.ResyncMarker{Generation: gen, Final: final}
	}
	return Command{Type: CmdUpsertEndpointsFull, Payload: req}
}

// legacy makes an endpoint upsert one of the format before 3, as a replica
// writes it while some replica is older (see Identities).
func legacy(c Command) Command {
	c.Type = CmdUpsertEndpoints
	return c
}

// apply applies commands through the encoded form, as raft does, failing on
// rejection.
func apply(t *testing.T, s *State, cmds ...Command) *Result {
	t.Helper()
	var res *Result
	for _, c := range cmds {
		res = applyEncoded(t, s, c)
		if res.Err != nil {
			t.Fatalf("apply %d: %v", c.Type, res.Err)
		}
	}
	return res
}

func applyEncoded(t *testing.T, s *State, c Command) *Result {
	t.Helper()
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := DecodeCommand(b)
	if err != nil {
		t.Fatal(err)
	}
	return s.Apply(d)
}

// dump renders everything observable of a state, deterministically.
func dump(s *State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "rev=%d next=%d ids=%d\n", s.rev, s.ids.a.Next(), s.ids.Len())
	for _, id := range sortedTokenIDs(s.usedTokens) {
		fmt.Fprintf(&b, "token %x expires %d\n", id, s.usedTokens[id])
	}
	for _, gk := range sortedGenKeys(s.gens) {
		fmt.Fprintf(&b, "gen %s/%d=%d\n", gk.owner, gk.kind, s.gens[gk])
	}
	cs, _ := s.Clusters(nil)
	for _, c := range cs {
		b.WriteString(prototext.MarshalOptions{}.Format(c) + "\n")
	}
	s.ForEachObject(func(e *fedmeshv1.Event) bool {
		b.WriteString(prototext.MarshalOptions{}.Format(e) + "\n")
		return true
	})
	for _, id := range sortedKeys(s.members) {
		b.WriteString(prototext.MarshalOptions{}.Format(s.members[id]) + "\n")
	}
	return b.String()
}

func TestIdentitiesAreAssignedInLogOrderIdenticallyOnEveryReplica(t *testing.T) {
	log := []Command{
		cluster("a", "10.1.0.0/16"),
		cluster("b", "10.2.0.0/16"),
		upsert("a", 0, false,
			ep("web", "w1", "10.1.0.1", map[string]string{"app": "web", "tier": "front"}),
			ep("web", "w2", "10.1.0.2", map[string]string{"tier": "front", "app": "web"}),
			ep("db", "d1", "10.1.0.3", map[string]string{"app": "db"})),
		upsert("b", 0, false, ep("web", "w1", "10.2.0.1", map[string]string{"app": "web", "tier": "front"})),
	}
	r1, r2 := NewState(100), NewState(100)
	apply(t, r1, log...)
	apply(t, r2, log...)
	if d1, d2 := dump(r1), dump(r2); d1 != d2 {
		t.Fatalf("replicas differ:\n%s\n---\n%s", d1, d2)
	}
	w1, w2 := r1.Endpoint("a", "web", "w1"), r1.Endpoint("a", "web", "w2")
	d1, bw1 := r1.Endpoint("a", "db", "d1"), r1.Endpoint("b", "web", "w1")
	if w1.GetIdentity() != FirstAllocatedIdentity || w1.GetIdentity() != w2.GetIdentity() {
		t.Errorf("same labels in any order share the first identity: got %d, %d", w1.GetIdentity(), w2.GetIdentity())
	}
	if d1.GetIdentity() != FirstAllocatedIdentity+1 {
		t.Errorf("db identity = %d, want %d", d1.GetIdentity(), FirstAllocatedIdentity+1)
	}
	if bw1.GetIdentity() != FirstAllocatedIdentity+2 {
		t.Errorf("same labels in another cluster get their own identity: got %d", bw1.GetIdentity())
	}
}

func TestIdentityIsReleasedWithItsLastEndpointAndNotReusedAtOnce(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"),
		upsert("a", 0, false, ep("x", "p1", "10.1.0.1", map[string]string{"app": "x"}), ep("x", "p2", "10.1.0.2", map[string]string{"app": "x"})))
	id := s.Endpoint("a", "x", "p1").GetIdentity()
	apply(t, s, Command{Type: CmdDeleteEndpoints, Payload: &fedmeshv1.DeleteEndpointsRequest{Cluster: "a", Keys: []*fedmeshv1.EndpointKey{{Namespace: "x", Name: "p1"}}}})
	if _, ok := s.ids.Lookup(id); !ok {
		t.Fatal("identity released while an endpoint still uses it")
	}
	apply(t, s, Command{Type: CmdDeleteEndpoints, Payload: &fedmeshv1.DeleteEndpointsRequest{Cluster: "a", Keys: []*fedmeshv1.EndpointKey{{Namespace: "x", Name: "p2"}}}})
	if _, ok := s.ids.Lookup(id); ok || s.ids.Len() != 0 {
		t.Fatal("identity kept after its last endpoint went")
	}
	apply(t, s, upsert("a", 0, false, ep("x", "p3", "10.1.0.3", map[string]string{"app": "x"})))
	if got := s.Endpoint("a", "x", "p3").GetIdentity(); got == id {
		t.Errorf("released identity %d reused at once", id)
	}
}

func TestIdentityAllocatorWrapsPastTheTopAndSkipsReserved(t *testing.T) {
	s := NewState(100)
	if err := s.ids.a.Restore(identity.State{Next: ^uint32(0)}); err != nil {
		t.Fatal(err)
	}
	apply(t, s, cluster("a", "10.1.0.0/16"), upsert("a", 0, false, ep("x", "top", "10.1.0.1", map[string]string{"app": "top"})))
	apply(t, s, upsert("a", 0, false, ep("x", "wrapped", "10.1.0.2", map[string]string{"app": "wrapped"})))
	top, wrapped := s.Endpoint("a", "x", "top").GetIdentity(), s.Endpoint("a", "x", "wrapped").GetIdentity()
	if top != ^uint32(0) || wrapped != FirstAllocatedIdentity {
		t.Fatalf("got %d then %d, want %d then %d", top, wrapped, ^uint32(0), FirstAllocatedIdentity)
	}
	if s.ids.a.Next() != FirstAllocatedIdentity+1 {
		t.Fatalf("cursor %d after wrapping, want %d", s.ids.a.Next(), FirstAllocatedIdentity+1)
	}
}

func TestReservedLabelsDoNotSplitOrSpoofIdentities(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"), cluster("b", "10.2.0.0/16"),
		upsert("a", 0, false,
			ep("x", "plain", "10.1.0.1", map[string]string{"app": "x"}),
			ep("x", "spoof", "10.1.0.2", map[string]string{"app": "x", "fedmesh.io/cluster": "b"})),
		upsert("b", 0, false, ep("x", "real", "10.2.0.1", map[string]string{"app": "x"})))
	plain, spoof, real := s.Endpoint("a", "x", "plain"), s.Endpoint("a", "x", "spoof"), s.Endpoint("b", "x", "real")
	if plain.GetIdentity() != spoof.GetIdentity() || spoof.GetIdentity() == real.GetIdentity() {
		t.Fatalf("identities plain=%d spoof=%d real=%d: a reserved label must neither split nor claim one", plain.GetIdentity(), spoof.GetIdentity(), real.GetIdentity())
	}
	if spoof.GetLabels()["fedmesh.io/cluster"] != "b" {
		t.Errorf("stored labels lost the pod's own label: %v", spoof.GetLabels())
	}
	// Once a policy selects on it, the label counts: the pod gets an
	// identity of its own, still of cluster a.
	apply(t, s, Command{Type: CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{selecting("", "x", "by-reserved", "fedmesh.io/cluster")}}})
	spoof = s.Endpoint("a", "x", "spoof")
	key, _ := s.ids.Lookup(spoof.GetIdentity())
	if spoof.GetIdentity() == plain.GetIdentity() || spoof.GetIdentity() == real.GetIdentity() || key.Cluster != "a" || key.Namespace != "x" {
		t.Fatalf("spoof has identity %d = %v (plain %d, real %d): want its own, in cluster a", spoof.GetIdentity(), key, plain.GetIdentity(), real.GetIdentity())
	}
}

// selecting is a policy whose pod selector requires key to exist.
func selecting(cluster, ns, name, key string) *fedmeshv1.Policy {
	p := policy(cluster, ns, name)
	p.Spec.PodSelector = &fedmeshv1.LabelSelector{MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: key, Operator: "Exists"}}}
	return p
}

func TestResyncDeletesGhostEndpointsInTheFinalBatchRevision(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"),
		upsert("a", 1, true, ep("x", "keep", "10.1.0.1", nil), ep("x", "ghost", "10.1.0.2", nil), ep("y", "ghost2", "10.1.0.3", nil)))
	// A syncer restarts: resync generation 2 in two batches; an incremental
	// write lands between them and must survive.
	apply(t, s, upsert("a", 2, false, ep("x", "keep", "10.1.0.1", nil)))
	apply(t, s, upsert("a", 0, false, ep("z", "during", "10.1.0.9", nil)))
	// The ghost's address was reused by a new pod: the stale owner goes now.
	res := apply(t, s, upsert("a", 2, true, ep("x", "new", "10.1.0.2", nil)))
	var got []string
	for _, e := range s.Endpoints("a", "", "") {
		got = append(got, e.GetNamespace()+"/"+e.GetName())
	}
	if want := "x/keep x/new z/during"; strings.Join(got, " ") != want {
		t.Fatalf("after resync: %v, want %s", got, want)
	}
	if res.Deleted != 1 {
		t.Errorf("final batch reports %d deleted, want 1 (ghost2; ghost was evicted for its address)", res.Deleted)
	}
	batches, _ := s.log.Since(res.Revision-1, 1000)
	var dels int
	for _, e := range batches[0].Events {
		if e.GetType() == fedmeshv1.EventType_EVENT_TYPE_DELETE {
			dels++
		}
	}
	if len(batches) != 1 || dels != 2 {
		t.Errorf("ghost deletes not in the final batch's revision: %d batches, %d deletes", len(batches), dels)
	}
	if c := s.Cluster("a"); c.GetStatus().GetResyncGeneration() != 2 || c.GetStatus().GetEndpoints() != 3 {
		t.Errorf("cluster status %v", c.GetStatus())
	}
}

func TestClusterDeleteCascadesInOneRevision(t *testing.T) {
	s := NewState(1000)
	apply(t, s, cluster("a", "10.1.0.0/16"), cluster("b", "10.2.0.0/16"),
		Command{Type: CmdRegisterNode, Payload: &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1", PodCidrs: []string{"10.1.1.0/24"}}}},
		upsert("a", 0, false, ep("x", "p", "10.1.1.1", map[string]string{"app": "x"})),
		upsert("b", 0, false, ep("x", "p", "10.2.1.1", map[string]string{"app": "x"})),
		exportCmd("a", svc("x", "s", 80)),
		exportCmd("b", svc("x", "s", 80)),
		Command{Type: CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Cluster: "a", Policies: []*fedmeshv1.Policy{policy("a", "x", "deny")}}},
		Command{Type: CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{policy("", "", "global")}}},
	)
	before := s.rev
	res := apply(t, s, Command{Type: CmdDeleteCluster, Payload: &fedmeshv1.DeleteClusterRequest{Name: "a"}})
	if res.Revision != before+1 {
		t.Fatalf("cascade took revisions %d..%d", before+1, res.Revision)
	}
	if s.Cluster("a") != nil || len(s.Nodes("a")) != 0 || len(s.Endpoints("a", "", "")) != 0 || len(s.Exports("a")) != 0 ||
		len(s.Policies(0, "a", "")) != 0 {
		t.Fatal("cluster a's objects survived its delete")
	}
	if len(s.Endpoints("b", "", "")) != 1 || len(s.Policies(0, "", "")) != 1 || s.ids.Len() != 1 {
		t.Fatal("the delete touched other owners' objects")
	}
	imps := s.Imports("")
	if len(imps) != 1 || len(imps[0].GetClusters()) != 1 || imps[0].GetClusters()[0].GetCluster() != "b" {
		t.Fatalf("import not re-derived from the remaining export: %v", imps)
	}
	batches, _ := s.log.Since(before, 1000)
	kinds := map[string]int{}
	for _, e := range batches[0].Events {
		kinds[fmt.Sprintf("%s/%T", e.GetType(), e.GetObject())]++
	}
	want := map[string]int{
		"EVENT_TYPE_DELETE/*fedmeshv1.Event_Cluster": 1, "EVENT_TYPE_DELETE/*fedmeshv1.Event_Node": 1,
		"EVENT_TYPE_DELETE/*fedmeshv1.Event_Endpoint": 1, "EVENT_TYPE_DELETE/*fedmeshv1.Event_ServiceExport": 1,
		"EVENT_TYPE_DELETE/*fedmeshv1.Event_Policy": 1, "EVENT_TYPE_PUT/*fedmeshv1.Event_ServiceImport": 1,
	}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Errorf("events of the delete: %v, want %v", kinds, want)
	}
}

func svc(ns, name string, port uint32) *fedmeshv1.ServiceExport {
	return &fedmeshv1.ServiceExport{Namespace: ns, Name: name, Ports: []*fedmeshv1.ServicePort{{Name: "http", Port: port}}}
}

func exportCmd(cluster string, xs ...*fedmeshv1.ServiceExport) Command {
	return Command{Type: CmdExportServices, Payload: &fedmeshv1.ExportServicesRequest{Cluster: cluster, Exports: xs}}
}

func policy(cluster, ns, name string) *fedmeshv1.Policy {
	kind := fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES
	if cluster == "" {
		kind = fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED
	}
	return &fedmeshv1.Policy{Kind: kind, Cluster: cluster, Namespace: ns, Name: name,
		Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: &fedmeshv1.LabelSelector{}}}
}

func richState(t *testing.T) *State {
	s := NewState(1000)
	apply(t, s, cluster("a", "10.1.0.0/16"), cluster("b", "10.2.0.0/16"),
		Command{Type: CmdRegisterNode, Payload: &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1", PodCidrs: []string{"10.1.1.0/24"}}}},
		Command{Type: CmdReportNodeStatus, Time: 1700000000000000000, Payload: &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "n1", Status: &fedmeshv1.NodeStatus{EnforcedRevision: 3, Ready: true}}},
		// Written by a version-1 binary: endpoints of the older format.
		legacy(upsert("a", 4, true, ep("x", "p", "10.1.1.1", map[string]string{"app": "x"}), ep("x", "q", "10.1.1.2", map[string]string{"app": "q"}))),
		legacy(upsert("b", 0, false, ep("x", "p", "10.2.1.1", map[string]string{"app": "x"}))),
		exportCmd("a", svc("x", "s", 80)),
		exportCmd("b", svc("x", "s", 81)),
		Command{Type: CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Cluster: "a", Resync: &fedmeshv1.ResyncMarker{Generation: 7}, Policies: []*fedmeshv1.Policy{policy("a", "x", "deny")}}},
		Command{Type: CmdSetMember, Payload: &fedmeshv1.Member{Id: "r1", RaftAddress: "127.0.0.1:1", GrpcAddress: "127.0.0.1:2"}},
	)
	return s
}

func TestSnapshotRestoreYieldsAnEqualStateThatEvolvesIdentically(t *testing.T) {
	s := richState(t)
	var buf bytes.Buffer
	if _, err := s.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := ReadSnapshot(bytes.NewReader(buf.Bytes()), 1000)
	if err != nil {
		t.Fatal(err)
	}
	if d1, d2 := dump(s), dump(r); d1 != d2 {
		t.Fatalf("restored state differs:\n%s\n---\n%s", d1, d2)
	}
	more := []Command{
		upsert("a", 0, false, ep("y", "new", "10.1.1.9", map[string]string{"app": "new"})),
		upsert("a", 5, true, ep("x", "p", "10.1.1.1", map[string]string{"app": "x"})),
		Command{Type: CmdDeleteCluster, Payload: &fedmeshv1.DeleteClusterRequest{Name: "b"}},
	}
	apply(t, s, more...)
	apply(t, r, more...)
	if d1, d2 := dump(s), dump(r); d1 != d2 {
		t.Fatalf("states diverged after the same commands:\n%s\n---\n%s", d1, d2)
	}
	var again bytes.Buffer
	if _, err := s.Freeze().WriteTo(&again); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSnapshot(bytes.NewReader(again.Bytes()[:again.Len()-3]), 10); err == nil {
		t.Error("a truncated snapshot restored without error")
	}
}

func TestSnapshotFromANewerVersionIsRefused(t *testing.T) {
	var buf bytes.Buffer
	buf.WriteString(snapshotMagic)
	rw := recWriter{w: &buf}
	rw.raw(recHeader, []byte(`{"version":99}`))
	if _, err := ReadSnapshot(&buf, 10); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("err = %v", err)
	}
}

func TestFreezeIsUnaffectedByLaterApplies(t *testing.T) {
	s := richState(t)
	fr := s.Freeze()
	var want bytes.Buffer
	if _, err := fr.WriteTo(&want); err != nil {
		t.Fatal(err)
	}
	apply(t, s, upsert("a", 9, true, ep("z", "z", "10.1.2.2", nil)), Command{Type: CmdDeleteCluster, Payload: &fedmeshv1.DeleteClusterRequest{Name: "b"}})
	var got bytes.Buffer
	if _, err := fr.WriteTo(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want.Bytes(), got.Bytes()) {
		t.Fatal("frozen snapshot changed under later applies")
	}
}

func TestBadCommandsChangeNothingNotEvenTheRevision(t *testing.T) {
	node := func(n *fedmeshv1.Node) Command {
		return Command{Type: CmdRegisterNode, Payload: &fedmeshv1.RegisterNodeRequest{Node: n}}
	}
	tests := []struct {
		name  string
		cmd   Command
		code  codes.Code
		field string
	}{
		{"cluster overlapping another's pod CIDR", cluster("c", "10.1.128.0/17"), codes.InvalidArgument, "cluster.podCIDRs[0]"},
		{"cluster re-registered without its endpoints' range", cluster("a", "10.5.0.0/16"), codes.InvalidArgument, "cluster.podCIDRs"},
		{"delete of a missing cluster", Command{Type: CmdDeleteCluster, Payload: &fedmeshv1.DeleteClusterRequest{Name: "nope"}}, codes.NotFound, ""},
		{"node of a missing cluster", node(&fedmeshv1.Node{Cluster: "nope", Name: "n", UnderlayIp: "198.18.0.1"}), codes.InvalidArgument, "node.cluster"},
		{"node pod CIDR outside the cluster", node(&fedmeshv1.Node{Cluster: "a", Name: "n", UnderlayIp: "198.18.0.1", PodCidrs: []string{"10.9.0.0/24"}}), codes.InvalidArgument, "node.podCIDRs[0]"},
		{"status of a missing node", Command{Type: CmdReportNodeStatus, Payload: &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "ghost", Status: &fedmeshv1.NodeStatus{}}}, codes.NotFound, ""},
		{"endpoints of a missing cluster", upsert("nope", 0, false, ep("x", "p", "10.1.0.1", nil)), codes.InvalidArgument, "cluster"},
		{"endpoint IP outside the cluster", upsert("a", 0, false, ep("x", "ok", "10.1.1.50", nil), ep("x", "p", "10.2.0.1", nil)), codes.InvalidArgument, "endpoints[1].ips[0]"},
		{"endpoint IP that does not parse", upsert("a", 0, false, ep("x", "p", "10.1.1.999", nil)), codes.InvalidArgument, "endpoints[0].ips[0]"},
		{"endpoint IP owned by another endpoint", upsert("a", 0, false, ep("x", "other", "10.1.1.1", nil)), codes.InvalidArgument, "endpoints[0].ips[0]"},
		{"resync generation going backwards", upsert("a", 3, false, ep("x", "p", "10.1.1.1", nil)), codes.InvalidArgument, "resync.generation"},
		{"export of a missing cluster", exportCmd("nope", svc("x", "s", 80)), codes.InvalidArgument, "cluster"},
		{"policy of a missing cluster", Command{Type: CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Cluster: "nope", Policies: []*fedmeshv1.Policy{policy("nope", "x", "p")}}}, codes.InvalidArgument, "cluster"},
		{"delete of a missing policy", Command{Type: CmdDeletePolicy, Payload: &fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Cluster: "a", Namespace: "x", Name: "nope"}}}, codes.NotFound, ""},
		{"unexport of a missing export", Command{Type: CmdUnexportService, Payload: &fedmeshv1.UnexportServiceRequest{Cluster: "a", Namespace: "x", Name: "nope"}}, codes.NotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := richState(t)
			before := dump(s)
			res := applyEncoded(t, s, tt.cmd)
			if res.Err == nil {
				t.Fatal("accepted")
			}
			if got := status.Code(res.Err); got != tt.code {
				t.Fatalf("code %s, want %s (%v)", got, tt.code, res.Err)
			}
			if tt.field != "" {
				var fields []string
				for _, fe := range model.FieldErrors(res.Err) {
					fields = append(fields, fe.Field)
				}
				if !strings.Contains(" "+strings.Join(fields, " ")+" ", " "+tt.field+" ") {
					t.Errorf("fields %v do not name %s", fields, tt.field)
				}
			}
			if after := dump(s); after != before {
				t.Fatalf("rejected command changed the state:\n%s\n---\n%s", before, after)
			}
			if res.Revision != s.rev {
				t.Errorf("result revision %d != state %d", res.Revision, s.rev)
			}
		})
	}
}

func TestDeriveImportAppliesMCSConflictRules(t *testing.T) {
	x := func(cluster string, created uint64, typ fedmeshv1.ServiceType, ports ...*fedmeshv1.ServicePort) *fedmeshv1.ServiceExport {
		return &fedmeshv1.ServiceExport{Cluster: cluster, Namespace: "ns", Name: "svc", Type: typ, Ports: ports,
			Backends: []string{cluster + "-ip"}, Meta: &fedmeshv1.ObjectMeta{CreateRevision: created}}
	}
	http := &fedmeshv1.ServicePort{Name: "http", Port: 80}
	http8080 := &fedmeshv1.ServicePort{Name: "http", Port: 8080}
	grpcP := &fedmeshv1.ServicePort{Name: "grpc", Port: 9090}
	all := func(string) bool { return true }
	tests := []struct {
		name       string
		exps       []*fedmeshv1.ServiceExport
		exported   func(string) bool
		wantType   fedmeshv1.ServiceType
		wantPorts  string
		wantBack   string
		wantImport string // reason of the import's Conflict condition
		wantConds  map[string]string
	}{
		{"ports union by name", []*fedmeshv1.ServiceExport{x("b", 2, 0, grpcP), x("a", 1, 0, http)}, all,
			fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP, "grpc:9 http:80", "a b", ReasonNoConflicts,
			map[string]string{"a": "Valid=True Conflict=False", "b": "Valid=True Conflict=False"}},
		{"oldest type wins", []*fedmeshv1.ServiceExport{x("a", 5, fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP, http), x("b", 2, fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS, grpcP)}, all,
			fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS, "grpc:9", "b", ReasonTypeConflict,
			map[string]string{"a": "Valid=True Conflict=True/TypeConflict", "b": "Valid=True Conflict=True/TypeConflict"}},
		{"port conflict keeps the oldest definition", []*fedmeshv1.ServiceExport{x("a", 1, 0, http), x("b", 2, 0, http8080, grpcP)}, all,
			fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP, "grpc:9 http:80", "a b", ReasonPortConflict,
			map[string]string{"a": "Valid=True Conflict=True/PortConflict", "b": "Valid=True Conflict=True/PortConflict"}},
		{"unexported namespace does not count", []*fedmeshv1.ServiceExport{x("a", 1, 0, http), x("b", 2, 0, grpcP)}, func(c string) bool { return c == "b" },
			fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP, "grpc:9", "b", ReasonNoConflicts,
			map[string]string{"a": "Valid=False/NamespaceNotExported", "b": "Valid=True Conflict=False"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			imp, conds := DeriveImport("ns", "svc", tt.exps, tt.exported)
			if imp.GetType() != tt.wantType {
				t.Errorf("type %s, want %s", imp.GetType(), tt.wantType)
			}
			var ports, back []string
			for _, p := range imp.GetPorts() {
				ports = append(ports, fmt.Sprintf("%s:%d", p.GetName(), p.GetPort()))
			}
			for _, c := range imp.GetClusters() {
				back = append(back, c.GetCluster())
			}
			wantPorts := strings.ReplaceAll(tt.wantPorts, "grpc:9", "grpc:9090")
			if strings.Join(ports, " ") != wantPorts || strings.Join(back, " ") != tt.wantBack {
				t.Errorf("ports %v backends %v, want %s / %s", ports, back, wantPorts, tt.wantBack)
			}
			if r := imp.GetConditions()[0].GetReason(); r != tt.wantImport {
				t.Errorf("import condition %s, want %s", r, tt.wantImport)
			}
			for c, want := range tt.wantConds {
				var got []string
				for _, cd := range conds[c] {
					s := cd.GetType() + "=" + cd.GetStatus()
					if cd.GetStatus() == "True" && cd.GetType() == CondConflict || cd.GetStatus() == "False" && cd.GetType() == CondValid {
						s += "/" + cd.GetReason()
					}
					got = append(got, s)
				}
				if strings.Join(got, " ") != want {
					t.Errorf("export %s conditions %v, want %s", c, got, want)
				}
			}
		})
	}
}

func TestExportConditionsFollowConflictsAcrossClusters(t *testing.T) {
	s := NewState(1000)
	apply(t, s, cluster("a", "10.1.0.0/16"), cluster("b", "10.2.0.0/16"), exportCmd("a", svc("x", "s", 80)))
	res := apply(t, s, exportCmd("b", svc("x", "s", 81)))
	if c := s.Exports("b")[0].GetConditions()[1]; c.GetReason() != ReasonPortConflict {
		t.Fatalf("b's export: %v", c)
	}
	// a leaves: b's export is now conflict-free, and says so in a new event.
	res2 := apply(t, s, Command{Type: CmdUnexportService, Payload: &fedmeshv1.UnexportServiceRequest{Cluster: "a", Namespace: "x", Name: "s"}})
	if c := s.Exports("b")[0].GetConditions()[1]; c.GetStatus() != "False" {
		t.Fatalf("b's export still in conflict: %v", c)
	}
	batches, _ := s.log.Since(res.Revision, 100)
	if len(batches) != 1 || batches[0].Revision != res2.Revision || len(batches[0].Events) != 3 {
		t.Fatalf("unexport events: %v", batches)
	}
	if imp := s.Imports("")[0]; imp.GetPorts()[0].GetPort() != 81 {
		t.Errorf("import after a left: %v", imp)
	}
}

func TestEventLogIsBoundedAndReportsCompaction(t *testing.T) {
	s := NewState(5)
	apply(t, s, cluster("a", "10.1.0.0/16"))
	for i := range 10 {
		apply(t, s, upsert("a", 0, false, ep("x", fmt.Sprintf("p%d", i), fmt.Sprintf("10.1.0.%d", i+1), nil)))
	}
	if s.log.Len() > 5 {
		t.Fatalf("log holds %d revisions, bound is 5", s.log.Len())
	}
	if _, ok := s.log.Since(1, 100); ok {
		t.Fatal("compacted revision served from the log")
	}
	b, ok := s.log.Since(s.log.Compacted(), 2)
	if !ok || len(b) != 2 || b[0].Revision != s.log.Compacted()+1 || b[1].Revision != b[0].Revision+1 {
		t.Fatalf("since the compaction point: %v %v", ok, b)
	}
	if b, ok := s.log.Since(s.rev, 100); !ok || len(b) != 0 {
		t.Fatalf("since now: %v %v", ok, b)
	}
	big := make([]*fedmeshv1.Endpoint, 20)
	for i := range big {
		big[i] = ep("y", fmt.Sprintf("b%d", i), fmt.Sprintf("10.1.1.%d", i+1), nil)
	}
	r := apply(t, s, upsert("a", 0, false, big...))
	if b, ok := s.log.Since(r.Revision-1, 1); !ok || len(b) != 1 || len(b[0].Events) != 20 {
		t.Fatal("the newest revision must stay whole even above the bound")
	}
}

func TestFSMPanicsOnAnEntryThatDoesNotDecode(t *testing.T) {
	f := NewFSM()
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{byte(CmdRegisterCluster), 0, 0xff, 0xff}})
}

func TestFSMSkipsUnknownCommandsOnlyWhenUpgrading(t *testing.T) {
	f := NewFSM(WithIgnoreUnknownCommands())
	res := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{200, 0}}).(*Result)
	if res.Err == nil || f.Revision() != 0 {
		t.Fatalf("unknown command: %v rev %d", res.Err, f.Revision())
	}
	defer func() {
		if recover() == nil {
			t.Fatal("no panic without the upgrade flag")
		}
	}()
	NewFSM().Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{200, 0}})
}

func TestCommandRoundTrip(t *testing.T) {
	c := cluster("a", "10.1.0.0/16")
	c.Time = -5
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := DecodeCommand(b)
	if err != nil || d.Type != c.Type || d.Time != c.Time || !proto.Equal(d.Payload, c.Payload) {
		t.Fatalf("round trip: %v %+v", err, d)
	}
}

func TestEndpointsCheckedAgainstTheClustersCurrentPodCIDRs(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"), upsert("a", 0, false, ep("x", "p", "10.1.0.1", nil)))
	// The range may not move away from an endpoint it holds...
	if r := applyEncoded(t, s, cluster("a", "10.3.0.0/16")); r.Err == nil {
		t.Fatal("pod CIDR change that leaves an endpoint outside accepted")
	}
	// ...but may once the endpoint is gone.
	apply(t, s, Command{Type: CmdDeleteEndpoints, Payload: &fedmeshv1.DeleteEndpointsRequest{Cluster: "a", Keys: []*fedmeshv1.EndpointKey{{Namespace: "x", Name: "p"}}}})
	apply(t, s, cluster("a", "10.3.0.0/16"))
	if r := applyEncoded(t, s, upsert("a", 0, false, ep("x", "q", "10.1.0.2", nil))); r.Err == nil {
		t.Fatal("address inside the cluster's old pod CIDR accepted after the CIDR changed")
	}
	apply(t, s, upsert("a", 0, false, ep("x", "q", "10.3.0.2", nil)))
}

func TestEndpointsWithEqualLabelsShareTheirLabelMap(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"), upsert("a", 0, false,
		ep("x", "p", "10.1.0.1", map[string]string{"app": "x", "pod-template-hash": "1"}), ep("x", "q", "10.1.0.2", map[string]string{"app": "x", "pod-template-hash": "1"}),
		ep("x", "r", "10.1.0.3", map[string]string{"app": "x", "pod-template-hash": "2"})))
	p, q, r := s.Endpoint("a", "x", "p"), s.Endpoint("a", "x", "q"), s.Endpoint("a", "x", "r")
	if fmt.Sprintf("%p", p.GetLabels()) != fmt.Sprintf("%p", q.GetLabels()) || p.GetLabels()["app"] != "x" {
		t.Fatal("equal labels not shared")
	}
	if r.GetLabels()["pod-template-hash"] != "2" || r.GetIdentity() != p.GetIdentity() {
		t.Fatalf("r: labels %v identity %d (p %d): full labels kept, identity shared", r.GetLabels(), r.GetIdentity(), p.GetIdentity())
	}
}

// testdata/snapshot-v1.bin was written by the version-1 binary from
// richState; every later binary must read it.
func TestSnapshotOfVersion1IsRead(t *testing.T) {
	b, err := os.ReadFile("testdata/snapshot-v1.bin")
	if err != nil {
		t.Fatal(err)
	}
	r, err := ReadSnapshot(bytes.NewReader(b), 1000)
	if err != nil {
		t.Fatal(err)
	}
	if d1, d2 := dump(richState(t)), dump(r); d1 != d2 {
		t.Fatalf("version-1 snapshot restores a different state:\n%s\n---\n%s", d1, d2)
	}
}

func TestRecordNodeStatusChangesTheNodeButNotTheRevision(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"),
		Command{Type: CmdRegisterNode, Payload: &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1"}}})
	before, logLen := s.rev, s.log.Len()
	res := apply(t, s, Command{Type: CmdRecordNodeStatus, Payload: &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "n1", Status: &fedmeshv1.NodeStatus{EnforcedRevision: before}}})
	if res.Err != nil || s.rev != before || s.log.Len() != logLen || res.Revision != before {
		t.Fatalf("record moved revision %d -> %d (log %d -> %d): %v", before, s.rev, logLen, s.log.Len(), res.Err)
	}
	if n := s.Node("a", "n1"); n.GetStatus().GetEnforcedRevision() != before || n.GetMeta().GetRevision() != before {
		t.Fatalf("node after record: %v", n)
	}
	if res := applyEncoded(t, s, Command{Type: CmdRecordNodeStatus, Payload: &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "ghost", Status: &fedmeshv1.NodeStatus{}}}); res.Err == nil {
		t.Fatal("status of an unknown node recorded")
	}
}

func TestJoinTokenIsConsumedOnceAndExpiredOnesAreForgotten(t *testing.T) {
	s := NewState(100)
	consume := func(id byte, expires, now int64) *Result {
		return applyEncoded(t, s, Command{Type: CmdConsumeJoinToken, Time: now, Payload: ConsumeJoinTokenPayload([16]byte{id}, expires)})
	}
	if r := consume(1, 100, 10); r.Err != nil || s.rev != 0 {
		t.Fatalf("first consume: %v (revision %d)", r.Err, s.rev)
	}
	if r := consume(1, 100, 20); !errors.Is(r.Err, ErrTokenUsed) {
		t.Fatalf("second consume: %v, want ErrTokenUsed", r.Err)
	}
	if r := consume(2, 500, 200); r.Err != nil || s.UsedTokens() != 1 {
		t.Fatalf("token 1 (expired at 100) kept at time 200: %d remembered, %v", s.UsedTokens(), r.Err)
	}
	var buf bytes.Buffer
	if _, err := s.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := ReadSnapshot(&buf, 100)
	if err != nil {
		t.Fatal(err)
	}
	if res := applyEncoded(t, r, Command{Type: CmdConsumeJoinToken, Time: 300, Payload: ConsumeJoinTokenPayload([16]byte{2}, 500)}); !errors.Is(res.Err, ErrTokenUsed) {
		t.Fatalf("token used before the snapshot accepted after restore: %v", res.Err)
	}
}

// The FSM checks state, not syntax: an entry whose payload today's edge
// would refuse (an older leader's edge accepted it under older rules, or
// a newer rule was added since) applies as long as the state allows it,
// so replicas of two versions never disagree about an entry in the log.
func TestFSMAppliesWhatAnOlderEdgeAcceptedWithoutCheckingSyntaxAgain(t *testing.T) {
	tests := []struct {
		name string
		cmd  Command
	}{
		{"cluster name today's edge refuses", Command{Type: CmdRegisterCluster, Payload: &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{
			Name: "Legacy_Name", PodCidrs: []string{"10.9.0.0/16"}}}}},
		{"export port today's edge refuses", exportCmd("a", svc("x", "s", 0))},
		{"policy without a kind", Command{Type: CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Cluster: "a", Policies: []*fedmeshv1.Policy{{Cluster: "a", Namespace: "x", Name: "Old"}}}}},
		{"node without an underlay address", Command{Type: CmdRegisterNode, Payload: &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: "n9"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := richState(t)
			before := s.Revision()
			if res := applyEncoded(t, s, tt.cmd); res.Err != nil || s.Revision() != before+1 {
				t.Fatalf("rejected by the FSM (%v); revision %d -> %d", res.Err, before, s.Revision())
			}
		})
	}
}
