package server

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Write handlers are adapters: propose runs the command's stateless check
// (validate.go) before anything is encoded; the FSM checks what depends on
// the state it applies to.

type clusterService struct {
	fedmeshv1.UnimplementedClusterServiceServer
	c *Core
}

func (s *clusterService) RegisterCluster(ctx context.Context, req *fedmeshv1.RegisterClusterRequest) (*fedmeshv1.RegisterClusterResponse, error) {
	return propose(ctx, s.c, store.CmdRegisterCluster, req,
		func(r *store.Result) *fedmeshv1.RegisterClusterResponse {
			return &fedmeshv1.RegisterClusterResponse{Cluster: r.Cluster, Revision: r.Revision}
		})
}

func (s *clusterService) DeleteCluster(ctx context.Context, req *fedmeshv1.DeleteClusterRequest) (*fedmeshv1.DeleteClusterResponse, error) {
	return propose(ctx, s.c, store.CmdDeleteCluster, req,
		func(r *store.Result) *fedmeshv1.DeleteClusterResponse {
			return &fedmeshv1.DeleteClusterResponse{Revision: r.Revision}
		})
}

func (s *clusterService) GetCluster(ctx context.Context, req *fedmeshv1.GetClusterRequest) (*fedmeshv1.GetClusterResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.GetClusterResponse{}
	s.c.view(func(st *store.State) { resp.Cluster, resp.Revision = st.Cluster(req.GetName()), st.Revision() })
	if resp.Cluster == nil {
		return nil, notFound("cluster", req.GetName())
	}
	return resp, nil
}

func (s *clusterService) ListClusters(ctx context.Context, req *fedmeshv1.ListClustersRequest) (*fedmeshv1.ListClustersResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.ListClustersResponse{}
	var err error
	s.c.view(func(st *store.State) {
		resp.Clusters, err = st.Clusters(req.GetSelector())
		resp.Revision = st.Revision()
	})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "selector: %v", err)
	}
	return resp, nil
}

type nodeService struct {
	fedmeshv1.UnimplementedNodeServiceServer
	c *Core
}

func (s *nodeService) RegisterNode(ctx context.Context, req *fedmeshv1.RegisterNodeRequest) (*fedmeshv1.RegisterNodeResponse, error) {
	return propose(ctx, s.c, store.CmdRegisterNode, req,
		func(r *store.Result) *fedmeshv1.RegisterNodeResponse {
			return &fedmeshv1.RegisterNodeResponse{Node: r.Node, Revision: r.Revision}
		})
}

func (s *nodeService) DeleteNode(ctx context.Context, req *fedmeshv1.DeleteNodeRequest) (*fedmeshv1.DeleteNodeResponse, error) {
	return propose(ctx, s.c, store.CmdDeleteNode, req,
		func(r *store.Result) *fedmeshv1.DeleteNodeResponse {
			return &fedmeshv1.DeleteNodeResponse{Revision: r.Revision}
		})
}

func (s *nodeService) ReportNodeStatus(ctx context.Context, req *fedmeshv1.ReportNodeStatusRequest) (*fedmeshv1.ReportNodeStatusResponse, error) {
	return propose(ctx, s.c, store.CmdRecordNodeStatus, req,
		func(r *store.Result) *fedmeshv1.ReportNodeStatusResponse {
			return &fedmeshv1.ReportNodeStatusResponse{Revision: r.Revision}
		})
}

func (s *nodeService) GetNode(ctx context.Context, req *fedmeshv1.GetNodeRequest) (*fedmeshv1.GetNodeResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.GetNodeResponse{}
	s.c.view(func(st *store.State) {
		resp.Node, resp.Revision = st.Node(req.GetCluster(), req.GetName()), st.Revision()
	})
	if resp.Node == nil {
		return nil, notFound("node", req.GetCluster()+"/"+req.GetName())
	}
	return resp, nil
}

