package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func upsertOf(n int) *fedmeshv1.UpsertEndpointsRequest {
	r := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east"}
	for i := range n {
		r.Endpoints = append(r.Endpoints, &fedmeshv1.Endpoint{Name: fmt.Sprint(i)})
	}
	return r
}

func TestWriteLimiterBoundsEachPrincipalByObjectsWritten(t *testing.T) {
	east, west := auth.Syncer("east"), auth.Syncer("west")
	type step struct {
		after time.Duration // clock advance before the write
		who   auth.Principal
		req   proto.Message
		ok    bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"within the burst", []step{{0, east, upsertOf(60), true}, {0, east, upsertOf(40), true}}},
		{"past the burst refused", []step{{0, east, upsertOf(100), true}, {0, east, upsertOf(1), false}}},
		{"one principal's flood leaves the others their share", []step{{0, east, upsertOf(100), true}, {0, east, upsertOf(1), false}, {0, west, upsertOf(100), true}}},
		{"tokens come back at the rate", []step{{0, east, upsertOf(100), true}, {0, east, upsertOf(10), false}, {200 * time.Millisecond, east, upsertOf(10), true}}},
		{"a write larger than the burst passes on a full bucket and leaves a debt", []step{{0, east, upsertOf(300), true}, {time.Second, east, upsertOf(1), false}, {4 * time.Second, east, upsertOf(1), true}}},
		{"deletes, policies and exports count their objects", []step{
			{0, east, &fedmeshv1.DeleteEndpointsRequest{Keys: make([]*fedmeshv1.EndpointKey, 99)}, true},
			{0, east, &fedmeshv1.ApplyPoliciesRequest{Policies: make([]*fedmeshv1.Policy, 2)}, false},
			{0, east, &fedmeshv1.ExportServicesRequest{Exports: make([]*fedmeshv1.ServiceExport, 1)}, true}}},
		{"a node has its own limit", []step{{0, auth.Node("east", "n1"), upsertOf(1), true}, {0, auth.Node("east", "n1"), upsertOf(1), true}, {0, auth.Node("east", "n1"), upsertOf(1), false}}},
		{"admins are not limited", []step{{0, auth.Admin(), upsertOf(1000), true}, {0, auth.Admin(), upsertOf(1000), true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			w := newWriteLimiter(WriteLimits{auth.KindSyncer: {Rate: 50, Burst: 100}, auth.KindNode: {Rate: 1, Burst: 2}}, func() time.Time { return now })
			for i, s := range tt.steps {
				now = now.Add(s.after)
				err := w.admit(auth.WithPrincipal(context.Background(), s.who), s.req)
				if (err == nil) != s.ok {
					t.Fatalf("step %d (%s, %d objects): err = %v, want ok=%v", i, s.who, writeCost(s.req), err, s.ok)
				}
				if err != nil && status.Code(err) != codes.ResourceExhausted {
					t.Fatalf("step %d: code %v, want ResourceExhausted", i, status.Code(err))
				}
			}
		})
	}
	w := newWriteLimiter(WriteLimits{auth.KindSyncer: {Rate: 50, Burst: 100}}, time.Now)
	if err := w.admit(context.Background(), upsertOf(1000)); err != nil {
		t.Errorf("a call without a principal (development control plane) was limited: %v", err)
	}
}

// Over mTLS: a syncer flooding writes gets ResourceExhausted naming its
// limit and the metric counts it, while another syncer's writes go
// through.
func TestAFloodingSyncerIsRefusedWhileAnotherStillWrites(t *testing.T) {
	g := startTLSGroup(t, 1)
	lead := g.leader(t)
	lead.writes.setLimits(WriteLimits{auth.KindSyncer: {Rate: 5, Burst: 20}})
	ctx := ctxT(t)
	admin := fedmeshv1.NewClusterServiceClient(g.conn(t, lead, auth.Admin()))
	for i, name := range []string{"east", "west"} {
		if _, err := admin.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: name, PodCidrs: []string{fmt.Sprintf("10.%d.0.0/16", i+1)}}}); err != nil {
			t.Fatal(err)
		}
	}
	ep := func(cluster string, i, net int) *fedmeshv1.UpsertEndpointsRequest {
		return &fedmeshv1.UpsertEndpointsRequest{Cluster: cluster, Endpoints: []*fedmeshv1.Endpoint{{Namespace: "a", Name: fmt.Sprintf("p%d", i), Node: "n", Ips: []string{fmt.Sprintf("10.%d.0.%d", net, i+1)}}}}
	}
	flood := fedmeshv1.NewEndpointServiceClient(g.conn(t, lead, auth.Syncer("east")))
	var refused error
	for i := range 60 {
		if _, err := flood.UpsertEndpoints(ctx, ep("east", i, 1)); err != nil {
			refused = err
			break
		}
	}
	if status.Code(refused) != codes.ResourceExhausted || !strings.Contains(status.Convert(refused).Message(), "5 objects/s (burst 20)") {
		t.Fatalf("flooding syncer: %v, want ResourceExhausted naming 5 objects/s (burst 20)", refused)
	}
	other := fedmeshv1.NewEndpointServiceClient(g.conn(t, lead, auth.Syncer("west")))
	if _, err := other.UpsertEndpoints(ctx, ep("west", 0, 2)); err != nil {
		t.Fatalf("another syncer's write while the first floods: %v", err)
	}
	if n := testutil.ToFloat64(lead.writes.limited.WithLabelValues(auth.KindSyncer.String())); n < 1 {
		t.Errorf("fedmesh_controlplane_writes_rate_limited_total{kind=syncer} = %v, want >= 1", n)
	}
}
