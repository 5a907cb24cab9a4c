package store

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func audited(c Command, principal string, time int64) Command {
	c.Audited, c.Principal, c.Time = true, principal, time
	return c
}

const admin = "spiffe://fedmesh/admin"

func TestAuditHeaderRoundTripsAndTheLeaderStampsItsTime(t *testing.T) {
	c := audited(upsert("a", 3, true, ep("x", "p", "10.1.0.1", map[string]string{"app": "x"})), "spiffe://fedmesh/cluster/a/syncer", 1)
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Clone(b[len(b)-40:])
	if !StampTime(b, 1_767_225_600_000_000_000) {
		t.Fatal("StampTime refused a command with the audit header")
	}
	if !bytes.Equal(b[len(b)-40:], payload) {
		t.Fatal("StampTime changed the payload")
	}
	d, err := DecodeCommand(b)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Audited || d.Principal != c.Principal || d.Time != 1_767_225_600_000_000_000 || d.Type != c.Type || !proto.Equal(d.Payload, c.Payload) {
		t.Fatalf("decoded %+v", d)
	}
	old := cluster("a", "10.1.0.0/16")
	old.Time = 7
	ob, err := old.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if StampTime(ob, 9) {
		t.Fatal("StampTime rewrote a command without the audit header")
	}
	if d, err := DecodeCommand(ob); err != nil || d.Audited || d.Principal != "" || d.Time != 7 {
		t.Fatalf("command without the header: %+v, %v", d, err)
	}
	for name, bad := range map[string][]byte{
		"truncated time":         b[:5],
		"principal past the end": {byte(CmdDeleteCluster) | auditFlag, 0, 0, 0, 0, 0, 0, 0, 0, 50, 'x'},
		"principal too long":     append([]byte{byte(CmdDeleteCluster) | auditFlag, 0, 0, 0, 0, 0, 0, 0, 0, 0x81, 0x10}, make([]byte, 2100)...),
		"principal not UTF-8":    {byte(CmdDeleteCluster) | auditFlag, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff},
	} {
		if _, err := DecodeCommand(bad); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	if _, err := (Command{Type: CmdDeleteCluster, Principal: admin, Payload: &fedmeshv1.DeleteClusterRequest{Name: "a"}}).Encode(); err == nil {
		t.Error("a principal without the audit header encoded")
	}
}

// Objects record who last changed them and when, from the entry alone; an
// entry without the audit header (an older leader's) records neither.
func TestObjectsRecordTheWritersPrincipalAndTime(t *testing.T) {
	s := NewState(100)
	apply(t, s, audited(cluster("a", "10.1.0.0/16"), admin, 100),
		audited(upsert("a", 0, false, ep("x", "p", "10.1.0.1", nil)), "spiffe://fedmesh/cluster/a/syncer", 200),
		upsert("a", 0, false, ep("x", "q", "10.1.0.2", nil)))
	if m := s.Cluster("a").GetMeta(); m.GetUpdatedBy() != admin || m.GetUpdateTime().AsTime().UnixNano() != 100 {
		t.Errorf("cluster meta %v", m)
	}
	if m := s.Endpoint("a", "x", "p").GetMeta(); m.GetUpdatedBy() != "spiffe://fedmesh/cluster/a/syncer" || m.GetUpdateTime().AsTime().UnixNano() != 200 {
		t.Errorf("endpoint meta %v", m)
	}
	if m := s.Endpoint("a", "x", "q").GetMeta(); m.GetUpdatedBy() != "" || m.GetUpdateTime() != nil {
		t.Errorf("meta of a write without the audit header: %v", m)
	}
	batches, _ := s.Log().Since(1, 10)
	if e := batches[0].Events[0].GetEndpoint(); e.GetMeta().GetUpdatedBy() != "spiffe://fedmesh/cluster/a/syncer" {
		t.Errorf("watch event carries meta %v", e.GetMeta())
	}
}

// Every committed write that moves the revision is recorded with its
// principal and time; refused commands and internal ones are not.
func TestAuditLogRecordsCommittedWritesOnly(t *testing.T) {
	s := NewState(100)
	node := "spiffe://fedmesh/cluster/a/node/n1"
	for _, c := range []Command{
		audited(cluster("a", "10.1.0.0/16"), admin, 1),
		audited(cluster("b", "10.1.128.0/17"), admin, 2), // overlaps a: refused
		audited(Command{Type: CmdRegisterNode, Payload: &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1"}}}, node, 3),
		audited(Command{Type: CmdRecordNodeStatus, Payload: &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "n1", Status: &fedmeshv1.NodeStatus{}}}, node, 4),
		audited(Command{Type: CmdSetMember, Payload: &fedmeshv1.Member{Id: "r1"}}, "spiffe://fedmesh/controlplane/r1", 5),
		cluster("c", "10.3.0.0/16"), // an older leader's entry: no header
		audited(Command{Type: CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{policy("", "", "deny")}}}, admin, 6),
	} {
		applyEncoded(t, s, c)
	}
	var got []string
	for _, r := range s.Audit().Records(nil) {
		got = append(got, fmt.Sprintf("%d %d %s %s %s %v", r.GetRevision(), r.GetTime().AsTime().UnixNano(), r.GetPrincipal(), r.GetOperation(), r.GetCluster(), r.GetObjects()))
	}
	want := []string{
		"1 1 spiffe://fedmesh/admin RegisterCluster a [a]",
		"2 3 spiffe://fedmesh/cluster/a/node/n1 RegisterNode a [n1]",
		"4 6 spiffe://fedmesh/admin ApplyPolicies  [deny]",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("audit log\n%v\nwant\n%v", got, want)
	}
}

// The log is bounded per class of principal, so a syncer's churn does not
// push an admin's writes out, and a snapshot carries it whole: every
// replica holds the same records however it caught up.
func TestAuditLogIsBoundedPerPrincipalClassAndSurvivesSnapshots(t *testing.T) {
	s := NewState(100)
	apply(t, s, audited(cluster("a", "10.0.0.0/8"), admin, 1))
	syncer := "spiffe://fedmesh/cluster/a/syncer"
	for i := range auditRecordsPerClass + 100 {
		apply(t, s, audited(upsert("a", 0, false, ep("x", "p", fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), nil)), syncer, int64(10+i)))
	}
	recs := s.Audit().Records(nil)
	if len(recs) != auditRecordsPerClass+1 {
		t.Fatalf("%d records held, want %d syncer records and the admin's", len(recs), auditRecordsPerClass+1)
	}
	if recs[0].GetPrincipal() != admin || recs[0].GetRevision() != 1 {
		t.Fatalf("the admin's write was pushed out by syncer churn: oldest is %v", recs[0])
	}
	if recs[1].GetRevision() != 102 || recs[len(recs)-1].GetRevision() != s.Revision() {
		t.Fatalf("syncer records %d..%d, want the newest %d up to %d", recs[1].GetRevision(), recs[len(recs)-1].GetRevision(), auditRecordsPerClass, s.Revision())
	}
	var buf bytes.Buffer
	if _, err := s.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := ReadSnapshot(&buf, 100)
	if err != nil {
		t.Fatal(err)
	}
	more := audited(upsert("a", 0, false, ep("x", "q", "10.9.9.9", nil)), syncer, 99_999)
	apply(t, s, more)
	apply(t, r, more)
	a, b := s.Audit().Records(nil), r.Audit().Records(nil)
	if len(a) != len(b) {
		t.Fatalf("restored audit log holds %d records, the original %d", len(b), len(a))
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			t.Fatalf("record %d differs after restore:\n%v\n%v", i, a[i], b[i])
		}
	}
}

