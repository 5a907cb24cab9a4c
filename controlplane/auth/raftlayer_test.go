package auth

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// countFSM counts applied entries; a minimal real raft.FSM.
type countFSM struct {
	mu sync.Mutex
	n  int
}

func (f *countFSM) Apply(*raft.Log) any { f.mu.Lock(); defer f.mu.Unlock(); f.n++; return nil }
func (f *countFSM) count() int          { f.mu.Lock(); defer f.mu.Unlock(); return f.n }
func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) {
	return nil, fmt.Errorf("snapshots not used in this test")
}
func (f *countFSM) Restore(io.ReadCloser) error { return nil }

type raftNode struct {
	id    string
	raft  *raft.Raft
	fsm   *countFSM
	trans *raft.NetworkTransport
}

// startRaft runs a real raft node (in-memory log) over the TLS stream
// layer with cert trusted by roots.
func startRaft(t *testing.T, id string, k *testPKI, cert *Certificate) *raftNode {
	t.Helper()
	srv, cli := ReplicaTLS(k.pool(), cert)
	layer, err := NewTLSStreamLayer("127.0.0.1:0", nil, srv, cli)
	if err != nil {
		t.Fatal(err)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "raft-" + id, Level: hclog.Error, Output: io.Discard})
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: layer, MaxPool: 3, Timeout: 2 * time.Second, Logger: logger})
	cfg := raft.DefaultConfig()
	cfg.LocalID = raft.ServerID(id)
	cfg.Logger = logger
	cfg.HeartbeatTimeout = 200 * time.Millisecond
	cfg.ElectionTimeout = 200 * time.Millisecond
	cfg.LeaderLeaseTimeout = 100 * time.Millisecond
	store := raft.NewInmemStore()
	fsm := &countFSM{}
	r, err := raft.NewRaft(cfg, fsm, store, store, raft.NewInmemSnapshotStore(), trans)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = r.Shutdown().Error()
		trans.Close()
	})
	return &raftNode{id: id, raft: r, fsm: fsm, trans: trans}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRaftReplicatesOverMutualTLS(t *testing.T) {
	k := newPKI(t)
	nodes := []*raftNode{
		startRaft(t, "cp1", k, k.cert(Replica("cp1"))),
		startRaft(t, "cp2", k, k.cert(Replica("cp2"))),
		startRaft(t, "cp3", k, k.cert(Replica("cp3"))),
	}
	var conf raft.Configuration
	for _, n := range nodes {
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(n.id), Address: n.trans.LocalAddr()})
	}
	if err := nodes[0].raft.BootstrapCluster(conf).Error(); err != nil {
		t.Fatal(err)
	}
	var leader *raft.Raft
	waitFor(t, "a leader", func() bool {
		for _, n := range nodes {
			if n.raft.State() == raft.Leader {
				leader = n.raft
				return true
			}
		}
		return false
	})
	for i := 0; i < 10; i++ {
		if err := leader.Apply([]byte("x"), 5*time.Second).Error(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		waitFor(t, n.id+" applying 10 entries", func() bool { return n.fsm.count() == 10 })
	}
}

func TestRaftRefusesReplicaWithForeignOrNonReplicaCertificate(t *testing.T) {
	k := newPKI(t)
	foreign := newPKI(t)
	good := startRaft(t, "cp1", k, k.cert(Replica("cp1")))
	if err := good.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: "cp1", Address: good.trans.LocalAddr()}}}).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "cp1 leading", func() bool { return good.raft.State() == raft.Leader })
	if err := good.raft.Apply([]byte("x"), 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name   string
		node   *raftNode
		reason string
	}{
		{"a replica certificate of another CA", startRaft(t, "evil1", foreign, foreign.cert(Replica("evil1"))), "certificate signed by unknown authority"},
		{"a syncer certificate of the same CA", startRaft(t, "evil2", k, k.cert(Syncer("a"))), "bad certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Its votes cannot reach the replica...
			var resp raft.RequestVoteResponse
			err := tc.node.trans.RequestVote("cp1", good.trans.LocalAddr(), &raft.RequestVoteRequest{
				RPCHeader: raft.RPCHeader{ID: []byte(tc.node.id), Addr: tc.node.trans.EncodePeer(raft.ServerID(tc.node.id), tc.node.trans.LocalAddr())},
				Term:      100, LastLogIndex: 100, LastLogTerm: 100,
			}, &resp)
			if err == nil {
				t.Fatal("a request vote from an untrusted peer succeeded")
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("request vote error %q does not say %q", err, tc.reason)
			}
			// ...and even when an operator adds it (as a non-voter, so the
			// quorum stays one), it never receives the log.
			if err := good.raft.AddNonvoter(raft.ServerID(tc.node.id), tc.node.trans.LocalAddr(), 0, 0).Error(); err != nil {
				t.Fatalf("AddNonvoter: %v", err)
			}
			time.Sleep(time.Second)
			if n := tc.node.fsm.count(); n != 0 {
				t.Fatalf("untrusted replica applied %d entries", n)
			}
			if err := good.raft.RemoveServer(raft.ServerID(tc.node.id), 0, 0).Error(); err != nil {
				t.Fatalf("RemoveServer: %v", err)
			}
		})
	}
	// Control: a replica with a genuine certificate, added the same way,
	// does receive the log.
	ok := startRaft(t, "cp2", k, k.cert(Replica("cp2")))
	if err := good.raft.AddNonvoter("cp2", ok.trans.LocalAddr(), 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "cp2 applying the entry", func() bool { return ok.fsm.count() == 1 })
}
