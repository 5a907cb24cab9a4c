package watchclient

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestBackoffGrowsJittersAndCaps(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base, top := 100*time.Millisecond, 2*time.Second
	for attempt := range 10 {
		step := min(base<<attempt, top)
		for range 50 {
			d := Backoff(attempt, base, top, r)
			if d < step/2 || d > step {
				t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, d, step/2, step)
			}
		}
	}
}
