package store

import (
	"hash/maphash"
	"sync"
	"unsafe"

	"google.golang.org/protobuf/proto"
)

// Predecoded spares the leader decoding what it encoded (or decoded) itself
// a moment earlier. Raft hands the leader's FSM the very slice the proposer
// passed to raft.Apply, so the proposer registers the decoded payload under
// that slice and the FSM takes it instead of decoding the bytes again: for
// an endpoint batch, decoding is a good part of the apply. Followers, and
// every replay from the log or the network, decode the bytes; the cache
// changes how much work the leader does, never what any replica applies.
//
// The contract:
//
//   - Who calls it: the replica's proposing paths (controlplane/server: a
//     local write, Propose, ProposeStream, the grouping proposer) call Put,
//     Move and Forget, from any goroutine; the FSM calls take on Raft's FSM
//     goroutine. Every method is safe for concurrent use and never blocks
//     beyond a short mutex.
//   - Put(data, c) must come before data is passed to raft.Apply, with c
//     exactly DecodeCommand(data); from then on c.Payload belongs to the
//     FSM (the caller must not touch it) and data must not be modified.
//   - Lifetime: an entry lives until the FSM applies data (take removes it:
//     a payload is applied at most once), until Forget, or until it is
//     evicted. Call Forget(data) once raft.Apply returned, applied or not;
//     Move(from, to) re-registers an entry under a copy of the same bytes
//     (a command's part of a CmdBatch entry), after which Forget(to) is the
//     one to call.
//   - A missed Forget cannot leak without bound: entries live in two
//     generations; once the current one holds maxPredecodedEntries entries
//     or maxPredecodedBytes of entry bytes, the older generation is dropped.
//     An evicted entry only costs its command a decode.
//   - Determinism: an entry is used only for the bytes it was registered
//     for. The key is the address of data's first byte; holding it keeps
//     that array alive, so no other slice can be allocated at the address
//     while the entry exists, however late (or never) Forget comes. take
//     also checks the length, the command type and a checksum of the
//     payload's first and last sampleBytes, so a buffer reused for other
//     bytes after Put (a broken caller) is decoded rather than matched to a
//     stale payload. The header (type, time) is always read from the bytes.
//     The checksum samples the ends instead of hashing everything: hashing
//     a 100 KiB batch twice cost about a sixth of the decode it spares.
type Predecoded struct {
	seed maphash.Seed

	mu        sync.Mutex
	cur, prev map[*byte]predecodedEntry
	curBytes  int
}

type predecodedEntry struct {
	typ     CommandType
	size    int    // len(data)
	sum     uint64 // checksum of the payload bytes (see checksum)
	payload proto.Message
}

// Bounds of one generation (see Predecoded). Under load the leader has at
// most a few appends in flight (each up to maxBatchEntryBytes in
// controlplane/server) plus the writes queued behind them, far below both.
const (
	maxPredecodedEntries = 4096
	maxPredecodedBytes   = 64 << 20
)

// sampleBytes is how much of each end of a payload the checksum covers.
const sampleBytes = 512

// checksum hashes a payload's first and last sampleBytes (all of a shorter
// one); the length is compared apart.
func (p *Predecoded) checksum(payload []byte) uint64 {
	if len(payload) <= 2*sampleBytes {
		return maphash.Bytes(p.seed, payload)
	}
	var h maphash.Hash
	h.SetSeed(p.seed)
	h.Write(payload[:sampleBytes])
	h.Write(payload[len(payload)-sampleBytes:])
	return h.Sum64()
}

func newPredecoded() *Predecoded {
	return &Predecoded{seed: maphash.MakeSeed(), cur: map[*byte]predecodedEntry{}}
}

// Put registers c, the decoded form of data, for the FSM to apply when Raft
// hands it data. See Predecoded for the caller's obligations. Data that is
// not a single command (empty, a CmdBatch, or not c) is ignored.
func (p *Predecoded) Put(data []byte, c Command) {
	off, typ, ok := payloadOffset(data)
	if !ok || typ != c.Type || c.Payload == nil {
		return
	}
	e := predecodedEntry{typ: typ, size: len(data), sum: p.checksum(data[off:]), payload: c.Payload}
	k := unsafe.SliceData(data)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.cur) >= maxPredecodedEntries || p.curBytes >= maxPredecodedBytes {
		p.prev, p.cur, p.curBytes = p.cur, make(map[*byte]predecodedEntry, len(p.cur)), 0
	}
	p.cur[k] = e
	p.curBytes += len(data)
}

// Move re-registers the entry of from under to, a copy of the same bytes.
// Nothing happens when from has no entry.
func (p *Predecoded) Move(from, to []byte) {
	if len(from) == 0 || len(to) != len(from) {
		return
	}
	kf, kt := unsafe.SliceData(from), unsafe.SliceData(to)
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.remove(kf)
	if !ok {
		return
	}
	p.cur[kt] = e
	p.curBytes += e.size
}

// Forget drops the entry of data, if any: data will not be applied from
// this cache (Raft failed it, or it was applied already).
func (p *Predecoded) Forget(data []byte) {
	if len(data) == 0 {
		return
	}
	p.mu.Lock()
	p.remove(unsafe.SliceData(data))
	p.mu.Unlock()
}

// remove deletes and returns the entry of k; p.mu is held.
func (p *Predecoded) remove(k *byte) (predecodedEntry, bool) {
	if e, ok := p.cur[k]; ok {
		delete(p.cur, k)
		p.curBytes -= e.size
		return e, true
	}
	if e, ok := p.prev[k]; ok {
		delete(p.prev, k)
		return e, true
	}
	return predecodedEntry{}, false
}

// take returns the payload registered for data, whose header says it is
// of type typ with its payload at data[off:], removing the entry; false
// when there is none or it does not match these bytes.
func (p *Predecoded) take(data []byte, typ CommandType, off int) (proto.Message, bool) {
	if len(data) == 0 {
		return nil, false
	}
	p.mu.Lock()
	e, ok := p.remove(unsafe.SliceData(data))
	p.mu.Unlock()
	if !ok || e.size != len(data) || e.typ != typ || e.sum != p.checksum(data[off:]) {
		return nil, false
	}
	return e.payload, true
}

// Len is the number of entries held (tests).
func (p *Predecoded) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.cur) + len(p.prev)
}
