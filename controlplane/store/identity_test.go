package store

import (
	"bytes"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func applyPolicies(owner string, ps ...*fedmeshv1.Policy) Command {
	return Command{Type: CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Cluster: owner, Policies: ps}}
}

func deletePolicy(owner, ns, name string) Command {
	return Command{Type: CmdDeletePolicy, Payload: &fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Cluster: owner, Namespace: ns, Name: name}}}
}

// sts is a StatefulSet pod of app db.
func sts(name, ip string) *fedmeshv1.Endpoint {
	return ep("x", name, ip, map[string]string{"app": "db", "statefulset.kubernetes.io/pod-name": name, "controller-revision-hash": "r1"})
}

// eventIdentities returns the identity of each endpoint put in revision rev.
func eventIdentities(t *testing.T, s *State, rev uint64) map[string]uint32 {
	t.Helper()
	batches, ok := s.Log().Since(rev-1, 1)
	if !ok {
		t.Fatalf("revision %d compacted", rev)
	}
	out := map[string]uint32{}
	for _, b := range batches {
		if b.Revision != rev {
			continue
		}
		for _, e := range b.Events {
			if x := e.GetEndpoint(); x != nil && e.GetType() == fedmeshv1.EventType_EVENT_TYPE_PUT {
				out[x.GetCluster()+"/"+x.GetNamespace()+"/"+x.GetName()] = x.GetIdentity()
			}
		}
	}
	return out
}

func TestPolicyOnAFilteredKeySplitsIdentitiesInItsRevisionAndTheirMergeFollowsItsDelete(t *testing.T) {
	log := []Command{
		cluster("a", "10.1.0.0/16"),
		upsert("a", 0, false, sts("db-0", "10.1.0.1"), sts("db-1", "10.1.0.2"), sts("db-2", "10.1.0.3")),
	}
	s := NewState(100)
	apply(t, s, log...)
	shared := s.Endpoint("a", "x", "db-0").GetIdentity()
	for _, n := range []string{"db-1", "db-2"} {
		if s.Endpoint("a", "x", n).GetIdentity() != shared {
			t.Fatalf("%s has identity %d, want the StatefulSet's one identity %d while no policy selects on pod-name", n, s.Endpoint("a", "x", n).GetIdentity(), shared)
		}
	}

	// A policy isolating db-0: its identity splits off, in the policy's
	// revision, as endpoint puts after the policy's.
	isolate := policy("a", "x", "isolate-db-0")
	isolate.Spec.PodSelector = &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"statefulset.kubernetes.io/pod-name": "db-0"}}
	rev := apply(t, s, applyPolicies("a", isolate)).Revision
	ids := map[string]uint32{}
	for _, n := range []string{"db-0", "db-1", "db-2"} {
		ids[n] = s.Endpoint("a", "x", n).GetIdentity()
	}
	if ids["db-0"] == ids["db-1"] || ids["db-1"] == ids["db-2"] || ids["db-0"] == ids["db-2"] {
		t.Fatalf("identities after the policy %v: every pod-name value must have its own", ids)
	}
	// Three parts of one pod each: the tie goes to the lowest Key (db-0),
	// the others get fresh numbers in Key order.
	if ids["db-0"] != shared || ids["db-1"] != shared+1 || ids["db-2"] != shared+2 {
		t.Fatalf("identities %v, want db-0 to keep %d and db-1, db-2 to get %d, %d", ids, shared, shared+1, shared+2)
	}
	if got := eventIdentities(t, s, rev); len(got) != 2 || got["a/x/db-1"] != ids["db-1"] || got["a/x/db-2"] != ids["db-2"] {
		t.Fatalf("revision %d put endpoints %v, want db-1 and db-2 with their new identities", rev, got)
	}
	if m := s.Endpoint("a", "x", "db-1").GetMeta(); m.GetRevision() != rev || m.GetCreateRevision() != 2 {
		t.Fatalf("rekeyed endpoint meta %v: revision %d, created at 2", m, rev)
	}
	// A second policy on the same key changes nothing.
	second := policy("a", "x", "also-db-1")
	second.Spec.PodSelector = &fedmeshv1.LabelSelector{MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: "statefulset.kubernetes.io/pod-name", Operator: "In", Values: []string{"db-1"}}}}
	rev = apply(t, s, applyPolicies("a", second)).Revision
	if got := eventIdentities(t, s, rev); len(got) != 0 {
		t.Fatalf("a second policy on a counted key moved endpoints %v", got)
	}

	// Deleting one leaves the key counted; deleting the last merges back.
	rev = apply(t, s, deletePolicy("a", "x", "isolate-db-0")).Revision
	if got := eventIdentities(t, s, rev); len(got) != 0 {
		t.Fatalf("the key still counts (also-db-1), yet endpoints moved: %v", got)
	}
	rev = apply(t, s, deletePolicy("a", "x", "also-db-1")).Revision
	for _, n := range []string{"db-0", "db-1", "db-2"} {
		if got := s.Endpoint("a", "x", n).GetIdentity(); got != shared {
			t.Fatalf("%s has identity %d after the last policy on pod-name went, want the merged %d", n, got, shared)
		}
	}
	if got := eventIdentities(t, s, rev); len(got) != 2 || s.ids.Len() != 1 {
		t.Fatalf("merge revision put %v, %d identities left; want db-1 and db-2 back in one identity", got, s.ids.Len())
	}
	if err := checkInvariants(s); err != nil {
		t.Fatal(err)
	}
}

