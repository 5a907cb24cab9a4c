package dataplane

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The programs read their clock (conntrack idle times, learned-name
// expiry, the event token bucket) as jiffies × tick + base: bpf_jiffies64
// is inlined by the verifier into a load, where bpf_ktime_get_coarse_ns is
// a helper call that costs ~16 ns a packet on a host whose every return is
// mitigated (SRSO "Safe RET"). The kernel advances jiffies from the
// monotonic clock in whole ticks, so the product stays on CLOCK_MONOTONIC's
// scale within a tick, without drift: the same clock, at the same
// resolution, the coarse helper reads. The tick is not exposed to user
// space, so it is measured once per process: two samples of (jiffies,
// coarse ns) read together by a tiny program, the tick being the known
// value (HZ 100, 250, 300 or 1000) that explains their difference.
var jiffyCal struct {
	once       sync.Once
	tick, base uint64
	err        error
}

// jiffyClock returns the tick in ns and the base such that jiffies × tick
// + base is the coarse monotonic time, or an error when the tick could not
// be measured (the programs then read the coarse clock).
func jiffyClock() (tick, base uint64, err error) {
	jiffyCal.once.Do(func() {
		// A few tries: a sample taken while the host is too busy to run
		// the tick on time can explain no HZ.
		for range 3 {
			jiffyCal.tick, jiffyCal.base, jiffyCal.err = calibrateJiffies(50 * time.Millisecond)
			if jiffyCal.err == nil {
				break
			}
		}
	})
	return jiffyCal.tick, jiffyCal.base, jiffyCal.err
}

// hzCandidates are the CONFIG_HZ values Linux offers.
var hzCandidates = []uint64{100, 250, 300, 1000}

// tickFor picks the tick (TICK_NSEC of a candidate HZ) that makes dj
// jiffies last dns ns, within a tick and a quarter either way (each
// sample's coarse clock may run up to a tick and a little ahead of its
// jiffies: 13 jiffies in 56,000,003 ns seen at HZ 250 on a loaded host);
// 0 when none does.
func tickFor(dj, dns uint64) uint64 {
	if dj < 2 {
		return 0
	}
	best, bestErr := uint64(0), uint64(1<<63)
	for _, hz := range hzCandidates {
		tick := (1_000_000_000 + hz/2) / hz
		want := dj * tick
		diff := max(want, dns) - min(want, dns)
		if diff <= tick+tick/4 && diff < bestErr {
			best, bestErr = tick, diff
		}
	}
	return best
}

// jiffySampler reads (jiffies, coarse monotonic ns) together, in a program.
type jiffySampler struct {
	m *ebpf.Map
	p *ebpf.Program
}

func newJiffySampler() (*jiffySampler, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1})
	if err != nil {
		return nil, err
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "MIT", Instructions: asm.Instructions{
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Reg(asm.R6, asm.R0),
		asm.FnJiffies64.Call(),
		asm.StoreMem(asm.R6, 0, asm.R0, asm.DWord),
		asm.FnKtimeGetCoarseNs.Call(),
		asm.StoreMem(asm.R6, 8, asm.R0, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}})
	if err != nil {
		m.Close()
		return nil, err
	}
	return &jiffySampler{m: m, p: p}, nil
}

func (s *jiffySampler) sample() (j, ns uint64, err error) {
	if _, err := s.p.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
		return 0, 0, err
	}
	var v [2]uint64
	if err := s.m.Lookup(uint32(0), &v); err != nil {
		return 0, 0, err
	}
	return v[0], v[1], nil
}

func (s *jiffySampler) close() {
	s.p.Close()
	s.m.Close()
}

func calibrateJiffies(gap time.Duration) (tick, base uint64, err error) {
	s, err := newJiffySampler()
	if err != nil {
		return 0, 0, fmt.Errorf("measure the kernel tick: %w", err)
	}
	defer s.close()
	// Five samples across the gap: the first and last give the tick, all
	// of them the base.
	var js, nss [5]uint64
	for i := range js {
		if i > 0 {
			time.Sleep(gap / time.Duration(len(js)-1))
		}
		if js[i], nss[i], err = s.sample(); err != nil {
			return 0, 0, fmt.Errorf("measure the kernel tick: %w", err)
		}
	}
	j0, ns0, j1, ns1 := js[0], nss[0], js[len(js)-1], nss[len(nss)-1]
	if j1 <= j0 || ns1 <= ns0 {
		return 0, 0, errors.New("measure the kernel tick: the clocks did not advance")
	}
	tick = tickFor(j1-j0, ns1-ns0)
	if tick == 0 {
		return 0, 0, fmt.Errorf("measure the kernel tick: %d jiffies in %d ns match no HZ", j1-j0, ns1-ns0)
	}
	// The base is the smallest offset any sample shows: the coarse clock
	// is read at or after the tick that advanced jiffies, sometimes well
	// after it (a late timekeeping update; 1 ms seen on this host), and a
	// base taken from such a sample runs the packet clock ahead of
	// CLOCK_MONOTONIC, expiring names and flows early. Wrapping
	// arithmetic: jiffies start near 2^32 - 300 HZ, so the base is
	// "negative"; the programs add it modulo 2^64 as well, and offsets
	// compare by their signed difference.
	base = nss[0] - js[0]*tick
	for i := range js {
		if b := nss[i] - js[i]*tick; int64(b-base) < 0 {
			base = b
		}
	}
	return tick, base, nil
}
