package store

import (
	"cmp"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Staged policies (StagedPolicyService) are federated NetworkPolicies and
// federated ClusterNetworkPolicies kept apart from the enforced ones: a
// key space of their own (stagedState), which no resync's ghost deletion
// walks, no watch event carries (their writes move the revision with no
// event, so no agent ever sees one) and whose pod selectors do not count
// for identity (staging never changes what the agents enforce). Their
// commands arrive only in log format 8 (LogFormatStaged).
//
// CmdPromotePolicy moves one into the enforced set in one command: the
// staged entry goes and the enforced policy is stored (as
// CmdApplyPolicies or CmdApplyClusterPolicies of that one policy would
// store it) in the same apply, so no revision has both or neither.
const (
	CmdStagePolicy        CommandType = 41
	CmdDeleteStagedPolicy CommandType = 42
	CmdPromotePolicy      CommandType = 43
)

// LogFormatStaged adds the staged policy commands.
const LogFormatStaged = 8

// recStagedPolicy is a snapshot record of one staged policy (snapshot
// version 8).
const recStagedPolicy recKind = 41

// SnapshotVersionStaged is the snapshot version that adds recStagedPolicy
// records, written only when some policy is staged.
const SnapshotVersionStaged = 8

func registerStaged() {
	register(CmdStagePolicy, "StagePolicy", false, (*State).applyStagePolicy)
	register(CmdDeleteStagedPolicy, "DeleteStagedPolicy", false, (*State).applyDeleteStagedPolicy)
	register(CmdPromotePolicy, "PromotePolicy", false, (*State).applyPromotePolicy)
	describe(CmdStagePolicy, func(r *fedmeshv1.StagePolicyRequest, name func(string)) (string, int) {
		ps := StagedPoliciesOf(r)
		for _, p := range ps {
			name(StagedKeyOf(p).String())
		}
		return "", len(ps)
	})
	describe(CmdDeleteStagedPolicy, func(r *fedmeshv1.DeleteStagedPolicyRequest, name func(string)) (string, int) {
		name(StagedKeyFromAPI(r.GetKey()).String())
		return "", 1
	})
	describe(CmdPromotePolicy, func(r *fedmeshv1.PromotePolicyRequest, name func(string)) (string, int) {
		name(StagedKeyFromAPI(r.GetKey()).String())
		return "", 1
	})
}

// StagedKey names a staged policy: its kind, namespace (NetworkPolicies
// only) and name. Staged policies are federated: no cluster.
type StagedKey struct {
	Kind      fedmeshv1.StagedPolicyKind
	Namespace string
	Name      string
}

// String is how users name it: federated/[NS/]NAME for a NetworkPolicy,
// cnp/federated/NAME for a ClusterNetworkPolicy.
func (k StagedKey) String() string {
	if k.Kind == fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY {
		return "cnp/federated/" + k.Name
	}
	if k.Namespace == "" {
		return "federated/" + k.Name
	}
	return "federated/" + k.Namespace + "/" + k.Name
}

// API is the key as the API carries it.
func (k StagedKey) API() *fedmeshv1.StagedPolicyKey {
	return &fedmeshv1.StagedPolicyKey{Kind: k.Kind, Namespace: k.Namespace, Name: k.Name}
}

// StagedKeyFromAPI converts an API key.
func StagedKeyFromAPI(k *fedmeshv1.StagedPolicyKey) StagedKey {
	return StagedKey{Kind: k.GetKind(), Namespace: k.GetNamespace(), Name: k.GetName()}
}

// StagedKeyOf is the key of a staged policy.
func StagedKeyOf(p *fedmeshv1.StagedPolicy) StagedKey {
	switch x := p.GetPolicy().(type) {
	case *fedmeshv1.StagedPolicy_NetworkPolicy:
		return StagedKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_NETWORK_POLICY, Namespace: x.NetworkPolicy.GetNamespace(), Name: x.NetworkPolicy.GetName()}
	case *fedmeshv1.StagedPolicy_ClusterNetworkPolicy:
		return StagedKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY, Name: x.ClusterNetworkPolicy.GetName()}
	}
	return StagedKey{}
}

func cmpStagedKeys(a, b StagedKey) int {
	if c := cmp.Compare(a.Kind, b.Kind); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return cmp.Compare(a.Name, b.Name)
}

// AlreadyExistsError is a promote that would replace an enforced policy
// without being asked to.
type AlreadyExistsError struct {
	Kind string
	Key  string
}

func (e *AlreadyExistsError) Error() string {
	return fmt.Sprintf("an enforced %s %s exists; promote with replace (fedctl policy promote --replace) to replace it, or delete it first", e.Kind, e.Key)
}

// GRPCStatus maps the error to AlreadyExists.
func (e *AlreadyExistsError) GRPCStatus() *status.Status {
	return status.New(codes.AlreadyExists, e.Error())
}

// stagedState holds the staged policies by key. Stored objects are never
// mutated.
type stagedState map[StagedKey]*fedmeshv1.StagedPolicy

func (st stagedState) clone() stagedState {
	out := make(stagedState, len(st))
	for k, v := range st {
		out[k] = v
	}
	return out
}

func (st stagedState) empty() bool { return len(st) == 0 }

func (st stagedState) sortedKeys() []StagedKey {
	ks := make([]StagedKey, 0, len(st))
	for k := range st {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, cmpStagedKeys)
	return ks
}