func TestRekeyIsIdenticalOnEveryReplicaAndAfterARestore(t *testing.T) {
	onHash := policy("", "", "web-h2")
	onHash.Kind = fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED
	onHash.Spec.PodSelector = &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}
	onHash.Spec.Ingress = []*fedmeshv1.NetworkPolicyIngressRule{{From: []*fedmeshv1.NetworkPolicyPeer{
		{PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"pod-template-hash": "h2"}}, ClusterSelector: &fedmeshv1.LabelSelector{}},
	}}}
	var web []*fedmeshv1.Endpoint
	for i := range 12 {
		web = append(web, ep("x", fmt.Sprint("web-", i), fmt.Sprint("10.1.1.", i+1), map[string]string{"app": "web", "pod-template-hash": fmt.Sprint("h", i%3)}))
	}
	log := []Command{
		cluster("a", "10.1.0.0/16"), cluster("b", "10.2.0.0/16"),
		upsert("a", 0, false, web...),
		upsert("b", 0, false, ep("x", "web", "10.2.0.1", map[string]string{"app": "web", "pod-template-hash": "h2"})),
		applyPolicies("", onHash),
		upsert("a", 0, false, ep("x", "late", "10.1.2.1", map[string]string{"app": "web", "pod-template-hash": "h2"})),
	}
	r1, r2 := NewState(100), NewState(100)
	apply(t, r1, log[:4]...)
	apply(t, r2, log[:4]...)
	// r3 restores a snapshot taken before the policy, then applies the rest.
	var buf bytes.Buffer
	if _, err := r1.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r3, err := ReadSnapshot(&buf, 100)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, r1, log[4:]...)
	apply(t, r2, log[4:]...)
	apply(t, r3, log[4:]...)
	if d1, d2, d3 := dump(r1), dump(r2), dump(r3); d1 != d2 || d1 != d3 {
		t.Fatalf("replicas differ:\n%s\n---\n%s\n---\n%s", d1, d2, d3)
	}
	// And a snapshot taken after the split restores the same state.
	buf.Reset()
	if _, err := r1.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r4, err := ReadSnapshot(&buf, 100)
	if err != nil {
		t.Fatal(err)
	}
	if d1, d4 := dump(r1), dump(r4); d1 != d4 {
		t.Fatalf("restored split state differs:\n%s\n---\n%s", d1, d4)
	}
	h2, h0 := r1.Endpoint("a", "x", "web-2").GetIdentity(), r1.Endpoint("a", "x", "web-0").GetIdentity()
	if h2 == h0 || r1.Endpoint("a", "x", "late").GetIdentity() != h2 || r1.Endpoint("b", "x", "web").GetIdentity() == h2 {
		t.Fatalf("h2 pods of a must share an identity of their own (late joins it), b's stays b's: web-2=%d web-0=%d late=%d b/web=%d",
			h2, h0, r1.Endpoint("a", "x", "late").GetIdentity(), r1.Endpoint("b", "x", "web").GetIdentity())
	}
}

