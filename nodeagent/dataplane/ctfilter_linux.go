package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// The conntrack filter (fm_ct_filter in bpf/fedmesh.c, which documents the
// protocol): what this process owns of it is the rebuild of the
// generation packets do not test, at the first Apply and then every
// ctFilterRebuildInterval.
const (
	// ctFilterRebuildInterval bounds how long keys gone from conntrack
	// (evicted, or flows that went idle) keep costing their lookup: at
	// 10k new flows a second a generation is a quarter full when rebuilt.
	ctFilterRebuildInterval = time.Minute
	// ctfBatch is how many conntrack keys one batch lookup reads.
	ctfBatch = 4096
)

// ctFilter is this process's fm_ct_filter. Programs set bits with atomic
// ORs, and so does the rebuild, so neither loses the other's.
type ctFilter struct {
	*bloom
	ct4, ct6 *ebpf.Map
	log      *slog.Logger

	mu      sync.Mutex // one rebuild at a time
	started bool
	stop    chan struct{}
	done    chan struct{}
}

func openCTFilter(m, ct4, ct6 *ebpf.Map, log *slog.Logger) (*ctFilter, error) {
	b, err := openBloom(m, ctfBits)
	if err != nil {
		return nil, err
	}
	return &ctFilter{bloom: b, ct4: ct4, ct6: ct6, log: log, stop: make(chan struct{}), done: make(chan struct{})}, nil
}

// start rebuilds the filter, which makes it valid, and then keeps
// rebuilding it. Called once every program this process did not load is
// detached (the first Apply prunes their links): flows they opened have no
// bit in this process's filter, and the walk finds them only once no such
// program can open more.
func (f *ctFilter) start() {
	f.mu.Lock()
	if f.started {
		f.mu.Unlock()
		return
	}
	f.started = true
	f.mu.Unlock()
	if err := f.rebuild(); err != nil {
		f.log.Warn("conntrack filter not built; every packet of no known flow looks conntrack up", "err", err)
	}
	go f.loop()
}

func (f *ctFilter) loop() {
	everyTick(ctFilterRebuildInterval, f.stop, f.done, func() {
		if err := f.rebuild(); err != nil {
			f.log.Warn("rebuild conntrack filter; the current one stays in use", "err", err)
			return
		}
		f.log.Debug("rebuilt conntrack filter", "fill", f.fill())
	})
}

// rebuild clears the generation packets do not test, waits out programs
// that may have set a bit during the clearing, records every conntrack key
// in it and makes it the tested one. On error the tested generation stays.
func (f *ctFilter) rebuild() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	// graceAfterFlip: a program runs for microseconds, so one that set a
	// bit the clearing overwrote has inserted its entry by then, and the
	// walk finds it.
	return f.bloom.rebuild(graceAfterFlip, func(set func(uint32)) error {
		if err := walkKeys(f.ct4, func(k ct4Key) { set(ctfHash4(k)) }); err != nil {
			return fmt.Errorf("walk fm_ct4: %w", err)
		}
		if err := walkKeys(f.ct6, func(k ct6Key) { set(ctfHash6(k)) }); err != nil {
			return fmt.Errorf("walk fm_ct6: %w", err)
		}
		return nil
	})
}

// walkKeys calls fn with every key of the conntrack table m.
func walkKeys[K any](m *ebpf.Map, fn func(K)) error {
	keys := make([]K, ctfBatch)
	vals := make([]ctVal, ctfBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for _, k := range keys[:n] {
			fn(k)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (f *ctFilter) close() {
	f.mu.Lock()
	started := f.started
	f.started = true // no start after close
	f.mu.Unlock()
	close(f.stop)
	if started {
		<-f.done
	}
	f.bloom.close()
}
