package agent

import (
	"fmt"
	"time"
)

// Readiness decides whether the node is enforcing a recent revision: ready
// means it has enforced a revision, and the oldest revision it has seen but
// not yet enforced was first seen no more than Lag ago. A control plane
// that is down changes nothing (no newer revision is seen), so the node
// stays ready while it keeps enforcing its last state; a dataplane that
// cannot apply makes it unready after Lag.
//
// Pure: the caller passes the times. Not safe for concurrent use (Agent
// guards it).
type Readiness struct {
	Lag time.Duration

	enforced    uint64
	hasEnforced bool
	// pending holds (revision, first seen) for seen revisions above
	// enforced, increasing; only the first entry's time matters, so a
	// revision is recorded only when it is the first one above enforced
	// or when it starts a new "behind" period.
	pending []seenAt
	newest  uint64
}

type seenAt struct {
	rev uint64
	at  time.Time
}

// Seen records that revision rev exists (a watch message carried it).
func (r *Readiness) Seen(rev uint64, now time.Time) {
	if rev <= r.newest {
		return
	}
	r.newest = rev
	if r.hasEnforced && rev <= r.enforced {
		return
	}
	// Keep the list short under churn: a new entry only matters once every
	// older one is enforced, so entries closer than a tenth of Lag merge.
	if n := len(r.pending); n > 0 && now.Sub(r.pending[n-1].at) < r.Lag/10 {
		r.pending[n-1].rev = rev
		return
	}
	r.pending = append(r.pending, seenAt{rev, now})
}

// Enforced records that the dataplane now enforces rev.
func (r *Readiness) Enforced(rev uint64) {
	r.enforced, r.hasEnforced = rev, true
	i := 0
	for i < len(r.pending) && r.pending[i].rev <= rev {
		i++
	}
	// An entry partly enforced (it merged revisions on both sides of rev)
	// keeps its first time: conservative by at most Lag/10.
	r.pending = append(r.pending[:0], r.pending[i:]...)
	if r.newest < rev {
		r.newest = rev
	}
}

// EnforcedRevision returns the enforced revision and whether there is one.
func (r *Readiness) EnforcedRevision() (uint64, bool) { return r.enforced, r.hasEnforced }

// Newest returns the newest revision seen.
func (r *Readiness) Newest() uint64 { return r.newest }

// Ready reports readiness at now, with a reason when not ready.
func (r *Readiness) Ready(now time.Time) (bool, string) {
	if !r.hasEnforced {
		return false, "no revision enforced yet"
	}
	if len(r.pending) == 0 {
		return true, ""
	}
	behind := now.Sub(r.pending[0].at)
	if behind > r.Lag {
		return false, fmt.Sprintf("enforcing revision %d, %s behind revision %d (limit %s)",
			r.enforced, behind.Round(time.Millisecond), r.newest, r.Lag)
	}
	return true, ""
}
