package server

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// adminService manages the Raft membership and serves read indexes.
type adminService struct {
	fedmeshv1.UnimplementedControlPlaneServiceServer
	c *Core
}

func (a *adminService) members() ([]*fedmeshv1.Member, error) {
	f := a.c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, status.Errorf(codes.Unavailable, "read raft configuration: %v", err)
	}
	published := a.c.snapshotMembers()
	_, leader := a.c.raft.LeaderWithID()
	var out []*fedmeshv1.Member
	for _, s := range f.Configuration().Servers {
		out = append(out, &fedmeshv1.Member{
			Id: string(s.ID), RaftAddress: string(s.Address), GrpcAddress: published[string(s.ID)].GetGrpcAddress(),
			Voter: s.Suffrage == raft.Voter, Leader: s.ID == leader, LogFormat: published[string(s.ID)].GetLogFormat(),
		})
	}
	slices.SortFunc(out, func(x, y *fedmeshv1.Member) int { return strings.Compare(x.GetId(), y.GetId()) })
	return out, nil
}

func (a *adminService) ListMembers(ctx context.Context, _ *fedmeshv1.ListMembersRequest) (*fedmeshv1.ListMembersResponse, error) {
	ms, err := a.members()
	return &fedmeshv1.ListMembersResponse{Members: ms}, err
}

// onLeader runs fn on the leader, forwarding the call there otherwise.
func onLeader[Resp any](ctx context.Context, c *Core, fn func() (Resp, error), forward func(ctx context.Context, cc *grpc.ClientConn) (Resp, error)) (Resp, error) {
	var zero Resp
	cc, err := c.leaderConn(ctx)
	if err != nil {
		return zero, err
	}
	if cc != nil {
		if forwardedBy(ctx) != "" {
			return zero, status.Error(codes.Unavailable, "leader changed while forwarding; retry")
		}
		return forward(c.forwardContext(ctx), cc)
	}
	return fn()
}

func raftStatus(op string, err error) error {
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
		return status.Errorf(codes.Unavailable, "%s: %v; retry", op, err)
	}
	return status.Errorf(codes.FailedPrecondition, "%s: %v", op, err)
}

func (a *adminService) AddMember(ctx context.Context, req *fedmeshv1.AddMemberRequest) (*fedmeshv1.AddMemberResponse, error) {
	var errs field.ErrorList
	if req.GetId() == "" {
		errs = append(errs, field.Required(field.NewPath("id"), ""))
	}
	if req.GetRaftAddress() == "" {
		errs = append(errs, field.Required(field.NewPath("raftAddress"), ""))
	}
	if err := model.AsError(errs); err != nil {
		return nil, err
	}
	return onLeader(ctx, a.c, func() (*fedmeshv1.AddMemberResponse, error) {
		var f raft.IndexFuture
		if req.GetNonvoter() {
			f = a.c.raft.AddNonvoter(raft.ServerID(req.GetId()), raft.ServerAddress(req.GetRaftAddress()), 0, a.c.timeout)
		} else {
			f = a.c.raft.AddVoter(raft.ServerID(req.GetId()), raft.ServerAddress(req.GetRaftAddress()), 0, a.c.timeout)
		}
		if err := f.Error(); err != nil {
			return nil, raftStatus("add member "+req.GetId(), err)
		}
		if req.GetGrpcAddress() != "" {
			m := &fedmeshv1.Member{Id: req.GetId(), RaftAddress: req.GetRaftAddress(), GrpcAddress: req.GetGrpcAddress(), Voter: !req.GetNonvoter()}
			if _, err := a.c.applyLocal(ctx, store.CmdSetMember, m); err != nil {
				return nil, raftStatus("publish member "+req.GetId(), err)
			}
		}
		ms, err := a.members()
		return &fedmeshv1.AddMemberResponse{Members: ms}, err
	}, func(ctx context.Context, cc *grpc.ClientConn) (*fedmeshv1.AddMemberResponse, error) {
		return fedmeshv1.NewControlPlaneServiceClient(cc).AddMember(ctx, req)
	})
}

func (a *adminService) RemoveMember(ctx context.Context, req *fedmeshv1.RemoveMemberRequest) (*fedmeshv1.RemoveMemberResponse, error) {
	if req.GetId() == "" {
		return nil, model.AsError(field.ErrorList{field.Required(field.NewPath("id"), "")})
	}
	return onLeader(ctx, a.c, func() (*fedmeshv1.RemoveMemberResponse, error) {
		if err := a.c.raft.RemoveServer(raft.ServerID(req.GetId()), 0, a.c.timeout).Error(); err != nil {
			return nil, raftStatus("remove member "+req.GetId(), err)
		}
		if req.GetId() != a.c.self {
			if _, err := a.c.applyLocal(ctx, store.CmdRemoveMember, &fedmeshv1.Member{Id: req.GetId()}); err != nil {
				return nil, raftStatus("unpublish member "+req.GetId(), err)
			}
		}
		ms, err := a.members()
		return &fedmeshv1.RemoveMemberResponse{Members: ms}, err
	}, func(ctx context.Context, cc *grpc.ClientConn) (*fedmeshv1.RemoveMemberResponse, error) {
		return fedmeshv1.NewControlPlaneServiceClient(cc).RemoveMember(ctx, req)
	})
}

