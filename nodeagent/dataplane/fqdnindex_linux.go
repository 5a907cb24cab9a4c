package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// fqxBuckets is FQX_BUCKETS: fm_fqdn_index holds up to 4 x 16k learned
// addresses (2.5 MiB); while a key does not fit, packets the index misses
// are looked up in fm_fqdn.
const fqxBuckets = 1 << 14

// fqxVal is what an fm_fqdn_index entry says of its key: the slots live
// until LiveUntil, the earliest expiry among them.
type fqxVal struct {
	Mask      uint32
	LiveUntil uint64
}

// fqxEntry is struct fqx_entry, as the shared mapping lays it out.
type fqxEntry struct {
	Seq       uint32
	Ifindex   uint32
	IP        [4]uint32
	Mask      uint32
	Pad       uint32
	LiveUntil uint64
}

// fqxIndexable reports whether this architecture's loads keep their order
// (x86's TSO), which the programs' sequence-word check relies on; elsewhere
// the agent leaves fm_fqdn_index empty and packets use fm_fqdn.
func fqxIndexable(goarch string) bool { return goarch == "amd64" || goarch == "386" }

// fqxHash is fqx_hash: ipc_hash of the address, the endpoint mixed in by a
// second multiplication.
func fqxHash(k fqdnKey) uint64 {
	return (ipcHash(k.IP) ^ uint64(k.Ifindex)) * 0xC2B2AE3D27D4EB4F
}

// fqxOf is the index's view of a learned entry: its slots, live until the
// earliest of their expiries (so the index never extends a TTL).
func fqxOf(v fqdnVal) fqxVal {
	x := fqxVal{Mask: v.Mask}
	for s := range maxNameSlots {
		if v.Mask&(1<<s) != 0 && (x.LiveUntil == 0 || v.Expires[s] < x.LiveUntil) {
			x.LiveUntil = v.Expires[s]
		}
	}
	return x
}

// fqx_ctl's states.
const (
	fqxUnused   = 0 // FQX_UNUSED
	fqxHits     = 1 // FQX_HITS
	fqxComplete = 2 // FQX_COMPLETE
)

// fqdnIndex is the agent's side of fm_fqdn_index (bpf/fedmesh.c documents
// the protocol): a cuckoo copy in Go that places keys, and the shared
// mapping: the control word, then the buckets, which take the Go copy's
// changes entry by entry under each entry's sequence word. The control
// word says complete only while every key fm_fqdn holds is placed, and
// changes while a placement moves entries. Its owner (fqdnKernel)
// serialises the calls.
type fqdnIndex struct {
	mem     []byte
	ctl     *uint64 // struct fqx_ctl: moves low, state high
	entries []fqxEntry
	t       *cuckoo[fqdnKey, fqxVal]
	// enabled: this architecture may write the index (fqxIndexable).
	enabled bool
	// unplaced are the keys fm_fqdn holds that the index does not, with
	// their values, placed again when a sweep has freed room.
	unplaced map[fqdnKey]fqdnVal
}

