package flowstore

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// named is flowAt to dst:port resolved from name (an agent's egress
// record: Flow.dns_name).
func named(t time.Time, src, dst *fedmeshv1.Workload, port uint32, deny bool, name string) *fedmeshv1.Flow {
	f := flowAt(t, src, dst, port, deny, "egress")
	f.DnsName = name
	return f
}

func extIP(ip string) *fedmeshv1.Workload { return &fedmeshv1.Workload{Ip: ip, Identity: 2} }

// edgeString is an edge as the tests compare it:
// "src -> dst:port allowed/denied", dst being name[addresses]@ip for a
// named destination.
func edgeString(e *fedmeshv1.FlowEdge) string {
	side := func(w *fedmeshv1.Workload) string {
		if w.GetCluster() == "" {
			return w.GetIp()
		}
		return w.GetCluster() + "/" + w.GetNamespace() + "/" + w.GetPod()
	}
	dst := side(e.GetDestination())
	if e.GetDnsName() != "" {
		dst = e.GetDnsName() + "[" + strings.Join(e.GetDnsAddresses(), ",") + "]@" + dst
	} else if len(e.GetDnsAddresses()) > 0 {
		dst += "[addresses without a name: " + strings.Join(e.GetDnsAddresses(), ",") + "]"
	}
	return fmt.Sprintf("%s -> %s:%d %d/%d", side(e.GetSource()), dst, e.GetDestination().GetPort(), e.GetAllowed(), e.GetDenied())
}

