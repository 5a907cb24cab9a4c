package server

import (
	"context"
	"time"

	"google.golang.org/grpc"

	"github.com/fedmesh/fedmesh/controlplane/flowstore"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// startDNS creates the replica's DNS record store beside its flow store:
// agents ship their resolvers' query records on their flow streams
// (ShipFlowsRequest.dns), so the records take the flows' path, identity
// and bounds, and never the Raft log.
func (r *Replica) startDNS(ctx context.Context) {
	fc := r.cfg.Flows
	r.dns = flowstore.NewDNS(flowstore.DNSConfig{Capacity: fc.DNSCapacity, MaxAge: fc.DNSMaxAge, Replica: r.cfg.NodeID})
	r.metrics.reg.MustRegister(r.dns.Collectors()...)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.dns.Run(ctx, 5*time.Second)
	}()
}

// DNS is the replica's DNS record store.
func (r *Replica) DNS() *flowstore.DNSStore { return r.dns }

// GetDNS serves the stored DNS records with the flows' authorization: an
// admin reads every record, a cluster's principals the queries of their
// cluster's pods (flowScope).
func (s *flowService) GetDNS(req *fedmeshv1.GetDNSRequest, stream grpc.ServerStreamingServer[fedmeshv1.GetDNSResponse]) error {
	q, err := flowstore.ParseDNSQuery(req)
	if err != nil {
		return err
	}
	return s.c.r.dns.Serve(stream.Context(), q, flowScope(stream.Context()), stream.Send)
}
