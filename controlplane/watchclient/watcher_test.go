package watchclient

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// scriptedStream is a stream the test feeds: each message or error it
// sends is what Recv returns next; cancelling the stream's context ends it
// as a real one does.
type scriptedStream struct {
	ctx  context.Context
	msgs chan *fedmeshv1.WatchResponse
	errs chan error
}

func (s *scriptedStream) Recv() (*fedmeshv1.WatchResponse, error) {
	select {
	case m := <-s.msgs:
		return m, nil
	case err := <-s.errs:
		return nil, err
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

type opened struct {
	from   uint64
	stream *scriptedStream
}

// The Watcher resumes from the last revision it delivered whole, starts
// every stream with NewStream, and answers Resync with a new stream from
// the asked revision.
func TestWatcherResumesFromTheLastWholeRevision(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	opens := make(chan opened)
	var seen []uint64
	var reconnects []bool
	w := New(Config{
		Open: func(ctx context.Context, from uint64) (Stream, error) {
			s := &scriptedStream{ctx: ctx, msgs: make(chan *fedmeshv1.WatchResponse), errs: make(chan error)}
			select {
			case opens <- opened{from, s}:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return s, nil
		},
		BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond,
		Logger:    slog.New(slog.DiscardHandler),
		OnMessage: func(r *fedmeshv1.WatchResponse) { seen = append(seen, r.GetRevision()) },
		OnStream: func(open, reconnect bool) {
			if open {
				reconnects = append(reconnects, reconnect)
			}
		},
	})
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()

	next := func(what string) Item {
		t.Helper()
		select {
		case it := <-w.Items():
			return it
		case <-ctx.Done():
			t.Fatalf("%s: no item", what)
		}
		return Item{}
	}
	open := func(want uint64) *scriptedStream {
		t.Helper()
		var o opened
		select {
		case o = <-opens:
		case <-ctx.Done():
			t.Fatalf("no stream opened from %d", want)
		}
		if o.from != want {
			t.Fatalf("stream opened from revision %d, want %d", o.from, want)
		}
		if it := next("new stream"); !it.NewStream {
			t.Fatalf("first item of a stream %+v, want NewStream", it)
		}
		return o.stream
	}
	send := func(s *scriptedStream, m *fedmeshv1.WatchResponse) {
		t.Helper()
		s.msgs <- m
		if it := next("message"); it.Resp != m {
			t.Fatalf("item %+v, want message at revision %d", it, m.GetRevision())
		}
	}

	s := open(0)
	send(s, snap(5, true))
	send(s, snap(5, false))
	send(s, events(7))
	s.errs <- errors.New("replica gone")

	s = open(7)
	send(s, snap(9, true)) // a chunk is not a whole revision
	s.errs <- errors.New("replica gone")

	s = open(7)
	send(s, progress(8))
	w.Resync(3)
	open(3)

	if want := []uint64{5, 5, 7, 9, 8}; !slices.Equal(seen, want) {
		t.Errorf("OnMessage saw revisions %v, want %v", seen, want)
	}
	if want := []bool{false, true, true, true}; !slices.Equal(reconnects, want) {
		t.Errorf("OnStream reconnect flags %v, want %v", reconnects, want)
	}
	cancel()
	<-done
}
