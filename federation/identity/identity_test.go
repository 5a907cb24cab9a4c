package identity

import (
	"errors"
	"reflect"
	"testing"
)

func TestForAddsReservedLabelsAndDropsChurnAndSpoofs(t *testing.T) {
	got := For("c1", "ns", map[string]string{
		"app":                "web",
		"pod-template-hash":  "abc",
		"fedmesh.io/cluster": "evil",
		"tier":               "fe",
	}, nil)
	want := Labels{{"app", "web"}, {LabelCluster, "c1"}, {LabelNamespace, "ns"}, {"tier", "fe"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("For = %v, want %v", got, want)
	}
	if got.String() != "app=web,fedmesh.io/cluster=c1,fedmesh.io/namespace=ns,tier=fe" {
		t.Fatalf("String = %q", got.String())
	}
	if p := got.Pod(); !reflect.DeepEqual(p, map[string]string{"app": "web", "tier": "fe"}) {
		t.Fatalf("Pod = %v", p)
	}
}

func TestFilterPrefixAndExact(t *testing.T) {
	f := NewFilter("a", "tmp.io/*")
	for key, keep := range map[string]bool{"a": false, "ab": true, "tmp.io/x": false, "tmp.iox": true} {
		if f.Keep(key) != keep {
			t.Errorf("Keep(%q) = %v, want %v", key, !keep, keep)
		}
	}
}

func TestStringDistinguishesEscapedValues(t *testing.T) {
	a := New(map[string]string{"k": "a,b=c"})
	b := New(map[string]string{"k": "a", "b": "c"})
	if a.String() == b.String() {
		t.Fatalf("distinct sets encode equally: %q", a.String())
	}
}

func TestAllocatorIsDeterministicAndRefCounted(t *testing.T) {
	l := func(v string) Labels { return For("c", "n", map[string]string{"app": v}, nil) }
	a := NewAllocatorRange(10, 12)
	steps := []struct {
		op      string
		labels  string
		id      uint32
		created bool
		freed   bool
		err     error
	}{
		{op: "acquire", labels: "x", id: 10, created: true},
		{op: "acquire", labels: "y", id: 11, created: true},
		{op: "acquire", labels: "x", id: 10},
		{op: "release", id: 10},              // one ref left
		{op: "release", id: 10, freed: true}, // freed, but not reused next
		{op: "acquire", labels: "z", id: 12, created: true},
		{op: "acquire", labels: "w", id: 10, created: true}, // wrapped: lowest free
		{op: "acquire", labels: "v", err: ErrExhausted},
		{op: "release", id: 99},
	}
	for i, s := range steps {
		switch s.op {
		case "acquire":
			id, created, err := a.Acquire(l(s.labels))
			if !errors.Is(err, s.err) || (err == nil && (id != s.id || created != s.created)) {
				t.Fatalf("step %d: Acquire(%s) = %d, %v, %v; want %d, %v, %v", i, s.labels, id, created, err, s.id, s.created, s.err)
			}
		case "release":
			if freed := a.Release(s.id); freed != s.freed {
				t.Fatalf("step %d: Release(%d) = %v, want %v", i, s.id, freed, s.freed)
			}
		}
	}
	if ls, ok := a.Lookup(12); !ok || ls.String() != l("z").String() {
		t.Fatalf("Lookup(12) = %v, %v", ls, ok)
	}
	if id, ok := a.LookupLabels(l("w")); !ok || id != 10 {
		t.Fatalf("LookupLabels(w) = %d, %v", id, ok)
	}
}

func TestAllocatorSnapshotRestoreContinuesSameNumbers(t *testing.T) {
	a := NewAllocator()
	for _, v := range []string{"a", "b", "c"} {
		if _, _, err := a.Acquire(New(map[string]string{"app": v})); err != nil {
			t.Fatal(err)
		}
	}
	a.Release(MinAllocated + 1)
	b := NewAllocator()
	if err := b.Restore(a.Snapshot()); err != nil {
		t.Fatal(err)
	}
	x, _, _ := a.Acquire(New(map[string]string{"app": "d"}))
	y, _, _ := b.Acquire(New(map[string]string{"app": "d"}))
	if x != y || x != MinAllocated+3 {
		t.Fatalf("restored allocator diverged: %d vs %d", x, y)
	}
	if !reflect.DeepEqual(a.Snapshot(), b.Snapshot()) {
		t.Fatal("snapshots differ after the same call")
	}
}

func TestRestoreRejectsCorruptState(t *testing.T) {
	ls := New(map[string]string{"a": "b"})
	for name, s := range map[string]State{
		"zero refs":     {Entries: []Entry{{ID: 300, Labels: ls}}},
		"out of range":  {Entries: []Entry{{ID: 5, Labels: ls, Refs: 1}}},
		"duplicate ids": {Entries: []Entry{{ID: 300, Labels: ls, Refs: 1}, {ID: 300, Labels: nil, Refs: 1}}},
		"dup labels":    {Entries: []Entry{{ID: 300, Labels: ls, Refs: 1}, {ID: 301, Labels: ls, Refs: 1}}},
	} {
		if err := NewAllocator().Restore(s); err == nil {
			t.Errorf("%s: Restore succeeded", name)
		}
	}
}

func TestReservedIdentitiesHaveNamesAndAreBelowAllocatedRange(t *testing.T) {
	for _, id := range []uint32{Host, World, RemoteNode, Unknown} {
		if ReservedName(id) == "" || id == 0 || id >= MinAllocated {
			t.Errorf("reserved identity %d: name %q", id, ReservedName(id))
		}
	}
}
