package auth

import (
	"math"
	"sync"
	"time"
)

// Limit is a token bucket: Rate requests per second on average, up to
// Burst at once. A zero Rate means unlimited.
type Limit struct {
	Rate  float64
	Burst int
}

// Limits are the per-principal-kind limits the Guard enforces.
type Limits struct {
	// Rate is the request rate per principal, by kind. Replicas are not
	// limited: what they forward is counted against the original caller.
	Rate map[Kind]Limit
	// MaxMessage is the largest request message, in bytes, by kind;
	// KindUnknown applies to calls without a certificate (Join).
	MaxMessage map[Kind]int
}

// DefaultLimits suit a LAN control plane: a syncer's full resync arrives in
// batches well under 16 MiB; a node agent only reports its status.
func DefaultLimits() Limits {
	return Limits{
		Rate: map[Kind]Limit{
			KindAdmin:   {Rate: 200, Burst: 400},
			KindSyncer:  {Rate: 100, Burst: 200},
			KindNode:    {Rate: 20, Burst: 40},
			KindUnknown: {Rate: 5, Burst: 10},
		},
		MaxMessage: map[Kind]int{
			KindUnknown: 64 << 10,
			KindAdmin:   64 << 20,
			KindSyncer:  16 << 20,
			KindNode:    1 << 20,
			KindReplica: 64 << 20,
		},
	}
}

// MaxMessage is the largest message any principal may send, for the gRPC
// server's own MaxRecvMsgSize.
func (l Limits) maxOfAll() int {
	m := 0
	for _, v := range l.MaxMessage {
		m = max(m, v)
	}
	return m
}

// rateLimiter keeps one token bucket per key. Buckets idle long enough to
// be full again are dropped, so the map stays as small as the set of
// recently active principals.
type rateLimiter struct {
	mu      sync.Mutex
	buckets map[string]*bucket
	sweep   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
	lim    Limit
}

func newRateLimiter() *rateLimiter { return &rateLimiter{buckets: map[string]*bucket{}} }

// allow takes one token from key's bucket; when empty it says how long
// until the next token.
func (r *rateLimiter) allow(key string, lim Limit, now time.Time) (bool, time.Duration) {
	if lim.Rate <= 0 {
		return true, 0
	}
	burst := float64(max(lim.Burst, 1))
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.sweep) > time.Minute {
		r.sweep = now
		for k, b := range r.buckets {
			if b.tokens+now.Sub(b.last).Seconds()*b.lim.Rate >= float64(max(b.lim.Burst, 1)) {
				delete(r.buckets, k)
			}
		}
	}
	b := r.buckets[key]
	if b == nil {
		b = &bucket{tokens: burst, last: now}
		r.buckets[key] = b
	}
	b.lim = lim
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(burst, b.tokens+el*lim.Rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / lim.Rate * float64(time.Second))
}
