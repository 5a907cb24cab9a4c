package server

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/store"
)

// Group commit on the leader. Every Raft append costs each replica a disk
// sync and an AppendEntries round, whatever its size, so the cost of a
// write is mostly the share of an append it rides in. Writes wait here
// while maxBatchesInFlight appends are uncommitted and then enter the log
// together: under load an append carries every write that arrived during
// the previous commit instead of whichever few raced the leader loop.
// Unloaded, a write is proposed at once. A group of writes is one log
// entry (store.CmdBatch), not one entry each: per-entry costs — encoding
// in the log store and on the wire, a bbolt key, Raft's bookkeeping — are
// paid once per group, and each write still gets its own revision and
// result.
//
// Grouped entries are written only once every replica applies them
// (logformat.go), so a rolling upgrade from an older version works.
const (
	maxBatchesInFlight = 2
	maxProposalBatch   = 512 // raft.Config.MaxAppendEntries
)

// proposer queues this leader's writes for the Raft log.
type proposer struct {
	c *Core

	mu      sync.Mutex
	pending []*proposal
	running int
}

// proposal is one write waiting for its result.
type proposal struct {
	data  []byte
	start time.Time
	done  chan struct{}
	res   *store.Result
	err   error
}

// enqueue queues data for the log; wait for its result with proposal.wait.
// data becomes the proposer's: the time of a command with the audit header
// is rewritten in place (store.StampTime) as it enters the log.
func (p *proposer) enqueue(data []byte) *proposal {
	pr := &proposal{data: data, start: time.Now(), done: make(chan struct{})}
	p.mu.Lock()
	p.pending = append(p.pending, pr)
	start := p.running < maxBatchesInFlight
	if start {
		p.running++
	}
	p.mu.Unlock()
	if start {
		go p.run()
	}
	return pr
}

// wait returns the proposal's result once it is committed and applied, or
// the Raft error that ended it (bounded by the apply timeout).
func (pr *proposal) wait() (*store.Result, error) {
	<-pr.done
	return pr.res, pr.err
}

// run proposes batches until nothing is pending, one at a time: the next
// batch forms while this one commits.
func (p *proposer) run() {
	for {
		p.mu.Lock()
		if len(p.pending) == 0 {
			p.running--
			p.mu.Unlock()
			return
		}
		n, size := 0, 0
		for n < len(p.pending) && n < maxProposalBatch && (n == 0 || size+len(p.pending[n].data) <= maxBatchEntryBytes) {
			size += len(p.pending[n].data)
			n++
		}
		batch := p.pending[:n:n]
		p.pending = append([]*proposal(nil), p.pending[n:]...)
		p.mu.Unlock()
		// The leader's clock, read as the writes enter the log, is their
		// time on every replica (a command with the audit header carries
		// it; one without keeps the time its edge encoded).
		now := time.Now().UnixNano()
		for _, pr := range batch {
			store.StampTime(pr.data, now)
		}
		if len(batch) > 1 && p.c.groupWrites.Load() {
			p.proposeBatch(batch)
			continue
		}
		// One entry per write: a single write, or replicas that do not all
		// apply grouped entries yet (logformat.go). raft batches the
		// entries into one append all the same.
		futures := make([]raft.ApplyFuture, len(batch))
		for i, pr := range batch {
			futures[i] = p.c.raft.Apply(pr.data, p.c.timeout)
		}
		for i, pr := range batch {
			pr.res, pr.err = p.c.result(futures[i], pr.start)
			close(pr.done)
		}
	}
}

// maxBatchEntryBytes bounds a CmdBatch entry: one entry is held whole in
// memory by every replica's log cache and sent in one AppendEntries, so a
// burst of large writes is split over several entries.
const maxBatchEntryBytes = 4 << 20

// proposeBatch proposes writes as one CmdBatch entry and hands each its own
// result.
func (p *proposer) proposeBatch(batch []*proposal) {
	cmds := make([][]byte, len(batch))
	for i, pr := range batch {
		cmds[i] = pr.data
	}
	entry, parts := store.EncodeBatch(cmds)
	// A write decoded by this replica's handler stays decoded: the FSM
	// finds it under its part of the entry.
	pre := p.c.fsm.Predecoded()
	for i, pr := range batch {
		pre.Move(pr.data, parts[i])
	}
	f := p.c.raft.Apply(entry, p.c.timeout)
	err := p.c.await(f)
	var results store.BatchResult
	if err == nil {
		var ok bool
		if results, ok = f.Response().(store.BatchResult); !ok || len(results) != len(batch) {
			err = status.Error(codes.Internal, "apply command batch: no result per command")
		}
	}
	for i, pr := range batch {
		pre.Forget(parts[i])
		switch {
		case err != nil:
			pr.err = err
		case results[i].Err != nil:
			pr.err = results[i].Err
		default:
			pr.res = results[i]
			p.c.r.metrics.commitLatency.Observe(time.Since(pr.start).Seconds())
		}
		close(pr.done)
	}
}
