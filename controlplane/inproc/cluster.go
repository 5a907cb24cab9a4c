// Package inproc runs a real fedmesh control-plane Raft group inside the
// test process, in the spirit of hashicorp/raft's testing.go: N replicas of
// controlplane/server (real Raft with raft-boltdb logs in temporary dirs,
// real TCP transports, the real FSM and the real gRPC API on loopback),
// with a Network between their Raft transports that partitions (both ways
// or one way), drops and delays messages and heals, and Faults that fail,
// delay or break the gRPC calls of the agent's and the syncer's
// control-plane clients.
//
// It is for tests whose subject is not process death: starting a replica
// costs no build, fork or exec, a stopped replica restarts from its data
// dir in the same process, and a partition needs no signal. A crash
// (SIGKILL mid-write, a lost process) stays controlplane/cptest's job.
//
// It is a package of its own, not part of cptest, because it imports
// controlplane/server, whose own tests import cptest.
//
// Start registers a t.Cleanup that stops every replica and, when the test
// failed, logs the tail of each replica's log. Nothing listens outside
// 127.0.0.1.
package inproc

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	"github.com/fedmesh/fedmesh/controlplane/server"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Options tune a Cluster. The zero value starts three replicas.
type Options struct {
	// Replicas is the group size (default 3).
	Replicas int
	// NonVoters are read replicas added after the voters elect a leader
	// (fedctl controlplane members add --nonvoter): they apply the log and
	// serve reads and watches but never vote or lead. They follow the
	// voters in Cluster.Replicas.
	NonVoters int
	// RaftTimeout scales Raft's heartbeat and election timeouts (default
	// 300ms: quick elections on loopback, still stable on a loaded
	// machine).
	RaftTimeout time.Duration
	// EventLogSize bounds each replica's event log (default: the store's).
	EventLogSize int
	// SnapshotThreshold is how many log entries trigger a Raft snapshot
	// (default: the server's).
	SnapshotThreshold uint64
	// LeaderTimeout bounds the waits for a leader (default 30s).
	LeaderTimeout time.Duration
	// Seed drives the Network's random message loss; 0 picks one. A failed
	// test logs it.
	Seed uint64
	// LogLevel of the replicas' logs (default warn).
	LogLevel slog.Leveler
}

// Replica is one control-plane replica of the group. Its addresses and
// data dir stay the same across Stop and Restart.
type Replica struct {
	ID          string
	NonVoter    bool // a read replica: joined without a vote
	RaftAddr    string
	GRPCAddr    string
	MetricsAddr string
	DataDir     string

	conn *grpc.ClientConn
	logs *logBuffer

	mu  sync.Mutex
	srv *server.Replica
}

// Conn is a plaintext gRPC connection to the replica (it reconnects by
// itself after a restart).
func (r *Replica) Conn() *grpc.ClientConn { return r.conn }

// Server is the running replica, nil while it is stopped.
func (r *Replica) Server() *server.Replica {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.srv
}

// Alive reports whether the replica runs.
func (r *Replica) Alive() bool { return r.Server() != nil }

// Status asks the replica, over its API, for its Raft state and revision.
func (r *Replica) Status(ctx context.Context) (*fedmeshv1.GetReplicaStatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return fedmeshv1.NewControlPlaneServiceClient(r.conn).GetReplicaStatus(ctx, &fedmeshv1.GetReplicaStatusRequest{})
}

// Metric reads one unlabelled counter or gauge from the replica's
// /metrics. A restarted replica counts from zero, as a restarted process
// would.
func (r *Replica) Metric(ctx context.Context, name string) (float64, error) {
	v, err := cptest.ReadMetric(ctx, r.MetricsAddr, name)
	if err != nil {
		return 0, fmt.Errorf("replica %s: %w", r.ID, err)
	}
	return v, nil
}

// Cluster is a Raft group of in-process replicas.
type Cluster struct {
	Replicas []*Replica
	// Net carries the replicas' Raft messages.
	Net *Network

	t     testing.TB
	opts  Options
	peers []server.Peer
}

