package server

import (
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"

	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// codec is gRPC's protobuf codec, except that endpoint batches (the bulk of
// all writes) are decoded by the store's reflection-free decoder, which
// yields the same message.
type codec struct{ encoding.CodecV2 }

func newCodec() codec { return codec{encoding.GetCodecV2(protoenc.Name)} }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	req, ok := v.(*fedmeshv1.UpsertEndpointsRequest)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	// The decoder copies every string: nothing aliases buf after Free.
	return store.UnmarshalUpsertEndpoints(buf.ReadOnlyData(), req)
}
