package services

import (
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

const (
	tcp      = fedmeshv1.Protocol_PROTOCOL_TCP
	udp      = fedmeshv1.Protocol_PROTOCOL_UDP
	setIP    = fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP
	headless = fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS
)

func port(name string, n uint32, p fedmeshv1.Protocol) *fedmeshv1.ServicePort {
	return &fedmeshv1.ServicePort{Name: name, Port: n, Protocol: p}
}

func export(cluster string, createRev uint64, typ fedmeshv1.ServiceType, backends []string, ports ...*fedmeshv1.ServicePort) *fedmeshv1.ServiceExport {
	return &fedmeshv1.ServiceExport{
		Cluster: cluster, Namespace: "shop", Name: "cart", Type: typ,
		Ports: ports, Backends: backends,
		Meta: &fedmeshv1.ObjectMeta{CreateRevision: createRev},
	}
}

func TestAggregate(t *testing.T) {
	tests := []struct {
		name         string
		exports      []*fedmeshv1.ServiceExport
		wantType     fedmeshv1.ServiceType
		wantPorts    []string // name=port/proto
		wantClusters map[string][]string
		wantReason   string
		wantInMsg    []string
	}{
		{
			name: "two clusters with equal ports merge backends with no conflict",
			exports: []*fedmeshv1.ServiceExport{
				export("east", 5, setIP, []string{"10.1.0.2", "10.1.0.1"}, port("http", 80, tcp)),
				export("west", 9, setIP, []string{"10.2.0.1"}, port("http", 80, fedmeshv1.Protocol_PROTOCOL_UNSPECIFIED)),
			},
			wantType:     setIP,
			wantPorts:    []string{"http=80/TCP"},
			wantClusters: map[string][]string{"east": {"10.1.0.1", "10.1.0.2"}, "west": {"10.2.0.1"}},
			wantReason:   ReasonNoConflicts,
		},
		{
			name: "ports with different names are unioned",
			exports: []*fedmeshv1.ServiceExport{
				export("east", 5, setIP, nil, port("http", 80, tcp)),
				export("west", 9, setIP, nil, port("dns", 53, udp)),
			},
			wantType:     setIP,
			wantPorts:    []string{"dns=53/UDP", "http=80/TCP"},
			wantClusters: map[string][]string{"east": nil, "west": nil},
			wantReason:   ReasonNoConflicts,
		},
		{
			name: "same port name with another number: oldest export wins, newer keeps backends",
			exports: []*fedmeshv1.ServiceExport{
				export("west", 9, setIP, []string{"10.2.0.1"}, port("http", 8080, tcp)),
				export("east", 5, setIP, []string{"10.1.0.1"}, port("http", 80, tcp)),
			},
			wantType:     setIP,
			wantPorts:    []string{"http=80/TCP"},
			wantClusters: map[string][]string{"east": {"10.1.0.1"}, "west": {"10.2.0.1"}},
			wantReason:   ReasonPortConflict,
			wantInMsg:    []string{`port "http" is 8080/TCP in cluster "west" but 80/TCP in "east"`},
		},
		{
			name: "same port name with another protocol conflicts",
			exports: []*fedmeshv1.ServiceExport{
				export("east", 5, setIP, nil, port("dns", 53, tcp)),
				export("west", 9, setIP, nil, port("dns", 53, udp)),
			},
			wantType:     setIP,
			wantPorts:    []string{"dns=53/TCP"},
			wantClusters: map[string][]string{"east": nil, "west": nil},
			wantReason:   ReasonPortConflict,
		},
		{
			name: "same number under another name conflicts",
			exports: []*fedmeshv1.ServiceExport{
				export("east", 5, setIP, nil, port("http", 80, tcp)),
				export("west", 9, setIP, nil, port("web", 80, tcp)),
			},
			wantType:     setIP,
			wantPorts:    []string{"http=80/TCP"},
			wantClusters: map[string][]string{"east": nil, "west": nil},
			wantReason:   ReasonPortConflict,
			wantInMsg:    []string{`named "web" in cluster "west" but "http" in "east"`},
		},
		{
			name: "type mismatch: oldest type wins and the other cluster is not imported",
			exports: []*fedmeshv1.ServiceExport{
				export("east", 5, headless, []string{"10.1.0.1"}, port("http", 80, tcp)),
				export("west", 3, setIP, []string{"10.2.0.1"}, port("http", 80, tcp)),
			},
			wantType:     setIP,
			wantPorts:    []string{"http=80/TCP"},
			wantClusters: map[string][]string{"west": {"10.2.0.1"}},
			wantReason:   ReasonTypeConflict,
			wantInMsg:    []string{`oldest export (cluster "west")`, `"east"`},
		},
		{
			name: "unspecified type counts as ClusterSetIP",
			exports: []*fedmeshv1.ServiceExport{
				export("east", 5, fedmeshv1.ServiceType_SERVICE_TYPE_UNSPECIFIED, nil, port("http", 80, tcp)),
				export("west", 9, setIP, nil, port("http", 80, tcp)),
			},
			wantType:     setIP,
			wantPorts:    []string{"http=80/TCP"},
			wantClusters: map[string][]string{"east": nil, "west": nil},
			wantReason:   ReasonNoConflicts,
		},
		{
			name: "equal create revisions break by cluster name",
			exports: []*fedmeshv1.ServiceExport{
				export("west", 5, setIP, nil, port("http", 81, tcp)),
				export("east", 5, setIP, nil, port("http", 80, tcp)),
			},
			wantType:     setIP,
			wantPorts:    []string{"http=80/TCP"},
			wantClusters: map[string][]string{"east": nil, "west": nil},
			wantReason:   ReasonPortConflict,
		},
		{
			name: "an export not yet stored is the newest",
			exports: []*fedmeshv1.ServiceExport{
				export("a-new", 0, setIP, nil, port("http", 81, tcp)),
				export("z-old", 7, setIP, nil, port("http", 80, tcp)),
			},
			wantType:     setIP,
			wantPorts:    []string{"http=80/TCP"},
			wantClusters: map[string][]string{"a-new": nil, "z-old": nil},
			wantReason:   ReasonPortConflict,
		},
		{
			name: "duplicate backends collapse",
			exports: []*fedmeshv1.ServiceExport{
				export("east", 5, headless, []string{"fd00::2", "10.1.0.1", "fd00::2"}, port("", 80, tcp)),
			},
			wantType:     headless,
			wantPorts:    []string{"=80/TCP"},
			wantClusters: map[string][]string{"east": {"10.1.0.1", "fd00::2"}},
			wantReason:   ReasonNoConflicts,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := cloneAll(tc.exports)
			got := Aggregate(tc.exports)
			for i := range before {
				if !proto.Equal(before[i], tc.exports[i]) {
					t.Fatalf("Aggregate modified its input %d", i)
				}
			}
			imp := got.Import
			if imp.GetNamespace() != "shop" || imp.GetName() != "cart" {
				t.Errorf("import key %s/%s", imp.GetNamespace(), imp.GetName())
			}
			if imp.GetType() != tc.wantType {
				t.Errorf("type %v, want %v", imp.GetType(), tc.wantType)
			}
			var ports []string
			for _, p := range imp.GetPorts() {
				ports = append(ports, p.GetName()+"="+portString(p))
			}
			if strings.Join(ports, ",") != strings.Join(tc.wantPorts, ",") {
				t.Errorf("ports %v, want %v", ports, tc.wantPorts)
			}
			gotClusters := map[string][]string{}
			for _, c := range imp.GetClusters() {
				gotClusters[c.GetCluster()] = c.GetAddresses()
			}
			if len(gotClusters) != len(tc.wantClusters) {
				t.Errorf("clusters %v, want %v", gotClusters, tc.wantClusters)
			}
			for c, want := range tc.wantClusters {
				g, ok := gotClusters[c]
				if !ok || strings.Join(g, ",") != strings.Join(want, ",") {
					t.Errorf("cluster %s backends %v, want %v", c, g, want)
				}
			}
			if len(got.Conflicts) != len(tc.exports) {
				t.Errorf("conditions for %d exports, want %d", len(got.Conflicts), len(tc.exports))
			}
			for cl, c := range got.Conflicts {
				if c.GetReason() != tc.wantReason {
					t.Errorf("cluster %s reason %q, want %q (%s)", cl, c.GetReason(), tc.wantReason, c.GetMessage())
				}
				wantStatus := "True"
				if tc.wantReason == ReasonNoConflicts {
					wantStatus = "False"
				}
				if c.GetStatus() != wantStatus || c.GetType() != CondConflict {
					t.Errorf("cluster %s condition %s=%s, want Conflict=%s", cl, c.GetType(), c.GetStatus(), wantStatus)
				}
				for _, s := range tc.wantInMsg {
					if !strings.Contains(c.GetMessage(), s) {
						t.Errorf("message %q lacks %q", c.GetMessage(), s)
					}
				}
			}
			if c := imp.GetConditions(); len(c) != 1 || c[0].GetReason() != tc.wantReason {
				t.Errorf("import conditions %v, want one with reason %s", c, tc.wantReason)
			}
		})
	}
}

