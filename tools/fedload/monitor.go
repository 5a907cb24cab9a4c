package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// procSample is one reading of a process's memory and CPU.
type procSample struct {
	RSS, PeakRSS uint64  // bytes
	CPU          float64 // user+system seconds since start
}

var errNoProc = errors.New("process gone")

// readProc reads /proc/<pid>/status and /proc/<pid>/stat.
func readProc(pid int) (procSample, error) {
	var s procSample
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, errNoProc
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		kb, _ := strconv.ParseUint(fs[0], 10, 64)
		switch k {
		case "VmRSS":
			s.RSS = kb << 10
		case "VmHWM":
			s.PeakRSS = kb << 10
		}
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, errNoProc
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields overall.
	rest := string(st)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+2:]
	}
	fs := strings.Fields(rest)
	if len(fs) > 12 {
		ut, _ := strconv.ParseFloat(fs[11], 64)
		stt, _ := strconv.ParseFloat(fs[12], 64)
		s.CPU = (ut + stt) / clockTicks
	}
	return s, nil
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// monitor samples the replicas' RSS and CPU.
type monitor struct {
	fed  *federation
	mu   sync.Mutex
	last []procSample
	peak []uint64
}

func newMonitor(f *federation) *monitor {
	m := &monitor{fed: f, last: make([]procSample, len(f.replicas)), peak: make([]uint64, len(f.replicas))}
	m.sample()
	return m
}

func (m *monitor) sample() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, r := range m.fed.replicas {
		s, err := readProc(r.cmd.Process.Pid)
		if err != nil {
			continue
		}
		m.last[i] = s
		m.peak[i] = max(m.peak[i], s.PeakRSS)
	}
}

func (m *monitor) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			m.sample()
			return
		case <-t.C:
			m.sample()
		}
	}
}

func (m *monitor) cpu() []float64 {
	m.sample()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []float64
	for _, s := range m.last {
		out = append(out, s.CPU)
	}
	return out
}

func (m *monitor) rss(i int) (uint64, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last[i].RSS, m.peak[i]
}

func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