func TestOnePolicyWriteMovingSelectionFromOneFilteredKeyToAnotherSplitsAndMergesAtOnce(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"), upsert("a", 0, false,
		ep("x", "p", "10.1.0.1", map[string]string{"app": "w", "pod-template-hash": "1", "controller-revision-hash": "1"}),
		ep("x", "q", "10.1.0.2", map[string]string{"app": "w", "pod-template-hash": "2", "controller-revision-hash": "1"}),
		ep("x", "r", "10.1.0.3", map[string]string{"app": "w", "pod-template-hash": "2", "controller-revision-hash": "2"})))
	on := func(key string) *fedmeshv1.Policy { return selecting("a", "x", "moving", key) }
	apply(t, s, applyPolicies("a", on("pod-template-hash")))
	p, q, r := s.Endpoint("a", "x", "p").GetIdentity(), s.Endpoint("a", "x", "q").GetIdentity(), s.Endpoint("a", "x", "r").GetIdentity()
	if p == q || q != r {
		t.Fatalf("on pod-template-hash: p=%d q=%d r=%d, want p apart, q and r together", p, q, r)
	}
	apply(t, s, applyPolicies("a", on("controller-revision-hash")))
	p, q, r = s.Endpoint("a", "x", "p").GetIdentity(), s.Endpoint("a", "x", "q").GetIdentity(), s.Endpoint("a", "x", "r").GetIdentity()
	if p != q || q == r {
		t.Fatalf("on controller-revision-hash: p=%d q=%d r=%d, want p and q together, r apart", p, q, r)
	}
	if s.ids.Len() != 2 {
		t.Fatalf("%d identities, want 2", s.ids.Len())
	}
	if err := checkInvariants(s); err != nil {
		t.Fatal(err)
	}
}

func TestDeletingAClusterMergesIdentitiesItsPoliciesSplit(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"), cluster("b", "10.2.0.0/16"),
		upsert("b", 0, false, sts("db-0", "10.2.0.1"), sts("db-1", "10.2.0.2")),
		applyPolicies("a", selecting("a", "x", "on-pod-name", "statefulset.kubernetes.io/pod-name")))
	if s.Endpoint("b", "x", "db-0").GetIdentity() == s.Endpoint("b", "x", "db-1").GetIdentity() {
		t.Fatal("a policy of cluster a selecting on pod-name did not split cluster b's identities (the rule is federation-wide)")
	}
	apply(t, s, Command{Type: CmdDeleteCluster, Payload: &fedmeshv1.DeleteClusterRequest{Name: "a"}})
	if s.Endpoint("b", "x", "db-0").GetIdentity() != s.Endpoint("b", "x", "db-1").GetIdentity() {
		t.Fatal("identities stayed split after the cluster owning the only policy on pod-name went")
	}
	if err := checkInvariants(s); err != nil {
		t.Fatal(err)
	}
}

func TestAFinalPolicyResyncDroppingTheLastPolicyOnAKeyMergesIdentities(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"),
		upsert("a", 0, false, sts("db-0", "10.1.0.1"), sts("db-1", "10.1.0.2")),
		Command{Type: CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Cluster: "a", Resync: &fedmeshv1.ResyncMarker{Generation: 1, Final: true},
			Policies: []*fedmeshv1.Policy{selecting("a", "x", "on-pod-name", "statefulset.kubernetes.io/pod-name")}}})
	if s.Endpoint("a", "x", "db-0").GetIdentity() == s.Endpoint("a", "x", "db-1").GetIdentity() {
		t.Fatal("no split")
	}
	apply(t, s, Command{Type: CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Cluster: "a", Resync: &fedmeshv1.ResyncMarker{Generation: 2, Final: true},
		Policies: []*fedmeshv1.Policy{policy("a", "x", "other")}}})
	if s.Endpoint("a", "x", "db-0").GetIdentity() != s.Endpoint("a", "x", "db-1").GetIdentity() {
		t.Fatal("the resync deleted the only policy on pod-name, yet identities stayed split")
	}
	if err := checkInvariants(s); err != nil {
		t.Fatal(err)
	}
}

func TestARekeyLeavesFrozenSnapshotsAndReadersObjectsUnchanged(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"), upsert("a", 0, false, sts("db-0", "10.1.0.1"), sts("db-1", "10.1.0.2")))
	held := s.Endpoint("a", "x", "db-1")
	before := proto.Clone(held)
	fr := s.Freeze()
	apply(t, s, applyPolicies("a", selecting("a", "x", "on-pod-name", "statefulset.kubernetes.io/pod-name")))
	if !proto.Equal(held, before) {
		t.Fatal("a reader's endpoint object changed under it")
	}
	if got := frozenEndpoint(fr, "a", "x", "db-1").ep; got.GetIdentity() != before.(*fedmeshv1.Endpoint).GetIdentity() {
		t.Fatalf("frozen state's endpoint identity %d, was %d", got.GetIdentity(), before.(*fedmeshv1.Endpoint).GetIdentity())
	}
}