// stagedMeta returns the inner object's meta.
func stagedMeta(p *fedmeshv1.StagedPolicy) *fedmeshv1.ObjectMeta {
	if np := p.GetNetworkPolicy(); np != nil {
		return np.GetMeta()
	}
	return p.GetClusterNetworkPolicy().GetMeta()
}

// StagedPoliciesOf is what a CmdStagePolicy stages: its one policy or its
// list (the edge lets a request set only one of the two).
func StagedPoliciesOf(req *fedmeshv1.StagePolicyRequest) []*fedmeshv1.StagedPolicy {
	if p := req.GetPolicy(); p != nil {
		return append([]*fedmeshv1.StagedPolicy{p}, req.GetPolicies()...)
	}
	return req.GetPolicies()
}

// applyStagePolicy stages every policy of the request at the entry's
// revision: nothing in it can fail (the edge checked them all), so a
// request is staged whole.
func (s *State) applyStagePolicy(tx *txn, req *fedmeshv1.StagePolicyRequest) (*Result, error) {
	ps := StagedPoliciesOf(req)
	for _, p := range ps {
		k := StagedKeyOf(p)
		meta := tx.meta(stagedMeta(s.staged[k]))
		switch x := p.GetPolicy().(type) {
		case *fedmeshv1.StagedPolicy_NetworkPolicy:
			x.NetworkPolicy.Meta = meta
		case *fedmeshv1.StagedPolicy_ClusterNetworkPolicy:
			x.ClusterNetworkPolicy.Meta = meta
		}
		s.staged[k] = p
	}
	res := &Result{StagedList: ps}
	if len(ps) > 0 {
		res.Staged = ps[0]
	}
	return res, nil
}

func (s *State) applyDeleteStagedPolicy(_ *txn, req *fedmeshv1.DeleteStagedPolicyRequest) (*Result, error) {
	k := StagedKeyFromAPI(req.GetKey())
	if s.staged[k] == nil {
		return nil, &NotFoundError{Kind: "staged policy", Key: k.String()}
	}
	delete(s.staged, k)
	return &Result{}, nil
}

// applyPromotePolicy checks everything before it changes anything: a
// refused promote leaves the policy staged and the enforced set as it was.
func (s *State) applyPromotePolicy(tx *txn, req *fedmeshv1.PromotePolicyRequest) (*Result, error) {
	k := StagedKeyFromAPI(req.GetKey())
	sp := s.staged[k]
	if sp == nil {
		return nil, &NotFoundError{Kind: "staged policy", Key: k.String()}
	}
	var res *Result
	var err error
	switch x := sp.GetPolicy().(type) {
	case *fedmeshv1.StagedPolicy_NetworkPolicy:
		old := s.policies[""][nsName{k.Namespace, k.Name}]
		if old != nil && !req.GetReplace() {
			return nil, &AlreadyExistsError{Kind: "federated NetworkPolicy", Key: k.String()}
		}
		p := proto.CloneOf(x.NetworkPolicy)
		if res, err = s.applyApplyPolicies(tx, &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{p}}); err != nil {
			return nil, err
		}
		res.Staged = &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_NetworkPolicy{NetworkPolicy: p}}
		res.Replaced = old != nil
	case *fedmeshv1.StagedPolicy_ClusterNetworkPolicy:
		old := s.cnp[""][k.Name]
		if old != nil && !req.GetReplace() {
			return nil, &AlreadyExistsError{Kind: "federated ClusterNetworkPolicy", Key: k.String()}
		}
		p := proto.CloneOf(x.ClusterNetworkPolicy)
		if res, err = s.applyApplyClusterPolicies(tx, &fedmeshv1.ApplyClusterPoliciesRequest{Policies: []*fedmeshv1.ClusterNetworkPolicy{p}}); err != nil {
			return nil, err
		}
		res.Staged = &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_ClusterNetworkPolicy{ClusterNetworkPolicy: p}}
		res.Replaced = old != nil
	default:
		return nil, fmt.Errorf("promote staged policy %s: it holds no policy", k)
	}
	delete(s.staged, k)
	return res, nil
}

// StagedPolicy returns one staged policy, or nil.
func (s *State) StagedPolicy(k StagedKey) *fedmeshv1.StagedPolicy { return s.staged[k] }

// StagedPolicies lists the staged policies of kind (both when
// unspecified), sorted by kind, namespace, name.
func (s *State) StagedPolicies(kind fedmeshv1.StagedPolicyKind) []*fedmeshv1.StagedPolicy {
	var out []*fedmeshv1.StagedPolicy
	for _, k := range s.staged.sortedKeys() {
		if kind == fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_UNSPECIFIED || k.Kind == kind {
			out = append(out, s.staged[k])
		}
	}
	return out
}

// write writes the staged policy records of a snapshot.
func (st stagedState) write(rw *recWriter) {
	for _, k := range st.sortedKeys() {
		rw.msg(recStagedPolicy, 0, false, st[k])
	}
}

// read restores one record of a snapshot; false for a kind it does not
// own.
func (st stagedState) read(kind recKind, data []byte) (bool, error) {
	if kind != recStagedPolicy {
		return false, nil
	}
	p := &fedmeshv1.StagedPolicy{}
	if err := proto.Unmarshal(data, p); err != nil {
		return true, fmt.Errorf("read snapshot staged policy: %w", err)
	}
	k := StagedKeyOf(p)
	if k.Kind == fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_UNSPECIFIED {
		return true, fmt.Errorf("read snapshot staged policy: it holds no policy")
	}
	st[k] = p
	return true, nil
}
