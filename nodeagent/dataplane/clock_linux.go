package dataplane

import "golang.org/x/sys/unix"

// monotonicNow is CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns reads
// (conntrack ages on its coarse variant, at most a tick behind), so
// in-memory conntrack ages like the kernel's.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
