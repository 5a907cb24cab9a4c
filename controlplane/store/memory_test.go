package store

import (
	"bytes"
	"net/netip"
	"reflect"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// What one replica holds per endpoint bounds the federation's size (3M
// endpoints in < 4 GiB): these tests pin the sharing that keeps it small,
// and that sharing never changes a value.

func TestEndpointsWrittenTogetherShareMetadataYetEachUpdateGetsItsOwn(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"))
	created := apply(t, s, upsert("a", 0, false, ep("x", "p1", "10.1.0.1", nil), ep("x", "p2", "10.1.0.2", nil), ep("x", "p3", "10.1.0.3", nil))).Revision
	p1, p2, p3 := s.Endpoint("a", "x", "p1"), s.Endpoint("a", "x", "p2"), s.Endpoint("a", "x", "p3")
	if p1.GetMeta() != p2.GetMeta() || p2.GetMeta() != p3.GetMeta() {
		t.Errorf("endpoints created by one write hold %p %p %p, want one shared ObjectMeta", p1.GetMeta(), p2.GetMeta(), p3.GetMeta())
	}
	// p1 rewritten with a new one (p4): different create revisions in one
	// command, each correct.
	rev := apply(t, s, upsert("a", 0, false, ep("x", "p1", "10.1.0.1", map[string]string{"v": "2"}), ep("x", "p4", "10.1.0.4", nil))).Revision
	for _, tc := range []struct {
		name          string
		rev, creation uint64
	}{{"p1", rev, created}, {"p2", created, created}, {"p3", created, created}, {"p4", rev, rev}} {
		m := s.Endpoint("a", "x", tc.name).GetMeta()
		if m.GetRevision() != tc.rev || m.GetCreateRevision() != tc.creation {
			t.Errorf("%s meta %v, want revision %d created at %d", tc.name, m, tc.rev, tc.creation)
		}
	}
	// The object readers held before the rewrite is unchanged.
	if p1.GetMeta().GetRevision() != created || p2.GetMeta().GetRevision() != created {
		t.Errorf("a rewrite changed objects stored before it: p1 %v p2 %v", p1.GetMeta(), p2.GetMeta())
	}
}

func TestARestoredStateSharesWhatTheWrittenOneShared(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"))
	var eps []*fedmeshv1.Endpoint
	for i, n := range []string{"p1", "p2", "p3"} {
		e := ep("x", n, "10.1.0."+string(rune('1'+i)), map[string]string{"app": "web"})
		e.NamespaceLabels = map[string]string{"kubernetes.io/metadata.name": "x"}
		e.Node = "node-1"
		eps = append(eps, e)
	}
	apply(t, s, upsert("a", 0, false, eps...))
	var buf bytes.Buffer
	if _, err := s.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := ReadSnapshot(&buf, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []struct {
		name string
		s    *State
	}{{"written", s}, {"restored", r}} {
		p1, p3 := st.s.Endpoint("a", "x", "p1"), st.s.Endpoint("a", "x", "p3")
		if p1.GetMeta() != p3.GetMeta() {
			t.Errorf("%s: p1 and p3 hold their own ObjectMeta, want one shared", st.name)
		}
		if !sameMap(p1.GetNamespaceLabels(), p3.GetNamespaceLabels()) || !sameMap(p1.GetLabels(), p3.GetLabels()) {
			t.Errorf("%s: equal label maps are not shared", st.name)
		}
		if unsafe.StringData(p1.GetNode()) != unsafe.StringData(p3.GetNode()) {
			t.Errorf("%s: the node name is held once per endpoint", st.name)
		}
		for _, n := range []string{"p1", "p2", "p3"} {
			if got, want := st.s.Endpoint("a", "x", n), s.Endpoint("a", "x", n); !proto.Equal(got, want) {
				t.Errorf("%s: %s = %v, want %v", st.name, n, got, want)
			}
		}
	}
}

func TestAReDerivedImportSharesTheUnchangedClustersBackends(t *testing.T) {
	s := NewState(100)
	withBackends := func(addr string) *fedmeshv1.ServiceExport {
		x := svc("x", "s", 80)
		x.Backends = []string{addr}
		return x
	}
	apply(t, s, cluster("a", "10.1.0.0/16"), cluster("b", "10.2.0.0/16"),
		exportCmd("a", withBackends("10.1.0.1")), exportCmd("b", withBackends("10.2.0.1")))
	before := proto.CloneOf(s.Imports("")[0])
	old := s.Imports("")[0]
	apply(t, s, exportCmd("b", withBackends("10.2.0.2")))
	imp := s.Imports("")[0]
	if imp == old || len(imp.GetClusters()) != 2 {
		t.Fatalf("import after b's change: %v", imp)
	}
	if imp.GetClusters()[0] != old.GetClusters()[0] {
		t.Error("cluster a's backends did not change, yet the new import holds a copy of them")
	}
	if got := imp.GetClusters()[1].GetAddresses(); len(got) != 1 || got[0] != "10.2.0.2" {
		t.Errorf("cluster b's backends in the new import: %v, want [10.2.0.2]", got)
	}
	if !proto.Equal(old, before) {
		t.Errorf("the previous import changed: %v, was %v", old, before)
	}
}

// sameMap reports whether a and b are one map (not merely equal ones).
func sameMap(a, b map[string]string) bool {
	return a != nil && reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

func TestAddressIndexKeepsEveryFormOfAnAddressApart(t *testing.T) {
	x := newAddrIndex()
	addrs := []string{"10.0.0.1", "::ffff:10.0.0.1", "fd00::1", "fe80::1", "fe80::1%eth0", "fe80::1%eth1"}
	owners := map[netip.Addr]*epEntry{}
	for _, s := range addrs {
		a := netip.MustParseAddr(s)
		owners[a] = &epEntry{}
		x.set(a, owners[a])
	}
	x.set(netip.Addr{}, &epEntry{}) // the zero Addr is never owned
	got := map[netip.Addr]*epEntry{}
	for a, e := range x.all() {
		got[a] = e
	}
	if len(got) != len(addrs) {
		t.Fatalf("index holds %d addresses, want %d: %v", len(got), len(addrs), got)
	}
	for a, e := range owners {
		if x.get(a) != e || got[a] != e {
			t.Errorf("%s: owner %p (listed %p), want its own %p", a, x.get(a), got[a], e)
		}
	}
	x.delete(netip.MustParseAddr("fe80::1%eth0"))
	x.delete(netip.MustParseAddr("10.0.0.1"))
	if x.get(netip.MustParseAddr("fe80::1%eth0")) != nil || x.get(netip.MustParseAddr("10.0.0.1")) != nil {
		t.Error("deleted addresses still owned")
	}
	if x.get(netip.MustParseAddr("fe80::1")) == nil || x.get(netip.MustParseAddr("::ffff:10.0.0.1")) == nil {
		t.Error("deleting an address dropped another form of it")
	}
}
