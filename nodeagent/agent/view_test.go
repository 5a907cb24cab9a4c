package agent

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func ep(cluster, ns, name, node string, id uint32, rev uint64, ips ...string) *fedmeshv1.Endpoint {
	return &fedmeshv1.Endpoint{Cluster: cluster, Namespace: ns, Name: name, Node: node, Identity: id, Ips: ips,
		Labels: map[string]string{"app": name}, Meta: &fedmeshv1.ObjectMeta{Revision: rev}}
}

func cluster(name string, cidrs ...string) *fedmeshv1.Cluster {
	return &fedmeshv1.Cluster{Name: name, PodCidrs: cidrs, Labels: map[string]string{"name": name}}
}

func putEv(rev uint64, obj any) *fedmeshv1.Event {
	ev := &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Revision: rev}
	setObj(ev, obj)
	return ev
}

func delEv(rev uint64, obj any) *fedmeshv1.Event {
	ev := &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_DELETE, Revision: rev}
	setObj(ev, obj)
	return ev
}

func setObj(ev *fedmeshv1.Event, obj any) {
	switch o := obj.(type) {
	case *fedmeshv1.Cluster:
		ev.Object = &fedmeshv1.Event_Cluster{Cluster: o}
	case *fedmeshv1.Node:
		ev.Object = &fedmeshv1.Event_Node{Node: o}
	case *fedmeshv1.Endpoint:
		ev.Object = &fedmeshv1.Event_Endpoint{Endpoint: o}
	case *fedmeshv1.Policy:
		ev.Object = &fedmeshv1.Event_Policy{Policy: o}
	case *fedmeshv1.ServiceExport:
		ev.Object = &fedmeshv1.Event_ServiceExport{ServiceExport: o}
	case *fedmeshv1.ClusterNetworkPolicy:
		ev.Object = &fedmeshv1.Event_ClusterNetworkPolicy{ClusterNetworkPolicy: o}
	case nil:
	default:
		panic(fmt.Sprintf("setObj %T", obj))
	}
}

func snap(rev uint64, more bool, evs ...*fedmeshv1.Event) *fedmeshv1.WatchResponse {
	return &fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT, Revision: rev, More: more, Events: evs}
}

func events(rev uint64, evs ...*fedmeshv1.Event) *fedmeshv1.WatchResponse {
	return &fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS, Revision: rev, Events: evs}
}

func progress(rev uint64) *fedmeshv1.WatchResponse {
	return &fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_PROGRESS, Revision: rev}
}

// changeStrings renders changes as "put endpoint/a/ns/x" for comparison.
func changeStrings(cs []Change) []string {
	var out []string
	for _, c := range cs {
		op := "put"
		if c.Delete {
			op = "del"
		}
		out = append(out, op+" "+c.Object())
	}
	return out
}

