package store

import (
	"bytes"
	"fmt"
	"testing"
	"unsafe"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// checkFastDecode asserts the fast decoder agrees with proto.Unmarshal: when
// it accepts b, proto.Unmarshal accepts it and yields an equal message.
func checkFastDecode(t *testing.T, b []byte) (accepted bool) {
	t.Helper()
	got, ok := fastUnmarshalUpsertEndpoints(b)
	if !ok {
		return false
	}
	want := &fedmeshv1.UpsertEndpointsRequest{}
	if err := proto.Unmarshal(b, want); err != nil {
		t.Fatalf("fast decoder accepted bytes proto.Unmarshal rejects (%v): %x", err, b)
	}
	if !proto.Equal(want, got) {
		t.Fatalf("fast decoder disagrees with proto.Unmarshal:\nproto: %s\nfast:  %s", prototext.Format(want), prototext.Format(got))
	}
	return true
}

func TestFastEndpointDecodingMatchesProtobuf(t *testing.T) {
	full := &fedmeshv1.Endpoint{Cluster: "east", Namespace: "ns", Name: "p", Ips: []string{"10.0.0.1", "fd00::1"},
		Labels: map[string]string{"app": "web", "": "empty-key", "k": ""}, NamespaceLabels: map[string]string{"team": "a"},
		NamedPorts: []*fedmeshv1.NamedPort{{Name: "http", Port: 80}, {Name: "dns", Port: 53, Protocol: fedmeshv1.Protocol_PROTOCOL_UDP}},
		Node:       "n1", Identity: 70000, Meta: &fedmeshv1.ObjectMeta{Revision: 3, CreateRevision: 2}}
	enc := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	unknown := protowire.AppendTag(enc(&fedmeshv1.UpsertEndpointsRequest{Cluster: "east"}), 99, protowire.VarintType)
	unknown = protowire.AppendVarint(unknown, 1)
	tests := []struct {
		name   string
		b      []byte
		accept bool
	}{
		{"empty request", nil, true},
		{"full endpoint with resync", enc(&fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{full, {Name: "q"}},
			Resync: &fedmeshv1.ResyncMarker{Generation: 4, Final: true}}), true},
		{"a repeated message field merges", append(enc(&fedmeshv1.UpsertEndpointsRequest{Resync: &fedmeshv1.ResyncMarker{Generation: 4}}),
			enc(&fedmeshv1.UpsertEndpointsRequest{Cluster: "x", Resync: &fedmeshv1.ResyncMarker{Final: true}})...), true},
		{"an unknown field falls back", unknown, false},
		{"truncated input falls back", enc(&fedmeshv1.UpsertEndpointsRequest{Endpoints: []*fedmeshv1.Endpoint{full}})[:20], false},
	}
	bad := protowire.AppendTag(nil, 1, protowire.BytesType)
	bad = protowire.AppendBytes(bad, []byte{0xff, 0xfe})
	tests = append(tests, struct {
		name   string
		b      []byte
		accept bool
	}{"invalid UTF-8 in a string falls back", bad, false})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := checkFastDecode(t, tt.b); got != tt.accept {
				t.Fatalf("fast decoder accepted = %v, want %v", got, tt.accept)
			}
		})
	}
}

func FuzzFastEndpointDecodingMatchesProtobuf(f *testing.F) {
	for _, c := range fuzzCommands([]byte("seed corpus for endpoint batches \x01\x02\x03\x04\x05\x06\x07\x08")) {
		if c.Type == CmdUpsertEndpoints {
			b, err := proto.Marshal(c.Payload)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkFastDecode(t, b) })
}

func TestTheProposingLeaderAppliesItsOwnCommandAndOthersDecodeTheBytes(t *testing.T) {
	encode := func(c Command) []byte {
		b, err := c.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name     string
		prepared bool // the entry's data is the slice that was prepared
		wantSame bool // the stored endpoint is the proposer's object
	}{
		{name: "leader: the prepared slice", prepared: true, wantSame: true},
		{name: "follower: a copy of the bytes", prepared: false, wantSame: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFSM()
			f.ApplyBatch([]*raft.Log{{Index: 1, Type: raft.LogCommand, Data: encode(cluster("east", "10.0.0.0/16"))}})
			mine := ep("ns", "p", "10.0.0.1", map[string]string{"app": "web"})
			c := upsert("east", 0, false, mine)
			data := encode(c)
			f.Predecoded().Put(data, c)
			entry := data
			if !tt.prepared {
				entry = bytes.Clone(data)
			}
			res := f.ApplyBatch([]*raft.Log{{Index: 2, Type: raft.LogCommand, Data: entry}})
			f.Predecoded().Forget(data)
			if r := res[0].(*Result); r.Err != nil || r.Revision != 2 {
				t.Fatalf("apply: %+v", r)
			}
			var got []*fedmeshv1.Endpoint
			f.View(func(s *State) { got = s.Endpoints("east", "", "") })
			if len(got) != 1 || got[0].GetName() != "p" || got[0].GetIdentity() == 0 {
				t.Fatalf("stored endpoints %v", got)
			}
			if same := got[0] == mine; same != tt.wantSame {
				t.Fatalf("stored endpoint is the proposer's object: %v, want %v", same, tt.wantSame)
			}
			if n := f.Predecoded().Len(); n != 0 {
				t.Fatalf("%d prepared commands left after release", n)
			}
		})
	}
}

// Endpoints decoded from separate requests share their label strings and
// names, so a store fed one endpoint at a time does not hold a copy of every
// label per pod.
func TestDecodedEndpointsShareLabelStringsAcrossRequests(t *testing.T) {
	decode := func(name string) *fedmeshv1.Endpoint {
		req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{{
			Cluster: "east", Namespace: "shop", Name: name, Ips: []string{"10.0.0.1"}, Node: "n1",
			Labels: map[string]string{"app.kubernetes.io/name": "checkout-frontend"},
		}}}
		b, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := fastUnmarshalUpsertEndpoints(b)
		if !ok {
			t.Fatal("fast decoding refused a plain request")
		}
		return got.GetEndpoints()[0]
	}
	a, b := decode("p1"), decode("p2")
	same := func(x, y string) bool { return unsafe.StringData(x) == unsafe.StringData(y) }
	if !same(a.GetLabels()["app.kubernetes.io/name"], b.GetLabels()["app.kubernetes.io/name"]) ||
		!same(a.GetNamespace(), b.GetNamespace()) || !same(a.GetNode(), b.GetNode()) {
		t.Fatal("two requests' endpoints hold separate copies of the same label value, namespace or node")
	}
	for k := range a.GetLabels() {
		for k2 := range b.GetLabels() {
			if !same(k, k2) {
				t.Fatal("label keys not shared")
			}
		}
	}
}

func TestInternerStaysBounded(t *testing.T) {
	in := &interner{m: map[string]string{}}
	for i := range maxInterned + 10 {
		s, ok := in.str(fmt.Appendf(nil, "value-%d", i))
		if !ok || s != fmt.Sprintf("value-%d", i) {
			t.Fatalf("str %d = %q %v", i, s, ok)
		}
		if len(in.m) > maxInterned {
			t.Fatalf("interner holds %d strings, bound %d", len(in.m), maxInterned)
		}
	}
	if _, ok := in.str([]byte{0xff}); ok {
		t.Fatal("invalid UTF-8 accepted")
	}
}
