package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Metadata keys of the fedmesh gRPC API.
const (
	// ConsistencyKey selects the consistency of a read: "local" (default:
	// this replica's state, possibly stale) or "linearizable" (includes
	// every write acknowledged before the read started).
	ConsistencyKey = "fedmesh-consistency"
	// ConsistencyLinearizable is the value asking for a linearizable read.
	ConsistencyLinearizable = "linearizable"
	// ConsistencyLocal is the value asking for a local read.
	ConsistencyLocal = "local"
	// forwardedKey marks a call a replica forwarded to the leader, so it is
	// forwarded at most once.
	forwardedKey = "fedmesh-forwarded-by"
)

// Core is what every gRPC handler delegates to: proposing writes (locally
// on the leader, forwarded elsewhere), consistent reads and waiting for
// revisions. Safe for concurrent use.
type Core struct {
	r       *Replica
	log     *slog.Logger
	fsm     *store.FSM
	raft    *raft.Raft
	self    string
	timeout time.Duration
	// leaderReady is set once this replica, as leader, has applied every
	// entry of earlier terms and published its address.
	leaderReady atomic.Bool
	// groupWrites is set while this replica leads and every replica has
	// published a log format that applies grouped entries (logformat.go).
	groupWrites atomic.Bool
	// logFormat is the oldest log format the replicas of the configuration
	// apply, as this replica last saw their records (clusterLogFormat).
	logFormat atomic.Uint32
	// reach answers ReachService with the policy compiler.
	reach *reachEngine
	// live is the leader's memory of syncer heartbeats (liveness.go).
	live *liveness

	mu         sync.Mutex
	conns      map[string]*grpc.ClientConn
	forwarders map[*grpc.ClientConn]*forwarder
	props      proposer

	// raftDown is closed once Raft has shut down (raftStopped). With
	// BatchApplyCh, Raft never answers a future still queued in its apply
	// channel at shutdown (hashicorp/raft#498), so every wait on a future
	// also gives up here instead of blocking Stop forever.
	raftDown     chan struct{}
	raftDownOnce sync.Once
}

func newCore(r *Replica) *Core {
	c := &Core{r: r, log: r.log, fsm: r.fsm, raft: r.raft, self: r.cfg.NodeID, timeout: r.cfg.ApplyTimeout, conns: map[string]*grpc.ClientConn{},
		forwarders: map[*grpc.ClientConn]*forwarder{}, reach: newReachEngine(r.fsm, r.log), raftDown: make(chan struct{}),
		live: newLiveness(r.cfg.Services, r.metrics.reg, r.fsm)}
	c.props.c = c
	return c
}

func (c *Core) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cc := range c.conns {
		cc.Close()
	}
	for _, f := range c.forwarders {
		f.close()
	}
	c.conns = map[string]*grpc.ClientConn{}
	c.forwarders = map[*grpc.ClientConn]*forwarder{}
}

// raftStopped is called by Replica.Stop once raft.Shutdown has returned:
// the futures Raft answered have been answered, and any wait still pending
// is on one Raft will never answer.
func (c *Core) raftStopped() { c.raftDownOnce.Do(func() { close(c.raftDown) }) }

// await is f.Error() that returns raft.ErrRaftShutdown instead of blocking
// forever when Raft shut down without answering f (see raftDown).
func (c *Core) await(f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-c.raftDown:
		// Raft may still have answered f just before; prefer its answer.
		select {
		case err := <-done:
			return err
		default:
			return raft.ErrRaftShutdown
		}
	}
}