func (a *adminService) GetReplicaStatus(context.Context, *fedmeshv1.GetReplicaStatusRequest) (*fedmeshv1.GetReplicaStatusResponse, error) {
	_, leader := a.c.raft.LeaderWithID()
	resp := &fedmeshv1.GetReplicaStatusResponse{Id: a.c.self, RaftState: a.c.raft.State().String(), LeaderId: string(leader)}
	a.c.view(func(st *store.State) {
		resp.Revision, resp.OldestRevision = st.Revision(), st.Log().Compacted()
	})
	resp.AppliedIndex = a.c.fsm.AppliedIndex()
	return resp, nil
}

func (a *adminService) Propose(_ context.Context, req *fedmeshv1.ProposeRequest) (*fedmeshv1.ProposeResponse, error) {
	if a.c.raft.State() != raft.Leader {
		return nil, status.Errorf(codes.Unavailable, "replica %s is not the leader; retry", a.c.self)
	}
	// An entry that does not decode would stop every replica's FSM: check
	// before it enters the log.
	cmd, err := store.DecodeCommand(req.GetCommand())
	if err != nil {
		return nil, model.AsError(field.ErrorList{field.Invalid(field.NewPath("command"), "", err.Error())})
	}
	// The FSM applies the command decoded here instead of decoding it again.
	a.c.fsm.Predecoded().Put(req.GetCommand(), cmd)
	res, err := a.c.applyData(req.GetCommand())
	a.c.fsm.Predecoded().Forget(req.GetCommand())
	if err != nil {
		return nil, raftError(err)
	}
	return proposeResponse(res), nil
}

// ProposeStream serves a follower's forwarded writes: each message's
// commands are queued together (so they join one Raft append) and answered
// once applied, while later messages are already being read.
func (a *adminService) ProposeStream(stream grpc.BidiStreamingServer[fedmeshv1.ProposeStreamRequest, fedmeshv1.ProposeStreamResponse]) error {
	var sendMu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait() // a stream must not be used after its handler returns
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		results := a.proposeAll(req.GetCommands())
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := &fedmeshv1.ProposeStreamResponse{Id: req.GetId(), Results: make([]*fedmeshv1.ProposeResult, len(results))}
			for i, wait := range results {
				resp.Results[i] = wait()
			}
			sendMu.Lock()
			defer sendMu.Unlock()
			// A failed send ends the stream; the follower then reports the
			// outcome of what it waited for as unknown.
			_ = stream.Send(resp)
		}()
	}
}

// proposeAll queues every command before waiting for any and returns, per
// command, the function that waits for its result.
func (a *adminService) proposeAll(cmds [][]byte) []func() *fedmeshv1.ProposeResult {
	out := make([]func() *fedmeshv1.ProposeResult, len(cmds))
	leader := a.c.raft.State() == raft.Leader
	for i, data := range cmds {
		if !leader {
			fail := proposeFailure(notLeaderStatus(a.c.self))
			out[i] = func() *fedmeshv1.ProposeResult { return fail }
			continue
		}
		// An entry that does not decode would stop every replica's FSM.
		cmd, err := store.DecodeCommand(data)
		if err != nil {
			fail := proposeFailure(model.AsError(field.ErrorList{field.Invalid(field.NewPath("commands").Index(i), "", err.Error())}))
			out[i] = func() *fedmeshv1.ProposeResult { return fail }
			continue
		}
		// The FSM applies the command decoded here instead of decoding it
		// again.
		a.c.fsm.Predecoded().Put(data, cmd)
		pr := a.c.props.enqueue(data)
		out[i] = func() *fedmeshv1.ProposeResult {
			res, err := pr.wait()
			a.c.fsm.Predecoded().Forget(data)
			if errors.Is(err, raft.ErrNotLeader) {
				return proposeFailure(notLeaderStatus(a.c.self))
			}
			if err != nil {
				return proposeFailure(raftError(err))
			}
			return &fedmeshv1.ProposeResult{Response: proposeResponse(res)}
		}
	}
	return out
}

// proposeResponse is the wire form of an applied command's result;
// forwardResult reads it back.
func proposeResponse(res *store.Result) *fedmeshv1.ProposeResponse {
	return &fedmeshv1.ProposeResponse{Revision: res.Revision, Deleted: res.Deleted, Cluster: res.Cluster, Node: res.Node, Policies: res.Policies}
}

// proposeFailure is the result of a command that failed with err, its
// status details kept so the client sees what a local write would return.
func proposeFailure(err error) *fedmeshv1.ProposeResult {
	b, merr := proto.Marshal(status.Convert(err).Proto())
	if merr != nil {
		b, _ = proto.Marshal(status.New(codes.Internal, err.Error()).Proto())
	}
	return &fedmeshv1.ProposeResult{Status: b}
}

func (a *adminService) ReadIndex(context.Context, *fedmeshv1.ReadIndexRequest) (*fedmeshv1.ReadIndexResponse, error) {
	if a.c.raft.State() != raft.Leader {
		return nil, status.Errorf(codes.Unavailable, "replica %s is not the leader; retry", a.c.self)
	}
	rev, err := a.c.readIndex()
	if err != nil {
		return nil, err
	}
	return &fedmeshv1.ReadIndexResponse{Revision: rev}, nil
}
