package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// churnStats counts what the churn did.
type churnStats struct {
	changes, endpointChanges, errors, behind int
}

// churn issues changes at p.Rate for p.Duration, each to a random
// cluster's syncer, at most 4 in flight per syncer; a change that finds
// its syncer's queue full is counted as behind, never silently skipped.
func churn(ctx context.Context, syncers []*simSyncer, p Profile) ([]sample, churnStats) {
	var mu sync.Mutex
	var out []sample
	var st churnStats
	var firstErr error
	queues := make([]chan struct{}, len(syncers))
	var wg sync.WaitGroup
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i, s := range syncers {
		queues[i] = make(chan struct{}, 16)
		for range 4 {
			wg.Go(func() {
				for range queues[i] {
					sent := time.Now()
					kind, rev, err := s.change(cctx)
					mu.Lock()
					if errors.Is(err, errAllBusy) {
						st.behind++ // not issued: its objects had writes in flight
					} else if err != nil {
						st.errors++
						if firstErr == nil {
							firstErr = err
						}
					} else {
						st.changes++
						if kind.endpoint() {
							st.endpointChanges++
						}
						out = append(out, sample{cluster: s.idx, rev: rev, sent: sent})
					}
					mu.Unlock()
				}
			})
		}
	}
	rng := syncers[0].rng
	start := time.Now()
	issued := 0
	tick := time.NewTicker(5 * time.Millisecond)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case now := <-tick.C:
			el := now.Sub(start)
			if el >= p.Duration {
				break loop
			}
			due := int(p.Rate * el.Seconds())
			for ; issued < due; issued++ {
				syncers[0].mu.Lock()
				c := rng.IntN(len(syncers))
				syncers[0].mu.Unlock()
				select {
				case queues[c] <- struct{}{}:
				default:
					mu.Lock()
					st.behind++
					mu.Unlock()
				}
			}
		}
	}
	tick.Stop()
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	if firstErr != nil && !errors.Is(firstErr, context.Canceled) {
		slog.Warn("writes failed during the churn", "count", st.errors, "first", firstErr)
	}
	return out, st
}