// TestWithIdentityCopiesEveryField fills every field of an Endpoint: a
// field added to the message that withIdentity does not copy would vanish
// from endpoints a policy rekeys.
func TestWithIdentityCopiesEveryField(t *testing.T) {
	e := &fedmeshv1.Endpoint{}
	m := e.ProtoReflect()
	fs := m.Descriptor().Fields()
	for i := range fs.Len() {
		f := fs.Get(i)
		switch {
		case f.IsMap():
			mp := m.Mutable(f).Map()
			mp.Set(protoreflect.ValueOfString("k").MapKey(), protoreflect.ValueOfString("v"))
		case f.IsList():
			l := m.Mutable(f).List()
			if f.Message() != nil {
				l.Append(protoreflect.ValueOfMessage(l.NewElement().Message()))
			} else {
				l.Append(protoreflect.ValueOfString("x"))
			}
		case f.Message() != nil:
			m.Mutable(f)
		case f.Kind() == protoreflect.StringKind:
			m.Set(f, protoreflect.ValueOfString("x"))
		case f.Kind() == protoreflect.Uint32Kind:
			m.Set(f, protoreflect.ValueOfUint32(7))
		default:
			t.Fatalf("field %s of kind %v: teach this test to fill it", f.Name(), f.Kind())
		}
	}
	meta := &fedmeshv1.ObjectMeta{Revision: 9}
	got := withIdentity(e, 1234, meta)
	want := proto.Clone(e).(*fedmeshv1.Endpoint)
	want.Identity, want.Meta = 1234, meta
	if !proto.Equal(got, want) {
		t.Fatalf("withIdentity lost a field:\n got %v\nwant %v", got, want)
	}
}

// TestSnapshotWhoseNumbersDisagreeWithTheKeysIsRegrouped: no version
// writes such a snapshot (older binaries' endpoints restore as legacy ones,
// whose Keys count every label as those binaries did), but should one hold
// two identities whose endpoints have one Key, restore merges them
// deterministically, as Rekey would, instead of failing or diverging.
func TestSnapshotWhoseNumbersDisagreeWithTheKeysIsRegrouped(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"), upsert("a", 0, false,
		ep("x", "p", "10.1.0.1", map[string]string{"app": "w", "pod-template-hash": "1"}),
		ep("x", "q", "10.1.0.2", map[string]string{"app": "w", "pod-template-hash": "2"}),
		ep("x", "r", "10.1.0.3", map[string]string{"app": "w", "pod-template-hash": "2"})))
	fr := s.Freeze()
	// p apart (256), q and r together (257).
	for name, id := range map[string]uint32{"p": 256, "q": 257, "r": 257} {
		for i, old := range fr.s.frozenEps["a"] {
			if old.ep.GetName() == name {
				fr.s.frozenEps["a"][i] = &epEntry{ep: withIdentity(old.ep, id, old.ep.GetMeta()), gen: old.gen}
			}
		}
	}
	var buf bytes.Buffer
	if _, err := fr.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := ReadSnapshot(&buf, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"p", "q", "r"} {
		if got := r.Endpoint("a", "x", n).GetIdentity(); got != 257 {
			t.Fatalf("%s restored with identity %d, want 257 (the number with more endpoints)", n, got)
		}
	}
	if err := checkInvariants(r); err != nil {
		t.Fatal(err)
	}
}

