package server

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The FSM does not check syntax, so nothing may enter the log without the
// edge's check: every command type the store applies has one, and it
// refuses a bad payload and passes a good one.
func TestEveryCommandTypeIsValidatedAtTheEdge(t *testing.T) {
	pol := func(kind fedmeshv1.PolicyKind) *fedmeshv1.ApplyPoliciesRequest {
		return &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{{Kind: kind, Name: "p", Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: &fedmeshv1.LabelSelector{}}}}}
	}
	status1 := &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "n1", Status: &fedmeshv1.NodeStatus{}}
	tests := map[store.CommandType]struct{ good, bad proto.Message }{
		store.CmdRegisterCluster: {&fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}},
			&fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "Bad_Name", PodCidrs: []string{"10.1.0.0/16"}}}},
		store.CmdDeleteCluster: {&fedmeshv1.DeleteClusterRequest{Name: "a"}, &fedmeshv1.DeleteClusterRequest{Name: "A!"}},
		store.CmdRegisterNode: {&fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1"}},
			&fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: "n1", UnderlayIp: "nope"}}},
		store.CmdDeleteNode:       {&fedmeshv1.DeleteNodeRequest{Cluster: "a", Name: "n1"}, &fedmeshv1.DeleteNodeRequest{Cluster: "a"}},
		store.CmdReportNodeStatus: {status1, &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "n1"}},
		store.CmdRecordNodeStatus: {status1, &fedmeshv1.ReportNodeStatusRequest{Cluster: "a", Name: "n1"}},
		store.CmdUpsertEndpoints: {&fedmeshv1.UpsertEndpointsRequest{Cluster: "a", Endpoints: []*fedmeshv1.Endpoint{{Namespace: "x", Name: "p", Ips: []string{"10.1.0.1"}, Node: "n1"}}},
			&fedmeshv1.UpsertEndpointsRequest{Cluster: "a", Endpoints: []*fedmeshv1.Endpoint{{Namespace: "x", Name: "p", Ips: []string{"10.1.0.999"}, Node: "n1"}}}},
		store.CmdUpsertEndpointsFull: {&fedmeshv1.UpsertEndpointsRequest{Cluster: "a", Endpoints: []*fedmeshv1.Endpoint{{Namespace: "x", Name: "p", Ips: []string{"10.1.0.1"}, Node: "n1"}}},
			&fedmeshv1.UpsertEndpointsRequest{Cluster: "a", Endpoints: []*fedmeshv1.Endpoint{{Namespace: "x", Name: "p", Ips: []string{"10.1.0.999"}, Node: "n1"}}}},
		store.CmdDeleteEndpoints: {&fedmeshv1.DeleteEndpointsRequest{Cluster: "a", Keys: []*fedmeshv1.EndpointKey{{Namespace: "x", Name: "p"}}},
			&fedmeshv1.DeleteEndpointsRequest{Cluster: "a", Keys: []*fedmeshv1.EndpointKey{{Name: "p"}}}},
		store.CmdExportServices: {&fedmeshv1.ExportServicesRequest{Cluster: "a", Exports: []*fedmeshv1.ServiceExport{{Namespace: "x", Name: "s", Ports: []*fedmeshv1.ServicePort{{Port: 80}}}}},
			&fedmeshv1.ExportServicesRequest{Cluster: "a", Exports: []*fedmeshv1.ServiceExport{{Namespace: "x", Name: "s", Ports: []*fedmeshv1.ServicePort{{Port: 0}}}}}},
		store.CmdUnexportService: {&fedmeshv1.UnexportServiceRequest{Cluster: "a", Namespace: "x", Name: "s"}, &fedmeshv1.UnexportServiceRequest{Cluster: "a", Namespace: "x"}},
		store.CmdApplyPolicies:   {pol(fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED), pol(fedmeshv1.PolicyKind_POLICY_KIND_UNSPECIFIED)},
		store.CmdDeletePolicy: {&fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Name: "p"}},
			&fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Cluster: "a", Name: "p"}}},
		store.CmdSetMember:        {&fedmeshv1.Member{Id: "r1"}, &fedmeshv1.Member{}},
		store.CmdRemoveMember:     {&fedmeshv1.Member{Id: "r1"}, &fedmeshv1.Member{}},
		store.CmdConsumeJoinToken: {store.ConsumeJoinTokenPayload([16]byte{1}, 5), wrapperspb.Bytes([]byte{1, 2, 3})},
		store.CmdApplyBGPPeer: {&fedmeshv1.ApplyBGPPeerRequest{Peer: &fedmeshv1.BGPPeerConfig{Name: "tor", Address: "198.18.1.1", Asn: 65000}},
			&fedmeshv1.ApplyBGPPeerRequest{Peer: &fedmeshv1.BGPPeerConfig{Name: "tor", Address: "198.18.1.1", Asn: 23456}}},
		store.CmdDeleteBGPPeer: {&fedmeshv1.DeleteBGPPeerRequest{Name: "tor"}, &fedmeshv1.DeleteBGPPeerRequest{}},
		store.CmdSyncServiceAdvertisements: {&fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Puts: []*fedmeshv1.ServiceAdvertisement{{Namespace: "x", Name: "s", LoadBalancerIps: []string{"203.0.113.1"}}}},
			&fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Puts: []*fedmeshv1.ServiceAdvertisement{{Namespace: "x", Name: "s", LoadBalancerIps: []string{"203.0.113"}}}}},
		store.CmdApplyBGPFilter: {&fedmeshv1.ApplyBGPFilterRequest{Filter: &fedmeshv1.BGPFilter{Name: "f"}},
			&fedmeshv1.ApplyBGPFilterRequest{Filter: &fedmeshv1.BGPFilter{Name: "f", ExportV4: []*fedmeshv1.BGPFilterRule{{Cidr: "10.0.0.0/8"}}}}},
		store.CmdDeleteBGPFilter: {&fedmeshv1.DeleteBGPFilterRequest{Name: "f"}, &fedmeshv1.DeleteBGPFilterRequest{Name: "F F"}},
		store.CmdApplyClusterPolicies: {&fedmeshv1.ApplyClusterPoliciesRequest{Policies: []*fedmeshv1.ClusterNetworkPolicy{{Name: "p", SpecJson: []byte(validCNP)}}},
			&fedmeshv1.ApplyClusterPoliciesRequest{Policies: []*fedmeshv1.ClusterNetworkPolicy{{Name: "p", SpecJson: []byte(`{"tier":"Admin"}`)}}}},
		store.CmdDeleteClusterPolicy: {&fedmeshv1.DeleteClusterPolicyRequest{Key: &fedmeshv1.ClusterPolicyKey{Name: "p"}},
			&fedmeshv1.DeleteClusterPolicyRequest{Key: &fedmeshv1.ClusterPolicyKey{Cluster: "A", Name: "p"}}},
		store.CmdStagePolicy: {&fedmeshv1.StagePolicyRequest{Policy: &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_ClusterNetworkPolicy{ClusterNetworkPolicy: &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: []byte(validCNP)}}}},
			&fedmeshv1.StagePolicyRequest{Policy: &fedmeshv1.StagedPolicy{Policy: &fedmeshv1.StagedPolicy_ClusterNetworkPolicy{ClusterNetworkPolicy: &fedmeshv1.ClusterNetworkPolicy{Cluster: "a", Name: "p", SpecJson: []byte(validCNP)}}}}},
		store.CmdDeleteStagedPolicy: {&fedmeshv1.DeleteStagedPolicyRequest{Key: &fedmeshv1.StagedPolicyKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_NETWORK_POLICY, Namespace: "x", Name: "p"}},
			&fedmeshv1.DeleteStagedPolicyRequest{Key: &fedmeshv1.StagedPolicyKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY, Namespace: "x", Name: "p"}}},
		store.CmdPromotePolicy: {&fedmeshv1.PromotePolicyRequest{Key: &fedmeshv1.StagedPolicyKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY, Name: "p"}},
			&fedmeshv1.PromotePolicyRequest{Key: &fedmeshv1.StagedPolicyKey{Name: "p"}}},
		store.CmdConfigureServices: {&fedmeshv1.ConfigureServicesRequest{ClustersetCidrs: []string{"100.127.0.0/16", "fd00:fed::/108"}},
			&fedmeshv1.ConfigureServicesRequest{ClustersetCidrs: []string{"100.127.0.0/16", "100.126.0.0/16"}}},
		store.CmdSetLiveness: {&fedmeshv1.SetLivenessRequest{Clusters: []*fedmeshv1.ClusterLiveness{{Cluster: "a", Reachability: fedmeshv1.Reachability_REACHABILITY_UNREACHABLE}}},
			&fedmeshv1.SetLivenessRequest{Clusters: []*fedmeshv1.ClusterLiveness{{Cluster: "a", Reachability: 7}}}},
	}
	for _, ct := range store.CommandTypes() {
		t.Run(ct.String(), func(t *testing.T) {
			tt, ok := tests[ct]
			if !ok {
				t.Fatalf("no test case for command type %d", ct)
			}
			if err := validateCommand(ct, tt.good); err != nil {
				t.Errorf("valid payload refused: %v", err)
			}
			if err := validateCommand(ct, tt.bad); status.Code(err) != codes.InvalidArgument {
				t.Errorf("invalid payload: %v, want InvalidArgument", err)
			}
		})
	}
	if err := validateCommand(store.CommandType(250), &fedmeshv1.Member{Id: "r1"}); status.Code(err) != codes.Internal {
		t.Errorf("command type without a check: %v, want Internal", err)
	}
}

// Every write, applied or refused by the FSM, hands its predecoded payload
// to the FSM or forgets it: nothing stays registered.
func TestWritesLeaveNoPredecodedPayloadBehind(t *testing.T) {
	r, c := startSingle(t, 1000)
	ctx := ctxT(t)
	registerCluster(t, ctx, c, "east", "10.1.0.0/16")
	for i, ip := range []string{"10.1.0.1", "10.9.0.1", "10.1.0.2"} { // the second is outside the pod CIDR
		_, err := c.endpoint.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{
			{Namespace: "web", Name: fmt.Sprintf("p%d", i), Ips: []string{ip}, Node: "n1"}}})
		if (err == nil) != (i != 1) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if n := r.FSM().Predecoded().Len(); n != 0 {
		t.Fatalf("%d predecoded payloads left after the writes", n)
	}
}
