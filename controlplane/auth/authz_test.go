package auth

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The principals of the matrix, by label. Cluster "a" is the target in
// the table; each row is also checked with the clusters swapped.
var matrixPrincipals = map[string]Principal{
	"admin":     Admin(),
	"syncer/a":  Syncer("a"),
	"syncer/b":  Syncer("b"),
	"node/a/n1": Node("a", "n1"),
	"node/a/n2": Node("a", "n2"),
	"node/b/n1": Node("b", "n1"),
	"node/b/n2": Node("b", "n2"),
	"replica":   Replica("cp1"),
	"nobody":    {},
}

var (
	onlyAdmin = []string{"admin"}
	reads     = []string{"admin", "syncer/a", "syncer/b", "node/a/n1", "node/a/n2", "node/b/n1", "node/b/n2"}
	anyone    = append(slices.Clone(reads), "replica")
	everyone  = append(slices.Clone(anyone), "nobody")
	// bgpReaders: what a node reads is narrowed by the server.
	bgpReaders = []string{"admin", "node/a/n1", "node/a/n2", "node/b/n1", "node/b/n2"}
)

// swap exchanges clusters a and b in a principal label.
func swap(label string) string {
	switch {
	case strings.Contains(label, "/a"):
		return strings.Replace(label, "/a", "/b", 1)
	case strings.Contains(label, "/b"):
		return strings.Replace(label, "/b", "/a", 1)
	}
	return label
}

type matrixRow struct {
	build   func(cluster string) any // a request targeting cluster (node n1)
	allowed []string                 // who may call with target cluster "a"
}

