package store

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
)

// FSM adapts State to raft.FSM. raft calls Apply, ApplyBatch, Snapshot and
// Restore from its one FSM goroutine; readers (gRPC handlers, watchers) call
// View and Changed from any goroutine. Objects a reader obtains stay valid
// and unchanged after View returns.
type FSM struct {
	mu      sync.RWMutex
	st      *State
	applied uint64 // last raft log index applied
	changed chan struct{}
	logSize int
	// ignoreUnknown skips log entries of unknown command types instead of
	// panicking: only for a rolling upgrade, where a newer leader may write
	// commands this binary does not know yet.
	ignoreUnknown bool

	// pre holds the payloads this replica decoded before proposing them
	// as the leader (see Predecoded).
	pre *Predecoded
}

// FSMOption configures an FSM.
type FSMOption func(*FSM)

// WithEventLogSize bounds the event log (events kept for watchers).
func WithEventLogSize(n int) FSMOption { return func(f *FSM) { f.logSize = n } }

// WithIgnoreUnknownCommands makes the FSM skip unknown command types (see
// FSM.ignoreUnknown). Off by default: state must never silently diverge.
func WithIgnoreUnknownCommands() FSMOption { return func(f *FSM) { f.ignoreUnknown = true } }

// NewFSM returns an FSM over an empty state.
func NewFSM(opts ...FSMOption) *FSM {
	f := &FSM{logSize: DefaultEventLogSize, changed: make(chan struct{}), pre: newPredecoded()}
	for _, o := range opts {
		o(f)
	}
	f.st = NewState(f.logSize)
	return f
}

var _ raft.BatchingFSM = (*FSM)(nil)

// Apply applies one committed entry and returns its *Result.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// Predecoded is the FSM's cache of payloads the leader decoded before
// proposing them; see its contract.
func (f *FSM) Predecoded() *Predecoded { return f.pre }

// decode returns the command of data: its header from the bytes, its
// payload from the pre-decode cache when this replica registered it, else
// decoded.
func (f *FSM) decode(data []byte) (Command, error) {
	c, off, err := decodeHeader(data)
	if err != nil {
		return Command{}, err
	}
	if p, ok := f.pre.take(data, c.Type, off); ok {
		c.Payload = p
		return c, nil
	}
	if c.Payload, err = decodePayload(c.Type, data[off:]); err != nil {
		return Command{}, err
	}
	return c, nil
}

// ApplyBatch applies committed entries under one lock acquisition and wakes
// readers once.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	f.mu.Lock()
	for i, l := range logs {
		if l.Index > f.applied {
			f.applied = l.Index
		}
		if l.Type != raft.LogCommand {
			continue
		}
		if len(l.Data) > 0 && CommandType(l.Data[0]) == CmdBatch {
			parts, err := SplitBatch(l.Data)
			if err != nil {
				f.mu.Unlock()
				panic(fmt.Sprintf("store: raft log entry %d does not decode: %v", l.Index, err))
			}
			res := make(BatchResult, len(parts))
			for j, part := range parts {
				res[j] = f.applyOne(l.Index, part)
			}
			out[i] = res
			continue
		}
		out[i] = f.applyOne(l.Index, l.Data)
	}
	ch := f.changed
	f.changed = make(chan struct{})
	f.mu.Unlock()
	close(ch)
	return out
}

// applyOne decodes and applies one command of entry index; f.mu is held.
// An entry that does not decode stops the FSM (unless it is of a type a
// newer binary wrote and unknown commands are ignored): applying the rest
// of the log without it would diverge from the other replicas.
func (f *FSM) applyOne(index uint64, data []byte) *Result {
	c, err := f.decode(data)
	if err != nil {
		if f.ignoreUnknown && errors.Is(err, ErrUnknownCommand) {
			return &Result{Revision: f.st.rev, Err: err}
		}
		f.mu.Unlock()
		panic(fmt.Sprintf("store: raft log entry %d does not decode: %v", index, err))
	}
	return f.st.Apply(c)
}

// View runs fn with the state under the read lock. fn must not block or
// modify the state.
func (f *FSM) View(fn func(s *State)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.st)
}

// Changed returns a channel closed at the next apply or restore.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// Revision is the state's revision.
func (f *FSM) Revision() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.rev
}

// AppliedIndex is the last raft index the FSM has seen.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// Snapshot freezes the state; the slow part runs in Persist.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return fsmSnapshot{f.st.Freeze()}, nil
}

// Restore replaces the whole state with a snapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := ReadSnapshot(rc, f.logSize)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.st = st
	ch := f.changed
	f.changed = make(chan struct{})
	f.mu.Unlock()
	close(ch)
	return nil
}

type fsmSnapshot struct{ fr Frozen }

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.fr.WriteTo(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot at revision %d: %w", s.fr.Revision(), err)
	}
	return sink.Close()
}

func (fsmSnapshot) Release() {}
