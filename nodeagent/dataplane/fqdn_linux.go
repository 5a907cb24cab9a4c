package dataplane

import (
	"context"
	"errors"
	"fmt"
)

// Learn implements Dataplane.
func (e *EBPF) Learn(ctx context.Context, addrs []LearnedAddr) error {
	if err := validateLearned(addrs); err != nil {
		return fmt.Errorf("learn addresses: %w", err)
	}
	return fmt.Errorf("learn addresses: %w", errors.ErrUnsupported)
}

// Forget implements Dataplane.
func (e *EBPF) Forget(ctx context.Context, endpoint string) error { return nil }
