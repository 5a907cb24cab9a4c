package server

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The ClusterNetworkPolicy commands' stateless checks: the upstream CRD's
// schema and CEL rules (model.ValidateClusterNetworkPolicy) plus the
// source fields. That a synced policy's cluster exists and that a resync
// generation does not go back depend on the state: the FSM checks those.
func init() {
	validator(store.CmdApplyClusterPolicies, model.ValidateApplyClusterPolicies)
	validator(store.CmdDeleteClusterPolicy, func(r *fedmeshv1.DeleteClusterPolicyRequest) error {
		return model.ValidateClusterPolicyKey(field.NewPath("key"), r.GetKey())
	})
}

type clusterPolicyService struct {
	fedmeshv1.UnimplementedClusterPolicyServiceServer
	c *Core
}

// clusterPolicyWritesAt refuses ClusterNetworkPolicy writes until every
// replica of the configuration applies their commands (log format 5): an
// older replica would stop at the entry. Pure, for tests.
func clusterPolicyWritesAt(format uint32) error {
	if format >= store.LogFormatClusterPolicies {
		return nil
	}
	return status.Errorf(codes.FailedPrecondition,
		"not every control-plane replica applies ClusterNetworkPolicy commands yet (log format %d, need %d): finish upgrading the replicas, then retry",
		format, store.LogFormatClusterPolicies)
}

func proposeClusterPolicy[Resp any](ctx context.Context, c *Core, t store.CommandType, req proto.Message, build func(*store.Result) Resp) (Resp, error) {
	var zero Resp
	if err := clusterPolicyWritesAt(c.appliesFormat(store.LogFormatClusterPolicies)); err != nil {
		return zero, err
	}
	return propose(ctx, c, t, req, build)
}

// ApplyClusterPolicies stores each spec in its canonical encoding, so every
// replica, watcher and diff sees one form of a policy. A spec that does not
// decode is left as it is for the validator to refuse, naming the field.
func (s *clusterPolicyService) ApplyClusterPolicies(ctx context.Context, req *fedmeshv1.ApplyClusterPoliciesRequest) (*fedmeshv1.ApplyClusterPoliciesResponse, error) {
	for _, p := range req.GetPolicies() {
		if b, err := model.CanonicalClusterPolicySpec(p.GetSpecJson()); err == nil {
			p.SpecJson = b
		}
	}
	return proposeClusterPolicy(ctx, s.c, store.CmdApplyClusterPolicies, req, func(r *store.Result) *fedmeshv1.ApplyClusterPoliciesResponse {
		return &fedmeshv1.ApplyClusterPoliciesResponse{Revision: r.Revision, Policies: r.ClusterPolicies}
	})
}

func (s *clusterPolicyService) DeleteClusterPolicy(ctx context.Context, req *fedmeshv1.DeleteClusterPolicyRequest) (*fedmeshv1.DeleteClusterPolicyResponse, error) {
	return proposeClusterPolicy(ctx, s.c, store.CmdDeleteClusterPolicy, req, func(r *store.Result) *fedmeshv1.DeleteClusterPolicyResponse {
		return &fedmeshv1.DeleteClusterPolicyResponse{Revision: r.Revision}
	})
}

func (s *clusterPolicyService) GetClusterPolicy(ctx context.Context, req *fedmeshv1.GetClusterPolicyRequest) (*fedmeshv1.GetClusterPolicyResponse, error) {
	if err := model.ValidateClusterPolicyKey(field.NewPath("key"), req.GetKey()); err != nil {
		return nil, err
	}
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	k := req.GetKey()
	resp := &fedmeshv1.GetClusterPolicyResponse{}
	s.c.view(func(st *store.State) {
		resp.Policy, resp.Revision = st.ClusterPolicy(k.GetCluster(), k.GetName()), st.Revision()
	})
	if resp.Policy == nil {
		owner := k.GetCluster()
		if owner == "" {
			owner = "federated"
		}
		return nil, notFound("ClusterNetworkPolicy", owner+"/"+k.GetName())
	}
	return resp, nil
}

func (s *clusterPolicyService) ListClusterPolicies(ctx context.Context, req *fedmeshv1.ListClusterPoliciesRequest) (*fedmeshv1.ListClusterPoliciesResponse, error) {
	if _, ok := fedmeshv1.ClusterPolicySource_name[int32(req.GetSource())]; !ok {
		return nil, model.AsError(field.ErrorList{field.NotSupported(field.NewPath("source"), req.GetSource().String(),
			[]string{"CLUSTER_POLICY_SOURCE_UNSPECIFIED", "CLUSTER_POLICY_SOURCE_SYNCED", "CLUSTER_POLICY_SOURCE_FEDERATED"})})
	}
	if c := req.GetCluster(); c != "" {
		if err := model.AsError(model.ClusterName(field.NewPath("cluster"), c)); err != nil {
			return nil, err
		}
	}
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.ListClusterPoliciesResponse{}
	s.c.view(func(st *store.State) {
		resp.Policies, resp.Revision = st.ClusterPolicies(req.GetSource(), req.GetCluster()), st.Revision()
	})
	return resp, nil
}
