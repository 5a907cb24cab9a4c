package store

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// appendUpsertEndpoints appends the protobuf encoding of req, as
// proto.Marshal would write it up to map order, without reflection. It
// reports false, having appended nothing, for a message carrying unknown
// fields (those only proto.Marshal reproduces), a nil endpoint or a string
// that is not valid UTF-8 (proto.Marshal refuses it: a follower could not
// decode it); sub-messages other than Endpoint go through proto.Marshal. fastencode_test.go checks that
// proto.Unmarshal of the result equals req.
func appendUpsertEndpoints(b []byte, req *fedmeshv1.UpsertEndpointsRequest) ([]byte, bool) {
	if len(req.ProtoReflect().GetUnknown()) > 0 {
		return b, false
	}
	start := len(b)
	if !utf8.ValidString(req.GetCluster()) {
		return b, false
	}
	b = appendString(b, 1, req.GetCluster())
	// One scratch buffer for every endpoint (grown from nothing it would be
	// reallocated a dozen times per endpoint).
	eb := make([]byte, 0, 2048)
	for _, e := range req.GetEndpoints() {
		var ok bool
		if eb, ok = appendEndpoint(eb[:0], e); !ok {
			return b[:start], false
		}
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, eb)
	}
	if r := req.GetResync(); r != nil {
		var ok bool
		if b, ok = appendMessage(b, 3, r); !ok {
			return b[:start], false
		}
	}
	return b, true
}

func appendEndpoint(b []byte, e *fedmeshv1.Endpoint) ([]byte, bool) {
	if e == nil {
		return b, false // whatever proto.Marshal does with it
	}
	if len(e.ProtoReflect().GetUnknown()) > 0 || !validStrings(e) {
		return b, false
	}
	b = appendString(b, 1, e.GetCluster())
	b = appendString(b, 2, e.GetNamespace())
	b = appendString(b, 3, e.GetName())
	for _, ip := range e.GetIps() {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendString(b, ip)
	}
	b = appendStringMap(b, 5, e.GetLabels())
	b = appendStringMap(b, 6, e.GetNamespaceLabels())
	var ok bool
	for _, p := range e.GetNamedPorts() {
		if b, ok = appendMessage(b, 7, p); !ok {
			return b, false
		}
	}
	b = appendString(b, 8, e.GetNode())
	if id := e.GetIdentity(); id != 0 {
		b = protowire.AppendTag(b, 9, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(id))
	}
	if m := e.GetMeta(); m != nil {
		if b, ok = appendMessage(b, 10, m); !ok {
			return b, false
		}
	}
	return b, true
}

// appendString appends a proto3 string field (omitted when empty).
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendStringMap appends a map<string, string> field, one entry message
// (key 1, value 2) per pair.
func appendStringMap(b []byte, num protowire.Number, m map[string]string) []byte {
	for k, v := range m {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		n := protowire.SizeTag(1) + protowire.SizeBytes(len(k)) + protowire.SizeTag(2) + protowire.SizeBytes(len(v))
		b = protowire.AppendVarint(b, uint64(n))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, k)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, v)
	}
	return b
}

func appendMessage(b []byte, num protowire.Number, m proto.Message) ([]byte, bool) {
	raw, err := proto.Marshal(m)
	if err != nil {
		return b, false
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, raw), true
}

// validStrings reports whether every string field of e is valid UTF-8.
func validStrings(e *fedmeshv1.Endpoint) bool {
	for _, s := range []string{e.GetCluster(), e.GetNamespace(), e.GetName(), e.GetNode()} {
		if !utf8.ValidString(s) {
			return false
		}
	}
	for _, s := range e.GetIps() {
		if !utf8.ValidString(s) {
			return false
		}
	}
	for _, m := range []map[string]string{e.GetLabels(), e.GetNamespaceLabels()} {
		for k, v := range m {
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				return false
			}
		}
	}
	return true
}
