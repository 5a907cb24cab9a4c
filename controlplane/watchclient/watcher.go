package watchclient

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Stream is one open watch.
type Stream interface {
	// Recv blocks for the next message; an error ends the stream.
	Recv() (*fedmeshv1.WatchResponse, error)
}

// Item is what the Watcher hands the client's goroutine: a message, or
// (NewStream) the news that a new stream starts, before its first message.
// On NewStream the client resets its Follower's snapshot staging and stops
// discarding.
type Item struct {
	Resp      *fedmeshv1.WatchResponse
	NewStream bool
}

// Config is what a Watcher needs. Open is required.
type Config struct {
	// Open opens a stream of the changes after fromRevision (0: a
	// snapshot first). It is called from the watch goroutine only and must
	// honour ctx, which ends the stream.
	Open func(ctx context.Context, fromRevision uint64) (Stream, error)
	// Buffer is how many items may wait for the client (default 1024): room
	// for a burst the client then drains at once.
	Buffer int
	// BackoffBase and BackoffMax bound the reconnect backoff (defaults
	// 200ms and 10s).
	BackoffBase, BackoffMax time.Duration
	// Seed seeds the backoff jitter (default: random).
	Seed uint64
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// OnMessage, when set, sees every message as it arrives, before the
	// client does (the agent records the newest revision that exists). It
	// is called from the watch goroutine and must not block.
	OnMessage func(*fedmeshv1.WatchResponse)
	// OnStream, when set, is told when a stream opens (open, and whether
	// it is a reconnect) and when it ends. It is called from the watch
	// goroutine and must not block.
	OnStream func(open, reconnect bool)
}

// Watcher is the watch goroutine of one client: it keeps one stream open
// to the control plane and moves its messages to the client's goroutine
// (Items). It resumes from the last revision it delivered whole (a
// completed snapshot, or an events or progress message), or from the
// revision the client asks for (Resync) when the client's Follower could
// not follow the stream. It holds no client state.
type Watcher struct {
	cfg    Config
	log    *slog.Logger
	items  chan Item
	resync chan uint64
}

// New returns a Watcher; it does nothing until Run.
func New(cfg Config) *Watcher {
	if cfg.Buffer <= 0 {
		cfg.Buffer = 1024
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 200 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 10 * time.Second
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Watcher{cfg: cfg, log: cfg.Logger, items: make(chan Item, cfg.Buffer), resync: make(chan uint64, 1)}
}

// Items is what the client's goroutine receives.
func (w *Watcher) Items() <-chan Item { return w.items }

// Resync asks for a new stream from rev: the current one is cancelled, and
// the client discards its remaining items until Item.NewStream. A request
// not yet taken is replaced. Called by the client's goroutine; it never
// blocks.
func (w *Watcher) Resync(rev uint64) {
	for {
		select {
		case w.resync <- rev:
			return
		default:
		}
		select {
		case <-w.resync: // replace an older request
		default:
		}
	}
}

// Run keeps a stream open until ctx ends, reconnecting with jittered
// exponential backoff; a stream that delivered a message starts the
// backoff over.
func (w *Watcher) Run(ctx context.Context) {
	retry := NewRetry(w.cfg.BackoffBase, w.cfg.BackoffMax, w.cfg.Seed)
	var from uint64
	streams := 0
	for ctx.Err() == nil {
		select {
		case rev := <-w.resync:
			from = rev
		default:
		}
		sctx, cancel := context.WithCancel(ctx)
		stream, err := w.cfg.Open(sctx, from)
		resynced := false
		if err == nil {
			if w.cfg.OnStream != nil {
				w.cfg.OnStream(true, streams > 0)
			}
			streams++
			w.log.Info("watching the control plane", "from_revision", from)
			var got bool
			got, resynced, err = w.pump(sctx, cancel, stream, &from)
			if w.cfg.OnStream != nil {
				w.cfg.OnStream(false, false)
			}
			if got {
				retry.Reset()
			}
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		if resynced {
			continue // the client asked for a new stream: no wait
		}
		wait := retry.Next()
		w.log.Warn("control plane unreachable; retrying",
			"from_revision", from, "retry_in", wait.Round(time.Millisecond), "err", err)
		if !Sleep(ctx, wait) {
			return
		}
	}
}

// pump receives one stream until it fails or the client asks for a
// resync (which cancels the stream and sets *from). got says whether any
// message arrived (a healthy replica: backoff starts over).
func (w *Watcher) pump(ctx context.Context, cancel context.CancelFunc, stream Stream, from *uint64) (got, resynced bool, err error) {
	resyncTo := make(chan uint64, 1)
	go func() {
		select {
		case rev := <-w.resync:
			resyncTo <- rev
			cancel()
		case <-ctx.Done():
		}
	}()
	defer func() {
		select {
		case rev := <-resyncTo:
			*from, resynced = rev, true
		default:
		}
	}()
	if !w.deliver(ctx, Item{NewStream: true}) {
		return false, false, ctx.Err()
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				err = errors.Join(err, ctx.Err())
			}
			return got, false, err
		}
		got = true
		if w.cfg.OnMessage != nil {
			w.cfg.OnMessage(resp)
		}
		if !w.deliver(ctx, Item{Resp: resp}) {
			return got, false, ctx.Err()
		}
		if !(resp.GetType() == fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT && resp.GetMore()) && resp.GetRevision() > *from {
			*from = resp.GetRevision()
		}
	}
}

func (w *Watcher) deliver(ctx context.Context, it Item) bool {
	select {
	case w.items <- it:
		return true
	case <-ctx.Done():
		return false
	}
}
