package syncer

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func ep(name string, app string) *fedmeshv1.Endpoint {
	return &fedmeshv1.Endpoint{Cluster: "east", Namespace: "ns", Name: name, Ips: []string{"10.1.0.1"}, Labels: map[string]string{"app": app}, Node: "n"}
}

func TestPlanIncremental(t *testing.T) {
	pub := Published{
		{KindEndpoint, "ns", "same"}:    ep("same", "a"),
		{KindEndpoint, "ns", "changed"}: ep("changed", "a"),
		{KindEndpoint, "ns", "gone"}:    ep("gone", "a"),
		{KindPolicy, "ns", "deny"}:      &fedmeshv1.Policy{Name: "deny"},
		{KindExport, "ns", "cart"}:      &fedmeshv1.ServiceExport{Name: "cart"},
	}
	desired := map[Key]proto.Message{
		{KindEndpoint, "ns", "same"}:      ep("same", "a"),
		{KindEndpoint, "ns", "changed"}:   ep("changed", "b"),
		{KindEndpoint, "ns", "gone"}:      nil,
		{KindEndpoint, "ns", "new"}:       ep("new", "a"),
		{KindEndpoint, "ns", "never"}:     nil, // skipped and never published: nothing to send
		{KindPolicy, "ns", "deny"}:        nil,
		{KindExport, "ns", "cart"}:        nil,
		{KindPolicy, "ns", "allow"}:       &fedmeshv1.Policy{Name: "allow"},
		{KindExport, "ns", "new-service"}: &fedmeshv1.ServiceExport{Name: "new-service"},
	}
	b, changes := PlanIncremental("east", pub, desired, 0)
	if len(b.Endpoints) != 1 || len(b.Endpoints[0].Endpoints) != 2 {
		t.Fatalf("endpoint upserts %v, want one batch of changed+new", b.Endpoints)
	}
	if got := b.Endpoints[0].Endpoints; got[0].Name != "changed" || got[1].Name != "new" {
		t.Fatalf("upserted %s,%s", got[0].Name, got[1].Name)
	}
	if b.Endpoints[0].GetResync() != nil {
		t.Fatal("an incremental batch carries no resync marker")
	}
	if len(b.EndpointDelete) != 1 || b.EndpointDelete[0].Keys[0].Name != "gone" {
		t.Fatalf("endpoint deletes %v", b.EndpointDelete)
	}
	if len(b.PolicyDelete) != 1 || b.PolicyDelete[0].Cluster != "east" || len(b.Policies) != 1 {
		t.Fatalf("policies %v / deletes %v", b.Policies, b.PolicyDelete)
	}
	if len(b.Unexports) != 1 || len(b.Exports) != 1 {
		t.Fatalf("exports %v / unexports %v", b.Exports, b.Unexports)
	}
	if len(changes) != 7 {
		t.Errorf("changes %v: want changed, new, allow and new-service set and gone, deny and cart deleted; nothing for same and never", changes)
	}
	next := Published{}
	for k, v := range pub {
		next[k] = v
	}
	next.Apply(changes)
	want := []Key{{KindEndpoint, "ns", "same"}, {KindEndpoint, "ns", "changed"}, {KindEndpoint, "ns", "new"}, {KindPolicy, "ns", "allow"}, {KindExport, "ns", "new-service"}}
	if len(next) != len(want) {
		t.Fatalf("published after: %d objects, want %d", len(next), len(want))
	}
	for _, k := range want {
		if next[k] == nil {
			t.Errorf("published after lacks %v", k)
		}
	}
	if pub[Key{KindEndpoint, "ns", "gone"}] == nil {
		t.Error("PlanIncremental modified its input")
	}
}

func TestPlanIncrementalSendsNothingWhenUnchanged(t *testing.T) {
	pub := Published{{KindEndpoint, "ns", "a"}: ep("a", "x")}
	b, _ := PlanIncremental("east", pub, map[Key]proto.Message{{KindEndpoint, "ns", "a"}: ep("a", "x")}, 0)
	if !b.Empty() {
		t.Fatalf("sent %v", b)
	}
}

func TestPlanResyncMarksOnlyTheLastChunkFinal(t *testing.T) {
	tests := []struct {
		name       string
		endpoints  int
		batch      int
		wantChunks int
	}{
		{"no endpoints still sends one empty final batch", 0, 10, 1},
		{"one chunk", 7, 10, 1},
		{"exact multiple", 20, 10, 2},
		{"remainder", 25, 10, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Published{}
			for i := range tc.endpoints {
				n := fmt.Sprintf("p%03d", i)
				d[Key{KindEndpoint, "ns", n}] = ep(n, "a")
			}
			b := PlanResync("east", d, 42, tc.batch)
			if len(b.Endpoints) != tc.wantChunks {
				t.Fatalf("%d endpoint batches, want %d", len(b.Endpoints), tc.wantChunks)
			}
			total := 0
			for i, r := range b.Endpoints {
				total += len(r.Endpoints)
				if r.Resync.GetGeneration() != 42 || r.Resync.GetFinal() != (i == len(b.Endpoints)-1) {
					t.Errorf("batch %d marker %v", i, r.Resync)
				}
			}
			if total != tc.endpoints {
				t.Errorf("sent %d endpoints, want %d", total, tc.endpoints)
			}
			if len(b.Policies) != 1 || !b.Policies[0].Resync.GetFinal() || len(b.Exports) != 1 || !b.Exports[0].Resync.GetFinal() {
				t.Errorf("policies and exports need one final batch each even when empty: %v %v", b.Policies, b.Exports)
			}
		})
	}
}
