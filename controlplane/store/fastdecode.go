package store

import (
	"sync"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// fastUnmarshalUpsertEndpoints decodes an UpsertEndpointsRequest, the
// command followers decode most, without protobuf reflection (which spends
// most of its time putting label map entries through reflect). It handles
// the wire format Encode writes; on anything else — an unknown field, a
// wire type the schema does not give the field, invalid UTF-8, a malformed
// map entry — it reports false and the caller uses proto.Unmarshal, so the
// result is always what proto.Unmarshal returns (fuzz_test.go checks).
// Sub-messages other than Endpoint (resync, named ports, meta) go through
// proto.Unmarshal with Merge, which is exactly protobuf's semantics.
func fastUnmarshalUpsertEndpoints(b []byte) (*fedmeshv1.UpsertEndpointsRequest, bool) {
	req := &fedmeshv1.UpsertEndpointsRequest{}
	merge := proto.UnmarshalOptions{Merge: true}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		if typ != protowire.BytesType {
			return nil, false
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		switch num {
		case 1:
			s, ok := str(v)
			if !ok {
				return nil, false
			}
			req.Cluster = s
		case 2:
			e, ok := fastUnmarshalEndpoint(v, shared)
			if !ok {
				return nil, false
			}
			req.Endpoints = append(req.Endpoints, e)
		case 3:
			if req.Resync == nil {
				req.Resync = &fedmeshv1.ResyncMarker{}
			}
			if merge.Unmarshal(v, req.Resync) != nil {
				return nil, false
			}
		default:
			return nil, false
		}
	}
	return req, true
}

func fastUnmarshalEndpoint(b []byte, in *interner) (*fedmeshv1.Endpoint, bool) {
	if in != nil {
		in.mu.Lock()
		defer in.mu.Unlock()
	}
	e := &fedmeshv1.Endpoint{}
	labels := countField(b, 5)
	merge := proto.UnmarshalOptions{Merge: true}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		if num == 9 {
			if typ != protowire.VarintType {
				return nil, false
			}
			x, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return nil, false
			}
			b = b[n:]
			e.Identity = uint32(x)
			continue
		}
		if typ != protowire.BytesType {
			return nil, false
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		var s string
		var ok bool
		switch num {
		case 1, 2, 8: // cluster, namespace, node: shared by many endpoints
			if s, ok = in.str(v); !ok {
				return nil, false
			}
		case 3, 4:
			if s, ok = str(v); !ok {
				return nil, false
			}
		}
		switch num {
		case 1:
			e.Cluster = s
		case 2:
			e.Namespace = s
		case 3:
			e.Name = s
		case 4:
			e.Ips = append(e.Ips, s)
		case 8:
			e.Node = s
		case 5:
			if e.Labels == nil {
				e.Labels = make(map[string]string, labels)
			}
			if !mapEntry(v, e.Labels, in) {
				return nil, false
			}
		case 6:
			if e.NamespaceLabels == nil {
				e.NamespaceLabels = map[string]string{}
			}
			if !mapEntry(v, e.NamespaceLabels, in) {
				return nil, false
			}
		case 7:
			p := &fedmeshv1.NamedPort{}
			if merge.Unmarshal(v, p) != nil {
				return nil, false
			}
			e.NamedPorts = append(e.NamedPorts, p)
		case 10:
			if e.Meta == nil {
				e.Meta = &fedmeshv1.ObjectMeta{}
			}
			if merge.Unmarshal(v, e.Meta) != nil {
				return nil, false
			}
		default:
			return nil, false
		}
	}
	return e, true
}

// mapEntry adds one map<string, string> entry (key 1, value 2; a missing
// one is empty) to m.
func mapEntry(b []byte, m map[string]string, in *interner) bool {
	var k, v string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType || (num != 1 && num != 2) {
			return false
		}
		b = b[n:]
		x, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		s, ok := in.str(x)
		if !ok {
			return false
		}
		if num == 1 {
			k = s
		} else {
			v = s
		}
	}
	m[k] = v
	return true
}

// str copies a proto3 string field, which must be valid UTF-8.
func str(b []byte) (string, bool) {
	if !utf8.Valid(b) {
		return "", false
	}
	return string(b), true
}

// interner hands out one string per distinct byte content, so the
// endpoints the store holds share their label keys and values (and
// cluster, namespace and node names) instead of each holding a copy: pods
// of a workload carry the same labels, and writers that send one endpoint
// at a time would otherwise store every label once per pod. It is bounded:
// at maxInterned strings it starts over, so churning values (hashes, pod
// names) cost at most that much; what endpoints already hold stays theirs.
type interner struct {
	mu sync.Mutex
	m  map[string]string
}

const maxInterned = 1 << 14

// shared is the process's interner.
var shared = &interner{m: map[string]string{}}

// str returns b as a string, the interned copy when there is one; a nil
// interner interns nothing. The caller holds in.mu.
func (in *interner) str(b []byte) (string, bool) {
	if in == nil {
		return str(b)
	}
	if s, ok := in.m[string(b)]; ok { // no allocation for the lookup
		return s, true
	}
	s, ok := str(b)
	if !ok {
		return "", false
	}
	if len(in.m) >= maxInterned {
		clear(in.m)
	}
	in.m[s] = s
	return s, true
}

// countField counts the occurrences of field num (length-delimited) in a
// message, to size a map before filling it; malformed input counts what it
// can (the decoder rejects it anyway).
func countField(b []byte, num protowire.Number) int {
	n := 0
	for len(b) > 0 {
		f, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return n
		}
		b = b[l:]
		l = protowire.ConsumeFieldValue(f, typ, b)
		if l < 0 {
			return n
		}
		b = b[l:]
		if f == num && typ == protowire.BytesType {
			n++
		}
	}
	return n
}

// UnmarshalUpsertEndpoints is proto.Unmarshal(b, req) for the API's most
// frequent write, faster (see fastUnmarshalUpsertEndpoints); the gRPC server
// decodes requests with it.
func UnmarshalUpsertEndpoints(b []byte, req *fedmeshv1.UpsertEndpointsRequest) error {
	fast, ok := fastUnmarshalUpsertEndpoints(b)
	if !ok {
		return proto.Unmarshal(b, req)
	}
	proto.Reset(req)
	req.Cluster, req.Endpoints, req.Resync = fast.GetCluster(), fast.GetEndpoints(), fast.GetResync()
	return nil
}
