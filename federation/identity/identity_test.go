package identity

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

func TestForKeepsClusterAndNamespaceOutOfReachOfPodLabels(t *testing.T) {
	pod := map[string]string{
		"app":                  "web",
		"pod-template-hash":    "abc",
		"fedmesh.io/cluster":   "evil",
		"fedmesh.io/namespace": "kube-system",
		"tier":                 "fe",
	}
	got := For("c1", "ns", pod, nil)
	want := Key{Cluster: "c1", Namespace: "ns", Labels: Labels{{"app", "web"}, {"tier", "fe"}}}
	if !got.Equal(want) {
		t.Fatalf("For = %v, want %v", got, want)
	}
	// A policy selecting on the reserved keys makes them count, as labels:
	// the pod still runs in c1/ns and cannot become evil's.
	r := NewRelevance(nil)
	r.Select([]string{"fedmesh.io/cluster", "fedmesh.io/namespace"})
	spoof := r.Key("c1", "ns", pod)
	if spoof.Cluster != "c1" || spoof.Namespace != "ns" {
		t.Fatalf("labels moved the pod: %v", spoof)
	}
	if v, _ := spoof.Labels.Get("fedmesh.io/cluster"); v != "evil" {
		t.Fatalf("selected reserved-prefix label not counted: %v", spoof)
	}
	real := r.Key("evil", "kube-system", map[string]string{"app": "web", "tier": "fe"})
	if spoof.Equal(real) {
		t.Fatal("a pod's labels claimed another cluster's identity")
	}
}

// TestDefaultFilterIsFrozen: the filter is part of the replicated state
// machine (replicas of two versions apply one log). Changing it needs a new
// log format gating it; update this list only together with that.
func TestDefaultFilterIsFrozen(t *testing.T) {
	want := []string{
		"pod-template-hash", "controller-revision-hash", "pod-template-generation",
		"statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index", "controller-uid",
		"batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-completion-index", "fedmesh.io/*",
	}
	if !slices.Equal(DefaultExcluded, want) {
		t.Fatalf("DefaultExcluded = %q, frozen at %q", DefaultExcluded, want)
	}
	f := DefaultFilter()
	for _, k := range []string{"pod-template-hash", "fedmesh.io/anything", "batch.kubernetes.io/controller-uid"} {
		if f.Keep(k) {
			t.Errorf("default filter keeps %q", k)
		}
	}
	for _, k := range []string{"app", "batch.kubernetes.io/job-name", "job-name", "statefulset.kubernetes.io/pod-namex"} {
		if !f.Keep(k) {
			t.Errorf("default filter drops %q", k)
		}
	}
}

