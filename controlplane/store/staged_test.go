package store

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func fedPolicy(ns, name, selKey string) *fedmeshv1.Policy {
	return &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Namespace: ns, Name: name,
		Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{selKey: "a"}},
			PolicyTypes: []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_INGRESS}}}
}

func stageNP(p *fedmeshv1.Policy) Command {
	return Command{Type: CmdStagePolicy, Payload: &fedmeshv1.StagePolicyRequest{Policy: &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_NetworkPolicy{NetworkPolicy: p}}}}
}

func stageCNP(p *fedmeshv1.ClusterNetworkPolicy) Command {
	return Command{Type: CmdStagePolicy, Payload: &fedmeshv1.StagePolicyRequest{Policy: &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_ClusterNetworkPolicy{ClusterNetworkPolicy: p}}}}
}

func npKey(ns, name string) *fedmeshv1.StagedPolicyKey {
	return &fedmeshv1.StagedPolicyKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_NETWORK_POLICY, Namespace: ns, Name: name}
}

func cnpKey(name string) *fedmeshv1.StagedPolicyKey {
	return &fedmeshv1.StagedPolicyKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY, Name: name}
}

func promote(k *fedmeshv1.StagedPolicyKey, replace bool) Command {
	return Command{Type: CmdPromotePolicy, Payload: &fedmeshv1.PromotePolicyRequest{Key: k, Replace: replace}}
}

func deleteStaged(k *fedmeshv1.StagedPolicyKey) Command {
	return Command{Type: CmdDeleteStagedPolicy, Payload: &fedmeshv1.DeleteStagedPolicyRequest{Key: k}}
}

func applyFed(resync *fedmeshv1.ResyncMarker, ps ...*fedmeshv1.Policy) Command {
	return Command{Type: CmdApplyPolicies, Payload: &fedmeshv1.ApplyPoliciesRequest{Policies: ps, Resync: resync}}
}

// goldenStagedSteps are the golden scenario's staged policy entries (log
// format 8): stage both kinds, a promote refused by an enforced policy of
// the same key and then allowed with replace, a federated resync's ghost
// deletion that keeps the staged ones, deletes, and a policy left staged.
func goldenStagedSteps(add func(note string, cmds ...Command)) {
	np := fedPolicy("web", "lockdown", "app")
	np.Spec.Ingress = []*fedmeshv1.NetworkPolicyIngressRule{{From: []*fedmeshv1.NetworkPolicyPeer{{PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": "lb"}}}},
		Ports: []*fedmeshv1.NetworkPolicyPort{{Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 8080}}}}}
	np.ClusterSelector = &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"site": "a"}}
	cnp := &fedmeshv1.ClusterNetworkPolicy{Name: "staged-guard", SpecJson: []byte(`{"tier":"Admin","priority":5,"subject":{"namespaces":{}},` +
		`"ingress":[{"name":"no-telnet","action":"Deny","from":[{"namespaces":{}}],"protocols":[{"tcp":{"destinationPort":{"number":23}}}]}]}`)}
	add("stage federated NetworkPolicy web/lockdown: revision moves, no event", stageNP(np))
	add("stage federated ClusterNetworkPolicy staged-guard", stageCNP(cnp))
	add("enforced federated web/lockdown (an older version)", applyFed(nil, fedPolicy("web", "lockdown", "tier")))
	add("promote web/lockdown without replace: rejected, nothing moves", promote(npKey("web", "lockdown"), false))
	add("promote web/lockdown with replace: enforced replaced, staged gone", promote(npKey("web", "lockdown"), true))
	add("stage global federated deny-all", stageNP(fedPolicy("", "deny-all", "app")))
	add("final federated resync generation 4 carrying nothing: enforced ghosts deleted, staged kept",
		applyFed(&fedmeshv1.ResyncMarker{Generation: 4, Final: true}))
	add("grouped entry: promote staged-guard, promote it again (gone), delete a missing staged policy",
		promote(cnpKey("staged-guard"), false), promote(cnpKey("staged-guard"), false), deleteStaged(npKey("web", "nope")))
	add("stage web/temp, then delete it", stageNP(fedPolicy("web", "temp", "app")), deleteStaged(npKey("web", "temp")))
	add("stage web/pair-a and cnp pair-b in one command: both at one revision",
		Command{Type: CmdStagePolicy, Payload: &fedmeshv1.StagePolicyRequest{Policies: []*fedmeshv1.StagedPolicy{
			{Policy: &fedmeshv1.StagedPolicy_NetworkPolicy{NetworkPolicy: fedPolicy("web", "pair-a", "app")}},
			{Policy: &fedmeshv1.StagedPolicy_ClusterNetworkPolicy{ClusterNetworkPolicy: &fedmeshv1.ClusterNetworkPolicy{Name: "pair-b", SpecJson: []byte(`{"tier":"Baseline","subject":{"namespaces":{}}}`)}}},
		}}})
}