// leadership reacts to Raft leadership changes: a new leader first applies
// a barrier (so reads it serves include every earlier term's entries), then
// publishes its own gRPC address and those of the bootstrap peers, which
// followers need to forward writes.
func (c *Core) leadership(ctx context.Context, notify <-chan bool) {
	for {
		select {
		case <-ctx.Done():
			return
		case leader := <-notify:
			c.leaderReady.Store(false)
			if !leader {
				continue
			}
			if err := c.await(c.raft.Barrier(c.timeout)); err != nil {
				c.log.Warn("barrier after election", "err", err)
				continue
			}
			members := c.snapshotMembers()
			publish := []*fedmeshv1.Member{{Id: c.self, RaftAddress: c.r.cfg.RaftAddr, GrpcAddress: c.r.GRPCAddr(), Voter: true, LogFormat: store.LogFormat}}
			for _, p := range c.r.cfg.BootstrapPeers {
				if p.ID != c.self && p.GRPCAddr != "" && members[p.ID] == nil {
					publish = append(publish, &fedmeshv1.Member{Id: p.ID, RaftAddress: p.RaftAddr, GrpcAddress: p.GRPCAddr, Voter: true})
				}
			}
			for _, m := range publish {
				if old := members[m.GetId()]; old != nil && old.GetGrpcAddress() == m.GetGrpcAddress() && old.GetRaftAddress() == m.GetRaftAddress() && old.GetLogFormat() >= m.GetLogFormat() {
					continue
				}
				if _, err := c.applyLocal(c.asSelf(ctx), store.CmdSetMember, m); err != nil {
					c.log.Warn("publish member address", "member", m.GetId(), "err", err)
				}
			}
			c.leaderReady.Store(c.raft.State() == raft.Leader)
			c.log.Info("leading", "revision", c.fsm.Revision())
		}
	}
}

func (c *Core) snapshotMembers() map[string]*fedmeshv1.Member {
	var m map[string]*fedmeshv1.Member
	c.fsm.View(func(s *store.State) { m = s.Members() })
	return m
}

// command is the one way a replica turns a payload into a log entry: it
// runs the command type's stateless check (validate.go) and encodes it,
// with the audit header once every replica applies it: the principal of
// the call ctx belongs to (the caller this replica authenticated, whether
// it proposes or forwards the write), and a time the leader replaces with
// its own before proposing (proposer.go). The returned command is what the
// entry decodes to.
func (c *Core) command(ctx context.Context, t store.CommandType, payload proto.Message) (store.Command, []byte, error) {
	if t == store.CmdUpsertEndpoints {
		t = upsertEndpointsType(c.fullLabelEntries())
	}
	if err := validateCommand(t, payload); err != nil {
		return store.Command{}, nil, err
	}
	cmd := store.Command{Type: t, Time: time.Now().UnixNano(), Payload: payload}
	if c.auditEntries() {
		cmd.Audited = true
		if p, ok := auth.PrincipalFrom(ctx); ok {
			cmd.Principal = p.String()
		}
	}
	data, err := cmd.Encode()
	if err != nil {
		return store.Command{}, nil, status.Errorf(codes.Internal, "encode command: %v", err)
	}
	return cmd, data, nil
}

// asSelf is ctx carrying this replica's own principal, for what the
// replica proposes on its own (member records); unchanged without TLS.
func (c *Core) asSelf(ctx context.Context) context.Context {
	if c.r.sec == nil {
		return ctx
	}
	return auth.WithPrincipal(ctx, auth.Replica(c.self))
}

// applyLocal proposes a command on this replica, which must be the leader.
func (c *Core) applyLocal(ctx context.Context, t store.CommandType, payload proto.Message) (*store.Result, error) {
	_, data, err := c.command(ctx, t, payload)
	if err != nil {
		return nil, err
	}
	return c.applyData(data)
}

// applyData appends an encoded command to the log (this replica must lead)
// and returns the FSM's result. A rejected command returns the store's
// error; Raft errors are returned as they are.
func (c *Core) applyData(data []byte) (*store.Result, error) {
	return c.props.enqueue(data).wait()
}

