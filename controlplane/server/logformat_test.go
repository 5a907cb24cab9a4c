package server

import (
	"testing"

	"github.com/hashicorp/raft"

	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func servers(ids ...string) []raft.Server {
	var out []raft.Server
	for _, id := range ids {
		out = append(out, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(id + ":7000"), Suffrage: raft.Voter})
	}
	return out
}

func TestWritesAreGroupedOnlyOnceEveryReplicaAppliesGroupedEntries(t *testing.T) {
	cur := func(id string) *fedmeshv1.Member { return &fedmeshv1.Member{Id: id, LogFormat: store.LogFormat} }
	old := func(id string) *fedmeshv1.Member { return &fedmeshv1.Member{Id: id} }
	for _, tc := range []struct {
		name    string
		servers []raft.Server
		members map[string]*fedmeshv1.Member
		want    bool
	}{
		{"every replica upgraded", servers("a", "b", "c"), map[string]*fedmeshv1.Member{"a": cur("a"), "b": cur("b"), "c": cur("c")}, true},
		{"one replica still old", servers("a", "b", "c"), map[string]*fedmeshv1.Member{"a": cur("a"), "b": old("b"), "c": cur("c")}, false},
		{"one replica not published yet", servers("a", "b", "c"), map[string]*fedmeshv1.Member{"a": cur("a"), "c": cur("c")}, false},
		{"a removed replica's record does not count", servers("a", "b"), map[string]*fedmeshv1.Member{"a": cur("a"), "b": cur("b"), "gone": old("gone")}, true},
		{"no configuration", nil, map[string]*fedmeshv1.Member{"a": cur("a")}, false},
	} {
		if got := canGroup(tc.servers, tc.members); got != tc.want {
			t.Errorf("%s: canGroup = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestReplicaPublishesItsLogFormatKeepingItsAddresses(t *testing.T) {
	cfg := servers("a", "b")
	cfg[1].Suffrage = raft.Nonvoter
	published := &fedmeshv1.Member{Id: "b", RaftAddress: "b:7000", GrpcAddress: "b.example:9000"}
	m := selfRecord("b", "0.0.0.0:7000", "0.0.0.0:9000", cfg, map[string]*fedmeshv1.Member{"b": published})
	if m == nil || m.GetLogFormat() != store.LogFormat || m.GetGrpcAddress() != "b.example:9000" || m.GetRaftAddress() != "b:7000" {
		t.Fatalf("update of a published record: %v", m)
	}
	if published.GetLogFormat() != 0 {
		t.Fatal("the FSM's record was modified in place")
	}
	m = selfRecord("b", "0.0.0.0:7000", "10.0.0.2:9000", cfg, nil)
	if m == nil || m.GetVoter() || m.GetGrpcAddress() != "10.0.0.2:9000" || m.GetLogFormat() != store.LogFormat {
		t.Fatalf("first record of a non-voter: %v", m)
	}
	if m := selfRecord("b", "", "", cfg, map[string]*fedmeshv1.Member{"b": {Id: "b", LogFormat: store.LogFormat}}); m != nil {
		t.Fatalf("already published: %v", m)
	}
	if m := selfRecord("z", "", "", cfg, nil); m != nil {
		t.Fatalf("not in the configuration: %v", m)
	}
}

// A replica still at format 1 (grouped entries, no audit header) keeps
// grouping on and the audit header off: it could not apply a command that
// carries one.
func TestAuditHeaderIsWrittenOnlyOnceEveryReplicaAppliesIt(t *testing.T) {
	at := func(id string, f uint32) *fedmeshv1.Member { return &fedmeshv1.Member{Id: id, LogFormat: f} }
	for _, tc := range []struct {
		name      string
		members   map[string]*fedmeshv1.Member
		wantAudit bool
		wantGroup bool
	}{
		{"every replica at format 2", map[string]*fedmeshv1.Member{"a": at("a", 2), "b": at("b", 2), "c": at("c", 2)}, true, true},
		{"one replica at format 1", map[string]*fedmeshv1.Member{"a": at("a", 2), "b": at("b", 1), "c": at("c", 2)}, false, true},
		{"one replica at format 0", map[string]*fedmeshv1.Member{"a": at("a", 2), "b": at("b", 0), "c": at("c", 2)}, false, false},
		{"a newer replica counts as this binary's newest", map[string]*fedmeshv1.Member{"a": at("a", 2), "b": at("b", 9), "c": at("c", 2)}, true, true},
	} {
		if f := clusterLogFormat(servers("a"), nil, "a"); f != store.LogFormat {
			t.Errorf("a replica alone, its record not published yet: format %d, want this binary's %d", f, store.LogFormat)
		}
		f := clusterLogFormat(servers("a", "b", "c"), tc.members, "")
		if audit := f >= store.LogFormatAudit; audit != tc.wantAudit {
			t.Errorf("%s: format %d, audit header %v, want %v", tc.name, f, audit, tc.wantAudit)
		}
		if group := canGroup(servers("a", "b", "c"), tc.members); group != tc.wantGroup {
			t.Errorf("%s: grouping %v, want %v", tc.name, group, tc.wantGroup)
		}
	}
}

// Endpoint batches keep every pod label (format 3) only once every replica
// applies format 3: an older replica would store the labels, count the
// churn ones for identity and assign other numbers than the rest.
func TestEndpointBatchesKeepEveryLabelOnlyOnceEveryReplicaAppliesFormat3(t *testing.T) {
	at := func(id string, f uint32) *fedmeshv1.Member { return &fedmeshv1.Member{Id: id, LogFormat: f} }
	for _, tc := range []struct {
		name    string
		members map[string]*fedmeshv1.Member
		want    store.CommandType
	}{
		{"every replica at format 3", map[string]*fedmeshv1.Member{"a": at("a", 3), "b": at("b", 3), "c": at("c", 3)}, store.CmdUpsertEndpointsFull},
		{"one replica at format 2", map[string]*fedmeshv1.Member{"a": at("a", 3), "b": at("b", 2), "c": at("c", 3)}, store.CmdUpsertEndpoints},
		{"one replica not published yet", map[string]*fedmeshv1.Member{"a": at("a", 3), "b": at("b", 3)}, store.CmdUpsertEndpoints},
	} {
		f := clusterLogFormat(servers("a", "b", "c"), tc.members, "")
		if got := upsertEndpointsType(f >= store.LogFormatFullLabels); got != tc.want {
			t.Errorf("%s: format %d, endpoint batches as command %d, want %d", tc.name, f, got, tc.want)
		}
	}
}