// Staging writes a key space of its own: it moves the revision, emits no
// event (so no agent ever sees it), and enforced policies stay as they
// were.
func TestStagedPolicyIsStoredApartAndNeverEmitted(t *testing.T) {
	s := NewState(100)
	apply(t, s, cluster("a", "10.1.0.0/16"),
		upsert("a", 0, false, ep("x", "p1", "10.1.0.1", map[string]string{"pod-template-hash": "a"}), ep("x", "p2", "10.1.0.2", map[string]string{"pod-template-hash": "b"})))
	before := s.Revision()
	same := func() bool {
		return s.Endpoint("a", "x", "p1").GetIdentity() == s.Endpoint("a", "x", "p2").GetIdentity()
	}
	if !same() {
		t.Fatal("pod-template-hash splits identities with no policy selecting it")
	}
	res := apply(t, s, stageNP(fedPolicy("x", "p", "pod-template-hash")))
	if res.Revision != before+1 {
		t.Fatalf("staging committed at %d, want %d", res.Revision, before+1)
	}
	batches, _ := s.Log().Since(before, 10)
	if len(batches) != 1 || len(batches[0].Events) != 0 {
		t.Fatalf("staging emitted %v; want one batch with no event", batches)
	}
	if len(s.Policies(fedmeshv1.PolicyKind_POLICY_KIND_UNSPECIFIED, "", "")) != 0 {
		t.Fatal("a staged policy shows among the enforced ones")
	}
	if got := s.StagedPolicy(StagedKeyFromAPI(npKey("x", "p"))); got.GetNetworkPolicy().GetMeta().GetRevision() != res.Revision {
		t.Fatalf("staged policy %v, want it stored at revision %d", got, res.Revision)
	}
	// A staged selector does not count for identity: staging changes
	// nothing agents see (the label splits the identities only once the
	// policy is enforced).
	if !same() {
		t.Fatal("staging a policy changed the endpoints' identities")
	}
	apply(t, s, promote(npKey("x", "p"), false))
	if same() {
		t.Fatal("the promoted policy's selector does not count for identity")
	}
}

// A promote moves the policy in one command: after it the policy is
// enforced (with a put event) and no longer staged; refused, nothing
// moves.
func TestPromoteMovesStagedToEnforcedAtomically(t *testing.T) {
	for _, tc := range []struct {
		name        string
		enforced    bool
		replace     bool
		wantCode    codes.Code
		wantRelaced bool
	}{
		{name: "new policy", wantCode: codes.OK},
		{name: "enforced exists, no replace: refused", enforced: true, wantCode: codes.AlreadyExists},
		{name: "enforced exists, replace", enforced: true, replace: true, wantCode: codes.OK, wantRelaced: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewState(100)
			if tc.enforced {
				apply(t, s, applyFed(nil, fedPolicy("web", "p", "old")))
			}
			apply(t, s, stageNP(fedPolicy("web", "p", "new")))
			rev := s.Revision()
			res := applyEncoded(t, s, promote(npKey("web", "p"), tc.replace))
			if status.Code(res.Err) != tc.wantCode {
				t.Fatalf("promote: %v, want %v", res.Err, tc.wantCode)
			}
			staged := s.StagedPolicy(StagedKeyFromAPI(npKey("web", "p")))
			enforced := s.Policy(&fedmeshv1.PolicyKey{Namespace: "web", Name: "p"})
			if tc.wantCode != codes.OK {
				if staged == nil || s.Revision() != rev || enforced.GetSpec().GetPodSelector().GetMatchLabels()["old"] != "a" {
					t.Fatal("a refused promote changed the state")
				}
				return
			}
			if staged != nil {
				t.Fatal("promoted policy is still staged")
			}
			if enforced.GetSpec().GetPodSelector().GetMatchLabels()["new"] != "a" || res.Replaced != tc.wantRelaced {
				t.Fatalf("enforced %v (replaced %v), want the staged version (replaced %v)", enforced, res.Replaced, tc.wantRelaced)
			}
			batches, _ := s.Log().Since(rev, 10)
			if len(batches) != 1 || len(batches[0].Events) != 1 || batches[0].Events[0].GetPolicy().GetName() != "p" {
				t.Fatalf("promote emitted %v; want one put of the enforced policy in one revision", batches)
			}
		})
	}
}

// A ClusterNetworkPolicy promotes the same way.
func TestPromoteClusterNetworkPolicy(t *testing.T) {
	s := NewState(100)
	apply(t, s, stageCNP(cnpSelecting("", "g", "app")))
	if s.ClusterPolicy("", "g") != nil {
		t.Fatal("a staged ClusterNetworkPolicy is enforced")
	}
	if res := applyEncoded(t, s, promote(npKey("", "g"), false)); status.Code(res.Err) != codes.NotFound {
		t.Fatalf("promote of the NetworkPolicy kind found %v; kinds are separate keys", res.Err)
	}
	res := apply(t, s, promote(cnpKey("g"), false))
	if s.ClusterPolicy("", "g") == nil || s.StagedPolicy(StagedKeyFromAPI(cnpKey("g"))) != nil || res.Staged.GetClusterNetworkPolicy().GetName() != "g" {
		t.Fatal("promote did not move the ClusterNetworkPolicy")
	}
	if res := applyEncoded(t, s, promote(cnpKey("g"), false)); status.Code(res.Err) != codes.NotFound {
		t.Fatalf("second promote: %v, want NotFound", res.Err)
	}
}