// TestEntriesOfTheOlderFormatApplyAsOlderBinariesDid: an endpoint batch of
// the format before 3 (what a replica writes while some replica is older,
// and what old logs hold) stores endpoints without fedmesh.io/ labels and
// counts every other label, so both versions compute the same state; a
// later full write of the same pod makes it an ordinary endpoint.
func TestEntriesOfTheOlderFormatApplyAsOlderBinariesDid(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"), legacy(upsert("a", 0, false,
		ep("x", "p", "10.1.0.1", map[string]string{"app": "w", "pod-template-hash": "1", "fedmesh.io/role": "primary"}),
		ep("x", "q", "10.1.0.2", map[string]string{"app": "w", "pod-template-hash": "2"}))))
	p, q := s.Endpoint("a", "x", "p"), s.Endpoint("a", "x", "q")
	if _, ok := p.GetLabels()["fedmesh.io/role"]; ok || p.GetLabels()["pod-template-hash"] != "1" {
		t.Fatalf("legacy endpoint stored with labels %v: want fedmesh.io/ dropped, the rest kept", p.GetLabels())
	}
	if p.GetIdentity() == q.GetIdentity() {
		t.Fatal("legacy endpoints differing in pod-template-hash share an identity; older binaries counted every label")
	}
	// A policy on pod-template-hash does not move legacy endpoints: their
	// Keys do not depend on it.
	rev := apply(t, s, applyPolicies("a", selecting("a", "x", "on-hash", "pod-template-hash"))).Revision
	if got := eventIdentities(t, s, rev); len(got) != 0 {
		t.Fatalf("a policy moved legacy endpoints %v", got)
	}
	var buf bytes.Buffer
	if _, err := s.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(buf.Bytes(), []byte(`"version":2`)) {
		t.Fatal("a snapshot of legacy endpoints only must stay readable by older binaries (version 2)")
	}
	// The syncer writes them again, now in format 3.
	apply(t, s, deletePolicy("a", "x", "on-hash"), upsert("a", 0, false,
		ep("x", "p", "10.1.0.1", map[string]string{"app": "w", "pod-template-hash": "1", "fedmesh.io/role": "primary"}),
		ep("x", "q", "10.1.0.2", map[string]string{"app": "w", "pod-template-hash": "2"})))
	p, q = s.Endpoint("a", "x", "p"), s.Endpoint("a", "x", "q")
	if p.GetLabels()["fedmesh.io/role"] != "primary" || p.GetIdentity() != q.GetIdentity() {
		t.Fatalf("rewritten in format 3: labels %v, identities %d and %d; want every label, one identity", p.GetLabels(), p.GetIdentity(), q.GetIdentity())
	}
	if err := checkInvariants(s); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotKeepsWhichEndpointsAreLegacy(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"),
		legacy(upsert("a", 0, false, ep("x", "old-1", "10.1.0.1", map[string]string{"app": "w", "pod-template-hash": "1"}))),
		upsert("a", 0, false,
			ep("x", "new-1", "10.1.0.2", map[string]string{"app": "w", "pod-template-hash": "1"}),
			ep("x", "new-2", "10.1.0.3", map[string]string{"app": "w", "pod-template-hash": "2"})))
	var buf bytes.Buffer
	if _, err := s.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(buf.Bytes(), []byte(`"version":4`)) {
		t.Fatal("a snapshot with full endpoints must be version 4: older binaries would count their churn labels")
	}
	r, err := ReadSnapshot(&buf, 100)
	if err != nil {
		t.Fatal(err)
	}
	if d1, d2 := dump(s), dump(r); d1 != d2 {
		t.Fatalf("restored state differs:\n%s\n---\n%s", d1, d2)
	}
	for _, n := range []string{"old-1", "new-1", "new-2"} {
		if a, b := s.endpoints["a"][nsName{"x", n}].legacy, r.endpoints["a"][nsName{"x", n}].legacy; a != b {
			t.Fatalf("%s: legacy %v before the snapshot, %v after", n, a, b)
		}
	}
	// And both evolve alike: a policy on the hash splits only full ones.
	more := applyPolicies("a", selecting("a", "x", "on-hash", "pod-template-hash"))
	apply(t, s, more)
	apply(t, r, more)
	if d1, d2 := dump(s), dump(r); d1 != d2 {
		t.Fatalf("restored state evolves differently:\n%s\n---\n%s", d1, d2)
	}
	if err := checkInvariants(r); err != nil {
		t.Fatal(err)
	}
}

// frozenEndpoint is the entry a Frozen state holds for one endpoint; the
// test fails without one.
func frozenEndpoint(fr Frozen, cluster, ns, name string) *epEntry {
	for _, e := range fr.s.frozenEps[cluster] {
		if e.ep.GetNamespace() == ns && e.ep.GetName() == name {
			return e
		}
	}
	panic(fmt.Sprintf("frozen state has no endpoint %s/%s/%s", cluster, ns, name))
}