func (s *nodeService) ListNodes(ctx context.Context, req *fedmeshv1.ListNodesRequest) (*fedmeshv1.ListNodesResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.ListNodesResponse{}
	s.c.view(func(st *store.State) { resp.Nodes, resp.Revision = st.Nodes(req.GetCluster()), st.Revision() })
	return resp, nil
}

const (
	defaultWaitTimeout = 30 * time.Second
	maxWaitTimeout     = 10 * time.Minute
)

// WaitEnforced is served from the local store: node reports arrive through
// the log like every other write.
func (s *nodeService) WaitEnforced(ctx context.Context, req *fedmeshv1.WaitEnforcedRequest) (*fedmeshv1.WaitEnforcedResponse, error) {
	timeout := defaultWaitTimeout
	if d := req.GetTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return nil, model.AsError(field.ErrorList{field.Invalid(field.NewPath("timeout"), d.String(), "must be a non-negative duration")})
		}
		if d.AsDuration() > 0 {
			timeout = min(d.AsDuration(), maxWaitTimeout)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	clusters := map[string]bool{}
	for _, c := range req.GetClusters() {
		clusters[c] = true
	}
	for {
		ch := s.c.fsm.Changed()
		var lagging []*fedmeshv1.NodeRevision
		s.c.view(func(st *store.State) {
			for _, n := range st.Nodes("") {
				if len(clusters) > 0 && !clusters[n.GetCluster()] {
					continue
				}
				if got := n.GetStatus().GetEnforcedRevision(); got < req.GetRevision() {
					lagging = append(lagging, &fedmeshv1.NodeRevision{Cluster: n.GetCluster(), Name: n.GetName(), EnforcedRevision: got})
				}
			}
		})
		if len(lagging) == 0 {
			return &fedmeshv1.WaitEnforcedResponse{Enforced: true}, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return &fedmeshv1.WaitEnforcedResponse{Enforced: false, Lagging: lagging}, nil
			}
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
}

type endpointService struct {
	fedmeshv1.UnimplementedEndpointServiceServer
	c *Core
}

func (s *endpointService) UpsertEndpoints(ctx context.Context, req *fedmeshv1.UpsertEndpointsRequest) (*fedmeshv1.UpsertEndpointsResponse, error) {
	return propose(ctx, s.c, store.CmdUpsertEndpoints, req,
		func(r *store.Result) *fedmeshv1.UpsertEndpointsResponse {
			return &fedmeshv1.UpsertEndpointsResponse{Revision: r.Revision, Deleted: r.Deleted}
		})
}

func (s *endpointService) DeleteEndpoints(ctx context.Context, req *fedmeshv1.DeleteEndpointsRequest) (*fedmeshv1.DeleteEndpointsResponse, error) {
	return propose(ctx, s.c, store.CmdDeleteEndpoints, req,
		func(r *store.Result) *fedmeshv1.DeleteEndpointsResponse {
			return &fedmeshv1.DeleteEndpointsResponse{Revision: r.Revision}
		})
}

func (s *endpointService) ListEndpoints(ctx context.Context, req *fedmeshv1.ListEndpointsRequest) (*fedmeshv1.ListEndpointsResponse, error) {
	if req.GetNode() != "" && req.GetCluster() == "" {
		return nil, model.AsError(field.ErrorList{field.Required(field.NewPath("cluster"), "filtering by node needs the node's cluster")})
	}
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.ListEndpointsResponse{}
	s.c.view(func(st *store.State) {
		resp.Endpoints, resp.Revision = st.Endpoints(req.GetCluster(), req.GetNamespace(), req.GetNode()), st.Revision()
	})
	return resp, nil
}

type mcsService struct {
	fedmeshv1.UnimplementedMultiClusterServiceServer
	c *Core
}

func (s *mcsService) ExportServices(ctx context.Context, req *fedmeshv1.ExportServicesRequest) (*fedmeshv1.ExportServicesResponse, error) {
	if err := s.c.checkExportsFormat(req); err != nil {
		return nil, err
	}
	req = s.c.withClusterset(req)
	return propose(ctx, s.c, store.CmdExportServices, req,
		func(r *store.Result) *fedmeshv1.ExportServicesResponse {
			return &fedmeshv1.ExportServicesResponse{Revision: r.Revision}
		})
}

func (s *mcsService) UnexportService(ctx context.Context, req *fedmeshv1.UnexportServiceRequest) (*fedmeshv1.UnexportServiceResponse, error) {
	return propose(ctx, s.c, store.CmdUnexportService, req,
		func(r *store.Result) *fedmeshv1.UnexportServiceResponse {
			return &fedmeshv1.UnexportServiceResponse{Revision: r.Revision}
		})
}

func (s *mcsService) ListServiceExports(ctx context.Context, req *fedmeshv1.ListServiceExportsRequest) (*fedmeshv1.ListServiceExportsResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.ListServiceExportsResponse{}
	s.c.view(func(st *store.State) { resp.Exports, resp.Revision = st.Exports(req.GetCluster()), st.Revision() })
	return resp, nil
}

func (s *mcsService) ListServiceImports(ctx context.Context, req *fedmeshv1.ListServiceImportsRequest) (*fedmeshv1.ListServiceImportsResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.ListServiceImportsResponse{}
	var missing bool
	s.c.view(func(st *store.State) {
		missing = req.GetCluster() != "" && st.ClusterSpec(req.GetCluster()) == nil
		resp.Imports, resp.Revision = st.Imports(req.GetCluster()), st.Revision()
	})
	if missing {
		return nil, notFound("cluster", req.GetCluster())
	}
	return resp, nil
}

type policyService struct {
	fedmeshv1.UnimplementedPolicyServiceServer
	c *Core
}

func (s *policyService) ApplyPolicies(ctx context.Context, req *fedmeshv1.ApplyPoliciesRequest) (*fedmeshv1.ApplyPoliciesResponse, error) {
	return propose(ctx, s.c, store.CmdApplyPolicies, req,
		func(r *store.Result) *fedmeshv1.ApplyPoliciesResponse {
			return &fedmeshv1.ApplyPoliciesResponse{Revision: r.Revision, Policies: r.Policies}
		})
}

func (s *policyService) DeletePolicy(ctx context.Context, req *fedmeshv1.DeletePolicyRequest) (*fedmeshv1.DeletePolicyResponse, error) {
	return propose(ctx, s.c, store.CmdDeletePolicy, req,
		func(r *store.Result) *fedmeshv1.DeletePolicyResponse {
			return &fedmeshv1.DeletePolicyResponse{Revision: r.Revision}
		})
}

func (s *policyService) GetPolicy(ctx context.Context, req *fedmeshv1.GetPolicyRequest) (*fedmeshv1.GetPolicyResponse, error) {
	if err := model.ValidatePolicyKey(field.NewPath("key"), req.GetKey()); err != nil {
		return nil, err
	}
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.GetPolicyResponse{}
	s.c.view(func(st *store.State) { resp.Policy, resp.Revision = st.Policy(req.GetKey()), st.Revision() })
	if resp.Policy == nil {
		k := req.GetKey()
		return nil, notFound("policy", k.GetCluster()+"/"+k.GetNamespace()+"/"+k.GetName())
	}
	return resp, nil
}

func (s *policyService) ListPolicies(ctx context.Context, req *fedmeshv1.ListPoliciesRequest) (*fedmeshv1.ListPoliciesResponse, error) {
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.ListPoliciesResponse{}
	s.c.view(func(st *store.State) {
		resp.Policies, resp.Revision = st.Policies(req.GetKind(), req.GetCluster(), req.GetNamespace()), st.Revision()
	})
	return resp, nil
}
