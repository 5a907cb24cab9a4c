package dataplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// retryNoMem resumes a batch write after ENOMEM from the first entry not
// written, and returns any other error, or ENOMEM once its context ends.
func TestRetryNoMemResumesWhereTheWriteStopped(t *testing.T) {
	noMem := fmt.Errorf("batch update: %w", unix.ENOMEM)
	other := fmt.Errorf("batch update: %w", unix.EINVAL)
	type step struct {
		done int
		err  error
	}
	for _, c := range []struct {
		name      string
		steps     []step
		cancelled bool
		wantFrom  []int
		wantErr   bool
		wantIs    error // when not nil, what the error wraps
	}{
		{"one write", []step{{10, nil}}, false, []int{0}, false, nil},
		{"ENOMEM twice, then the rest", []step{{4, noMem}, {0, noMem}, {6, nil}}, false, []int{0, 4, 4}, false, nil},
		{"another error is returned", []step{{3, other}}, false, []int{0}, true, unix.EINVAL},
		{"ENOMEM after the context ended", []step{{2, noMem}}, true, []int{0}, true, context.Canceled},
		{"no progress and no error is an error", []step{{0, nil}}, false, []int{0}, true, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if c.cancelled {
				cancel()
			}
			var from []int
			err := retryNoMem(ctx, 10, func(f int) (int, error) {
				from = append(from, f)
				if len(from) > len(c.steps) {
					t.Fatalf("write called %d times, the case has %d steps", len(from), len(c.steps))
				}
				s := c.steps[len(from)-1]
				return s.done, s.err
			})
			if !slices.Equal(from, c.wantFrom) {
				t.Errorf("writes from %v, want %v", from, c.wantFrom)
			}
			if (err != nil) != c.wantErr || (c.wantIs != nil && !errors.Is(err, c.wantIs)) {
				t.Errorf("err %v, want an error %v (wrapping %v)", err, c.wantErr, c.wantIs)
			}
		})
	}
}
