//go:build !linux

package dataplane

import "time"

var clockStart = time.Now()

func monotonicNow() uint64 { return uint64(time.Since(clockStart)) }
