package store

import (
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// checkFastEncode asserts that what the fast encoder writes decodes (with
// proto.Unmarshal) to req, and that it declines exactly what it must.
func checkFastEncode(t *testing.T, req *fedmeshv1.UpsertEndpointsRequest) (accepted bool) {
	t.Helper()
	b, ok := appendUpsertEndpoints([]byte("prefix"), req)
	if string(b[:6]) != "prefix" {
		t.Fatalf("the encoder overwrote what it appends to")
	}
	if !ok {
		if len(b) != 6 {
			t.Fatalf("the encoder declined but left %d bytes appended", len(b)-6)
		}
		return false
	}
	if _, err := proto.Marshal(req); err != nil {
		t.Fatalf("the encoder accepted a message proto.Marshal refuses (%v): %s", err, prototext.Format(req))
	}
	got := &fedmeshv1.UpsertEndpointsRequest{}
	if err := proto.Unmarshal(b[6:], got); err != nil {
		t.Fatalf("proto.Unmarshal of the fast encoding: %v", err)
	}
	if !proto.Equal(req, got) {
		t.Fatalf("fast encoding does not round-trip:\nwant: %s\ngot:  %s", prototext.Format(req), prototext.Format(got))
	}
	return true
}

func TestFastEndpointEncodingRoundTrips(t *testing.T) {
	full := &fedmeshv1.Endpoint{Cluster: "east", Namespace: "ns", Name: "p", Ips: []string{"10.0.0.1", ""},
		Labels: map[string]string{"app": "web", "": "", "k": ""}, NamespaceLabels: map[string]string{"team": "a"},
		NamedPorts: []*fedmeshv1.NamedPort{{Name: "http", Port: 80}, {}}, Node: "n1", Identity: 1 << 31,
		Meta: &fedmeshv1.ObjectMeta{}}
	withUnknown := &fedmeshv1.Endpoint{Name: "u"}
	withUnknown.ProtoReflect().SetUnknown([]byte{0xc8, 0x06, 0x01}) // field 100, varint 1
	tests := []struct {
		name   string
		req    *fedmeshv1.UpsertEndpointsRequest
		accept bool
	}{
		{"empty request", &fedmeshv1.UpsertEndpointsRequest{}, true},
		{"every field, empty values included", &fedmeshv1.UpsertEndpointsRequest{Cluster: "east",
			Endpoints: []*fedmeshv1.Endpoint{full, {}}, Resync: &fedmeshv1.ResyncMarker{Generation: 2, Final: true}}, true},
		{"an empty resync marker is kept", &fedmeshv1.UpsertEndpointsRequest{Resync: &fedmeshv1.ResyncMarker{}}, true},
		{"unknown fields are left to proto.Marshal", &fedmeshv1.UpsertEndpointsRequest{Endpoints: []*fedmeshv1.Endpoint{withUnknown}}, false},
		{"a nil endpoint is left to proto.Marshal", &fedmeshv1.UpsertEndpointsRequest{Endpoints: []*fedmeshv1.Endpoint{nil}}, false},
		{"invalid UTF-8 is left to proto.Marshal", &fedmeshv1.UpsertEndpointsRequest{Endpoints: []*fedmeshv1.Endpoint{{Labels: map[string]string{"a": "\xff"}}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := checkFastEncode(t, tt.req); got != tt.accept {
				t.Fatalf("fast encoder accepted = %v, want %v", got, tt.accept)
			}
		})
	}
}

// FuzzFastEndpointEncodingRoundTrips encodes every request protobuf can
// decode from the input.
func FuzzFastEndpointEncodingRoundTrips(f *testing.F) {
	for _, c := range fuzzCommands([]byte("seed corpus for endpoint batches \x01\x02\x03\x04\x05\x06\x07\x08")) {
		if c.Type == CmdUpsertEndpoints {
			b, err := proto.Marshal(c.Payload)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req := &fedmeshv1.UpsertEndpointsRequest{}
		if proto.Unmarshal(b, req) != nil {
			return
		}
		checkFastEncode(t, req)
	})
}