func TestRelevanceCountsEachFilteredKeyPerSelectingPolicy(t *testing.T) {
	r := NewRelevance(nil)
	steps := []struct {
		op          string
		keys        []string
		wantChanged []string
	}{
		{"select", []string{"app", "pod-template-hash", "pod-template-hash"}, []string{"pod-template-hash"}},
		{"select", []string{"pod-template-hash", "fedmesh.io/role"}, []string{"fedmesh.io/role"}},
		{"unselect", []string{"pod-template-hash"}, nil},
		{"unselect", []string{"pod-template-hash", "fedmesh.io/role", "never-selected"}, []string{"fedmesh.io/role", "pod-template-hash"}},
		{"unselect", []string{"pod-template-hash"}, nil},
	}
	for i, s := range steps {
		var got []string
		if s.op == "select" {
			got = r.Select(s.keys)
		} else {
			got = r.Unselect(s.keys)
		}
		if !slices.Equal(got, s.wantChanged) {
			t.Fatalf("step %d: %s(%q) changed %q, want %q", i, s.op, s.keys, got, s.wantChanged)
		}
	}
	if r.Counts("pod-template-hash") || !r.Counts("app") || len(r.Selected()) != 0 {
		t.Fatalf("after every policy went: counts pod-template-hash=%v app=%v selected=%q", r.Counts("pod-template-hash"), r.Counts("app"), r.Selected())
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

func key(app string) Key { return For("c", "n", map[string]string{"app": app}, nil) }

func TestAllocatorIsDeterministicAndRefCounted(t *testing.T) {
	a := NewAllocatorRange(10, 12)
	steps := []struct {
		op      string
		app     string
		id      uint32
		created bool
		freed   bool
		err     error
	}{
		{op: "acquire", app: "x", id: 10, created: true},
		{op: "acquire", app: "y", id: 11, created: true},
		{op: "acquire", app: "x", id: 10},
		{op: "release", id: 10},              // one ref left
		{op: "release", id: 10, freed: true}, // freed, but not reused next
		{op: "acquire", app: "z", id: 12, created: true},
		{op: "acquire", app: "w", id: 10, created: true}, // wrapped: lowest free
		{op: "acquire", app: "v", err: ErrExhausted},
		{op: "release", id: 99},
	}
	for i, s := range steps {
		switch s.op {
		case "acquire":
			id, created, err := a.Acquire(key(s.app))
			if !errors.Is(err, s.err) || (err == nil && (id != s.id || created != s.created)) {
				t.Fatalf("step %d: Acquire(%s) = %d, %v, %v; want %d, %v, %v", i, s.app, id, created, err, s.id, s.created, s.err)
			}
		case "release":
			if freed := a.Release(s.id); freed != s.freed {
				t.Fatalf("step %d: Release(%d) = %v, want %v", i, s.id, freed, s.freed)
			}
		}
	}
	if k, ok := a.Lookup(12); !ok || !k.Equal(key("z")) {
		t.Fatalf("Lookup(12) = %v, %v", k, ok)
	}
	if id, ok := a.LookupKey(key("w")); !ok || id != 10 {
		t.Fatalf("LookupKey(w) = %d, %v", id, ok)
	}
	if a.Refs(11) != 1 || a.Refs(99) != 0 || a.Free() != 0 {
		t.Fatalf("Refs(11)=%d Refs(99)=%d Free=%d", a.Refs(11), a.Refs(99), a.Free())
	}
}

func TestAllocatorFindsKeysWhoseHashesCollide(t *testing.T) {
	a := NewAllocator()
	x, _, _ := a.Acquire(key("x"))
	// Force y into x's hash bucket: the index must compare, not trust.
	y := MinAllocated + 100
	a.byID[y] = &entry{key: key("y"), hash: a.byID[x].hash, refs: 1}
	a.index(y, a.byID[x].hash)
	if got, ok := a.find(key("y"), a.byID[x].hash); !ok || got != y {
		t.Fatalf("colliding key found as %d, %v", got, ok)
	}
	if got, ok := a.find(key("x"), a.byID[x].hash); !ok || got != x {
		t.Fatalf("first key of the bucket found as %d, %v", got, ok)
	}
	a.Release(x)
	if got, ok := a.find(key("y"), a.byID[y].hash); !ok || got != y {
		t.Fatalf("after releasing the first of the bucket, y found as %d, %v", got, ok)
	}
}

func TestAllocatorSnapshotRestoreContinuesSameNumbers(t *testing.T) {
	a := NewAllocator()
	for _, v := range []string{"a", "b", "c"} {
		if _, _, err := a.Acquire(key(v)); err != nil {
			t.Fatal(err)
		}
	}
	a.Release(MinAllocated + 1)
	b := NewAllocator()
	if err := b.Restore(a.Snapshot()); err != nil {
		t.Fatal(err)
	}
	x, _, _ := a.Acquire(key("d"))
	y, _, _ := b.Acquire(key("d"))
	if x != y || x != MinAllocated+3 {
		t.Fatalf("restored allocator diverged: %d vs %d", x, y)
	}
	if !reflect.DeepEqual(a.Snapshot(), b.Snapshot()) {
		t.Fatal("snapshots differ after the same call")
	}
}

func TestRestoreRejectsCorruptState(t *testing.T) {
	k := key("a")
	for name, s := range map[string]State{
		"zero refs":     {Entries: []Entry{{ID: 300, Key: k}}},
		"out of range":  {Entries: []Entry{{ID: 5, Key: k, Refs: 1}}},
		"duplicate ids": {Entries: []Entry{{ID: 300, Key: k, Refs: 1}, {ID: 300, Key: key("b"), Refs: 1}}},
		"dup keys":      {Entries: []Entry{{ID: 300, Key: k, Refs: 1}, {ID: 301, Key: k, Refs: 1}}},
	} {
		a := NewAllocator()
		a.Acquire(key("kept"))
		before := a.Snapshot()
		if err := a.Restore(s); err == nil {
			t.Errorf("%s: Restore succeeded", name)
		}
		if !reflect.DeepEqual(a.Snapshot(), before) {
			t.Errorf("%s: a failed Restore changed the allocator", name)
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

// pod is a test holder's labels: app plus, when hash != "", the filtered
// pod-template-hash.
func pod(app, hash string) map[string]string {
	m := map[string]string{"app": app}
	if hash != "" {
		m["pod-template-hash"] = hash
	}
	return m
}

// world is a set of holders (pods) over one allocator, for Rekey tests.
type world struct {
	a    *Allocator
	rel  *Relevance
	pods []map[string]string
	ids  []uint32
}

func newWorld(t *testing.T, pods ...map[string]string) *world {
	t.Helper()
	w := &world{a: NewAllocator(), rel: NewRelevance(nil), pods: pods}
	for _, p := range pods {
		id, _, err := w.a.Acquire(w.rel.Key("c", "n", p))
		if err != nil {
			t.Fatal(err)
		}
		w.ids = append(w.ids, id)
	}
	return w
}

// rekey moves every holder to its Key under the current relevance.
func (w *world) rekey(t *testing.T) {
	t.Helper()
	hs := make([]Holder, len(w.pods))
	for i, p := range w.pods {
		hs[i] = Holder{ID: w.ids[i], Key: w.rel.Key("c", "n", p)}
	}
	ids, err := w.a.Rekey(hs)
	if err != nil {
		t.Fatal(err)
	}
	w.ids = ids
}

// check asserts that holders share an identity exactly when their Keys are
// equal, that refs count holders and that no other identity exists.
func (w *world) check(t *testing.T) {
	t.Helper()
	refs := map[uint32]uint64{}
	for i, p := range w.pods {
		k := w.rel.Key("c", "n", p)
		refs[w.ids[i]]++
		if got, ok := w.a.Lookup(w.ids[i]); !ok || !got.Equal(k) {
			t.Fatalf("holder %d (%v) holds %d = %v", i, p, w.ids[i], got)
		}
	}
	if w.a.Len() != len(refs) {
		t.Fatalf("%d identities allocated, %d held", w.a.Len(), len(refs))
	}
	for id, n := range refs {
		if w.a.Refs(id) != n {
			t.Fatalf("identity %d: %d refs, %d holders", id, w.a.Refs(id), n)
		}
	}
}

func TestRekeySplitKeepsTheNumberWithTheLargestPart(t *testing.T) {
	const x = MinAllocated
	tests := []struct {
		name string
		pods []map[string]string
		// want is each holder's identity after the split.
		want []uint32
	}{
		{"largest value keeps it, the other gets the next number",
			[]map[string]string{pod("web", "v2"), pod("web", "v1"), pod("web", "v1"), pod("web", "v1")},
			[]uint32{x + 1, x, x, x}},
		{"holders without the key are a part too",
			[]map[string]string{pod("web", ""), pod("web", ""), pod("web", "v1")},
			[]uint32{x, x, x + 1}},
		{"a tie goes to the lower Key, fresh numbers in Key order",
			[]map[string]string{pod("web", "b"), pod("web", "c"), pod("web", "a")},
			[]uint32{x + 1, x + 2, x}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.pods...)
			if w.a.Len() != 1 {
				t.Fatalf("%d identities before any policy selects pod-template-hash, want 1", w.a.Len())
			}
			w.rel.Select([]string{"pod-template-hash"})
			w.rekey(t)
			w.check(t)
			if !slices.Equal(w.ids, tc.want) {
				t.Fatalf("identities %v, want %v", w.ids, tc.want)
			}
		})
	}
}

func TestRekeyMergeKeepsTheNumberOfTheLargestPartOrOfAnUntouchedIdentity(t *testing.T) {
	const x = MinAllocated
	// Selected from the start: web v1 (x), v2 (x+1, 2 pods), v3 (x+2).
	w := &world{a: NewAllocator(), rel: NewRelevance(nil)}
	w.rel.Select([]string{"pod-template-hash"})
	for _, p := range []map[string]string{pod("web", "v1"), pod("web", "v2"), pod("web", "v2"), pod("web", "v3"), pod("db", "")} {
		id, _, _ := w.a.Acquire(w.rel.Key("c", "n", p))
		w.pods, w.ids = append(w.pods, p), append(w.ids, id)
	}
	w.rel.Unselect([]string{"pod-template-hash"})
	w.rekey(t)
	w.check(t)
	if want := []uint32{x + 1, x + 1, x + 1, x + 1, x + 3}; !slices.Equal(w.ids, want) {
		t.Fatalf("identities %v, want %v (v2 had most pods)", w.ids, want)
	}
	if w.a.Next() != x+4 {
		t.Fatalf("cursor %d: a merge must not move it", w.a.Next())
	}

	// A pod whose Key an untouched identity already has joins that one.
	u := newWorld(t, pod("web", ""))
	u.rel.Select([]string{"pod-template-hash"})
	id, _, _ := u.a.Acquire(u.rel.Key("c", "n", pod("web", "v9")))
	u.pods, u.ids = append(u.pods, pod("web", "v9")), append(u.ids, id)
	u.rel.Unselect([]string{"pod-template-hash"})
	hs := []Holder{{ID: id, Key: u.rel.Key("c", "n", pod("web", "v9"))}}
	ids, err := u.a.Rekey(hs)
	if err != nil {
		t.Fatal(err)
	}
	u.ids[1] = ids[0]
	u.check(t)
	if ids[0] != x {
		t.Fatalf("merged into %d, want the untouched identity %d", ids[0], x)
	}
}

func TestRekeyRejectsAPartialHolderListAndChangesNothing(t *testing.T) {
	w := newWorld(t, pod("web", "v1"), pod("web", "v2"))
	w.rel.Select([]string{"pod-template-hash"})
	before := w.a.Snapshot()
	_, err := w.a.Rekey([]Holder{{ID: w.ids[0], Key: w.rel.Key("c", "n", w.pods[0])}})
	if err == nil {
		t.Fatal("Rekey accepted one of an identity's two holders")
	}
	if !reflect.DeepEqual(w.a.Snapshot(), before) {
		t.Fatal("a rejected Rekey changed the allocator")
	}
}

func TestRekeyReportsExhaustionAndChangesNothing(t *testing.T) {
	a := NewAllocatorRange(10, 11)
	r := NewRelevance(nil)
	ps := []map[string]string{pod("web", "1"), pod("web", "2"), pod("web", "3")}
	var hs []Holder
	for _, p := range ps {
		id, _, _ := a.Acquire(r.Key("c", "n", p))
		hs = append(hs, Holder{ID: id})
	}
	r.Select([]string{"pod-template-hash"})
	for i, p := range ps {
		hs[i].Key = r.Key("c", "n", p)
	}
	before := a.Snapshot()
	if _, err := a.Rekey(hs); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Rekey into 3 identities over 2 numbers: %v", err)
	}
	if !reflect.DeepEqual(a.Snapshot(), before) {
		t.Fatal("a rejected Rekey changed the allocator")
	}
}

// TestRekeyIsIndependentOfHolderOrder: replicas list holders from maps;
// the numbers must not depend on the order.
func TestRekeyIsIndependentOfHolderOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for seed := range 200 {
		var pods []map[string]string
		for range 1 + r.IntN(30) {
			pods = append(pods, pod(fmt.Sprint("app", r.IntN(3)), []string{"", "h1", "h2", "h3"}[r.IntN(4)]))
		}
		run := func(perm []int) (map[int]uint32, State) {
			w := newWorld(t, pods...)
			w.a.seed = NewAllocator().seed // another process: another index layout
			w.rel.Select([]string{"pod-template-hash"})
			hs := make([]Holder, len(perm))
			for j, i := range perm {
				hs[j] = Holder{ID: w.ids[i], Key: w.rel.Key("c", "n", pods[i])}
			}
			ids, err := w.a.Rekey(hs)
			if err != nil {
				t.Fatal(err)
			}
			out := map[int]uint32{}
			for j, i := range perm {
				out[i] = ids[j]
			}
			st := w.a.Snapshot()
			return out, st
		}
		ids1, st1 := run(r.Perm(len(pods)))
		ids2, st2 := run(r.Perm(len(pods)))
		if !reflect.DeepEqual(ids1, ids2) || !reflect.DeepEqual(st1, st2) {
			t.Fatalf("seed %d: holder order changed the result:\n%v %v\n%v %v", seed, ids1, st1, ids2, st2)
		}
	}
}

// TestRandomAcquireReleaseRekeyKeepsOneIdentityPerKey drives an allocator
// through random pod churn and policies coming and going, checking after
// each step that holders share an identity exactly when their Keys are
// equal, and that a second allocator fed the same calls agrees.
func TestRandomAcquireReleaseRekeyKeepsOneIdentityPerKey(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	keys := []string{"pod-template-hash", "statefulset.kubernetes.io/pod-name", "fedmesh.io/role"}
	label := func() map[string]string {
		m := map[string]string{"app": fmt.Sprint("a", r.IntN(2))}
		for _, k := range keys {
			if r.IntN(2) == 0 {
				m[k] = fmt.Sprint("v", r.IntN(3))
			}
		}
		return m
	}
	w := &world{a: NewAllocator(), rel: NewRelevance(nil)}
	twin := NewAllocator()
	selected := map[string]int{}
	for step := range 2000 {
		switch op := r.IntN(10); {
		case op < 4: // new pod
			p := label()
			id, _, err := w.a.Acquire(w.rel.Key("c", "n", p))
			if err != nil {
				t.Fatal(err)
			}
			twin.Acquire(w.rel.Key("c", "n", p))
			w.pods, w.ids = append(w.pods, p), append(w.ids, id)
		case op < 7 && len(w.pods) > 0: // pod gone
			i := r.IntN(len(w.pods))
			w.a.Release(w.ids[i])
			twin.Release(w.ids[i])
			w.pods, w.ids = slices.Delete(w.pods, i, i+1), slices.Delete(w.ids, i, i+1)
		default: // a policy on a filtered key comes or goes
			k := keys[r.IntN(len(keys))]
			var changed []string
			if selected[k] > 0 && r.IntN(2) == 0 {
				selected[k]--
				changed = w.rel.Unselect([]string{k})
			} else {
				selected[k]++
				changed = w.rel.Select([]string{k})
			}
			if len(changed) > 0 {
				hs := make([]Holder, len(w.pods))
				for i, p := range w.pods {
					hs[i] = Holder{ID: w.ids[i], Key: w.rel.Key("c", "n", p)}
				}
				w.rekey(t)
				if _, err := twin.Rekey(hs); err != nil {
					t.Fatal(err)
				}
			}
		}
		w.check(t)
		if !reflect.DeepEqual(w.a.Snapshot(), twin.Snapshot()) {
			t.Fatalf("step %d: two allocators fed the same calls differ", step)
		}
	}
}

func TestRebuildKeepsConsistentNumbersAndMergesConflictingOnes(t *testing.T) {
	k := func(app string) Key { return key(app) }
	tests := []struct {
		name    string
		holders []Holder
		next    uint32
		want    []uint32
	}{
		{"consistent numbers are kept, cursor too",
			[]Holder{{300, k("a")}, {300, k("a")}, {280, k("b")}}, 301, []uint32{300, 300, 280}},
		{"two numbers of one Key merge into the one with more holders",
			[]Holder{{300, k("a")}, {301, k("a")}, {301, k("a")}}, 302, []uint32{301, 301, 301}},
		{"one number of two Keys splits, the larger part keeps it",
			[]Holder{{300, k("a")}, {300, k("b")}, {300, k("b")}}, 301, []uint32{301, 300, 300}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := NewAllocator()
			a.Acquire(k("dropped by Rebuild"))
			ids, err := a.Rebuild(tc.next, tc.holders)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids, tc.want) {
				t.Fatalf("ids %v, want %v", ids, tc.want)
			}
			if _, ok := a.LookupKey(k("dropped by Rebuild")); ok {
				t.Fatal("Rebuild kept an identity no holder has")
			}
			for i, h := range tc.holders {
				if got, _ := a.Lookup(ids[i]); !got.Equal(h.Key) {
					t.Fatalf("holder %d: identity %d is %v, want %v", i, ids[i], got, h.Key)
				}
			}
		})
	}
}
