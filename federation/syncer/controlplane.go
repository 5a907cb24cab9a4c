package syncer

import (
	"context"

	"google.golang.org/grpc"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ControlPlane is everything the syncer asks of the federation. Its
// production implementation is NewControlPlane over a gRPC connection; the
// syncer never talks to the control plane another way.
//
// Contract: the publisher loop calls GetCluster and the write methods from
// one goroutine, one call at a time (so a syncer has at most one write in
// flight, and its writes commit in the order it sends them); the import
// watcher's watch goroutine calls Watch. Every method may block until its
// write commits (a Raft round trip) and must return when ctx ends. A write
// that returns an error may or may not have committed: the syncer answers
// any write error with a full resync, which is idempotent.
type ControlPlane interface {
	GetCluster(ctx context.Context, name string) (*fedmeshv1.Cluster, error)
	UpsertEndpoints(ctx context.Context, req *fedmeshv1.UpsertEndpointsRequest) (uint64, error)
	DeleteEndpoints(ctx context.Context, req *fedmeshv1.DeleteEndpointsRequest) (uint64, error)
	ApplyPolicies(ctx context.Context, req *fedmeshv1.ApplyPoliciesRequest) (uint64, error)
	DeletePolicy(ctx context.Context, key *fedmeshv1.PolicyKey) (uint64, error)
	ApplyClusterPolicies(ctx context.Context, req *fedmeshv1.ApplyClusterPoliciesRequest) (uint64, error)
	DeleteClusterPolicy(ctx context.Context, key *fedmeshv1.ClusterPolicyKey) (uint64, error)
	ExportServices(ctx context.Context, req *fedmeshv1.ExportServicesRequest) (uint64, error)
	UnexportService(ctx context.Context, req *fedmeshv1.UnexportServiceRequest) (uint64, error)
	// Heartbeat refreshes the cluster's liveness; the heartbeat goroutine
	// calls it, beside the publisher loop's calls (implementations must
	// allow that). It is no Raft write: it returns within a round trip.
	Heartbeat(ctx context.Context, req *fedmeshv1.HeartbeatRequest) (*fedmeshv1.HeartbeatResponse, error)
	// Watch streams changes of the requested kinds after from_revision.
	Watch(ctx context.Context, req *fedmeshv1.WatchRequest) (grpc.ServerStreamingClient[fedmeshv1.WatchResponse], error)
}

// NewControlPlane returns the ControlPlane that uses the generated gRPC
// clients on conn (any replica: writes are forwarded to the leader).
func NewControlPlane(conn grpc.ClientConnInterface) ControlPlane {
	return &grpcControlPlane{
		clusters:  fedmeshv1.NewClusterServiceClient(conn),
		endpoints: fedmeshv1.NewEndpointServiceClient(conn),
		policies:  fedmeshv1.NewPolicyServiceClient(conn),
		cnps:      fedmeshv1.NewClusterPolicyServiceClient(conn),
		services:  fedmeshv1.NewMultiClusterServiceClient(conn),
		watch:     fedmeshv1.NewWatchServiceClient(conn),
	}
}

type grpcControlPlane struct {
	clusters  fedmeshv1.ClusterServiceClient
	endpoints fedmeshv1.EndpointServiceClient
	policies  fedmeshv1.PolicyServiceClient
	cnps      fedmeshv1.ClusterPolicyServiceClient
	services  fedmeshv1.MultiClusterServiceClient
	watch     fedmeshv1.WatchServiceClient
}

func (g *grpcControlPlane) GetCluster(ctx context.Context, name string) (*fedmeshv1.Cluster, error) {
	r, err := g.clusters.GetCluster(ctx, &fedmeshv1.GetClusterRequest{Name: name})
	return r.GetCluster(), err
}

func (g *grpcControlPlane) UpsertEndpoints(ctx context.Context, req *fedmeshv1.UpsertEndpointsRequest) (uint64, error) {
	r, err := g.endpoints.UpsertEndpoints(ctx, req)
	return r.GetRevision(), err
}

func (g *grpcControlPlane) DeleteEndpoints(ctx context.Context, req *fedmeshv1.DeleteEndpointsRequest) (uint64, error) {
	r, err := g.endpoints.DeleteEndpoints(ctx, req)
	return r.GetRevision(), err
}

func (g *grpcControlPlane) ApplyPolicies(ctx context.Context, req *fedmeshv1.ApplyPoliciesRequest) (uint64, error) {
	r, err := g.policies.ApplyPolicies(ctx, req)
	return r.GetRevision(), err
}

func (g *grpcControlPlane) DeletePolicy(ctx context.Context, key *fedmeshv1.PolicyKey) (uint64, error) {
	r, err := g.policies.DeletePolicy(ctx, &fedmeshv1.DeletePolicyRequest{Key: key})
	return r.GetRevision(), err
}

func (g *grpcControlPlane) ExportServices(ctx context.Context, req *fedmeshv1.ExportServicesRequest) (uint64, error) {
	r, err := g.services.ExportServices(ctx, req)
	return r.GetRevision(), err
}

func (g *grpcControlPlane) UnexportService(ctx context.Context, req *fedmeshv1.UnexportServiceRequest) (uint64, error) {
	r, err := g.services.UnexportService(ctx, req)
	return r.GetRevision(), err
}

func (g *grpcControlPlane) Heartbeat(ctx context.Context, req *fedmeshv1.HeartbeatRequest) (*fedmeshv1.HeartbeatResponse, error) {
	return g.clusters.Heartbeat(ctx, req)
}

func (g *grpcControlPlane) Watch(ctx context.Context, req *fedmeshv1.WatchRequest) (grpc.ServerStreamingClient[fedmeshv1.WatchResponse], error) {
	return g.watch.Watch(ctx, req)
}

func (g *grpcControlPlane) ApplyClusterPolicies(ctx context.Context, req *fedmeshv1.ApplyClusterPoliciesRequest) (uint64, error) {
	r, err := g.cnps.ApplyClusterPolicies(ctx, req)
	return r.GetRevision(), err
}

func (g *grpcControlPlane) DeleteClusterPolicy(ctx context.Context, key *fedmeshv1.ClusterPolicyKey) (uint64, error) {
	r, err := g.cnps.DeleteClusterPolicy(ctx, &fedmeshv1.DeleteClusterPolicyRequest{Key: key})
	return r.GetRevision(), err
}
