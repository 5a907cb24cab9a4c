package server

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func getDNS(ctx context.Context, c fedmeshv1.FlowServiceClient, req *fedmeshv1.GetDNSRequest) ([]string, error) {
	s, err := c.GetDNS(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []string
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		for _, r := range m.GetRecords() {
			out = append(out, r.GetName())
		}
	}
}

// DNS query records ride the agents' flow streams: only a node's own
// certificate ships them, a node the federation does not know is refused,
// the records take the shipping node's name whatever they say, and GetDNS
// reads them with the flows' authorization and validated filters.
func TestGetDNSServesShippedRecordsWithTheFlowsAuthorization(t *testing.T) {
	g := startTLSGroup(t, 1)
	lead := g.leader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clusters := fedmeshv1.NewClusterServiceClient(g.conn(t, lead, auth.Admin()))
	for name, cidr := range map[string]string{"a": "10.1.0.0/16", "c": "10.3.0.0/16"} {
		if _, err := clusters.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: name, PodCidrs: []string{cidr}}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []auth.Principal{auth.Node("a", "n1"), auth.Node("c", "n1")} {
		if _, err := fedmeshv1.NewNodeServiceClient(g.conn(t, lead, n)).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{
			Cluster: n.Cluster, Name: n.Node, UnderlayIp: "198.18.0.1"}}); err != nil {
			t.Fatal(err)
		}
	}
	flowsAs := func(p auth.Principal) fedmeshv1.FlowServiceClient {
		return fedmeshv1.NewFlowServiceClient(g.conn(t, lead, p))
	}
	rec := func(name, rcode string) *fedmeshv1.DNSRecord {
		return &fedmeshv1.DNSRecord{Time: timestamppb.Now(), Namespace: "demo", Pod: "web", Name: name, Type: "A", Rcode: rcode, Cluster: "c", Node: "forged"}
	}
	follow, err := flowsAs(auth.Admin()).GetDNS(ctx, &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Rcode: "NXDOMAIN"}, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := follow.Recv(); err != nil || m.GetStatus().GetReplica() != lead.cfg.NodeID {
		t.Fatalf("first follow message %v (%v), want the store status", m, err)
	}

	resp, err := ship(ctx, flowsAs(auth.Node("a", "n1")), &fedmeshv1.ShipFlowsRequest{Cluster: "a", Node: "n1", DnsDropped: 2,
		Dns: []*fedmeshv1.DNSRecord{rec("api.example.com.", "NOERROR"), rec("nope.example.com.", "NXDOMAIN")}})
	if err != nil || resp.GetDnsAccepted() != 2 {
		t.Fatalf("a/n1 ships its DNS records: %v (%v), want 2 accepted", resp, err)
	}
	if _, err := ship(ctx, flowsAs(auth.Node("c", "n1")), &fedmeshv1.ShipFlowsRequest{Cluster: "c", Node: "n1", Dns: []*fedmeshv1.DNSRecord{rec("db.example.org.", "NOERROR")}}); err != nil {
		t.Fatalf("c/n1 ships: %v", err)
	}
	for _, tc := range []struct {
		name string
		p    auth.Principal
		req  *fedmeshv1.ShipFlowsRequest
	}{
		{"another node's records", auth.Node("a", "n1"), &fedmeshv1.ShipFlowsRequest{Cluster: "c", Node: "n1", Dns: []*fedmeshv1.DNSRecord{rec("x.test.", "NOERROR")}}},
		{"a node the federation does not know", auth.Node("a", "ghost"), &fedmeshv1.ShipFlowsRequest{Cluster: "a", Node: "ghost", Dns: []*fedmeshv1.DNSRecord{rec("x.test.", "NOERROR")}}},
		{"an admin", auth.Admin(), &fedmeshv1.ShipFlowsRequest{Cluster: "a", Node: "n1", Dns: []*fedmeshv1.DNSRecord{rec("x.test.", "NOERROR")}}},
	} {
		if _, err := ship(ctx, flowsAs(tc.p), tc.req); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", tc.name, err)
		}
	}

	for _, tc := range []struct {
		name string
		p    auth.Principal
		want []string
	}{
		{"admin reads everything", auth.Admin(), []string{"api.example.com.", "nope.example.com.", "db.example.org."}},
		{"syncer of a reads a's queries", auth.Syncer("a"), []string{"api.example.com.", "nope.example.com."}},
		{"node of c reads only c's", auth.Node("c", "n1"), []string{"db.example.org."}},
		{"syncer of a cluster without queries reads none", auth.Syncer("b"), nil},
	} {
		got, err := getDNS(ctx, flowsAs(tc.p), &fedmeshv1.GetDNSRequest{})
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v (%v), want %v", tc.name, got, err, tc.want)
		}
	}
	got, err := getDNS(ctx, flowsAs(auth.Admin()), &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Cluster: "a", Node: "n1", Name: "*.EXAMPLE.com"}})
	if err != nil || !slices.Equal(got, []string{"api.example.com.", "nope.example.com."}) {
		t.Errorf("filtered by the shipping node and a wildcard: %v (%v); the forged cluster/node must not stick", got, err)
	}
	_, err = getDNS(ctx, flowsAs(auth.Admin()), &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Name: "a.*.com"}})
	if status.Code(err) != codes.InvalidArgument || !slices.Contains(badRequestFields(err), "filter.name") {
		t.Errorf("bad name filter: %v (fields %v), want InvalidArgument naming filter.name", err, badRequestFields(err))
	}

	m, err := follow.Recv()
	if err != nil || len(m.GetRecords()) != 1 || m.GetRecords()[0].GetName() != "nope.example.com." || m.GetRecords()[0].GetNode() != "n1" {
		t.Fatalf("followed %v (%v), want the NXDOMAIN a/n1 shipped", m, err)
	}
	if st := lead.DNS().Status(); st.DroppedAgent != 2 || st.Stored != 3 {
		t.Fatalf("store status %+v, want 3 stored and the agent's 2 drops", st)
	}
}