func TestSnapshotWithoutAuditRecordsStaysReadableByVersion2(t *testing.T) {
	var buf bytes.Buffer
	if _, err := richState(t).Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(buf.Bytes(), []byte(`"version":2`)) {
		t.Fatal("a snapshot with no audit records is not written as version 2")
	}
}

// The leader stamps its time on forwarded writes too: through a grouped
// entry, each command keeps the principal its edge recorded.
func TestGroupedEntryKeepsEachCommandsPrincipal(t *testing.T) {
	f := NewFSM()
	cmds := encodeAll(t, audited(cluster("a", "10.1.0.0/16"), admin, 1),
		audited(upsert("a", 0, false, ep("x", "p", "10.1.0.1", nil)), "spiffe://fedmesh/cluster/a/syncer", 1))
	for _, c := range cmds {
		StampTime(c, 42)
	}
	entry, _ := EncodeBatch(cmds)
	f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: entry})
	f.View(func(s *State) {
		recs := s.Audit().Records(nil)
		if len(recs) != 2 || recs[0].GetPrincipal() != admin || recs[1].GetPrincipal() != "spiffe://fedmesh/cluster/a/syncer" ||
			recs[0].GetTime().AsTime().UnixNano() != 42 || recs[1].GetTime().AsTime().UnixNano() != 42 {
			t.Fatalf("records %v", recs)
		}
	})
}

func FuzzDecodeCommand(f *testing.F) {
	for _, c := range []Command{cluster("a", "10.1.0.0/16"), audited(cluster("a", "10.1.0.0/16"), admin, 5),
		audited(upsert("a", 1, true, ep("x", "p", "10.1.0.1", map[string]string{"k": "v"})), "spiffe://fedmesh/cluster/a/syncer", -1)} {
		b, err := c.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			return
		}
		again, err := c.Encode()
		if err != nil {
			t.Fatalf("a decoded command does not encode: %v", err)
		}
		d, err := DecodeCommand(again)
		if err != nil || d.Type != c.Type || d.Time != c.Time || d.Audited != c.Audited || d.Principal != c.Principal || !proto.Equal(d.Payload, c.Payload) {
			t.Fatalf("re-encoding changed the command: %+v -> %+v (%v)", c, d, err)
		}
	})
}
