package server

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/fedmesh/fedmesh/controlplane/store"
)

// Group commit on the leader. Every Raft append costs each replica a disk
// sync and an AppendEntries round, whatever its size, so the cost of a
// write is mostly the share of an append it rides in. Writes wait here
// while maxBatchesInFlight appends are uncommitted and then enter the log
// together: under load an append carries every write that arrived during
// the previous commit instead of whichever few raced the leader loop.
// Unloaded, a write is proposed at once.
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
		n := min(len(p.pending), maxProposalBatch)
		batch := p.pending[:n:n]
		p.pending = append([]*proposal(nil), p.pending[n:]...)
		p.mu.Unlock()

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
