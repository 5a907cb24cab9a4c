package auth

import (
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Authorize decides whether principal p may call fullMethod with req. It is
// a pure function of its arguments. It returns nil or a
// codes.PermissionDenied status saying who was refused what and why.
// For a streaming RPC req is each message the client sends (nil before the
// first); every streaming rule decides without it.
//
// The rules:
//   - admin may call every RPC in the table;
//   - every principal may read (get, list, watch, reach, members, health);
//     node agents need the whole federation's view (identities of all
//     clusters, WireGuard peers of other sites), so reads are not scoped;
//   - a syncer writes only its own cluster's endpoints, service exports and
//     KUBERNETES policies: never federated policies, clusters or nodes;
//     an admin may call the same RPCs, but a cluster's KUBERNETES policies
//     have one writer, its syncer: CheckOwner, which the Guard runs after
//     Authorize, refuses the admin's write with FailedPrecondition naming
//     the owner (a refusal of where, not of who);
//   - a node agent registers and reports only its own node;
//   - BGP peers and filters are written by admins and read by admins and
//     node agents only (the server shows a node the peers that select it);
//   - a replica (a fellow control-plane replica) may call the replica RPCs,
//     Propose (a forwarded, already authorized write) only by replicas;
//     other calls it forwards are authorized as the original caller (see
//     OnBehalfOfKey), never as the replica;
//   - flows (and the DNS query records shipped with them) are read by
//     admins (all of them) and by a cluster's syncer and node agents
//     (flows touching their cluster: FlowScope); only a node agent ships
//     flows, and only its own node's;
//   - an RPC missing from the table is denied to everyone.
func Authorize(p Principal, fullMethod string, req any) error {
	r, ok := rules[fullMethod]
	if !ok {
		return deny(p, fullMethod, "the RPC is not in the authorization table (unknown RPCs are denied)")
	}
	return r(p, fullMethod, req)
}

// Methods lists every RPC the table knows, for completeness tests.
func Methods() []string {
	out := make([]string, 0, len(rules))
	for m := range rules {
		out = append(out, m)
	}
	return out
}

type rule func(p Principal, method string, req any) error

func deny(p Principal, method, why string) error {
	return status.Errorf(codes.PermissionDenied, "%s %s may not call %s: %s", p.Kind, p, method, why)
}

// Method names of the replica service; spelled out so the table does not
// depend on when that service's generated code lands.
const (
	methodListMembers      = "/fedmesh.v1.ControlPlaneService/ListMembers"
	methodAddMember        = "/fedmesh.v1.ControlPlaneService/AddMember"
	methodRemoveMember     = "/fedmesh.v1.ControlPlaneService/RemoveMember"
	methodGetReplicaStatus = "/fedmesh.v1.ControlPlaneService/GetReplicaStatus"
	methodReadIndex        = "/fedmesh.v1.ControlPlaneService/ReadIndex"
	methodPropose          = "/fedmesh.v1.ControlPlaneService/Propose"
	methodProposeStream    = "/fedmesh.v1.ControlPlaneService/ProposeStream"

	methodReflectionV1      = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	methodReflectionV1Alpha = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
)

var rules = map[string]rule{
	// Clusters are the federation's membership: admin only.
	fedmeshv1.ClusterService_RegisterCluster_FullMethodName: adminOnly,
	fedmeshv1.ClusterService_DeleteCluster_FullMethodName:   adminOnly,
	fedmeshv1.ClusterService_GetCluster_FullMethodName:      federationRead,
	fedmeshv1.ClusterService_ListClusters_FullMethodName:    federationRead,
	// A syncer reports its own cluster alive.
	fedmeshv1.ClusterService_Heartbeat_FullMethodName: ownCluster(func(req any) ([]string, bool) {
		r, ok := req.(*fedmeshv1.HeartbeatRequest)
		return []string{r.GetCluster()}, ok
	}),

	fedmeshv1.NodeService_RegisterNode_FullMethodName: ownNode(func(req any) (string, string, bool) {
		r, ok := req.(*fedmeshv1.RegisterNodeRequest)
		return r.GetNode().GetCluster(), r.GetNode().GetName(), ok
	}),
	fedmeshv1.NodeService_ReportNodeStatus_FullMethodName: ownNode(func(req any) (string, string, bool) {
		r, ok := req.(*fedmeshv1.ReportNodeStatusRequest)
		return r.GetCluster(), r.GetName(), ok
	}),
	fedmeshv1.NodeService_DeleteNode_FullMethodName:   adminOnly,
	fedmeshv1.NodeService_GetNode_FullMethodName:      federationRead,
	fedmeshv1.NodeService_ListNodes_FullMethodName:    federationRead,
	fedmeshv1.NodeService_WaitEnforced_FullMethodName: federationRead,

	fedmeshv1.EndpointService_UpsertEndpoints_FullMethodName: ownCluster(func(req any) ([]string, bool) {
		r, ok := req.(*fedmeshv1.UpsertEndpointsRequest)
		out := []string{r.GetCluster()}
		for _, e := range r.GetEndpoints() {
			if e.GetCluster() != "" { // the server fills it from the request
				out = append(out, e.GetCluster())
			}
		}
		return out, ok
	}),
	fedmeshv1.EndpointService_DeleteEndpoints_FullMethodName: ownCluster(func(req any) ([]string, bool) {
		r, ok := req.(*fedmeshv1.DeleteEndpointsRequest)
		return []string{r.GetCluster()}, ok
	}),
	fedmeshv1.EndpointService_ListEndpoints_FullMethodName: federationRead,

	fedmeshv1.MultiClusterService_ExportServices_FullMethodName: ownCluster(func(req any) ([]string, bool) {
		r, ok := req.(*fedmeshv1.ExportServicesRequest)
		out := []string{r.GetCluster()}
		for _, e := range r.GetExports() {
			if e.GetCluster() != "" {
				out = append(out, e.GetCluster())
			}
		}
		return out, ok
	}),
	fedmeshv1.MultiClusterService_UnexportService_FullMethodName: ownCluster(func(req any) ([]string, bool) {
		r, ok := req.(*fedmeshv1.UnexportServiceRequest)
		return []string{r.GetCluster()}, ok
	}),
	fedmeshv1.MultiClusterService_ListServiceExports_FullMethodName: federationRead,
	fedmeshv1.MultiClusterService_ListServiceImports_FullMethodName: federationRead,

	fedmeshv1.PolicyService_ApplyPolicies_FullMethodName: applyPolicies,
	// Federated policies are stored under the empty cluster, so requiring
	// the syncer's own (non-empty) cluster in the key keeps it off them.
	fedmeshv1.PolicyService_DeletePolicy_FullMethodName: ownCluster(func(req any) ([]string, bool) {
		r, ok := req.(*fedmeshv1.DeletePolicyRequest)
		return []string{r.GetKey().GetCluster()}, ok
	}),
	fedmeshv1.PolicyService_GetPolicy_FullMethodName:    federationRead,
	fedmeshv1.PolicyService_ListPolicies_FullMethodName: federationRead,

	// ClusterNetworkPolicies as NetworkPolicies: a syncer writes its own
	// cluster's synced ones (CheckOwner keeps the admin off them), the
	// admin the federated ones (stored under the empty cluster, which no
	// syncer owns).
	fedmeshv1.ClusterPolicyService_ApplyClusterPolicies_FullMethodName: applyClusterPolicies,
	fedmeshv1.ClusterPolicyService_DeleteClusterPolicy_FullMethodName: ownCluster(func(req any) ([]string, bool) {
		r, ok := req.(*fedmeshv1.DeleteClusterPolicyRequest)
		return []string{r.GetKey().GetCluster()}, ok
	}),
	fedmeshv1.ClusterPolicyService_GetClusterPolicy_FullMethodName:    federationRead,
	fedmeshv1.ClusterPolicyService_ListClusterPolicies_FullMethodName: federationRead,

	// Staged policies are federated policies (never a cluster's, which
	// its syncer copies from its API): written, promoted and previewed
	// (an evaluation over every cluster's flows) by admins only, as the
	// federated policies they become; read by everyone, as those are.
	fedmeshv1.StagedPolicyService_StagePolicy_FullMethodName:         adminOnly,
	fedmeshv1.StagedPolicyService_DeleteStagedPolicy_FullMethodName:  adminOnly,
	fedmeshv1.StagedPolicyService_PromotePolicy_FullMethodName:       adminOnly,
	fedmeshv1.StagedPolicyService_PreviewStagedPolicy_FullMethodName: adminOnly,
	fedmeshv1.StagedPolicyService_GetStagedPolicy_FullMethodName:     federationRead,
	fedmeshv1.StagedPolicyService_ListStagedPolicies_FullMethodName:  federationRead,

	fedmeshv1.ReachService_Reach_FullMethodName: federationRead,
	fedmeshv1.WatchService_Watch_FullMethodName: federationRead,

	// Flows: every federation principal reads, narrowed to its cluster
	// (FlowScope); a node agent ships only its own node's flows.
	fedmeshv1.FlowService_GetFlows_FullMethodName:       flowRead,
	fedmeshv1.FlowService_GetFlowSummary_FullMethodName: flowRead,
	fedmeshv1.UIService_CreateUISession_FullMethodName:  uiSession,
	fedmeshv1.FlowService_ShipFlows_FullMethodName:      shipFlows,
	// DNS query records are read like flows: a cluster's principals see
	// the queries of their cluster's pods.
	fedmeshv1.FlowService_GetDNS_FullMethodName: flowRead,

	// Who changed what is for operators.
	fedmeshv1.AuditService_ListAuditRecords_FullMethodName: adminOnly,

	// BGP: admins write; node agents read, the server narrowing what a
	// node sees to the peers that select it (controlplane/server/bgp.go).
	fedmeshv1.BGPService_ApplyBGPPeer_FullMethodName:    adminOnly,
	fedmeshv1.BGPService_DeleteBGPPeer_FullMethodName:   adminOnly,
	fedmeshv1.BGPService_ApplyBGPFilter_FullMethodName:  adminOnly,
	fedmeshv1.BGPService_DeleteBGPFilter_FullMethodName: adminOnly,
	fedmeshv1.BGPService_GetBGPPeer_FullMethodName:      bgpRead,
	fedmeshv1.BGPService_ListBGPPeers_FullMethodName:    bgpRead,
	fedmeshv1.BGPService_GetBGPFilter_FullMethodName:    bgpRead,
	fedmeshv1.BGPService_ListBGPFilters_FullMethodName:  bgpRead,
	fedmeshv1.BGPService_GetBGPStatus_FullMethodName:    adminOnly,
	fedmeshv1.BGPService_SyncServiceAdvertisements_FullMethodName: ownCluster(func(req any) ([]string, bool) {
		r, ok := req.(*fedmeshv1.SyncServiceAdvertisementsRequest)
		out := []string{r.GetCluster()}
		for _, a := range r.GetPuts() {
			if a.GetCluster() != "" {
				out = append(out, a.GetCluster())
			}
		}
		return out, ok
	}),
	// A cluster's syncer pushes the Secret values its cluster's peers
	// reference; only a node's own agent receives its passwords (not even
	// an admin: Get, List and Watch show admins the reference only).
	fedmeshv1.BGPService_PushBGPSecrets_FullMethodName: ownCluster(func(req any) ([]string, bool) {
		r, ok := req.(*fedmeshv1.PushBGPSecretsRequest)
		return []string{r.GetCluster()}, ok
	}),
	fedmeshv1.BGPService_WatchBGPPasswords_FullMethodName: func(p Principal, m string, req any) error {
		r, ok := req.(*fedmeshv1.WatchBGPPasswordsRequest)
		if p.Kind == KindNode && (req == nil || ok && p.Cluster == r.GetCluster() && p.Node == r.GetNode()) {
			return nil // a stream's handler narrows to the node's own (req unknown here)
		}
		return deny(p, m, "only the node's own agent receives its BGP passwords")
	},
	fedmeshv1.BGPService_ListServiceAdvertisements_FullMethodName: clusterMember(func(req any) (string, bool) {
		r, ok := req.(*fedmeshv1.ListServiceAdvertisementsRequest)
		return r.GetCluster(), ok
	}),
	fedmeshv1.BGPService_WatchServiceAdvertisements_FullMethodName: clusterMember(func(req any) (string, bool) {
		r, ok := req.(*fedmeshv1.WatchServiceAdvertisementsRequest)
		return r.GetCluster(), ok
	}),

	methodListMembers:      anyRead,
	methodGetReplicaStatus: anyRead,
	methodReadIndex:        anyRead,
	methodAddMember:        adminOnly,
	methodRemoveMember:     adminOnly,
	// Propose carries an encoded store command a follower forwards to the
	// leader after it authorized the original call; only replicas send it,
	// and it is decided on the replica's own identity (peerMethods).
	// Admins too are refused: a raw command skips the edge validation.
	methodPropose:       replicaOnly,
	methodProposeStream: replicaOnly,

	fedmeshv1.AuthService_CreateJoinToken_FullMethodName: adminOnly,
	// Join is authenticated by its token, not by a certificate; the
	// interceptor lets it through without a principal and the handler
	// checks the token.
	fedmeshv1.AuthService_Join_FullMethodName:             tokenAuthenticated,
	fedmeshv1.AuthService_RenewCertificate_FullMethodName: renew,

	healthpb.Health_Check_FullMethodName: anyRead,
	healthpb.Health_Watch_FullMethodName: anyRead,
	// Reflection shows the whole API surface; operators only.
	methodReflectionV1:      adminOnly,
	methodReflectionV1Alpha: adminOnly,
}

// publicMethods may be called without a client certificate; their
// handler authenticates the caller by other means.
var publicMethods = map[string]bool{fedmeshv1.AuthService_Join_FullMethodName: true}

// peerMethods are authorized as the connected peer even when it forwards
// on someone's behalf: the caller was authorized by the forwarding replica.
var peerMethods = map[string]bool{methodPropose: true, methodProposeStream: true}

func replicaOnly(p Principal, m string, _ any) error {
	if p.Kind == KindReplica {
		return nil
	}
	return deny(p, m, "only control-plane replicas may")
}

// tokenAuthenticated admits anyone: the handler checks the join token.
func tokenAuthenticated(Principal, string, any) error { return nil }

func adminOnly(p Principal, m string, _ any) error {
	if p.Kind == KindAdmin {
		return nil
	}
	return deny(p, m, "only an admin may")
}

// federationRead admits every federation principal (not replicas: what a
// replica reads on a caller's behalf is authorized as that caller).
func federationRead(p Principal, m string, _ any) error {
	switch p.Kind {
	case KindAdmin, KindSyncer, KindNode:
		return nil
	}
	return deny(p, m, "replicas read federation objects only on a caller's behalf")
}

// bgpRead admits admins and node agents (which see only the peers that
// select their node); syncers have no use for BGP peers.
func bgpRead(p Principal, m string, _ any) error {
	switch p.Kind {
	case KindAdmin, KindNode:
		return nil
	}
	return deny(p, m, "only an admin or a node agent reads BGP peers and filters")
}

// anyRead admits every principal, replicas included.
func anyRead(p Principal, m string, _ any) error {
	switch p.Kind {
	case KindAdmin, KindSyncer, KindNode, KindReplica:
		return nil
	}
	return deny(p, m, "unknown principal kind")
}

func renew(p Principal, m string, _ any) error {
	switch p.Kind {
	case KindAdmin, KindSyncer, KindNode:
		return nil
	}
	return deny(p, m, "replica certificates are issued by the operator ('fedctl ca issue-replica')")
}

// ownCluster admits admins, and a syncer when every cluster the request
// targets is its own.
func ownCluster(targets func(req any) ([]string, bool)) rule {
	return func(p Principal, m string, req any) error {
		switch p.Kind {
		case KindAdmin:
			return nil
		case KindSyncer:
		default:
			return deny(p, m, "only an admin or the cluster's own syncer may write its objects")
		}
		ts, ok := targets(req)
		if !ok {
			return deny(p, m, fmt.Sprintf("request of type %T is not the RPC's", req))
		}
		for _, c := range ts {
			if c != p.Cluster {
				return deny(p, m, fmt.Sprintf("target cluster %q is not the syncer's own cluster %q", c, p.Cluster))
			}
		}
		return nil
	}
}

// ownNode admits admins and the node agent of exactly the target node.
func ownNode(target func(req any) (cluster, node string, ok bool)) rule {
	return func(p Principal, m string, req any) error {
		switch p.Kind {
		case KindAdmin:
			return nil
		case KindNode:
		default:
			return deny(p, m, "only an admin or the node's own agent may write a node")
		}
		c, n, ok := target(req)
		if !ok {
			return deny(p, m, fmt.Sprintf("request of type %T is not the RPC's", req))
		}
		if c != p.Cluster || n != p.Node {
			return deny(p, m, fmt.Sprintf("target node %q of cluster %q is not the agent's own node %q of cluster %q", n, c, p.Node, p.Cluster))
		}
		return nil
	}
}

func applyPolicies(p Principal, m string, req any) error {
	switch p.Kind {
	case KindAdmin:
		return nil
	case KindSyncer:
	default:
		return deny(p, m, "only an admin or the cluster's own syncer may write policies")
	}
	r, ok := req.(*fedmeshv1.ApplyPoliciesRequest)
	if !ok {
		return deny(p, m, fmt.Sprintf("request of type %T is not the RPC's", req))
	}
	if r.GetCluster() != p.Cluster {
		return deny(p, m, fmt.Sprintf("target cluster %q is not the syncer's own cluster %q", r.GetCluster(), p.Cluster))
	}
	var bad []string
	for i, pol := range r.GetPolicies() {
		switch {
		case pol.GetKind() != fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES:
			bad = append(bad, fmt.Sprintf("policies[%d] is %s, a syncer writes only POLICY_KIND_KUBERNETES", i, pol.GetKind()))
		case pol.GetCluster() != "" && pol.GetCluster() != p.Cluster:
			bad = append(bad, fmt.Sprintf("policies[%d] belongs to cluster %q, not the syncer's own %q", i, pol.GetCluster(), p.Cluster))
		}
		if len(bad) == 3 {
			break
		}
	}
	if len(bad) > 0 {
		return deny(p, m, strings.Join(bad, "; "))
	}
	return nil
}

// applyClusterPolicies admits admins, and a syncer writing only its own
// cluster's synced ClusterNetworkPolicies.
func applyClusterPolicies(p Principal, m string, req any) error {
	switch p.Kind {
	case KindAdmin:
		return nil
	case KindSyncer:
	default:
		return deny(p, m, "only an admin or the cluster's own syncer may write ClusterNetworkPolicies")
	}
	r, ok := req.(*fedmeshv1.ApplyClusterPoliciesRequest)
	if !ok {
		return deny(p, m, fmt.Sprintf("request of type %T is not the RPC's", req))
	}
	if r.GetCluster() != p.Cluster {
		if r.GetCluster() == "" {
			return deny(p, m, "federated ClusterNetworkPolicies are written by admins only")
		}
		return deny(p, m, fmt.Sprintf("target cluster %q is not the syncer's own cluster %q", r.GetCluster(), p.Cluster))
	}
	for i, pol := range r.GetPolicies() {
		if pol.GetCluster() != p.Cluster {
			return deny(p, m, fmt.Sprintf("policies[%d] belongs to cluster %q, not the syncer's own %q", i, pol.GetCluster(), p.Cluster))
		}
	}
	return nil
}

// clusterMember admits admins, and the syncer and node agents of the
// cluster the request names (what only that cluster's parts may read:
// its service advertisements).
func clusterMember(target func(req any) (string, bool)) rule {
	return func(p Principal, m string, req any) error {
		if p.Kind == KindAdmin {
			return nil
		}
		if req == nil && (p.Kind == KindSyncer || p.Kind == KindNode) {
			// A stream's request is not known here: its handler narrows
			// to the principal's own cluster.
			return nil
		}
		c, ok := target(req)
		if !ok {
			return deny(p, m, fmt.Sprintf("request of type %T is not the RPC's", req))
		}
		if (p.Kind == KindSyncer || p.Kind == KindNode) && p.Cluster == c {
			return nil
		}
		return deny(p, m, fmt.Sprintf("only an admin or cluster %q's syncer and agents may", c))
	}
}