// result waits for an apply proposed at start and returns the FSM's result
// like applyData.
func (c *Core) result(f raft.ApplyFuture, start time.Time) (*store.Result, error) {
	if err := c.await(f); err != nil {
		return nil, err
	}
	c.r.metrics.commitLatency.Observe(time.Since(start).Seconds())
	res, ok := f.Response().(*store.Result)
	if !ok {
		return nil, status.Error(codes.Internal, "apply command: no result")
	}
	if res.Err != nil {
		return nil, res.Err
	}
	return res, nil
}

// raftError maps an error of a Raft apply to a status a client can act on.
func raftError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return status.Errorf(codes.Unavailable, "not the leader: %v; retry", err)
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress),
		errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrRaftShutdown):
		return status.Errorf(codes.Unavailable, "write outcome unknown: %v; read back or retry", err)
	}
	return err
}

// errNoLeader is returned when no leader emerged within the call's time.
var errNoLeader = status.Error(codes.Unavailable, "no control-plane leader elected (is a majority of replicas up?); retry")

// leaderConn returns a connection to the leader, or nil when this replica
// leads. It waits for an election (and the leader's published address) up
// to the context's deadline.
func (c *Core) leaderConn(ctx context.Context) (*grpc.ClientConn, error) {
	wait := time.NewTicker(20 * time.Millisecond)
	defer wait.Stop()
	deadline := time.Now().Add(c.timeout)
	for {
		_, id := c.raft.LeaderWithID()
		switch {
		case string(id) == c.self && c.raft.State() == raft.Leader:
			return nil, nil
		case id != "":
			if m := c.snapshotMembers()[string(id)]; m.GetGrpcAddress() != "" {
				return c.conn(m.GetGrpcAddress())
			}
		}
		select {
		case <-ctx.Done():
			return nil, errNoLeader
		case <-wait.C:
			if time.Now().After(deadline) {
				return nil, errNoLeader
			}
		}
	}
}

func (c *Core) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	opts := append(c.r.sec.dialOptions(), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "connect to leader %s: %v", addr, err)
	}
	c.conns[addr] = cc
	return cc, nil
}

// ready reports whether cc is connected, waiting briefly for it to connect.
// Forwarding only over a ready connection keeps a write whose leader just
// died from failing with an ambiguous outcome: while the connection is down
// nothing is sent and the write is routed again once a new leader is known.
func (c *Core) ready(ctx context.Context, cc *grpc.ClientConn) bool {
	st := cc.GetState()
	if st == connectivity.Ready {
		return true
	}
	cc.Connect()
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	for st != connectivity.Ready && cc.WaitForStateChange(wctx, st) {
		st = cc.GetState()
	}
	return st == connectivity.Ready
}

