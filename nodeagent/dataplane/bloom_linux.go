package dataplane

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// bloom is a one-hash Bloom filter the programs test before a hash lookup
// (fm_ct_filter, fm_fqdn_filter; bpf/fedmesh.c documents the protocol): a
// BPF array of u64 words holding a control word (bit 0 the generation
// packets test, ctfValid whether they may) and two generations of words.
// It is reached through a shared mapping, so that the agent's atomic ORs
// and the programs' never lose each other's bits. Not safe for concurrent
// rebuilds: each owner serialises its own.
type bloom struct {
	mem    []byte
	words  []uint64
	perGen int // words per generation
}

const ctfValid = 2 // CTF_VALID

func openBloom(m *ebpf.Map, hbits uint) (*bloom, error) {
	perGen := 1 << (hbits - 6)
	n := int(m.MaxEntries())
	if m.ValueSize() != 8 || n != 1+2*perGen {
		return nil, fmt.Errorf("open filter %s: %d entries of %d bytes, want %d of 8", m, n, m.ValueSize(), 1+2*perGen)
	}
	page := unix.Getpagesize()
	mem, err := unix.Mmap(m.FD(), 0, (n*8+page-1)&^(page-1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map filter %s: %w", m, err)
	}
	return &bloom{mem: mem, words: unsafe.Slice((*uint64)(unsafe.Pointer(&mem[0])), n), perGen: perGen}, nil
}

func (b *bloom) gen(g uint64) []uint64 {
	return b.words[1+int(g)*b.perGen : 1+int(g+1)*b.perGen]
}

// bloomMix hashes two 64-bit words to a filter bit of hbits bits: ctf_mix,
// ipc_hash's multiplication followed by a second one over what it left
// out.
func bloomMix(x, y uint64, hbits uint) uint32 {
	return uint32(((x * 0x9E3779B97F4A7C15) ^ y) * 0xC2B2AE3D27D4EB4F >> (64 - hbits))
}

func setBit(gen []uint64, h uint32) { atomic.OrUint64(&gen[h>>6], 1<<(h&63)) }

// set records h in both generations, so the next rebuild's generation
// has it whenever the write comes.
func (b *bloom) set(h uint32) {
	setBit(b.gen(0), h)
	setBit(b.gen(1), h)
}

// rebuild makes the generation packets do not test hold fill's bits and
// no others, then makes packets test it: it clears that generation, waits
// grace (for writers that may have set a bit the clearing overwrote to
// have written their entry), and calls fill with a setter into it. On
// error the tested generation stays. The owner serialises rebuilds.
func (b *bloom) rebuild(grace time.Duration, fill func(set func(h uint32)) error) error {
	next := (atomic.LoadUint64(&b.words[0]) & 1) ^ 1
	gen := b.gen(next)
	for i := range gen {
		atomic.StoreUint64(&gen[i], 0)
	}
	time.Sleep(grace)
	if err := fill(func(h uint32) { setBit(gen, h) }); err != nil {
		return err
	}
	atomic.StoreUint64(&b.words[0], next|ctfValid)
	return nil
}

func (b *bloom) valid() bool { return atomic.LoadUint64(&b.words[0])&ctfValid != 0 }

// fill is the fraction of the tested generation's bits that are set: the
// share of keys not present that still cost their lookup.
func (b *bloom) fill() float64 {
	gen := b.gen(atomic.LoadUint64(&b.words[0]) & 1)
	ones := 0
	for i := range gen {
		ones += bits.OnesCount64(atomic.LoadUint64(&gen[i]))
	}
	return float64(ones) / float64(len(gen)*64)
}

func (b *bloom) close() { _ = unix.Munmap(b.mem) }

// everyTick calls fn every interval until stop closes, then closes done:
// the dataplane's background upkeep (filter rebuilds, the learned-address
// sweep).
func everyTick(interval time.Duration, stop <-chan struct{}, done chan<- struct{}, fn func()) {
	defer close(done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			fn()
		}
	}
}

// The filters' hashes of their keys, as the programs compute them from
// the keys' little-endian words.
const (
	ctfBits = 21 // CTF_BITS
	fqfBits = 20 // FQF_BITS
)

func ctfHead(ifindex uint32, proto, pad uint8, portA, portB, pad2 uint16) uint64 {
	w1 := uint32(proto) | uint32(pad)<<8 | uint32(portA)<<16
	w2 := uint32(portB) | uint32(pad2)<<16
	return uint64(w1)<<32 | uint64(w2^ifindex)
}

// ctfHash4 is ctf_hash4: the addresses, then the ports, protocol and
// endpoint.
func ctfHash4(k ct4Key) uint32 {
	le := binary.LittleEndian
	return bloomMix(uint64(le.Uint32(k.A[:]))<<32|uint64(le.Uint32(k.B[:])),
		ctfHead(k.Ifindex, k.Proto, k.Pad, k.PortA, k.PortB, k.Pad2), ctfBits)
}

// ctfHash6 is ctf_hash6: each address folded to one word.
func ctfHash6(k ct6Key) uint32 {
	fold := func(a [16]byte) uint64 {
		le := binary.LittleEndian
		return uint64(le.Uint32(a[0:]) ^ le.Uint32(a[4:]) ^ le.Uint32(a[8:]) ^ le.Uint32(a[12:]))
	}
	return bloomMix(fold(k.A)<<32|fold(k.B), ctfHead(k.Ifindex, k.Proto, k.Pad, k.PortA, k.PortB, k.Pad2), ctfBits)
}

// fqfHash is fqdn_stage's hash of an fm_fqdn key.
func fqfHash(k fqdnKey) uint32 {
	w := func(i int) uint32 { return binary.LittleEndian.Uint32(k.IP[4*i:]) }
	return bloomMix(uint64(w(0)^w(2))<<32|uint64(w(1)^w(3)), uint64(k.Ifindex), fqfBits)
}
