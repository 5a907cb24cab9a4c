package store

import (
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// DefaultEventLogSize is how many events a replica keeps for watchers unless
// configured otherwise.
const DefaultEventLogSize = 100_000

// Batch is the events of one revision, in the order they happened. A
// revision that changed nothing visible has no events.
type Batch struct {
	Revision uint64
	Events   []*fedmeshv1.Event
}

// EventLog keeps the most recent revisions' events, bounded by a total cost
// (one per event, at least one per revision). The newest revision is always
// kept, however large. Not safe for concurrent use: the FSM guards it.
type EventLog struct {
	max     int
	batches []Batch // consecutive revisions, oldest first
	cost    int
	// compacted is the newest revision whose events are gone; events after it
	// are all in batches.
	compacted uint64
	dropped   uint64
}

// NewEventLog returns a log holding about max events (at least 1).
func NewEventLog(max int, compacted uint64) *EventLog {
	if max < 1 {
		max = 1
	}
	return &EventLog{max: max, compacted: compacted}
}

func batchCost(b Batch) int { return max(1, len(b.Events)) }

// Append records the events of the next revision.
func (l *EventLog) Append(b Batch) {
	l.batches = append(l.batches, b)
	l.cost += batchCost(b)
	drop := 0
	for l.cost > l.max && drop < len(l.batches)-1 {
		l.cost -= batchCost(l.batches[drop])
		l.dropped += uint64(len(l.batches[drop].Events))
		l.compacted = l.batches[drop].Revision
		l.batches[drop] = Batch{}
		drop++
	}
	if drop > 0 {
		l.batches = l.batches[drop:]
		// Reallocate now and then so the dropped prefix's array is freed.
		if cap(l.batches) > 2*len(l.batches)+1024 {
			l.batches = append(make([]Batch, 0, 2*len(l.batches)), l.batches...)
		}
	}
}

// Since returns the batches after rev, at most limit events (whole
// revisions, but at least one revision), and false when some of them were
// compacted away: the caller needs a snapshot.
func (l *EventLog) Since(rev uint64, limit int) ([]Batch, bool) {
	if rev < l.compacted {
		return nil, false
	}
	i := int(rev - l.compacted) // index of the batch of revision rev+1
	if i >= len(l.batches) {
		return nil, true
	}
	n := 0
	j := i
	for j < len(l.batches) && (j == i || n+len(l.batches[j].Events) <= limit) {
		n += len(l.batches[j].Events)
		j++
	}
	return l.batches[i:j:j], true
}

// Compacted is the newest revision whose events are no longer held.
func (l *EventLog) Compacted() uint64 { return l.compacted }

// Dropped counts the events evicted so far.
func (l *EventLog) Dropped() uint64 { return l.dropped }

// Len is the number of revisions held.
func (l *EventLog) Len() int { return len(l.batches) }
