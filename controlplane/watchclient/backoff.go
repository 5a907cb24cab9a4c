package watchclient

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff returns the wait before retry number attempt (0-based): an
// exponential step from base, capped at max, with "equal jitter" (half
// fixed, half random) so a fleet of clients that lost the same replica
// does not reconnect in lockstep. Pure given r.
func Backoff(attempt int, base, max time.Duration, r *rand.Rand) time.Duration {
	d := base
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	half := d / 2
	return half + time.Duration(r.Int64N(int64(half)+1))
}

// Sleep waits d, or until ctx ends; it reports whether the full wait
// passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Retry is Backoff with its attempt count: Next is the wait before the
// next retry, Reset starts over after a success. Not safe for concurrent
// use; each retrying loop owns one.
type Retry struct {
	base, max time.Duration
	r         *rand.Rand
	attempt   int
}

// NewRetry returns a Retry between base and max, its jitter seeded by seed
// (0: random).
func NewRetry(base, max time.Duration, seed uint64) *Retry {
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Retry{base: base, max: max, r: rand.New(rand.NewPCG(seed, 1))}
}

// Next returns the wait before the next retry and counts it.
func (b *Retry) Next() time.Duration {
	d := Backoff(b.attempt, b.base, b.max, b.r)
	b.attempt++
	return d
}

// Reset starts the backoff over.
func (b *Retry) Reset() { b.attempt = 0 }