// A full resync deletes the owner's enforced policies it did not carry;
// staged policies are not the resync's to delete.
func TestResyncGhostDeletionNeverTouchesStagedPolicies(t *testing.T) {
	s := NewState(100)
	apply(t, s, applyFed(nil, fedPolicy("web", "enforced", "app")),
		stageNP(fedPolicy("web", "staged", "app")), stageNP(fedPolicy("web", "enforced", "app")),
		stageCNP(cnpSelecting("", "g", "app")), applyCNPs("", nil, cnpSelecting("", "live", "app")))
	res := apply(t, s, applyFed(&fedmeshv1.ResyncMarker{Generation: 7, Final: true}),
		applyCNPs("", &fedmeshv1.ResyncMarker{Generation: 7, Final: true}))
	_ = res
	if len(s.Policies(fedmeshv1.PolicyKind_POLICY_KIND_UNSPECIFIED, "", "")) != 0 || s.ClusterPolicy("", "live") != nil {
		t.Fatal("the resync left enforced ghosts")
	}
	if got := len(s.StagedPolicies(fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_UNSPECIFIED)); got != 3 {
		t.Fatalf("%d staged policies after the resync, want all 3", got)
	}
}

func TestDeleteStagedPolicy(t *testing.T) {
	s := NewState(100)
	apply(t, s, stageNP(fedPolicy("web", "p", "app")), applyFed(nil, fedPolicy("web", "p", "app")))
	apply(t, s, deleteStaged(npKey("web", "p")))
	if s.StagedPolicy(StagedKeyFromAPI(npKey("web", "p"))) != nil {
		t.Fatal("staged policy not deleted")
	}
	if s.Policy(&fedmeshv1.PolicyKey{Namespace: "web", Name: "p"}) == nil {
		t.Fatal("deleting the staged policy deleted the enforced one of the same key")
	}
	if res := applyEncoded(t, s, deleteStaged(npKey("web", "p"))); status.Code(res.Err) != codes.NotFound {
		t.Fatalf("delete of a missing staged policy: %v", res.Err)
	}
}

// A snapshot carries the staged policies (version 8, only when some are
// staged) and restores them equal.
func TestSnapshotCarriesStagedPolicies(t *testing.T) {
	s := NewState(100)
	var buf bytes.Buffer
	if _, err := s.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buf.Bytes(), []byte(`"version":8`)) {
		t.Fatal("a snapshot without staged policies is version 8; older replicas could not read it")
	}
	apply(t, s, stageNP(fedPolicy("web", "p", "app")), stageNP(fedPolicy("", "g", "app")), stageCNP(cnpSelecting("", "c", "app")))
	buf.Reset()
	if _, err := s.Freeze().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(buf.Bytes(), []byte(`"version":8`)) {
		t.Fatal("snapshot with staged policies is not version 8")
	}
	r, err := ReadSnapshot(&buf, 100)
	if err != nil {
		t.Fatal(err)
	}
	want := s.StagedPolicies(fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_UNSPECIFIED)
	got := r.StagedPolicies(fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_UNSPECIFIED)
	if len(got) != len(want) || len(want) != 3 {
		t.Fatalf("restored %d staged policies, want %d", len(got), len(want))
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Fatalf("restored %v, want %v", got[i], want[i])
		}
	}
	// The restored state promotes as the original does.
	apply(t, r, promote(npKey("web", "p"), false))
	apply(t, s, promote(npKey("web", "p"), false))
	if dump(r) != dump(s) {
		t.Fatalf("restored state evolves differently:\n%s\nwant\n%s", dump(r), dump(s))
	}
}

// One CmdStagePolicy carrying several policies stages all of them at the
// entry's one revision (fedctl policy apply --staged -f of a file of
// several is one write, never a half-applied change).
func TestStagePolicyListStagesEveryPolicyAtOneRevision(t *testing.T) {
	s := NewState(100)
	before := s.Revision()
	res := apply(t, s, Command{Type: CmdStagePolicy, Payload: &fedmeshv1.StagePolicyRequest{Policies: []*fedmeshv1.StagedPolicy{
		{Policy: &fedmeshv1.StagedPolicy_NetworkPolicy{NetworkPolicy: fedPolicy("web", "a", "app")}},
		{Policy: &fedmeshv1.StagedPolicy_NetworkPolicy{NetworkPolicy: fedPolicy("web", "b", "app")}},
	}}})
	if res.Revision != before+1 || len(res.StagedList) != 2 {
		t.Fatalf("staged at %d with %d policies in the result, want %d with 2", res.Revision, len(res.StagedList), before+1)
	}
	for _, name := range []string{"a", "b"} {
		got := s.StagedPolicy(StagedKeyFromAPI(npKey("web", name)))
		if got.GetNetworkPolicy().GetMeta().GetRevision() != res.Revision {
			t.Errorf("web/%s: %v, want staged at revision %d", name, got, res.Revision)
		}
	}
}
