package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/metrics"
	"slices"
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

// snapshotTaken is one Raft snapshot a replica wrote during the run.
type snapshotTaken struct {
	Replica string
	Bytes   int64
	// Write is how long the snapshot's directory stayed "<name>.tmp":
	// from hashicorp/raft's FileSnapshotStore creating it to the rename
	// once the store's Persist wrote every object (the freeze before it,
	// under the FSM lock, is not included). Polled every 100 ms.
	Write time.Duration
}

// snapWatcher polls every replica's snapshot directory for snapshots
// being written.
type snapWatcher struct {
	reps  []*replicaProc // fixed at start: id and dir only are read
	mu    sync.Mutex
	taken []snapshotTaken
}

func (w *snapWatcher) run(ctx context.Context) {
	started := map[string]time.Time{} // replica/<name>.tmp -> first seen
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, r := range w.reps {
			dir := filepath.Join(r.dir, "data", "snapshots")
			ents, _ := os.ReadDir(dir)
			seen := map[string]bool{}
			for _, e := range ents {
				if name, ok := strings.CutSuffix(e.Name(), ".tmp"); ok {
					k := r.id + "/" + name
					seen[k] = true
					if _, ok := started[k]; !ok {
						started[k] = time.Now()
					}
				}
			}
			for k, at := range started {
				id, name, _ := strings.Cut(k, "/")
				if id != r.id || seen[k] {
					continue
				}
				delete(started, k)
				fi, err := os.Stat(filepath.Join(dir, name, "state.bin"))
				if err != nil {
					continue // reaped or abandoned
				}
				w.mu.Lock()
				w.taken = append(w.taken, snapshotTaken{Replica: id, Bytes: fi.Size(), Write: time.Since(at)})
				w.mu.Unlock()
			}
		}
	}
}

func (w *snapWatcher) snapshots() []snapshotTaken {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.taken)
}

// memAvailable is the machine's MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (uint64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("read /proc/meminfo: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			fs := strings.Fields(v)
			if len(fs) > 0 {
				kb, err := strconv.ParseUint(fs[0], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("parse MemAvailable %q: %w", fs[0], err)
				}
				return kb << 10, nil
			}
		}
	}
	return 0, errors.New("no MemAvailable in /proc/meminfo")
}

// guardMemory cancels the run when the machine's available memory drops
// below min, so that a run too big for a shared machine stops cleanly
// (every replica stopped by the run's defers) instead of drawing the
// kernel's OOM killer onto someone else's process.
func guardMemory(ctx context.Context, min uint64, cancel context.CancelCauseFunc) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if avail, err := memAvailable(); err == nil && avail < min {
			cancel(fmt.Errorf("machine's available memory %d MiB fell below --min-available-mib %d: run aborted", avail>>20, min>>20))
			return
		}
	}
}

// selfMem is fedload's own process: its RSS and peak RSS (VmHWM), which
// at millions of endpoints is mostly the simulated agents.
func selfMem() procSample {
	s, _ := readProc(os.Getpid())
	return s
}

// heapPeak samples the Go heap's live-and-not-yet-collected object bytes
// (runtime/metrics, no forced collection) until stopped and keeps the
// highest: the peak of what a phase held, which a heap reading after a
// collection at its end misses.
type heapPeak struct {
	stop chan struct{}
	done chan struct{}
	peak uint64
}

func startHeapPeak() *heapPeak {
	h := &heapPeak{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			h.peak = max(h.peak, s[0].Value.Uint64())
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
		}
	}()
	return h
}

// end stops the sampler and returns the peak.
func (h *heapPeak) end() uint64 {
	close(h.stop)
	<-h.done
	return h.peak
}
