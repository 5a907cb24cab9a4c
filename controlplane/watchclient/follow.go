package watchclient

import (
	"errors"
	"fmt"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Errors Follower.Apply returns for a stream that cannot be followed; the
// client restarts the watch from Follower.Revision on any of them.
var (
	// ErrStale is a message older than the revision the client is at.
	ErrStale = errors.New("watch message older than the applied revision")
	// ErrNoSnapshot is an events message before the first snapshot: the
	// client has no base to apply it to.
	ErrNoSnapshot = errors.New("watch events before the first snapshot")
	// ErrBrokenSnapshot is a snapshot interrupted by another message type
	// or whose chunks disagree on the revision.
	ErrBrokenSnapshot = errors.New("watch snapshot chunks out of sequence")
)

// UpdateKind says what a message means for the client's view.
type UpdateKind uint8

// Update kinds.
const (
	// UpdateNone: nothing to apply yet (a snapshot chunk with more to come).
	UpdateNone UpdateKind = iota
	// UpdateSnapshot: Events are the whole state at Revision, in stream
	// order (a later event for an object replaces an earlier one); the
	// client replaces its view with them.
	UpdateSnapshot
	// UpdateEvents: Events are the changes after the client's revision up
	// to Revision, in order, without those it already applied.
	UpdateEvents
	// UpdateProgress: nothing the client watches changed up to Revision.
	UpdateProgress
	// UpdateUnknown: a message type this client does not know (from a
	// newer server); it is skipped and the revision stays.
	UpdateUnknown
)

// Update is what one message brings the client.
type Update struct {
	Kind     UpdateKind
	Revision uint64
	Events   []*fedmeshv1.Event
}

// Follower tracks a client's position in the watch stream: the revision it
// is at, whether it holds a complete snapshot, and the chunks of a snapshot
// being received. It is pure and owned by the client's goroutine; the zero
// value is a client at revision 0 with nothing applied.
type Follower struct {
	rev    uint64
	synced bool

	staging    []*fedmeshv1.Event
	stagingRev uint64
	inSnapshot bool
}

// Revision is the revision of the last message applied whole.
func (f *Follower) Revision() uint64 { return f.rev }

// Synced reports whether a complete snapshot has been applied, i.e. the
// client's view is a faithful copy at Revision.
func (f *Follower) Synced() bool { return f.synced }

// ResetStream drops a half-received snapshot; the client calls it whenever
// a new stream starts (Item.NewStream).
func (f *Follower) ResetStream() {
	f.staging, f.inSnapshot, f.stagingRev = nil, false, 0
}

// Apply takes one watch message and returns what it brings. An error means
// the stream cannot be followed: the Follower is unchanged by the failing
// message (but for dropping a broken snapshot), and the client must
// restart the watch from Revision.
func (f *Follower) Apply(resp *fedmeshv1.WatchResponse) (Update, error) {
	rev := resp.GetRevision()
	switch resp.GetType() {
	case fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT:
		return f.snapshotChunk(resp)
	case fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS:
		if f.inSnapshot {
			return Update{}, fmt.Errorf("events at revision %d inside a snapshot: %w", rev, ErrBrokenSnapshot)
		}
		if !f.synced {
			return Update{}, ErrNoSnapshot
		}
		if rev < f.rev {
			return Update{}, fmt.Errorf("events up to revision %d, client at %d: %w", rev, f.rev, ErrStale)
		}
		u := Update{Kind: UpdateEvents, Revision: rev, Events: make([]*fedmeshv1.Event, 0, len(resp.GetEvents()))}
		for _, ev := range resp.GetEvents() {
			if ev.GetRevision() != 0 && ev.GetRevision() <= f.rev {
				continue // already applied (a replica resent it after a reconnect)
			}
			u.Events = append(u.Events, ev)
		}
		f.rev = rev
		return u, nil
	case fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_PROGRESS:
		if f.inSnapshot {
			return Update{}, fmt.Errorf("progress inside a snapshot: %w", ErrBrokenSnapshot)
		}
		if rev < f.rev {
			return Update{}, fmt.Errorf("progress at revision %d, client at %d: %w", rev, f.rev, ErrStale)
		}
		if f.synced {
			f.rev = rev
		}
		return Update{Kind: UpdateProgress, Revision: f.rev}, nil
	default:
		return Update{Kind: UpdateUnknown, Revision: f.rev}, nil
	}
}

func (f *Follower) snapshotChunk(resp *fedmeshv1.WatchResponse) (Update, error) {
	if !f.inSnapshot {
		f.inSnapshot, f.stagingRev, f.staging = true, resp.GetRevision(), nil
	} else if resp.GetRevision() != f.stagingRev {
		stagingRev := f.stagingRev
		f.ResetStream()
		return Update{}, fmt.Errorf("snapshot chunk at revision %d after chunks at %d: %w", resp.GetRevision(), stagingRev, ErrBrokenSnapshot)
	}
	f.staging = append(f.staging, resp.GetEvents()...)
	if resp.GetMore() {
		return Update{Revision: f.rev}, nil
	}
	evs, rev := f.staging, f.stagingRev
	f.ResetStream()
	if f.synced && rev < f.rev {
		// A replica that is behind the one the client followed: applying
		// its snapshot would move the client back in time.
		return Update{}, fmt.Errorf("snapshot at revision %d, client at %d: %w", rev, f.rev, ErrStale)
	}
	f.rev, f.synced = rev, true
	return Update{Kind: UpdateSnapshot, Revision: rev, Events: evs}, nil
}
