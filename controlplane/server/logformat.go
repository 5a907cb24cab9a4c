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
// (store.CmdBatch, format 1) and the audit header on commands (format 2)
// are log formats older binaries cannot apply: a replica stops at an entry
// it cannot apply rather than skip it. So every replica publishes the
// newest format it applies in its member record; the leader groups writes
// only while every replica of the Raft configuration has published 1, a
// replica encodes the audit header only while every one has published 2,
// and endpoint batches as store.CmdUpsertEndpointsFull (every pod label
// kept; identities by federation/identity's rule) only while every one has
// published 3. Until then writes are encoded as older binaries wrote them.

const logFormatInterval = 500 * time.Millisecond

// clusterLogFormat is the oldest log format the servers of the
// configuration apply: what each published (0 for none, or when one has
// not published yet), except replica self, which runs this binary. Pure,
// for tests.
func clusterLogFormat(servers []raft.Server, members map[string]*fedmeshv1.Member, self string) uint32 {
	if len(servers) == 0 {
		return 0
	}
	oldest := uint32(store.LogFormat)
	for _, s := range servers {
		if string(s.ID) != self {
			oldest = min(oldest, members[string(s.ID)].GetLogFormat())
		}
	}
	return oldest
}

// canGroup reports whether every server of the configuration has published
// a log format that applies grouped entries. Pure, for tests.
func canGroup(servers []raft.Server, members map[string]*fedmeshv1.Member) bool {
	return clusterLogFormat(servers, members, "") >= store.LogFormatBatch
}

// refreshLogFormat recomputes Core.logFormat from the configuration and
// the published member records, and returns it.
func (c *Core) refreshLogFormat() uint32 {
	// GetConfiguration answers from the latest configuration without
	// waiting for Raft's loop.
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return c.logFormat.Load()
	}
	v := clusterLogFormat(f.Configuration().Servers, c.snapshotMembers(), c.self)
	c.logFormat.Store(v)
	return v
}

// appliesFormat returns the oldest log format the replicas apply, as this
// replica last saw it, looking again (refreshLogFormat) only while that is
// older than want: every write of a format-gated kind asks, and once the
// group is upgraded the answer is one atomic load. logFormats notices a
// downgrade.
func (c *Core) appliesFormat(want uint32) uint32 {
	if f := c.logFormat.Load(); f >= want {
		return f
	}
	return c.refreshLogFormat()
}

// auditEntries reports whether commands may carry the audit header: every
// replica applies it. Until they do (a rolling upgrade, or the first
// moments of a new group, before every replica has published its format)
// commands go without it.
func (c *Core) auditEntries() bool {
	return c.appliesFormat(store.LogFormatAudit) >= store.LogFormatAudit
}

// fullLabelEntries reports whether endpoint batches may be written as
// store.CmdUpsertEndpointsFull: every replica applies log format 3. Until
// then they are written as CmdUpsertEndpoints, which every replica applies
// as binaries before format 3 did (store.Identities: legacy endpoints).
func (c *Core) fullLabelEntries() bool {
	return c.appliesFormat(store.LogFormatFullLabels) >= store.LogFormatFullLabels
}

// upsertEndpointsType is the command an endpoint batch is encoded as when
// every replica applies format 3 (full) or not. Pure, for tests.
func upsertEndpointsType(full bool) store.CommandType {
	if full {
		return store.CmdUpsertEndpointsFull
	}
	return store.CmdUpsertEndpoints
}

// logFormats publishes this replica's log format until its member record
// carries it and keeps Core.logFormat and, while this replica leads,
// Core.groupWrites up to date. It returns when ctx is done.
func (c *Core) logFormats(ctx context.Context) {
	t := time.NewTicker(logFormatInterval)
	defer t.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		f := c.raft.GetConfiguration()
		if err := f.Error(); err != nil {
			continue
		}
		servers := f.Configuration().Servers
		members := c.snapshotMembers()
		c.logFormat.Store(clusterLogFormat(servers, members, c.self))
		if c.raft.State() == raft.Leader {
			c.groupWrites.Store(canGroup(servers, members))
		} else {
			c.groupWrites.Store(false)
		}
		if m := selfRecord(c.self, c.r.cfg.RaftAddr, c.r.GRPCAddr(), servers, members); m != nil {
			pctx, cancel := context.WithTimeout(ctx, c.timeout)
			_, data, err := c.command(c.asSelf(pctx), store.CmdSetMember, m)
			if err == nil {
				_, err = c.proposeEncoded(pctx, data, nil)
			}
			if err != nil {
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