// matrix lists every RPC with who may call it. TestMatrixCoversEveryRPC
// keeps it in step with the protos and the table.
var matrix = map[string]matrixRow{
	fedmeshv1.ClusterService_RegisterCluster_FullMethodName: {func(c string) any {
		return &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: c}}
	}, onlyAdmin},
	fedmeshv1.ClusterService_DeleteCluster_FullMethodName: {func(c string) any { return &fedmeshv1.DeleteClusterRequest{Name: c} }, onlyAdmin},
	fedmeshv1.ClusterService_GetCluster_FullMethodName:    {func(c string) any { return &fedmeshv1.GetClusterRequest{Name: c} }, reads},
	fedmeshv1.ClusterService_ListClusters_FullMethodName:  {func(string) any { return &fedmeshv1.ListClustersRequest{} }, reads},
	fedmeshv1.ClusterService_Heartbeat_FullMethodName:     {func(c string) any { return &fedmeshv1.HeartbeatRequest{Cluster: c} }, []string{"admin", "syncer/a"}},

	fedmeshv1.NodeService_RegisterNode_FullMethodName: {func(c string) any {
		return &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: c, Name: "n1"}}
	}, []string{"admin", "node/a/n1"}},
	fedmeshv1.NodeService_ReportNodeStatus_FullMethodName: {func(c string) any {
		return &fedmeshv1.ReportNodeStatusRequest{Cluster: c, Name: "n1"}
	}, []string{"admin", "node/a/n1"}},
	fedmeshv1.NodeService_DeleteNode_FullMethodName:   {func(c string) any { return &fedmeshv1.DeleteNodeRequest{Cluster: c, Name: "n1"} }, onlyAdmin},
	fedmeshv1.NodeService_GetNode_FullMethodName:      {func(c string) any { return &fedmeshv1.GetNodeRequest{Cluster: c, Name: "n1"} }, reads},
	fedmeshv1.NodeService_ListNodes_FullMethodName:    {func(c string) any { return &fedmeshv1.ListNodesRequest{Cluster: c} }, reads},
	fedmeshv1.NodeService_WaitEnforced_FullMethodName: {func(c string) any { return &fedmeshv1.WaitEnforcedRequest{Clusters: []string{c}} }, reads},

	fedmeshv1.EndpointService_UpsertEndpoints_FullMethodName: {func(c string) any {
		return &fedmeshv1.UpsertEndpointsRequest{Cluster: c, Endpoints: []*fedmeshv1.Endpoint{{Cluster: c, Namespace: "ns", Name: "p"}}}
	}, []string{"admin", "syncer/a"}},
	fedmeshv1.EndpointService_DeleteEndpoints_FullMethodName: {func(c string) any { return &fedmeshv1.DeleteEndpointsRequest{Cluster: c} }, []string{"admin", "syncer/a"}},
	fedmeshv1.EndpointService_ListEndpoints_FullMethodName:   {func(c string) any { return &fedmeshv1.ListEndpointsRequest{Cluster: c} }, reads},

	fedmeshv1.MultiClusterService_ExportServices_FullMethodName: {func(c string) any {
		return &fedmeshv1.ExportServicesRequest{Cluster: c, Exports: []*fedmeshv1.ServiceExport{{Cluster: c, Namespace: "ns", Name: "s"}}}
	}, []string{"admin", "syncer/a"}},
	fedmeshv1.MultiClusterService_UnexportService_FullMethodName: {func(c string) any {
		return &fedmeshv1.UnexportServiceRequest{Cluster: c, Namespace: "ns", Name: "s"}
	}, []string{"admin", "syncer/a"}},
	fedmeshv1.MultiClusterService_ListServiceExports_FullMethodName: {func(c string) any { return &fedmeshv1.ListServiceExportsRequest{Cluster: c} }, reads},
	fedmeshv1.MultiClusterService_ListServiceImports_FullMethodName: {func(c string) any { return &fedmeshv1.ListServiceImportsRequest{Cluster: c} }, reads},

	fedmeshv1.PolicyService_ApplyPolicies_FullMethodName: {func(c string) any {
		return &fedmeshv1.ApplyPoliciesRequest{Cluster: c, Policies: []*fedmeshv1.Policy{{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: c, Namespace: "ns", Name: "p"}}}
	}, []string{"admin", "syncer/a"}},
	fedmeshv1.PolicyService_DeletePolicy_FullMethodName: {func(c string) any {
		return &fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Cluster: c, Namespace: "ns", Name: "p"}}
	}, []string{"admin", "syncer/a"}},
	fedmeshv1.PolicyService_GetPolicy_FullMethodName: {func(c string) any {
		return &fedmeshv1.GetPolicyRequest{Key: &fedmeshv1.PolicyKey{Cluster: c, Namespace: "ns", Name: "p"}}
	}, reads},
	fedmeshv1.PolicyService_ListPolicies_FullMethodName: {func(c string) any { return &fedmeshv1.ListPoliciesRequest{Cluster: c} }, reads},

	fedmeshv1.ClusterPolicyService_ApplyClusterPolicies_FullMethodName: {func(c string) any {
		return &fedmeshv1.ApplyClusterPoliciesRequest{Cluster: c, Policies: []*fedmeshv1.ClusterNetworkPolicy{{Cluster: c, Name: "p"}}}
	}, []string{"admin", "syncer/a"}},
	fedmeshv1.ClusterPolicyService_DeleteClusterPolicy_FullMethodName: {func(c string) any {
		return &fedmeshv1.DeleteClusterPolicyRequest{Key: &fedmeshv1.ClusterPolicyKey{Cluster: c, Name: "p"}}
	}, []string{"admin", "syncer/a"}},
	fedmeshv1.ClusterPolicyService_GetClusterPolicy_FullMethodName: {func(c string) any {
		return &fedmeshv1.GetClusterPolicyRequest{Key: &fedmeshv1.ClusterPolicyKey{Cluster: c, Name: "p"}}
	}, reads},
	fedmeshv1.ClusterPolicyService_ListClusterPolicies_FullMethodName: {func(c string) any { return &fedmeshv1.ListClusterPoliciesRequest{Cluster: c} }, reads},

	// A cluster principal that cannot apply a federated policy cannot
	// stage, promote or preview one either.
	fedmeshv1.StagedPolicyService_StagePolicy_FullMethodName: {func(string) any {
		return &fedmeshv1.StagePolicyRequest{Policy: &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_NetworkPolicy{NetworkPolicy: &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Name: "p"}}}}
	}, onlyAdmin},
	fedmeshv1.StagedPolicyService_DeleteStagedPolicy_FullMethodName:  {func(string) any { return &fedmeshv1.DeleteStagedPolicyRequest{} }, onlyAdmin},
	fedmeshv1.StagedPolicyService_PromotePolicy_FullMethodName:       {func(string) any { return &fedmeshv1.PromotePolicyRequest{} }, onlyAdmin},
	fedmeshv1.StagedPolicyService_PreviewStagedPolicy_FullMethodName: {func(string) any { return &fedmeshv1.PreviewStagedPolicyRequest{} }, onlyAdmin},
	fedmeshv1.StagedPolicyService_GetStagedPolicy_FullMethodName:     {func(string) any { return &fedmeshv1.GetStagedPolicyRequest{} }, reads},
	fedmeshv1.StagedPolicyService_ListStagedPolicies_FullMethodName:  {func(string) any { return &fedmeshv1.ListStagedPoliciesRequest{} }, reads},

	fedmeshv1.ReachService_Reach_FullMethodName:            {func(string) any { return &fedmeshv1.ReachRequest{} }, reads},
	fedmeshv1.AuditService_ListAuditRecords_FullMethodName: {func(string) any { return &fedmeshv1.ListAuditRecordsRequest{} }, onlyAdmin},

	// Reads are narrowed to the caller's cluster by the server (FlowScope).
	fedmeshv1.FlowService_GetFlows_FullMethodName:       {func(string) any { return &fedmeshv1.GetFlowsRequest{} }, reads},
	fedmeshv1.FlowService_GetFlowSummary_FullMethodName: {func(string) any { return &fedmeshv1.GetFlowSummaryRequest{} }, reads},
	fedmeshv1.FlowService_GetDNS_FullMethodName:         {func(string) any { return &fedmeshv1.GetDNSRequest{} }, reads},
	// A browser session on the page: people, not agents or replicas.
	fedmeshv1.UIService_CreateUISession_FullMethodName: {func(string) any { return &fedmeshv1.CreateUISessionRequest{} }, []string{"admin", "syncer/a", "syncer/b"}},
	// Not even an admin ships a node's flows.
	fedmeshv1.FlowService_ShipFlows_FullMethodName: {func(c string) any {
		return &fedmeshv1.ShipFlowsRequest{Cluster: c, Node: "n1"}
	}, []string{"node/a/n1"}},

	fedmeshv1.BGPService_ApplyBGPPeer_FullMethodName:    {func(string) any { return &fedmeshv1.ApplyBGPPeerRequest{} }, onlyAdmin},
	fedmeshv1.BGPService_DeleteBGPPeer_FullMethodName:   {func(string) any { return &fedmeshv1.DeleteBGPPeerRequest{} }, onlyAdmin},
	fedmeshv1.BGPService_ApplyBGPFilter_FullMethodName:  {func(string) any { return &fedmeshv1.ApplyBGPFilterRequest{} }, onlyAdmin},
	fedmeshv1.BGPService_DeleteBGPFilter_FullMethodName: {func(string) any { return &fedmeshv1.DeleteBGPFilterRequest{} }, onlyAdmin},
	fedmeshv1.BGPService_GetBGPPeer_FullMethodName:      {func(string) any { return &fedmeshv1.GetBGPPeerRequest{} }, bgpReaders},
	fedmeshv1.BGPService_ListBGPPeers_FullMethodName:    {func(string) any { return &fedmeshv1.ListBGPPeersRequest{} }, bgpReaders},
	fedmeshv1.BGPService_GetBGPFilter_FullMethodName:    {func(string) any { return &fedmeshv1.GetBGPFilterRequest{} }, bgpReaders},
	fedmeshv1.BGPService_ListBGPFilters_FullMethodName:  {func(string) any { return &fedmeshv1.ListBGPFiltersRequest{} }, bgpReaders},
	fedmeshv1.BGPService_GetBGPStatus_FullMethodName:    {func(string) any { return &fedmeshv1.GetBGPStatusRequest{} }, onlyAdmin},
	fedmeshv1.BGPService_SyncServiceAdvertisements_FullMethodName: {func(c string) any {
		return &fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: c}
	}, []string{"admin", "syncer/a"}},
	fedmeshv1.BGPService_ListServiceAdvertisements_FullMethodName: {func(c string) any {
		return &fedmeshv1.ListServiceAdvertisementsRequest{Cluster: c}
	}, []string{"admin", "syncer/a", "node/a/n1", "node/a/n2"}},
	fedmeshv1.BGPService_WatchServiceAdvertisements_FullMethodName: {func(c string) any {
		return &fedmeshv1.WatchServiceAdvertisementsRequest{Cluster: c}
	}, []string{"admin", "syncer/a", "node/a/n1", "node/a/n2"}},
	fedmeshv1.BGPService_PushBGPSecrets_FullMethodName: {func(c string) any { return &fedmeshv1.PushBGPSecretsRequest{Cluster: c} }, []string{"admin", "syncer/a"}},
	fedmeshv1.BGPService_WatchBGPPasswords_FullMethodName: {func(c string) any {
		return &fedmeshv1.WatchBGPPasswordsRequest{Cluster: c, Node: "n1"}
	}, []string{"node/a/n1"}},
	fedmeshv1.WatchService_Watch_FullMethodName: {func(c string) any {
		return &fedmeshv1.WatchRequest{Filter: &fedmeshv1.WatchFilter{Clusters: []string{c}}}
	}, reads},

	methodListMembers:      {func(string) any { return nil }, anyone},
	methodGetReplicaStatus: {func(string) any { return nil }, anyone},
	methodReadIndex:        {func(string) any { return nil }, anyone},
	methodAddMember:        {func(string) any { return nil }, onlyAdmin},
	methodRemoveMember:     {func(string) any { return nil }, onlyAdmin},
	methodPropose:          {func(string) any { return nil }, []string{"replica"}},
	methodProposeStream:    {func(string) any { return nil }, []string{"replica"}},

	fedmeshv1.AuthService_CreateJoinToken_FullMethodName: {func(c string) any {
		return &fedmeshv1.CreateJoinTokenRequest{Cluster: c}
	}, onlyAdmin},
	fedmeshv1.AuthService_Join_FullMethodName:             {func(string) any { return &fedmeshv1.JoinRequest{} }, everyone},
	fedmeshv1.AuthService_RenewCertificate_FullMethodName: {func(string) any { return &fedmeshv1.RenewCertificateRequest{} }, reads},

	healthpb.Health_Check_FullMethodName: {func(string) any { return &healthpb.HealthCheckRequest{} }, anyone},
	healthpb.Health_Watch_FullMethodName: {func(string) any { return &healthpb.HealthCheckRequest{} }, anyone},
	methodReflectionV1:                   {func(string) any { return nil }, onlyAdmin},
	methodReflectionV1Alpha:              {func(string) any { return nil }, onlyAdmin},
}