func forwardedBy(ctx context.Context) string {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(forwardedKey); len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// forwardContext carries the caller's metadata to the leader, marked.
func (c *Core) forwardContext(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	md = md.Copy()
	md.Set(forwardedKey, c.self)
	return metadata.NewOutgoingContext(ctx, md)
}

// propose validates req (the edge's one stateless check, validate.go) and
// applies it on the leader: locally when this replica leads, else through
// the leader's ProposeStream, encoded here so the leader does not validate
// it again.
func propose[Resp any](ctx context.Context, c *Core, t store.CommandType, req proto.Message, build func(*store.Result) Resp) (Resp, error) {
	var zero Resp
	cmd, data, err := c.command(ctx, t, req)
	if err != nil {
		return zero, err
	}
	// After validation, so bad input is named as such, not as a limit.
	if err := c.r.writes.admit(ctx, req); err != nil {
		return zero, err
	}
	res, err := c.proposeEncoded(ctx, data, &cmd)
	if err != nil {
		return zero, err
	}
	return build(res), nil
}

// proposeEncoded applies data on the leader. cmd, when given, is data
// decoded (and owned by the call from now on): applied on this replica as
// the leader, it spares the FSM decoding what the handler just encoded.
func (c *Core) proposeEncoded(ctx context.Context, data []byte, cmd *store.Command) (*store.Result, error) {
	deadline := time.Now().Add(c.timeout)
	for {
		if time.Now().After(deadline) {
			return nil, errNoLeader
		}
		cc, err := c.leaderConn(ctx)
		if err != nil {
			return nil, err
		}
		if cc != nil {
			if by := forwardedBy(ctx); by != "" {
				return nil, status.Errorf(codes.Unavailable, "replica %s is not the leader any more (forwarded by %s); retry", c.self, by)
			}
			if !c.ready(ctx, cc) {
				// Nothing was sent: route again (the leader may be gone).
				continue
			}
			res, err := c.forwarderFor(cc).forward(ctx, data)
			if errors.Is(err, errForwardNotLeader) {
				// Nothing entered the log: route again once this replica
				// learns of the new leader (bounded by the deadline).
				select {
				case <-ctx.Done():
					return nil, status.FromContextError(ctx.Err()).Err()
				case <-time.After(20 * time.Millisecond):
				}
				continue
			}
			return res, err
		}
		if cmd != nil {
			c.fsm.Predecoded().Put(data, *cmd)
		}
		res, err := c.applyData(data)
		c.fsm.Predecoded().Forget(data)
		if errors.Is(err, raft.ErrNotLeader) {
			continue // the entry never entered the log: safe to route again
		}
		if err != nil {
			return nil, raftError(err)
		}
		return res, nil
	}
}

// consistency reads the requested read consistency from the metadata.
func consistency(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(ConsistencyKey)
	if len(v) == 0 || v[0] == "" || v[0] == ConsistencyLocal {
		return ConsistencyLocal, nil
	}
	if v[0] == ConsistencyLinearizable {
		return ConsistencyLinearizable, nil
	}
	return "", status.Errorf(codes.InvalidArgument, "metadata %s: %q is neither %q nor %q", ConsistencyKey, v[0], ConsistencyLocal, ConsistencyLinearizable)
}

// beforeRead makes the local state fresh enough for the requested
// consistency. A linearizable read waits until this replica has applied the
// leader's read index: the revision the leader has once every write
// acknowledged before now is applied.
func (c *Core) beforeRead(ctx context.Context) error {
	mode, err := consistency(ctx)
	if err != nil || mode == ConsistencyLocal {
		return err
	}
	deadline := time.Now().Add(c.timeout)
	for {
		if time.Now().After(deadline) {
			return errNoLeader
		}
		cc, err := c.leaderConn(ctx)
		if err != nil {
			return err
		}
		if cc == nil {
			_, err := c.readIndex()
			if errors.Is(err, raft.ErrNotLeader) {
				continue
			}
			return err
		}
		if !c.ready(ctx, cc) {
			continue
		}
		resp, err := fedmeshv1.NewControlPlaneServiceClient(cc).ReadIndex(c.forwardContext(ctx), &fedmeshv1.ReadIndexRequest{})
		if err != nil {
			return err
		}
		return c.waitRevision(ctx, resp.GetRevision())
	}
}

// readIndex, on the leader, confirms leadership with a quorum (a barrier
// through the log) and returns the revision that then includes every
// acknowledged write.
func (c *Core) readIndex() (uint64, error) {
	if !c.leaderReady.Load() {
		return 0, status.Error(codes.Unavailable, "leader not ready yet (just elected); retry")
	}
	if err := c.await(c.raft.Barrier(c.timeout)); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, status.Errorf(codes.Unavailable, "read index: %v; retry", err)
		}
		return 0, status.Errorf(codes.Unavailable, "read index: %v", err)
	}
	return c.fsm.Revision(), nil
}

// waitRevision blocks until the local store reaches rev.
func (c *Core) waitRevision(ctx context.Context, rev uint64) error {
	for {
		ch := c.fsm.Changed()
		if c.fsm.Revision() >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

func (c *Core) view(fn func(s *store.State)) { c.fsm.View(fn) }

func notFound(kind, key string) error {
	return status.Error(codes.NotFound, fmt.Sprintf("%s %q not found", kind, key))
}