func TestSummaryNamesDestinationsOutsideTheFederationByTheirDNSName(t *testing.T) {
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	web6 := wl("a", "demo", "web", "fd00::11")
	for _, tc := range []struct {
		name  string
		flows map[string][]*fedmeshv1.Flow // per reporting node
		want  []string
	}{
		{"one name resolving to two addresses is one edge at the newest address",
			map[string][]*fedmeshv1.Flow{"a1": {
				named(at(0), webA, extIP("192.0.2.8"), 443, false, "api.example.com"),
				named(at(1), webA, extIP("192.0.2.7"), 443, true, "api.example.com"),
				named(at(2), webA, extIP("192.0.2.7"), 443, false, "api.example.com"),
			}},
			[]string{"a/demo/web -> api.example.com[192.0.2.7,192.0.2.8]@192.0.2.7:443 2/1"}},
		{"flows without a name aggregate per address as before",
			map[string][]*fedmeshv1.Flow{"a1": {
				flowAt(at(0), webA, extIP("192.0.2.7"), 443, false, "egress"),
				flowAt(at(1), webA, extIP("192.0.2.8"), 443, false, "egress"),
			}},
			[]string{"a/demo/web -> 192.0.2.7:443 1/0", "a/demo/web -> 192.0.2.8:443 1/0"}},
		{"one address with and without a name: an edge each, the unnamed first",
			map[string][]*fedmeshv1.Flow{"a1": {
				flowAt(at(0), webA, extIP("192.0.2.7"), 443, false, "egress"),
				named(at(1), webA, extIP("192.0.2.7"), 443, false, "api.example.com"),
			}},
			[]string{"a/demo/web -> 192.0.2.7:443 1/0", "a/demo/web -> api.example.com[192.0.2.7]@192.0.2.7:443 1/0"}},
		{"a workload destination never takes a name",
			map[string][]*fedmeshv1.Flow{"a1": {
				named(at(0), webA, dbB, 5432, false, "db.demo.svc.cluster.local"),
				flowAt(at(1), webA, dbB, 5432, true, "db"),
			}},
			[]string{"a/demo/web -> b/demo/db:5432 1/1"}},
		{"two names sharing an address are two edges",
			map[string][]*fedmeshv1.Flow{"a1": {
				named(at(0), webA, extIP("192.0.2.7"), 443, false, "js.example.com"),
				named(at(1), webA, extIP("192.0.2.7"), 443, false, "api.example.com"),
			}},
			[]string{"a/demo/web -> api.example.com[192.0.2.7]@192.0.2.7:443 1/0", "a/demo/web -> js.example.com[192.0.2.7]@192.0.2.7:443 1/0"}},
		{"a name over both families from a dual-stack pod is one edge",
			map[string][]*fedmeshv1.Flow{"a1": {
				named(at(0), webA, extIP("192.0.2.7"), 443, false, "api.example.com"),
				named(at(1), web6, extIP("2001:db8::7"), 443, false, "api.example.com"),
			}},
			[]string{"a/demo/web -> api.example.com[192.0.2.7,2001:db8::7]@2001:db8::7:443 2/0"}},
		{"ports and sources still split a name",
			map[string][]*fedmeshv1.Flow{"a1": {
				named(at(0), webA, extIP("192.0.2.7"), 443, false, "api.example.com"),
				named(at(1), webA, extIP("192.0.2.8"), 80, false, "api.example.com"),
				named(at(2), apiB, extIP("192.0.2.8"), 443, false, "api.example.com"),
			}},
			[]string{"a/demo/web -> api.example.com[192.0.2.7]@192.0.2.7:443 1/0", "a/demo/web -> api.example.com[192.0.2.8]@192.0.2.8:80 1/0",
				"b/shop/api -> api.example.com[192.0.2.8]@192.0.2.8:443 1/0"}},
		{"nodes reporting at one time: the lower address names the edge",
			map[string][]*fedmeshv1.Flow{
				"a1": {named(at(5), webA, extIP("192.0.2.9"), 443, false, "api.example.com")},
				"a2": {named(at(5), webA, extIP("192.0.2.8"), 443, false, "api.example.com")},
				"a3": {named(at(4), webA, extIP("192.0.2.7"), 443, false, "api.example.com")},
			},
			[]string{"a/demo/web -> api.example.com[192.0.2.7,192.0.2.8,192.0.2.9]@192.0.2.8:443 3/0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{NodeRate: 1e9, Now: (&clock{t0.Add(time.Minute)}).Now})
			for node, fs := range tc.flows {
				s.Add("a", node, fs, 0)
			}
			edges := s.Summarize(Summary{Since: t0, Until: t0.Add(time.Minute), Window: time.Minute}, Scope{})
			var got []string
			for _, e := range edges {
				got = append(got, edgeString(e))
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("edges\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

// A named edge keeps its windows, its deniers and its name through the
// wire.
func TestNamedEdgeSurvivesTheWire(t *testing.T) {
	s := New(Config{NodeRate: 1e9, Now: (&clock{t0.Add(2 * time.Minute)}).Now})
	s.Add("a", "a1", []*fedmeshv1.Flow{
		named(t0, webA, extIP("192.0.2.7"), 443, true, "api.example.com"),
		named(t0.Add(time.Minute), webA, extIP("192.0.2.8"), 443, false, "api.example.com"),
	}, 0)
	edges := s.Summarize(Summary{Since: t0, Until: t0.Add(2 * time.Minute), Window: time.Minute}, Scope{})
	if len(edges) != 1 {
		t.Fatalf("%d edges, want one", len(edges))
	}
	b, err := proto.Marshal(&fedmeshv1.GetFlowSummaryResponse{Edges: edges})
	if err != nil {
		t.Fatal(err)
	}
	var back fedmeshv1.GetFlowSummaryResponse
	if err := proto.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	e := back.GetEdges()[0]
	if !proto.Equal(e, edges[0]) || e.GetDnsName() != "api.example.com" || !slices.Equal(e.GetDnsAddresses(), []string{"192.0.2.7", "192.0.2.8"}) ||
		len(e.GetWindows()) != 2 || len(e.GetDeniedBy()) != 1 {
		t.Fatalf("edge after the wire %v, want %v", e, edges[0])
	}
}

// The name filter matches as a domainNames peer does, in queries, in the
// summary and for followers alike.
func TestNameFilterMatchesAsDomainNamesPeersDo(t *testing.T) {
	for _, tc := range []struct {
		filter string
		want   []uint32
	}{
		{"api.example.com", []uint32{1}},
		{"API.Example.com.", []uint32{1}},
		{"*.example.com", []uint32{1, 2}},
		{"*.com", []uint32{1, 2, 3}},
		{"nothing.example.com", nil},
	} {
		t.Run(tc.filter, func(t *testing.T) {
			s := New(Config{NodeRate: 1e9, Now: (&clock{t0.Add(time.Minute)}).Now})
			s.Add("a", "a1", []*fedmeshv1.Flow{
				named(t0, webA, extIP("192.0.2.7"), 1, false, "api.example.com"),
				named(t0, webA, extIP("192.0.2.8"), 2, false, "a.b.example.com"),
				named(t0, webA, extIP("192.0.2.9"), 3, false, "example.com"),
				named(t0, webA, extIP("192.0.2.10"), 4, false, "api.example.org"),
				flowAt(t0, webA, extIP("192.0.2.7"), 5, false, "egress"),
			}, 0)
			q, err := ParseQuery(&fedmeshv1.GetFlowsRequest{Filter: &fedmeshv1.FlowFilter{DnsName: tc.filter}})
			if err != nil {
				t.Fatal(err)
			}
			got := ports(s.Query(q, Scope{}))
			slices.Sort(got) // one time: no order
			if !slices.Equal(got, tc.want) {
				t.Errorf("query: ports %v, want %v", got, tc.want)
			}
			got = nil
			for _, e := range s.Summarize(Summary{Filter: q.Filter, Since: t0, Until: t0.Add(time.Minute), Window: time.Minute}, Scope{}) {
				got = append(got, e.GetDestination().GetPort())
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("summary: ports %v, want %v", got, tc.want)
			}
			_, f, stop := s.QueryFollow(q, Scope{})
			defer stop()
			s.Add("a", "a1", []*fedmeshv1.Flow{
				named(t0, webA, extIP("192.0.2.7"), 1, false, "api.example.com"),
				named(t0, webA, extIP("192.0.2.9"), 3, false, "example.com"),
				flowAt(t0, webA, extIP("192.0.2.7"), 5, false, "egress"),
			}, 0)
			got = nil
			for len(f.C) > 0 {
				got = append(got, (<-f.C).GetDestination().GetPort())
			}
			var want []uint32
			for _, p := range tc.want {
				if p == 1 || p == 3 {
					want = append(want, p)
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("follow: ports %v, want %v", got, want)
			}
		})
	}
}