func TestAuthorizeMatrix(t *testing.T) {
	for method, row := range matrix {
		for _, target := range []string{"a", "b"} {
			for label, p := range matrixPrincipals {
				want := slices.Contains(row.allowed, label)
				if target == "b" {
					want = slices.Contains(row.allowed, swap(label))
				}
				err := Authorize(p, method, row.build(target))
				if want && err != nil {
					t.Errorf("%s on %s (target cluster %s): denied, want allowed: %v", label, method, target, err)
				}
				if !want {
					if err == nil {
						t.Errorf("%s on %s (target cluster %s): allowed, want PermissionDenied", label, method, target)
					} else if status.Code(err) != codes.PermissionDenied {
						t.Errorf("%s on %s: code %v, want PermissionDenied", label, method, status.Code(err))
					} else if msg := status.Convert(err).Message(); !strings.Contains(msg, method) || !strings.Contains(msg, p.String()) {
						t.Errorf("denial %q names neither the method nor the principal", msg)
					}
				}
			}
		}
	}
}

// TestMatrixCoversEveryRPC fails when a proto gains an RPC that neither the
// authorization table nor this test's matrix lists.
func TestMatrixCoversEveryRPC(t *testing.T) {
	var protoMethods []string
	protoregistry.GlobalFiles.RangeFilesByPackage("fedmesh.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			s := fd.Services().Get(i)
			for j := 0; j < s.Methods().Len(); j++ {
				protoMethods = append(protoMethods, "/"+string(s.FullName())+"/"+string(s.Methods().Get(j).Name()))
			}
		}
		return true
	})
	if len(protoMethods) < 20 {
		t.Fatalf("found only %d fedmesh.v1 RPCs in the registry; generated code not linked?", len(protoMethods))
	}
	table := Methods()
	for _, m := range protoMethods {
		if !slices.Contains(table, m) {
			t.Errorf("RPC %s is missing from the authorization table (it is denied to everyone)", m)
		}
	}
	for _, m := range table {
		if _, ok := matrix[m]; !ok {
			t.Errorf("RPC %s is in the table but not in the test matrix", m)
		}
	}
	for m := range matrix {
		if !slices.Contains(table, m) {
			t.Errorf("RPC %s is in the test matrix but not in the table", m)
		}
	}
}

