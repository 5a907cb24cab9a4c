package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The conntrack filter (fm_ct_filter in bpf/fedmesh.c, which documents the
// protocol): what this process owns of it is the rebuild of the
// generation packets do not test, at the first Apply and then every
// ctFilterRebuildInterval.
const (
	ctfBits  = 21 // CTF_BITS
	ctfWords = 1 << (ctfBits - 6)
	ctfValid = 2 // CTF_VALID

	// ctFilterRebuildInterval bounds how long keys gone from conntrack
	// (evicted, or flows that went idle) keep costing their lookup: at
	// 10k new flows a second a generation is a quarter full when rebuilt.
	ctFilterRebuildInterval = time.Minute
	// ctfBatch is how many conntrack keys one batch lookup reads.
	ctfBatch = 4096
)

// ctfMix is ctf_mix.
func ctfMix(a, b, w0, w1, w2 uint32) uint32 {
	x := (uint64(a)<<32 | uint64(b)) * 0x9E3779B97F4A7C15
	x ^= uint64(w1)<<32 | uint64(w2^w0)
	return uint32((x * 0xC2B2AE3D27D4EB4F) >> (64 - ctfBits))
}

// ctfHead is a key's first three little-endian words, as the programs
// read struct ct4_key and ct6_key.
func ctfHead(ifindex uint32, proto, pad uint8, portA, portB, pad2 uint16) (uint32, uint32, uint32) {
	return ifindex, uint32(proto) | uint32(pad)<<8 | uint32(portA)<<16, uint32(portB) | uint32(pad2)<<16
}

func ctfHash4(k ct4Key) uint32 {
	w0, w1, w2 := ctfHead(k.Ifindex, k.Proto, k.Pad, k.PortA, k.PortB, k.Pad2)
	return ctfMix(binary.LittleEndian.Uint32(k.A[:]), binary.LittleEndian.Uint32(k.B[:]), w0, w1, w2)
}

func ctfHash6(k ct6Key) uint32 {
	fold := func(a [16]byte) uint32 {
		le := binary.LittleEndian
		return le.Uint32(a[0:]) ^ le.Uint32(a[4:]) ^ le.Uint32(a[8:]) ^ le.Uint32(a[12:])
	}
	w0, w1, w2 := ctfHead(k.Ifindex, k.Proto, k.Pad, k.PortA, k.PortB, k.Pad2)
	return ctfMix(fold(k.A), fold(k.B), w0, w1, w2)
}

// ctFilter is this process's fm_ct_filter, through a shared mapping of
// the array: programs set bits with atomic ORs, and so does the rebuild,
// so neither loses the other's.
type ctFilter struct {
	mem      []byte
	words    []uint64 // [0] the control word, then both generations
	ct4, ct6 *ebpf.Map
	log      *slog.Logger

	mu      sync.Mutex // one rebuild at a time
	started bool
	stop    chan struct{}
	done    chan struct{}
}

func openCTFilter(m, ct4, ct6 *ebpf.Map, log *slog.Logger) (*ctFilter, error) {
	n := int(m.MaxEntries())
	if m.ValueSize() != 8 || n != 1+2*ctfWords {
		return nil, fmt.Errorf("open conntrack filter: %d entries of %d bytes, want %d of 8", n, m.ValueSize(), 1+2*ctfWords)
	}
	size := (n*8 + unix.Getpagesize() - 1) &^ (unix.Getpagesize() - 1)
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the conntrack filter: %w", err)
	}
	return &ctFilter{mem: mem, words: unsafe.Slice((*uint64)(unsafe.Pointer(&mem[0])), n), ct4: ct4, ct6: ct6,
		log: log, stop: make(chan struct{}), done: make(chan struct{})}, nil
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
	defer close(f.done)
	t := time.NewTicker(ctFilterRebuildInterval)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
			if err := f.rebuild(); err != nil {
				f.log.Warn("rebuild conntrack filter; the current one stays in use", "err", err)
				continue
			}
			f.log.Debug("rebuilt conntrack filter", "fill", f.fill())
		}
	}
}

// rebuild clears the generation packets do not test, waits out programs
// that may have set a bit during the clearing, records every conntrack key
// in it and makes it the tested one. On error the tested generation stays.
func (f *ctFilter) rebuild() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	ctl := atomic.LoadUint64(&f.words[0])
	next := (ctl & 1) ^ 1
	gen := f.words[1+next*ctfWords : 1+(next+1)*ctfWords]
	for i := range gen {
		atomic.StoreUint64(&gen[i], 0)
	}
	// graceAfterFlip: a program runs for microseconds, so one that set a
	// bit the clearing overwrote has inserted its entry by now, and the
	// walk below finds it.
	time.Sleep(graceAfterFlip)
	set := func(h uint32) { atomic.OrUint64(&gen[h>>6], 1<<(h&63)) }
	if err := walkKeys(f.ct4, func(k ct4Key) { set(ctfHash4(k)) }); err != nil {
		return fmt.Errorf("walk fm_ct4: %w", err)
	}
	if err := walkKeys(f.ct6, func(k ct6Key) { set(ctfHash6(k)) }); err != nil {
		return fmt.Errorf("walk fm_ct6: %w", err)
	}
	atomic.StoreUint64(&f.words[0], next|ctfValid)
	return nil
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

// fill is the fraction of the tested generation's bits that are set: the
// share of packets of no known flow that still look conntrack up.
func (f *ctFilter) fill() float64 {
	ctl := atomic.LoadUint64(&f.words[0])
	g := ctl & 1
	gen := f.words[1+g*ctfWords : 1+(g+1)*ctfWords]
	ones := 0
	for i := range gen {
		ones += bits.OnesCount64(atomic.LoadUint64(&gen[i]))
	}
	return float64(ones) / (ctfWords * 64)
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
	_ = unix.Munmap(f.mem)
}