func openFQDNIndex(m *ebpf.Map, enabled bool) (*fqdnIndex, error) {
	const size = int(unsafe.Sizeof(fqxEntry{}))
	const bucket = cuckooWays * size
	if m == nil {
		return nil, errors.New("open learned-address index: the BPF object has no fm_fqdn_index (an older object)")
	}
	if int(m.ValueSize()) != bucket || m.MaxEntries() != 1+fqxBuckets {
		return nil, fmt.Errorf("open learned-address index %s: %d entries of %d bytes, want %d of %d",
			m, m.MaxEntries(), m.ValueSize(), 1+fqxBuckets, bucket)
	}
	page := unix.Getpagesize()
	mem, err := unix.Mmap(m.FD(), 0, ((1+fqxBuckets)*bucket+page-1)&^(page-1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map learned-address index %s: %w", m, err)
	}
	return &fqdnIndex{mem: mem, ctl: (*uint64)(unsafe.Pointer(&mem[0])),
		entries: unsafe.Slice((*fqxEntry)(unsafe.Pointer(&mem[bucket])), fqxBuckets*cuckooWays),
		t:       newCuckoo[fqdnKey, fqxVal](fqxBuckets, fqxHash), enabled: enabled, unplaced: map[fqdnKey]fqdnVal{}}, nil
}

func (x *fqdnIndex) close() { _ = unix.Munmap(x.mem) }

func (x *fqdnIndex) state() uint32 { return uint32(atomic.LoadUint64(x.ctl) >> 32) }

func (x *fqdnIndex) setState(s uint32) {
	c := atomic.LoadUint64(x.ctl)
	if uint32(c>>32) != s {
		atomic.StoreUint64(x.ctl, uint64(s)<<32|c&0xffffffff)
	}
}

// bumpMoves adds one to the control word's move count (its low word,
// wrapping there): odd while entries move, so a packet that misses
// meanwhile does not trust the miss.
func (x *fqdnIndex) bumpMoves() {
	c := atomic.LoadUint64(x.ctl)
	atomic.StoreUint64(x.ctl, c&^0xffffffff|uint64(uint32(c)+1))
}

// settle sets the state the index's content allows.
func (x *fqdnIndex) settle() {
	switch {
	case !x.enabled:
		x.setState(fqxUnused)
	case len(x.unplaced) > 0:
		x.setState(fqxHits)
	default:
		x.setState(fqxComplete)
	}
}

// reset makes the index hold written's keys (where the Go copy places
// them) and nothing else, whatever an earlier process left in it; misses
// are not trusted until it is done.
func (x *fqdnIndex) reset(written map[fqdnKey]fqdnVal) {
	if x.state() == fqxComplete {
		x.setState(fqxHits)
	}
	if uint32(atomic.LoadUint64(x.ctl))&1 != 0 {
		x.bumpMoves() // a process stopped mid-move
	}
	x.t = newCuckoo[fqdnKey, fqxVal](x.t.nb(), fqxHash)
	clear(x.unplaced)
	if x.enabled {
		for k, v := range written {
			x.place(k, v)
		}
	}
	for b := range x.t.nb() {
		x.publish(b)
	}
	clear(x.t.dirty)
	x.settle()
}

// put indexes k with v's live slots: k's entry is rewritten in place, or
// placed, under a move count (a placement may move other entries); a key
// the table cannot place stays out, and misses are no longer trusted.
// Called once fm_fqdn holds k.
func (x *fqdnIndex) put(k fqdnKey, v fqdnVal) {
	if !x.enabled {
		return
	}
	// Rewriting an indexed key in place moves nothing.
	_, _, indexed := x.t.find(k)
	if !indexed {
		x.bumpMoves()
	}
	x.place(k, v)
	x.flush()
	if !indexed {
		x.bumpMoves()
	}
	x.settle()
}

func (x *fqdnIndex) place(k fqdnKey, v fqdnVal) {
	if x.t.put(k, fqxOf(v)) {
		delete(x.unplaced, k)
	} else {
		x.unplaced[k] = v
	}
}

// remove frees k's entry; called before fm_fqdn's entry goes, so that no
// packet finds the key in the index once it is gone from fm_fqdn.
func (x *fqdnIndex) remove(k fqdnKey) {
	delete(x.unplaced, k)
	x.t.remove(k)
	x.flush()
	x.settle()
}

// retry places the keys left out, now that removals may have freed room.
func (x *fqdnIndex) retry() {
	if len(x.unplaced) == 0 {
		return
	}
	x.bumpMoves()
	for k, v := range x.unplaced {
		x.place(k, v)
	}
	x.flush()
	x.bumpMoves()
	x.settle()
}

// flush writes the buckets the Go copy changed. Their order does not
// matter: an entry a placement moves may be missing from both buckets for
// a moment, which the move count covers.
func (x *fqdnIndex) flush() {
	for b := range x.t.dirty {
		x.publish(b)
	}
	clear(x.t.dirty)
}

// publish writes the entries of bucket b that differ from the Go copy.
func (x *fqdnIndex) publish(b uint32) {
	for w := range cuckooWays {
		x.store(&x.entries[int(b)*cuckooWays+w], x.t.b[b].K[w], x.t.b[b].V[w])
	}
}

// store writes one entry under its sequence word: odd while the words
// change, then two more than before. Every word is stored atomically, so
// neither the compiler nor the processor moves one outside the odd window.
func (x *fqdnIndex) store(e *fqxEntry, k fqdnKey, v fqxVal) {
	ip := [4]uint32{}
	for i := range ip {
		ip[i] = binary.NativeEndian.Uint32(k.IP[4*i:])
	}
	if atomic.LoadUint32(&e.Ifindex) == k.Ifindex && atomic.LoadUint32(&e.Mask) == v.Mask &&
		atomic.LoadUint64(&e.LiveUntil) == v.LiveUntil && atomic.LoadUint32(&e.IP[0]) == ip[0] &&
		atomic.LoadUint32(&e.IP[1]) == ip[1] && atomic.LoadUint32(&e.IP[2]) == ip[2] &&
		atomic.LoadUint32(&e.IP[3]) == ip[3] && atomic.LoadUint32(&e.Seq)&1 == 0 {
		return
	}
	seq := atomic.LoadUint32(&e.Seq) | 1
	atomic.StoreUint32(&e.Seq, seq)
	atomic.StoreUint32(&e.Ifindex, k.Ifindex)
	for i := range ip {
		atomic.StoreUint32(&e.IP[i], ip[i])
	}
	atomic.StoreUint32(&e.Mask, v.Mask)
	atomic.StoreUint64(&e.LiveUntil, v.LiveUntil)
	atomic.StoreUint32(&e.Seq, seq+1)
}

// defaultFQXIndexable is fqxIndexable of the running architecture.
var defaultFQXIndexable = fqxIndexable(runtime.GOARCH)