func TestAuthorizeSpecialCases(t *testing.T) {
	kube, fed := fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED
	tests := []struct {
		name    string
		p       Principal
		method  string
		req     any
		allowed bool
	}{
		{"syncer may not write a federated policy under its own cluster", Syncer("a"), fedmeshv1.PolicyService_ApplyPolicies_FullMethodName,
			&fedmeshv1.ApplyPoliciesRequest{Cluster: "a", Policies: []*fedmeshv1.Policy{{Kind: fed, Name: "x"}}}, false},
		{"syncer may not write an unspecified-kind policy", Syncer("a"), fedmeshv1.PolicyService_ApplyPolicies_FullMethodName,
			&fedmeshv1.ApplyPoliciesRequest{Cluster: "a", Policies: []*fedmeshv1.Policy{{Name: "x"}}}, false},
		{"syncer may not write the federated policy set", Syncer("a"), fedmeshv1.PolicyService_ApplyPolicies_FullMethodName,
			&fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{{Kind: kube, Name: "x"}}}, false},
		{"admin writes federated policies", Admin(), fedmeshv1.PolicyService_ApplyPolicies_FullMethodName,
			&fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{{Kind: fed, Name: "x"}}}, true},
		{"syncer may not smuggle another cluster's policy", Syncer("a"), fedmeshv1.PolicyService_ApplyPolicies_FullMethodName,
			&fedmeshv1.ApplyPoliciesRequest{Cluster: "a", Policies: []*fedmeshv1.Policy{{Kind: kube, Cluster: "a"}, {Kind: kube, Cluster: "b"}}}, false},
		{"syncer's own policy with the cluster left for the server", Syncer("a"), fedmeshv1.PolicyService_ApplyPolicies_FullMethodName,
			&fedmeshv1.ApplyPoliciesRequest{Cluster: "a", Policies: []*fedmeshv1.Policy{{Kind: kube}}}, true},
		{"syncer may not delete a federated policy", Syncer("a"), fedmeshv1.PolicyService_DeletePolicy_FullMethodName,
			&fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Name: "x"}}, false},
		{"syncer may not smuggle another cluster's endpoint", Syncer("a"), fedmeshv1.EndpointService_UpsertEndpoints_FullMethodName,
			&fedmeshv1.UpsertEndpointsRequest{Cluster: "a", Endpoints: []*fedmeshv1.Endpoint{{Cluster: "a"}, {Cluster: "b"}}}, false},
		{"syncer's endpoints with the cluster left for the server", Syncer("a"), fedmeshv1.EndpointService_UpsertEndpoints_FullMethodName,
			&fedmeshv1.UpsertEndpointsRequest{Cluster: "a", Endpoints: []*fedmeshv1.Endpoint{{Name: "x"}}}, true},
		{"syncer may not write endpoints with no cluster", Syncer("a"), fedmeshv1.EndpointService_UpsertEndpoints_FullMethodName,
			&fedmeshv1.UpsertEndpointsRequest{}, false},
		{"syncer may not smuggle another cluster's export", Syncer("a"), fedmeshv1.MultiClusterService_ExportServices_FullMethodName,
			&fedmeshv1.ExportServicesRequest{Cluster: "a", Exports: []*fedmeshv1.ServiceExport{{Cluster: "b"}}}, false},
		{"syncer may not register its cluster's nodes", Syncer("a"), fedmeshv1.NodeService_RegisterNode_FullMethodName,
			&fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: "n1"}}, false},
		{"node agent may not write policy", Node("a", "n1"), fedmeshv1.PolicyService_ApplyPolicies_FullMethodName,
			&fedmeshv1.ApplyPoliciesRequest{Cluster: "a", Policies: []*fedmeshv1.Policy{{Kind: kube}}}, false},
		{"node agent may not report a same-named node of another cluster", Node("a", "n1"), fedmeshv1.NodeService_ReportNodeStatus_FullMethodName,
			&fedmeshv1.ReportNodeStatusRequest{Cluster: "b", Name: "n1"}, false},
		{"a request of the wrong type is denied", Syncer("a"), fedmeshv1.EndpointService_UpsertEndpoints_FullMethodName,
			&fedmeshv1.DeleteEndpointsRequest{Cluster: "a"}, false},
		{"a nil request of a scoped RPC is denied", Node("a", "n1"), fedmeshv1.NodeService_ReportNodeStatus_FullMethodName, nil, false},
		{"a node agent opens a flow stream before its first batch", Node("a", "n1"), fedmeshv1.FlowService_ShipFlows_FullMethodName, nil, true},
		{"an admin may not open a flow stream", Admin(), fedmeshv1.FlowService_ShipFlows_FullMethodName, nil, false},
		{"a syncer may not open a flow stream", Syncer("a"), fedmeshv1.FlowService_ShipFlows_FullMethodName, nil, false},
		{"unknown RPCs are denied even to admins", Admin(), "/fedmesh.v1.ClusterService/DropAll", nil, false},
		{"unknown services are denied", Admin(), "/grpc.channelz.v1.Channelz/GetTopChannels", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Authorize(tt.p, tt.method, tt.req)
			if tt.allowed != (err == nil) {
				t.Fatalf("Authorize = %v, want allowed=%v", err, tt.allowed)
			}
			if err != nil && status.Code(err) != codes.PermissionDenied {
				t.Fatalf("code %v, want PermissionDenied", status.Code(err))
			}
		})
	}
}

