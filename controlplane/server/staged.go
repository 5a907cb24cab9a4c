package server

import (
	"cmp"
	"context"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/controlplane/flowstore"
	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The staged policy commands' stateless checks: the staged policy exactly
// as the enforced one of its kind is checked, plus that it is federated.
func init() {
	validator(store.CmdStagePolicy, model.ValidateStagePolicy)
	validator(store.CmdDeleteStagedPolicy, func(r *fedmeshv1.DeleteStagedPolicyRequest) error {
		return model.ValidateStagedPolicyKey(field.NewPath("key"), r.GetKey())
	})
	validator(store.CmdPromotePolicy, func(r *fedmeshv1.PromotePolicyRequest) error {
		return model.ValidateStagedPolicyKey(field.NewPath("key"), r.GetKey())
	})
}

type stagedPolicyService struct {
	fedmeshv1.UnimplementedStagedPolicyServiceServer
	c *Core
}

// stagedWritesAt refuses staged policy writes until every replica of the
// configuration applies their commands (log format 8): an older replica
// would stop at the entry. Pure, for tests.
func stagedWritesAt(format uint32) error {
	if format >= store.LogFormatStaged {
		return nil
	}
	return status.Errorf(codes.FailedPrecondition,
		"not every control-plane replica applies staged policy commands yet (log format %d, need %d): finish upgrading the replicas, then retry",
		format, store.LogFormatStaged)
}

func proposeStaged[Resp any](ctx context.Context, c *Core, t store.CommandType, req proto.Message, build func(*store.Result) Resp) (Resp, error) {
	var zero Resp
	if err := stagedWritesAt(c.appliesFormat(store.LogFormatStaged)); err != nil {
		return zero, err
	}
	return propose(ctx, c, t, req, build)
}

// StagePolicy stages the request's policies in one command (every one was
// checked first, so a bad one stages nothing). It stores a
// ClusterNetworkPolicy's spec in its canonical encoding, as
// ApplyClusterPolicies does, so a promote stores what an apply would.
func (s *stagedPolicyService) StagePolicy(ctx context.Context, req *fedmeshv1.StagePolicyRequest) (*fedmeshv1.StagePolicyResponse, error) {
	for _, sp := range store.StagedPoliciesOf(req) {
		if p := sp.GetClusterNetworkPolicy(); p != nil {
			if b, err := model.CanonicalClusterPolicySpec(p.GetSpecJson()); err == nil {
				p.SpecJson = b
			}
		}
	}
	single := req.GetPolicy() != nil
	return proposeStaged(ctx, s.c, store.CmdStagePolicy, req, func(r *store.Result) *fedmeshv1.StagePolicyResponse {
		if single {
			return &fedmeshv1.StagePolicyResponse{Revision: r.Revision, Policy: r.Staged}
		}
		return &fedmeshv1.StagePolicyResponse{Revision: r.Revision, Policies: r.StagedList}
	})
}

func (s *stagedPolicyService) DeleteStagedPolicy(ctx context.Context, req *fedmeshv1.DeleteStagedPolicyRequest) (*fedmeshv1.DeleteStagedPolicyResponse, error) {
	return proposeStaged(ctx, s.c, store.CmdDeleteStagedPolicy, req, func(r *store.Result) *fedmeshv1.DeleteStagedPolicyResponse {
		return &fedmeshv1.DeleteStagedPolicyResponse{Revision: r.Revision}
	})
}

func (s *stagedPolicyService) PromotePolicy(ctx context.Context, req *fedmeshv1.PromotePolicyRequest) (*fedmeshv1.PromotePolicyResponse, error) {
	return proposeStaged(ctx, s.c, store.CmdPromotePolicy, req, func(r *store.Result) *fedmeshv1.PromotePolicyResponse {
		return &fedmeshv1.PromotePolicyResponse{Revision: r.Revision, Policy: r.Staged, Replaced: r.Replaced}
	})
}

func (s *stagedPolicyService) GetStagedPolicy(ctx context.Context, req *fedmeshv1.GetStagedPolicyRequest) (*fedmeshv1.GetStagedPolicyResponse, error) {
	if err := model.ValidateStagedPolicyKey(field.NewPath("key"), req.GetKey()); err != nil {
		return nil, err
	}
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	k := store.StagedKeyFromAPI(req.GetKey())
	resp := &fedmeshv1.GetStagedPolicyResponse{}
	s.c.view(func(st *store.State) { resp.Policy, resp.Revision = st.StagedPolicy(k), st.Revision() })
	if resp.Policy == nil {
		return nil, notFound("staged policy", k.String())
	}
	return resp, nil
}

func (s *stagedPolicyService) ListStagedPolicies(ctx context.Context, req *fedmeshv1.ListStagedPoliciesRequest) (*fedmeshv1.ListStagedPoliciesResponse, error) {
	if _, ok := fedmeshv1.StagedPolicyKind_name[int32(req.GetKind())]; !ok {
		return nil, model.AsError(field.ErrorList{field.NotSupported(field.NewPath("kind"), req.GetKind().String(),
			[]string{"STAGED_POLICY_KIND_UNSPECIFIED", "STAGED_POLICY_KIND_NETWORK_POLICY", "STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY"})})
	}
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.ListStagedPoliciesResponse{}
	s.c.view(func(st *store.State) { resp.Policies, resp.Revision = st.StagedPolicies(req.GetKind()), st.Revision() })
	return resp, nil
}

// PreviewStagedPolicy evaluates the replica's stored flows of the range
// (newest first, at most flowstore.MaxLimit) with the one staged policy in
// force, against the enforced policies as they are now.
func (s *stagedPolicyService) PreviewStagedPolicy(ctx context.Context, req *fedmeshv1.PreviewStagedPolicyRequest) (*fedmeshv1.PreviewStagedPolicyResponse, error) {
	if err := model.ValidateStagedPolicyKey(field.NewPath("key"), req.GetKey()); err != nil {
		return nil, err
	}
	if req.GetSince() == nil {
		return nil, model.AsError(field.ErrorList{field.Required(field.NewPath("since"), "the oldest flow to evaluate (fedctl: --since 1h)")})
	}
	q, err := flowstore.ParseQuery(&fedmeshv1.GetFlowsRequest{Filter: req.GetFilter(), Since: req.GetSince(), Until: req.GetUntil(), Limit: flowstore.MaxLimit})
	if err != nil {
		return nil, err
	}
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	k := store.StagedKeyFromAPI(req.GetKey())
	var sp *fedmeshv1.StagedPolicy
	var rev uint64
	s.c.view(func(st *store.State) { sp, rev = st.StagedPolicy(k), st.Revision() })
	if sp == nil {
		return nil, notFound("staged policy", k.String())
	}
	flows := s.c.r.flows.Query(q, flowScope(ctx))
	res, rev, err := s.c.previewStaged(ctx, sp, flows, rev)
	if err != nil {
		return nil, err
	}
	return previewResponse(k, flows, res, rev), nil
}

// previewKey groups flows into rows.
type previewKey struct {
	srcCluster, srcNamespace, srcPod, srcIP string
	dstCluster, dstNamespace, dstPod, dstIP string
	proto, port                             uint32
	deny                                    bool
}

// previewResponse aggregates what the staged policy k changes: flows the
// enforced policies allow that it would deny (it among the deciders), and
// flows they deny that would pass with it. Pure, for tests.
func previewResponse(k store.StagedKey, flows []*fedmeshv1.Flow, res *stagedResult, rev uint64) *fedmeshv1.PreviewStagedPolicyResponse {
	out := &fedmeshv1.PreviewStagedPolicyResponse{Revision: rev, Truncated: len(flows) >= flowstore.MaxLimit}
	rows := map[previewKey]*fedmeshv1.PreviewRow{}
	var order []previewKey
	only := map[store.StagedKey]bool{k: true}
	for i, f := range flows {
		if res.errs[i] != nil {
			out.Unresolved++
			continue
		}
		out.Evaluated++
		base, staged := res.base[i], res.staged[i]
		var deny bool
		switch {
		case base.Allowed && !staged.Allowed && len(stagedDeniers(staged, only)) > 0:
			deny = true
		case !base.Allowed && staged.Allowed:
		default:
			continue
		}
		src, dst := f.GetSource(), f.GetDestination()
		pk := previewKey{src.GetCluster(), src.GetNamespace(), src.GetPod(), "", dst.GetCluster(), dst.GetNamespace(), dst.GetPod(), "", f.GetProtocol(), dst.GetPort(), deny}
		if src.GetPod() == "" {
			pk.srcIP = src.GetIp()
		}
		if dst.GetPod() == "" {
			pk.dstIP = dst.GetIp()
		}
		row := rows[pk]
		if row == nil {
			row = &fedmeshv1.PreviewRow{Source: workloadOf(src), Destination: workloadOf(dst), Protocol: f.GetProtocol(),
				Recorded: f.GetVerdict(), Staged: verdict(staged.Allowed), Explanation: explanationString(staged)}
			rows[pk] = row
			order = append(order, pk)
		}
		row.Flows++
		if t := f.GetTime(); row.Last == nil || t.AsTime().After(row.Last.AsTime()) {
			row.Last = timestamppb.New(t.AsTime())
		}
	}
	for _, pk := range order {
		if pk.deny {
			out.WouldDeny = append(out.WouldDeny, rows[pk])
		} else {
			out.WouldAllow = append(out.WouldAllow, rows[pk])
		}
	}
	byCount := func(a, b *fedmeshv1.PreviewRow) int {
		if c := cmp.Compare(b.GetFlows(), a.GetFlows()); c != 0 {
			return c
		}
		return b.GetLast().AsTime().Compare(a.GetLast().AsTime())
	}
	slices.SortStableFunc(out.WouldDeny, byCount)
	slices.SortStableFunc(out.WouldAllow, byCount)
	return out
}

// workloadOf is a recorded workload for a preview row: who and which
// port, without the flow-specific source port.
func workloadOf(w *fedmeshv1.Workload) *fedmeshv1.Workload {
	return &fedmeshv1.Workload{Cluster: w.GetCluster(), Namespace: w.GetNamespace(), Pod: w.GetPod(), Labels: w.GetLabels(), Identity: w.GetIdentity(), Ip: w.GetIp(), Port: w.GetPort()}
}
