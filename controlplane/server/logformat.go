package server

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Rolling upgrades and the log format. Grouping writes into one entry
// (store.CmdBatch) is a log format older binaries cannot apply: a replica
// stops at an entry it cannot apply rather than skip it. So every replica
// publishes the newest format it applies in its member record, and the
// leader groups writes only while every replica of the Raft configuration
// has published store.LogFormat; until then each write is its own entry,
// as older leaders wrote them.

const logFormatInterval = 500 * time.Millisecond

// canGroup reports whether every server of the configuration has published
// a log format that applies grouped entries. Pure, for tests.
func canGroup(servers []raft.Server, members map[string]*fedmeshv1.Member) bool {
	if len(servers) == 0 {
		return false
	}
	for _, s := range servers {
		if members[string(s.ID)].GetLogFormat() < store.LogFormat {
			return false
		}
	}
	return true
}

// logFormats publishes this replica's log format until its member record
// carries it and, while this replica leads, keeps Core.groupWrites up to
// date. It returns when ctx is done.
func (c *Core) logFormats(ctx context.Context) {
	t := time.NewTicker(logFormatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f := c.raft.GetConfiguration()
		if err := f.Error(); err != nil {
			continue
		}
		servers := f.Configuration().Servers
		members := c.snapshotMembers()
		if c.raft.State() == raft.Leader {
			c.groupWrites.Store(canGroup(servers, members))
		} else {
			c.groupWrites.Store(false)
		}
		if m := selfRecord(c.self, c.r.cfg.RaftAddr, c.r.GRPCAddr(), servers, members); m != nil {
			_, data, err := c.command(store.CmdSetMember, m)
			if err != nil {
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, c.timeout)
			if _, err := c.proposeEncoded(pctx, data, nil); err != nil {
				c.log.Debug("publish log format", "err", err)
			}
			cancel()
		}
	}
}

// selfRecord returns the member record this replica should publish so it
// carries store.LogFormat, or nil when the published one already does (or
// the replica is not in the configuration). An existing record keeps its
// addresses; a missing one gets the replica's own, as a leader publishes
// itself.
func selfRecord(self, raftAddr, grpcAddr string, servers []raft.Server, members map[string]*fedmeshv1.Member) *fedmeshv1.Member {
	var me *raft.Server
	for i := range servers {
		if string(servers[i].ID) == self {
			me = &servers[i]
		}
	}
	if me == nil {
		return nil
	}
	old := members[self]
	if old.GetLogFormat() >= store.LogFormat {
		return nil
	}
	if old == nil {
		return &fedmeshv1.Member{Id: self, RaftAddress: raftAddr, GrpcAddress: grpcAddr, Voter: me.Suffrage == raft.Voter, LogFormat: store.LogFormat}
	}
	m := proto.Clone(old).(*fedmeshv1.Member)
	m.LogFormat = store.LogFormat
	return m
}