// A syncer never writes federated ClusterNetworkPolicies, nor slips
// another cluster's policy into its own batch.
func TestSyncerCannotWriteFederatedOrForeignClusterPolicies(t *testing.T) {
	apply := fedmeshv1.ClusterPolicyService_ApplyClusterPolicies_FullMethodName
	for name, req := range map[string]*fedmeshv1.ApplyClusterPoliciesRequest{
		"federated batch":                   {Policies: []*fedmeshv1.ClusterNetworkPolicy{{Name: "g"}}},
		"foreign policy":                    {Cluster: "a", Policies: []*fedmeshv1.ClusterNetworkPolicy{{Cluster: "b", Name: "g"}}},
		"federated policy in its own batch": {Cluster: "a", Policies: []*fedmeshv1.ClusterNetworkPolicy{{Name: "g"}}},
	} {
		if err := Authorize(Syncer("a"), apply, req); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", name, err)
		}
	}
	del := &fedmeshv1.DeleteClusterPolicyRequest{Key: &fedmeshv1.ClusterPolicyKey{Name: "g"}}
	if err := Authorize(Syncer("a"), fedmeshv1.ClusterPolicyService_DeleteClusterPolicy_FullMethodName, del); status.Code(err) != codes.PermissionDenied {
		t.Errorf("syncer deletes a federated policy: %v, want PermissionDenied", err)
	}
}
