package server

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// notLeaderReason marks a forwarded write the replica it reached refused
// for not leading: nothing of it entered the log, so the follower routes it
// again instead of failing it.
const notLeaderReason = "NOT_LEADER"

// errForwardNotLeader is a forwarded write refused by a replica that no
// longer leads.
var errForwardNotLeader = errors.New("forwarded to a replica that does not lead")

// notLeaderStatus is the refusal of a write by replica self, which does not
// lead (the write did not enter the log).
func notLeaderStatus(self string) error {
	st, err := status.New(codes.Unavailable, fmt.Sprintf("replica %s is not the leader; retry", self)).
		WithDetails(&errdetails.ErrorInfo{Reason: notLeaderReason, Domain: "fedmesh.io"})
	if err != nil {
		return status.Errorf(codes.Unavailable, "replica %s is not the leader; retry", self)
	}
	return st.Err()
}

// maxForwardMessage bounds the commands one stream message carries (a
// single larger command still goes alone): well under the receive limits.
const maxForwardMessage = 4 << 20

// forwarder sends the writes this follower forwards to one leader
// connection over one ProposeStream. A write leaves as soon as the sender
// is free, together with whatever queued meanwhile; results come back per
// message in any order. A unary call per write cost about a fifth of the
// control plane's CPU per write and added queueing on the follower; a
// stream message costs neither.
type forwarder struct {
	c  *Core
	cc *grpc.ClientConn

	mu      sync.Mutex
	pending []*forwardCall
	sending bool
	stream  *forwardStream
	nextID  uint64
}

// forwardStream is one open ProposeStream and the messages awaiting their
// results on it.
type forwardStream struct {
	s       grpc.BidiStreamingClient[fedmeshv1.ProposeStreamRequest, fedmeshv1.ProposeStreamResponse]
	cancel  context.CancelFunc
	waiting map[uint64][]*forwardCall // guarded by forwarder.mu
	err     error                     // set once the stream broke; guarded by forwarder.mu
}

// forwardCall is one forwarded write waiting for its result.
type forwardCall struct {
	ctx  context.Context
	data []byte
	done chan struct{}
	res  *store.Result
	err  error
}

func (call *forwardCall) finish(res *store.Result, err error) {
	call.res, call.err = res, err
	close(call.done)
}

// forwarderFor returns the forwarder of the leader connection cc.
func (c *Core) forwarderFor(cc *grpc.ClientConn) *forwarder {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.forwarders[cc]
	if f == nil {
		f = &forwarder{c: c, cc: cc}
		c.forwarders[cc] = f
	}
	return f
}

// close ends the stream; its waiting writes fail as unknown outcomes.
func (f *forwarder) close() {
	f.mu.Lock()
	st := f.stream
	f.mu.Unlock()
	if st != nil {
		st.cancel()
	}
}

// forward proposes data on the leader and waits for its result or ctx.
// When ctx ends after the write left, its outcome is unknown to the caller,
// as with any cancelled call.
func (f *forwarder) forward(ctx context.Context, data []byte) (*store.Result, error) {
	call := &forwardCall{ctx: ctx, data: data, done: make(chan struct{})}
	f.mu.Lock()
	f.pending = append(f.pending, call)
	start := !f.sending
	f.sending = true
	f.mu.Unlock()
	if start {
		go f.send()
	}
	select {
	case <-call.done:
		return call.res, call.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// send writes pending calls to the stream until none is left.
func (f *forwarder) send() {
	for {
		f.mu.Lock()
		var batch []*forwardCall
		size := 0
		for len(f.pending) > 0 && (len(batch) == 0 || size+len(f.pending[0].data) <= maxForwardMessage) {
			call := f.pending[0]
			f.pending = f.pending[1:]
			if call.ctx.Err() != nil {
				// Its caller has gone and nothing of it was sent.
				call.finish(nil, status.FromContextError(call.ctx.Err()).Err())
				continue
			}
			batch = append(batch, call)
			size += len(call.data)
		}
		if len(batch) == 0 {
			f.sending = false
			f.pending = nil
			f.mu.Unlock()
			return
		}
		st, err := f.open()
		if err != nil {
			f.mu.Unlock()
			for _, call := range batch {
				call.finish(nil, err)
			}
			continue
		}
		f.nextID++
		id := f.nextID
		st.waiting[id] = batch
		f.mu.Unlock()

		req := &fedmeshv1.ProposeStreamRequest{Id: id, Commands: make([][]byte, len(batch))}
		for i, call := range batch {
			req.Commands[i] = call.data
		}
		if err := st.s.Send(req); err != nil {
			// The receiver sees the stream end too and fails what waits.
			st.cancel()
		}
	}
}

// open returns the open stream, opening one if there is none (f.mu held).
func (f *forwarder) open() (*forwardStream, error) {
	if f.stream != nil && f.stream.err == nil {
		return f.stream, nil
	}
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), forwardedKey, f.c.self))
	s, err := fedmeshv1.NewControlPlaneServiceClient(f.cc).ProposeStream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	st := &forwardStream{s: s, cancel: cancel, waiting: map[uint64][]*forwardCall{}}
	f.stream = st
	go f.receive(st)
	return st, nil
}

// receive hands results to their calls until the stream ends, then fails
// every call still waiting on it: their outcome is unknown.
func (f *forwarder) receive(st *forwardStream) {
	for {
		resp, err := st.s.Recv()
		if err != nil {
			st.cancel()
			f.mu.Lock()
			st.err = err
			waiting := st.waiting
			st.waiting = nil
			if f.stream == st {
				f.stream = nil
			}
			f.mu.Unlock()
			lost := status.Errorf(codes.Unavailable, "forwarding to the leader failed, write outcome unknown: %v; read back or retry", err)
			for _, calls := range waiting {
				for _, call := range calls {
					call.finish(nil, lost)
				}
			}
			return
		}
		f.mu.Lock()
		calls := st.waiting[resp.GetId()]
		delete(st.waiting, resp.GetId())
		f.mu.Unlock()
		if len(resp.GetResults()) != len(calls) {
			err := status.Errorf(codes.Internal, "leader answered %d results for %d forwarded writes", len(resp.GetResults()), len(calls))
			for _, call := range calls {
				call.finish(nil, err)
			}
			continue
		}
		for i, call := range calls {
			call.finish(forwardResult(resp.GetResults()[i]))
		}
	}
}

// forwardResult is what the leader's result means for the caller.
func forwardResult(r *fedmeshv1.ProposeResult) (*store.Result, error) {
	if len(r.GetStatus()) > 0 {
		var st spb.Status
		if err := proto.Unmarshal(r.GetStatus(), &st); err != nil {
			return nil, status.Errorf(codes.Internal, "decode the leader's status of a forwarded write: %v", err)
		}
		if st.GetCode() == int32(codes.OK) {
			return nil, status.Error(codes.Internal, fmt.Sprintf("leader returned an OK status without a result: %s", st.GetMessage()))
		}
		err := status.ErrorProto(&st)
		for _, d := range status.Convert(err).Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == notLeaderReason {
				return nil, fmt.Errorf("%w: %w", errForwardNotLeader, err)
			}
		}
		return nil, err
	}
	resp := r.GetResponse()
	return &store.Result{Revision: resp.GetRevision(), Deleted: resp.GetDeleted(), Cluster: resp.GetCluster(), Node: resp.GetNode(), Policies: resp.GetPolicies()}, nil
}
