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

// fqxBuckets is FQX_BUCKETS: fm_fqdn_index holds 4 x 16k learned
// addresses (2.5 MiB); keys beyond what it places are looked up in fm_fqdn.
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

// fqdnIndex is the agent's side of fm_fqdn_index (bpf/fedmesh.c documents
// the protocol): a cuckoo copy in Go that places keys, and the shared
// mapping its changed buckets are written to, entry by entry under each
// entry's sequence word. The index only ever answers yes, so a key it
// cannot place, or one a packet reads mid-write, costs that packet the
// fm_fqdn lookup and nothing else. Its owner (fqdnKernel) serialises the
// calls.
type fqdnIndex struct {
	mem     []byte
	entries []fqxEntry
	t       *cuckoo[fqdnKey, fqxVal]
	// enabled: this architecture may write the index (fqxIndexable).
	enabled bool
	// unplaced are the keys learned but not in the index.
	unplaced map[fqdnKey]bool
}

func openFQDNIndex(m *ebpf.Map, enabled bool) (*fqdnIndex, error) {
	const size = int(unsafe.Sizeof(fqxEntry{}))
	if m == nil {
		return nil, errors.New("open learned-address index: the BPF object has no fm_fqdn_index (an older object)")
	}
	if int(m.ValueSize()) != cuckooWays*size || m.MaxEntries() != fqxBuckets {
		return nil, fmt.Errorf("open learned-address index %s: %d entries of %d bytes, want %d of %d",
			m, m.MaxEntries(), m.ValueSize(), fqxBuckets, cuckooWays*size)
	}
	n := fqxBuckets * cuckooWays
	page := unix.Getpagesize()
	mem, err := unix.Mmap(m.FD(), 0, (n*size+page-1)&^(page-1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map learned-address index %s: %w", m, err)
	}
	return &fqdnIndex{mem: mem, entries: unsafe.Slice((*fqxEntry)(unsafe.Pointer(&mem[0])), n),
		t: newCuckoo[fqdnKey, fqxVal](fqxBuckets, fqxHash), enabled: enabled, unplaced: map[fqdnKey]bool{}}, nil
}

func (x *fqdnIndex) close() { _ = unix.Munmap(x.mem) }

// reset makes the index hold written's keys (where the Go copy places
// them) and nothing else, whatever an earlier process left in it.
func (x *fqdnIndex) reset(written map[fqdnKey]fqdnVal) {
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
}

// put indexes k with v's live slots: k's entry is rewritten in place, or
// placed; a key the table cannot place stays out (fm_fqdn answers it).
func (x *fqdnIndex) put(k fqdnKey, v fqdnVal) {
	if !x.enabled {
		return
	}
	x.place(k, v)
	x.flush()
}

func (x *fqdnIndex) place(k fqdnKey, v fqdnVal) {
	if x.t.put(k, fqxOf(v)) {
		delete(x.unplaced, k)
	} else {
		x.unplaced[k] = true
	}
}

// remove frees k's entry; called before fm_fqdn's entry goes, so that no
// packet finds the key in the index once it is gone from fm_fqdn.
func (x *fqdnIndex) remove(k fqdnKey) {
	delete(x.unplaced, k)
	x.t.remove(k)
	x.flush()
}

// flush writes the buckets the Go copy changed. Their order does not
// matter: an entry moved by a placement may be missing from both buckets
// for a moment, which costs a packet the fm_fqdn lookup only.
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
