package server

import (
	"errors"
	"io"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// errIsolated is what a replica cut off by fault injection answers.
var errIsolated = errors.New("replica isolated by fault injection")

// faultTransport wraps a raft transport so a test can cut the replica off
// from its peers in both directions (outgoing RPCs fail, incoming RPCs are
// refused) and heal it again, without touching the network. It only exists
// when the replica runs with fault injection enabled.
type faultTransport struct {
	*raft.NetworkTransport
	isolated atomic.Bool
	consumer chan raft.RPC
}

var (
	_ raft.Transport   = (*faultTransport)(nil)
	_ raft.WithClose   = (*faultTransport)(nil)
	_ raft.WithPreVote = (*faultTransport)(nil)
)

func newFaultTransport(inner *raft.NetworkTransport) *faultTransport {
	ft := &faultTransport{NetworkTransport: inner, consumer: make(chan raft.RPC)}
	go func() {
		for rpc := range inner.Consumer() {
			if ft.isolated.Load() {
				rpc.Respond(nil, errIsolated)
				continue
			}
			ft.consumer <- rpc
		}
	}()
	return ft
}

func (t *faultTransport) Consumer() <-chan raft.RPC { return t.consumer }

func (t *faultTransport) SetHeartbeatHandler(cb func(rpc raft.RPC)) {
	t.NetworkTransport.SetHeartbeatHandler(func(rpc raft.RPC) {
		if t.isolated.Load() {
			rpc.Respond(nil, errIsolated)
			return
		}
		cb(rpc)
	})
}

func (t *faultTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	if t.isolated.Load() {
		return nil, errIsolated
	}
	p, err := t.NetworkTransport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	return faultPipeline{AppendPipeline: p, t: t}, nil
}

func (t *faultTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if t.isolated.Load() {
		return errIsolated
	}
	return t.NetworkTransport.AppendEntries(id, target, args, resp)
}

func (t *faultTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	if t.isolated.Load() {
		return errIsolated
	}
	return t.NetworkTransport.RequestVote(id, target, args, resp)
}

func (t *faultTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	if t.isolated.Load() {
		return errIsolated
	}
	return t.NetworkTransport.RequestPreVote(id, target, args, resp)
}

func (t *faultTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	if t.isolated.Load() {
		return errIsolated
	}
	return t.NetworkTransport.InstallSnapshot(id, target, args, resp, data)
}

func (t *faultTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	if t.isolated.Load() {
		return errIsolated
	}
	return t.NetworkTransport.TimeoutNow(id, target, args, resp)
}

type faultPipeline struct {
	raft.AppendPipeline
	t *faultTransport
}

func (p faultPipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	if p.t.isolated.Load() {
		return nil, errIsolated
	}
	return p.AppendPipeline.AppendEntries(args, resp)
}