// Start starts the replicas and waits until they agree on a leader.
// Everything is stopped in t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Replicas == 0 {
		opts.Replicas = 3
	}
	if opts.RaftTimeout == 0 {
		opts.RaftTimeout = 300 * time.Millisecond
	}
	if opts.LeaderTimeout == 0 {
		opts.LeaderTimeout = 30 * time.Second
	}
	if opts.LogLevel == nil {
		opts.LogLevel = slog.LevelWarn
	}
	if opts.Seed == 0 {
		opts.Seed = rand.Uint64()
	}
	c := &Cluster{Net: NewNetwork(opts.Seed), t: t, opts: opts}
	dir := t.TempDir()
	addrs := cptest.FreeAddrs(t, 3*(opts.Replicas+opts.NonVoters))
	for i := range opts.Replicas + opts.NonVoters {
		id := fmt.Sprintf("r%d", i+1)
		r := &Replica{ID: id, NonVoter: i >= opts.Replicas, RaftAddr: addrs[3*i], GRPCAddr: addrs[3*i+1], MetricsAddr: addrs[3*i+2],
			DataDir: filepath.Join(dir, id), logs: &logBuffer{}}
		cc, err := grpc.NewClient(r.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatalf("inproc: client for %s: %v", id, err)
		}
		r.conn = cc
		c.Replicas = append(c.Replicas, r)
		if !r.NonVoter {
			c.peers = append(c.peers, server.Peer{ID: id, RaftAddr: r.RaftAddr, GRPCAddr: r.GRPCAddr})
		}
	}
	t.Cleanup(func() {
		c.StopAll()
		for _, r := range c.Replicas {
			r.conn.Close()
		}
		if t.Failed() {
			t.Logf("inproc: network seed %d", opts.Seed)
			for _, r := range c.Replicas {
				t.Logf("--- control-plane replica %s log (tail) ---\n%s", r.ID, r.logs.tail(4000))
			}
		}
	})
	for _, r := range c.Replicas {
		if r.NonVoter {
			continue
		}
		if err := c.start(r); err != nil {
			t.Fatalf("inproc: %v", err)
		}
	}
	lead, err := c.WaitLeader(opts.LeaderTimeout)
	if err != nil {
		t.Fatalf("inproc: %v", err)
	}
	for _, r := range c.Replicas {
		if !r.NonVoter {
			continue
		}
		if err := c.start(r); err != nil {
			t.Fatalf("inproc: %v", err)
		}
		if err := c.addNonVoter(lead, r); err != nil {
			t.Fatalf("inproc: %v", err)
		}
	}
	return c
}

// addNonVoter adds r, running with an empty data dir, as a read replica
// through the API, as fedctl does.
func (c *Cluster) addNonVoter(lead, r *Replica) error {
	deadline := time.Now().Add(c.opts.LeaderTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := fedmeshv1.NewControlPlaneServiceClient(lead.conn).AddMember(ctx, &fedmeshv1.AddMemberRequest{
			Id: r.ID, RaftAddress: r.RaftAddr, GrpcAddress: r.GRPCAddr, Nonvoter: true})
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("add non-voter %s: %w", r.ID, err)
		}
		time.Sleep(50 * time.Millisecond)
		if l, _ := c.leaderOnce(); l != nil {
			lead = l
		}
	}
}

func (c *Cluster) start(r *Replica) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		return fmt.Errorf("start replica %s: already running", r.ID)
	}
	peers := c.peers
	if r.NonVoter {
		peers = nil // it joins through AddMember, never by bootstrap
	}
	srv, err := server.Start(server.Config{
		NodeID: r.ID, DataDir: r.DataDir,
		RaftAddr: r.RaftAddr, GRPCAddr: r.GRPCAddr, MetricsAddr: r.MetricsAddr,
		BootstrapPeers:    peers,
		EventLogSize:      c.opts.EventLogSize,
		SnapshotThreshold: c.opts.SnapshotThreshold,
		RaftTimeout:       c.opts.RaftTimeout,
		Insecure:          true,
		Logger:            slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: c.opts.LogLevel})),
		WrapRaftTransport: c.Net.Wrap(r.ID),
	})
	if err != nil {
		return fmt.Errorf("start replica %s: %w", r.ID, err)
	}
	r.srv = srv
	return nil
}

// stopTimeout bounds Stop. A replica's Stop can block for good when a
// write or barrier it queued in Raft's buffered apply channel races the
// shutdown: Raft never answers such a future (hashicorp/raft#498). By then
// everything else is closed, so the harness logs it and carries on.
const stopTimeout = 5 * time.Second

// Stop shuts the replica down (its listeners close, Raft stops, its log
// stays on disk). Stopping a stopped replica does nothing.
func (c *Cluster) Stop(r *Replica) {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		srv.Stop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(stopTimeout):
		c.t.Logf("inproc: replica %s did not finish stopping within %s (a Raft future left unanswered at shutdown, hashicorp/raft#498); carrying on", r.ID, stopTimeout)
	}
}

// StopAll stops every replica, followers first: stopping the leader first
// would start an election among replicas that are about to stop, and a
// replica stopped while it takes office is the case that can hang Stop.
func (c *Cluster) StopAll() {
	var leaders []*Replica
	for _, r := range c.Replicas {
		if srv := r.Server(); srv != nil && srv.Raft().State() == raft.Leader {
			leaders = append(leaders, r)
			continue
		}
		c.Stop(r)
	}
	for _, r := range leaders {
		c.Stop(r)
	}
}

// Restart starts a stopped replica again on the same addresses and data
// dir (it recovers from disk). It does not wait for a leader.
func (c *Cluster) Restart(r *Replica) {
	c.t.Helper()
	if err := c.start(r); err != nil {
		c.t.Fatalf("inproc: %v", err)
	}
}

// RestartAll starts every stopped replica and waits for a leader.
func (c *Cluster) RestartAll() *Replica {
	c.t.Helper()
	for _, r := range c.Replicas {
		if !r.Alive() {
			c.Restart(r)
		}
	}
	return c.Leader()
}