func TestAggregateIsIndependentOfInputOrder(t *testing.T) {
	xs := []*fedmeshv1.ServiceExport{
		export("a", 4, setIP, []string{"10.0.0.1"}, port("http", 80, tcp), port("x", 9000, tcp)),
		export("b", 2, setIP, []string{"10.0.1.1"}, port("http", 8080, tcp)),
		export("c", 2, headless, []string{"10.0.2.1"}, port("http", 80, tcp)),
		export("d", 9, setIP, []string{"10.0.3.1"}, port("y", 9000, tcp), port("z", 53, udp)),
	}
	want := Aggregate(xs)
	r := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		shuffled := cloneAll(xs)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		got := Aggregate(shuffled)
		if !proto.Equal(got.Import, want.Import) {
			t.Fatalf("import depends on input order:\n%v\nvs\n%v", got.Import, want.Import)
		}
		for c, w := range want.Conflicts {
			if !proto.Equal(got.Conflicts[c], w) {
				t.Fatalf("condition of %s depends on input order", c)
			}
		}
	}
}

func TestAggregateOfNothingIsNoImport(t *testing.T) {
	if got := Aggregate(nil); got.Import != nil || got.Conflicts != nil {
		t.Fatalf("got %v", got)
	}
}

func TestAggregateAllGroupsByNamespaceAndName(t *testing.T) {
	a := export("east", 1, setIP, nil, port("http", 80, tcp))
	b := export("west", 2, setIP, nil, port("http", 80, tcp))
	c := export("west", 3, setIP, nil, port("http", 80, tcp))
	c.Namespace = "other"
	d := export("east", 4, setIP, nil, port("http", 80, tcp))
	d.Name = "billing"
	got := AggregateAll([]*fedmeshv1.ServiceExport{c, b, a, d})
	var keys []string
	for _, g := range got {
		keys = append(keys, g.Import.GetNamespace()+"/"+g.Import.GetName()+":"+itoa(len(g.Import.GetClusters())))
	}
	if want := "other/cart:1,shop/billing:1,shop/cart:2"; strings.Join(keys, ",") != want {
		t.Fatalf("got %v, want %s", keys, want)
	}
}

func itoa(n int) string { return string(rune('0' + n)) }

func cloneAll(xs []*fedmeshv1.ServiceExport) []*fedmeshv1.ServiceExport {
	out := make([]*fedmeshv1.ServiceExport, len(xs))
	for i, x := range xs {
		out[i] = proto.Clone(x).(*fedmeshv1.ServiceExport)
	}
	return out
}
