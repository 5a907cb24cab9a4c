package watchclient

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func put(rev uint64, name string) *fedmeshv1.Event {
	return &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Revision: rev,
		Object: &fedmeshv1.Event_Cluster{Cluster: &fedmeshv1.Cluster{Name: name}}}
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

// names renders an update's events as "name@rev".
func names(u Update) []string {
	var out []string
	for _, ev := range u.Events {
		out = append(out, fmt.Sprintf("%s@%d", ev.GetCluster().GetName(), ev.GetRevision()))
	}
	return out
}

func TestFollowerFollowsTheStream(t *testing.T) {
	type step struct {
		msg    *fedmeshv1.WatchResponse
		reset  bool // a new stream starts before msg
		kind   UpdateKind
		events []string
		err    error
		rev    uint64
		synced bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "a snapshot in chunks comes out whole, once complete",
			steps: []step{
				{msg: snap(5, true, put(1, "a")), kind: UpdateNone, rev: 0},
				{msg: snap(5, false, put(2, "b")), kind: UpdateSnapshot, events: []string{"a@1", "b@2"}, rev: 5, synced: true},
			},
		},
		{
			name: "events after a snapshot, duplicates dropped; progress moves the revision",
			steps: []step{
				{msg: snap(5, false, put(1, "a")), kind: UpdateSnapshot, events: []string{"a@1"}, rev: 5, synced: true},
				{msg: events(7, put(4, "a"), put(7, "b")), kind: UpdateEvents, events: []string{"b@7"}, rev: 7, synced: true},
				{msg: events(8, put(7, "b"), put(8, "c")), kind: UpdateEvents, events: []string{"c@8"}, rev: 8, synced: true},
				{msg: progress(12), kind: UpdateProgress, rev: 12, synced: true},
			},
		},
		{
			name:  "events before any snapshot are a gap",
			steps: []step{{msg: events(3, put(3, "a")), err: ErrNoSnapshot}},
		},
		{
			name:  "progress before any snapshot keeps revision 0",
			steps: []step{{msg: progress(3), kind: UpdateProgress, rev: 0}},
		},
		{
			name: "a message older than the client is stale, and changes nothing",
			steps: []step{
				{msg: snap(9, false), kind: UpdateSnapshot, rev: 9, synced: true},
				{msg: events(4, put(4, "a")), rev: 9, synced: true, err: ErrStale},
				{msg: progress(3), rev: 9, synced: true, err: ErrStale},
				{msg: snap(3, false, put(2, "a")), rev: 9, synced: true, err: ErrStale},
			},
		},
		{
			name: "snapshot chunks that disagree on the revision",
			steps: []step{
				{msg: snap(5, true), kind: UpdateNone},
				{msg: snap(6, false), err: ErrBrokenSnapshot},
			},
		},
		{
			name: "events inside a snapshot break it; a new stream starts over",
			steps: []step{
				{msg: snap(5, true, put(1, "a")), kind: UpdateNone},
				{msg: events(6), err: ErrBrokenSnapshot},
				{msg: progress(6), err: ErrBrokenSnapshot},
				{reset: true, msg: snap(6, false, put(2, "b")), kind: UpdateSnapshot, events: []string{"b@2"}, rev: 6, synced: true},
			},
		},
		{
			name: "a later snapshot (the revision was compacted) replaces the state",
			steps: []step{
				{msg: snap(5, false, put(1, "a")), kind: UpdateSnapshot, events: []string{"a@1"}, rev: 5, synced: true},
				{reset: true, msg: snap(20, false, put(15, "z")), kind: UpdateSnapshot, events: []string{"z@15"}, rev: 20, synced: true},
			},
		},
		{
			name: "an unknown message type is skipped, the revision stays",
			steps: []step{
				{msg: snap(5, false), kind: UpdateSnapshot, rev: 5, synced: true},
				{msg: &fedmeshv1.WatchResponse{Type: 42, Revision: 7}, kind: UpdateUnknown, rev: 5, synced: true},
				{msg: events(8, put(8, "a")), kind: UpdateEvents, events: []string{"a@8"}, rev: 8, synced: true},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f Follower
			for i, s := range tt.steps {
				if s.reset {
					f.ResetStream()
				}
				u, err := f.Apply(s.msg)
				if !errors.Is(err, s.err) {
					t.Fatalf("step %d: err = %v, want %v", i, err, s.err)
				}
				if err == nil && u.Kind != s.kind {
					t.Errorf("step %d: kind = %v, want %v", i, u.Kind, s.kind)
				}
				if got := names(u); !slices.Equal(got, s.events) {
					t.Errorf("step %d: events = %q, want %q", i, got, s.events)
				}
				if f.Revision() != s.rev || f.Synced() != s.synced {
					t.Errorf("step %d: at revision %d synced %v, want %d %v", i, f.Revision(), f.Synced(), s.rev, s.synced)
				}
			}
		})
	}
}