// IDs are the replicas' IDs, in order.
func (c *Cluster) IDs() []string {
	out := make([]string, len(c.Replicas))
	for i, r := range c.Replicas {
		out[i] = r.ID
	}
	return out
}

// Addrs are the gRPC addresses of all replicas, in order.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Replicas))
	for i, r := range c.Replicas {
		out[i] = r.GRPCAddr
	}
	return out
}

// Isolate cuts r off from every other replica, both ways.
func (c *Cluster) Isolate(r *Replica) { c.Net.Isolate(r.ID, c.IDs()) }

// Partition splits the replicas into groups that cannot reach each other.
func (c *Cluster) Partition(groups ...[]*Replica) {
	ids := make([][]string, len(groups))
	for i, g := range groups {
		for _, r := range g {
			ids[i] = append(ids[i], r.ID)
		}
	}
	c.Net.Partition(ids...)
}

// Heal restores every Raft link.
func (c *Cluster) Heal() { c.Net.Heal() }

// WaitLeader waits until one live replica leads at the highest term and
// every live replica the network connects to it names it. Replicas cut off
// from it (a minority side, a stale leader) are not asked.
func (c *Cluster) WaitLeader(timeout time.Duration) (*Replica, error) {
	deadline := time.Now().Add(timeout)
	for {
		lead, why := c.leaderOnce()
		if lead != nil {
			return lead, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no leader agreed on within %s: %s", timeout, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *Cluster) leaderOnce() (*Replica, string) {
	type seen struct {
		r      *Replica
		state  raft.RaftState
		term   uint64
		leader raft.ServerID
	}
	var live []seen
	for _, r := range c.Replicas {
		if srv := r.Server(); srv != nil {
			_, id := srv.Raft().LeaderWithID()
			live = append(live, seen{r, srv.Raft().State(), srv.Raft().CurrentTerm(), id})
		}
	}
	if len(live) == 0 {
		return nil, "no replica running"
	}
	var leaders []seen
	for _, s := range live {
		if s.state == raft.Leader {
			leaders = append(leaders, s)
		}
	}
	if len(leaders) == 0 {
		return nil, "no replica is leader"
	}
	slices.SortFunc(leaders, func(a, b seen) int { return cmp.Compare(b.term, a.term) })
	if len(leaders) > 1 && leaders[0].term == leaders[1].term {
		return nil, fmt.Sprintf("%s and %s both lead term %d", leaders[0].r.ID, leaders[1].r.ID, leaders[0].term)
	}
	lead := leaders[0]
	var disagree []string
	for _, s := range live {
		if c.Net.Connected(s.r.ID, lead.r.ID) && s.leader != raft.ServerID(lead.r.ID) {
			disagree = append(disagree, fmt.Sprintf("%s names %q", s.r.ID, s.leader))
		}
	}
	if len(disagree) > 0 {
		return nil, fmt.Sprintf("%s leads term %d but %s", lead.r.ID, lead.term, strings.Join(disagree, ", "))
	}
	return lead.r, ""
}

// Leader waits (up to Options.LeaderTimeout) for the agreed leader.
func (c *Cluster) Leader() *Replica {
	c.t.Helper()
	r, err := c.WaitLeader(c.opts.LeaderTimeout)
	if err != nil {
		c.t.Fatalf("inproc: %v", err)
	}
	return r
}

// Followers are the live replicas other than lead.
func (c *Cluster) Followers(lead *Replica) []*Replica {
	var out []*Replica
	for _, r := range c.Replicas {
		if r != lead && r.Alive() {
			out = append(out, r)
		}
	}
	return out
}

// ErrNoReplica is returned when no replica of the cluster is running.
var ErrNoReplica = errors.New("no control-plane replica is running")

// Any returns a live replica, the leader when one is agreed on.
func (c *Cluster) Any() (*Replica, error) {
	if lead, _ := c.leaderOnce(); lead != nil {
		return lead, nil
	}
	for _, r := range c.Replicas {
		if r.Alive() {
			return r, nil
		}
	}
	return nil, ErrNoReplica
}

// WaitRevision waits until each of replicas (every live one when none is
// given) has applied at least rev.
func (c *Cluster) WaitRevision(rev uint64, timeout time.Duration, replicas ...*Replica) error {
	if len(replicas) == 0 {
		replicas = c.Replicas
	}
	deadline := time.Now().Add(timeout)
	for {
		var lagging []string
		for _, r := range replicas {
			srv := r.Server()
			if srv == nil {
				if len(replicas) < len(c.Replicas) {
					lagging = append(lagging, r.ID+" stopped")
				}
				continue
			}
			if got := srv.FSM().Revision(); got < rev {
				lagging = append(lagging, fmt.Sprintf("%s at %d", r.ID, got))
			}
		}
		if len(lagging) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replicas not at revision %d within %s: %s", rev, timeout, strings.Join(lagging, ", "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logBuffer keeps a replica's log for the failure report; it keeps the
// newest 64 KiB.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

const logKeep = 64 << 10

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if l.buf.Len() > 2*logKeep {
		l.buf.Next(l.buf.Len() - logKeep)
	}
	return len(p), nil
}

func (l *logBuffer) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.buf.String()
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