func TestViewFollowsTheStream(t *testing.T) {
	a1 := ep("a", "ns", "x", "n1", 100, 2, "10.0.0.1")
	a2 := ep("a", "ns", "y", "n1", 101, 3, "10.0.0.2")
	type step struct {
		msg     *fedmeshv1.WatchResponse
		reset   bool // a new stream starts before msg
		changes []string
		bad     []string
		err     error
		rev     uint64
		synced  bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "snapshot in chunks applies only when complete",
			steps: []step{
				{msg: snap(5, true, putEv(1, cluster("a", "10.0.0.0/16"))), rev: 0},
				{msg: snap(5, false, putEv(2, a1)), rev: 5, synced: true,
					changes: []string{"put cluster/a", "put endpoint/a/ns/x"}},
			},
		},
		{
			name: "events after a snapshot, duplicates skipped",
			steps: []step{
				{msg: snap(5, false, putEv(1, cluster("a", "10.0.0.0/16"))), rev: 5, synced: true, changes: []string{"put cluster/a"}},
				{msg: events(7, putEv(4, a1), putEv(7, a2)), rev: 7, changes: []string{"put endpoint/a/ns/y"}},
				{msg: events(8, putEv(7, a2), delEv(8, a1)), rev: 8, changes: []string{"del endpoint/a/ns/x"}},
				{msg: progress(12), rev: 12},
			},
		},
		{
			name:  "events before any snapshot are a gap",
			steps: []step{{msg: events(3, putEv(3, a1)), err: ErrNoSnapshot}},
		},
		{
			name: "a message older than the view is stale",
			steps: []step{
				{msg: snap(9, false), rev: 9, synced: true},
				{msg: events(4, putEv(4, a1)), rev: 9, err: ErrStale},
				{msg: progress(3), rev: 9, err: ErrStale},
				{msg: snap(3, false, putEv(2, a1)), rev: 9, err: ErrStale},
			},
		},
		{
			name: "snapshot chunks that disagree on the revision",
			steps: []step{
				{msg: snap(5, true), rev: 0},
				{msg: snap(6, false), rev: 0, err: ErrBrokenSnapshot},
			},
		},
		{
			name: "events inside a snapshot break it; a new stream starts over",
			steps: []step{
				{msg: snap(5, true, putEv(1, cluster("a", "10.0.0.0/16"))), rev: 0},
				{msg: events(6), err: ErrBrokenSnapshot},
				{reset: true, msg: snap(6, false, putEv(2, a1)), rev: 6, synced: true, changes: []string{"put endpoint/a/ns/x"}},
			},
		},
		{
			name: "a later snapshot (compacted) becomes a diff",
			steps: []step{
				{msg: snap(5, false, putEv(1, cluster("a", "10.0.0.0/16")), putEv(2, a1), putEv(3, a2)), rev: 5, synced: true,
					changes: []string{"put cluster/a", "put endpoint/a/ns/x", "put endpoint/a/ns/y"}},
				{reset: true, msg: snap(20, false, putEv(1, cluster("a", "10.0.0.0/16")), putEv(2, a1),
					putEv(15, ep("a", "ns", "z", "n2", 102, 15, "10.0.0.3"))), rev: 20, synced: true,
					changes: []string{"del endpoint/a/ns/y", "put endpoint/a/ns/z"}},
			},
		},
		{
			name: "unknown kinds and event types are skipped, the rest applies",
			steps: []step{
				{msg: snap(5, false), rev: 5, synced: true},
				{msg: events(6, putEv(6, nil), putEv(6, &fedmeshv1.ServiceExport{}),
					&fedmeshv1.Event{Type: 9, Revision: 6, Object: &fedmeshv1.Event_Endpoint{Endpoint: a1}}, putEv(6, a1)),
					rev: 6, changes: []string{"put endpoint/a/ns/x"},
					bad: []string{ReasonUnknownKind, ReasonUnknownKind, ReasonUnknownEvent}},
				{msg: &fedmeshv1.WatchResponse{Type: 42, Revision: 7}, rev: 6, bad: []string{ReasonUnknownMessage}},
				{msg: events(8, delEv(8, a1)), rev: 8, changes: []string{"del endpoint/a/ns/x"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := NewView()
			for i, s := range tt.steps {
				if s.reset {
					v.ResetStream()
				}
				changes, bad, err := v.Apply(s.msg)
				if !errors.Is(err, s.err) {
					t.Fatalf("step %d: err = %v, want %v", i, err, s.err)
				}
				if got := changeStrings(changes); !slices.Equal(got, s.changes) {
					t.Errorf("step %d: changes = %q, want %q", i, got, s.changes)
				}
				var reasons []string
				for _, b := range bad {
					reasons = append(reasons, b.Reason)
				}
				if !slices.Equal(reasons, s.bad) {
					t.Errorf("step %d: bad = %q, want %q", i, reasons, s.bad)
				}
				if v.Revision() != s.rev {
					t.Errorf("step %d: revision = %d, want %d", i, v.Revision(), s.rev)
				}
				if s.err == nil && v.Synced() != s.synced && (s.synced || i == 0) {
					t.Errorf("step %d: synced = %v, want %v", i, v.Synced(), s.synced)
				}
			}
		})
	}
}

func TestNodeStatusReportsAreStatusOnlyChanges(t *testing.T) {
	node := func(rev, enforced uint64, key string) *fedmeshv1.Node {
		return &fedmeshv1.Node{Cluster: "a", Name: "n1", UnderlayIp: "198.18.1.11", WireguardPublicKey: key,
			Status: &fedmeshv1.NodeStatus{EnforcedRevision: enforced}, Meta: &fedmeshv1.ObjectMeta{Revision: rev}}
	}
	v := NewView()
	if _, _, err := v.Apply(snap(1, false, putEv(1, node(1, 0, "k1")))); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		node *fedmeshv1.Node
		want bool
	}{
		{"status report", node(2, 1, "k1"), true},
		{"another status report", node(3, 2, "k1"), true},
		{"key rotation", node(4, 2, "k2"), false},
	}
	for i, tc := range cases {
		changes, _, err := v.Apply(events(uint64(i+2), putEv(uint64(i+2), tc.node)))
		if err != nil || len(changes) != 1 {
			t.Fatalf("%s: changes %v, err %v", tc.name, changes, err)
		}
		if changes[0].StatusOnly != tc.want {
			t.Errorf("%s: StatusOnly = %v, want %v", tc.name, changes[0].StatusOnly, tc.want)
		}
	}
}
