package dataplane

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// fqdnSweepInterval is how often the eBPF dataplane drops expired learned
// addresses from fm_fqdn. The datapath ignores them from the moment they
// expire; the sweep only frees their room.
const fqdnSweepInterval = 10 * time.Second

type fqdnSlotKey struct {
	Ifindex uint32
	Slot    uint32
}

// fqdnKernel is the eBPF dataplane's learned-address state: the names
// behind fm_fqdn and what fm_fqdn and fm_fqdn_slots hold. It has its own
// lock so that Learn, which the DNS proxy waits on, never waits for an
// Apply's table writes (only for the moment of a flip).
type fqdnKernel struct {
	entries, slotsMap *ebpf.Map
	// filter is fm_fqdn_filter: a key's bit is set before the key is
	// written, and sweep rebuilds it from written.
	filter *bloom
	// index is fm_fqdn_index: a key is indexed after fm_fqdn holds it and
	// unindexed before fm_fqdn drops it.
	index *fqdnIndex

	mu      sync.Mutex
	closed  bool
	learned learnedNames
	// adopted are entries a previous process wrote: their names are
	// unknown, so they stay as written (only narrowed when a slot changes
	// meaning) until they expire; an entry learned again is merged.
	adopted map[fqdnKey]fqdnVal
	written map[fqdnKey]fqdnVal // what fm_fqdn holds
	// attached and slots are those of the active tables.
	attached     map[string]uint32
	slots        map[uint32][]nameSlot
	writtenSlots map[fqdnSlotKey]uint64
	stop, done   chan struct{}
}

// openFQDN adopts what fm_fqdn and fm_fqdn_slots hold (pinned by an
// earlier process, or empty) and starts the sweeper.
func openFQDN(entries, slotsMap, filter, index *ebpf.Map) (*fqdnKernel, error) {
	b, err := openBloom(filter, fqfBits)
	if err != nil {
		return nil, err
	}
	x, err := openFQDNIndex(index, defaultFQXIndexable)
	if err != nil {
		b.close()
		return nil, err
	}
	fail := func(err error) (*fqdnKernel, error) {
		b.close()
		x.close()
		return nil, err
	}
	f := &fqdnKernel{entries: entries, slotsMap: slotsMap, filter: b, index: x, learned: learnedNames{}, adopted: map[fqdnKey]fqdnVal{},
		written: map[fqdnKey]fqdnVal{}, attached: map[string]uint32{}, slots: map[uint32][]nameSlot{},
		writtenSlots: map[fqdnSlotKey]uint64{}, stop: make(chan struct{}), done: make(chan struct{})}
	var k fqdnKey
	var v fqdnVal
	it := entries.Iterate()
	for it.Next(&k, &v) {
		f.adopted[k], f.written[k] = v, v
	}
	if err := it.Err(); err != nil {
		return fail(fmt.Errorf("read pinned learned addresses: %w", err))
	}
	f.rebuildFilter()
	f.index.reset(f.written)
	var sk fqdnSlotKey
	var h uint64
	sit := slotsMap.Iterate()
	for sit.Next(&sk, &h) {
		if sk.Slot >= maxNameSlots || h == 0 {
			continue
		}
		if f.slots[sk.Ifindex] == nil {
			f.slots[sk.Ifindex] = make([]nameSlot, maxNameSlots)
		}
		f.slots[sk.Ifindex][sk.Slot].Hash = h
		f.writtenSlots[sk] = h
	}
	if err := sit.Err(); err != nil {
		return fail(fmt.Errorf("read pinned name slots: %w", err))
	}
	go f.sweepLoop()
	return f, nil
}

func (f *fqdnKernel) close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	f.mu.Unlock()
	close(f.stop)
	<-f.done
	f.filter.close()
	f.index.close()
}

// rebuildFilter makes the filter hold the bits of what fm_fqdn holds
// (written) and no others. Only this process writes fm_fqdn, under f.mu,
// so no key is written meanwhile.
func (f *fqdnKernel) rebuildFilter() {
	// No grace: nothing else writes fm_fqdn or sets its bits meanwhile.
	_ = f.filter.rebuild(0, func(set func(uint32)) error {
		for k := range f.written {
			set(fqfHash(k))
		}
		return nil
	})
}

// put writes a learned address, its filter bit first (a packet that can
// find the entry finds the bit), its index entry last (the index never
// says more than fm_fqdn).
func (f *fqdnKernel) put(k fqdnKey, v fqdnVal) error {
	f.filter.set(fqfHash(k))
	if err := f.entries.Put(k, v); err != nil {
		return err
	}
	f.written[k] = v
	f.index.put(k, v)
	return nil
}

// drop deletes a learned address, from the index first.
func (f *fqdnKernel) drop(k fqdnKey) error {
	f.index.remove(k)
	if err := f.entries.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	delete(f.written, k)
	return nil
}

func (f *fqdnKernel) activeSlots() map[uint32][]nameSlot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slots
}

// nextSlots are the slots of the tables about to be activated plus, for
// an interface no endpoint is attached to (yet: a restarted agent applies
// before it re-attaches), the slots its adopted entries were written for,
// kept until they expire.
func (f *fqdnKernel) nextSlots(attached map[string]uint32, tables map[uint32][]nameSlot) map[uint32][]nameSlot {
	out := maps.Clone(tables)
	if out == nil {
		out = map[uint32][]nameSlot{}
	}
	isAttached := map[uint32]bool{}
	for _, idx := range attached {
		isAttached[idx] = true
	}
	for k := range f.adopted {
		if _, ok := out[k.Ifindex]; !ok && !isAttached[k.Ifindex] && f.slots[k.Ifindex] != nil {
			out[k.Ifindex] = f.slots[k.Ifindex]
		}
	}
	return out
}

// adoptedFor is f.adopted under slots: entries of endpoints without name
// slots dropped, slots whose meaning changed from f.slots cleared.
func (f *fqdnKernel) adoptedFor(slots map[uint32][]nameSlot) map[fqdnKey]fqdnVal {
	out := map[fqdnKey]fqdnVal{}
	for k, v := range f.adopted {
		ns := slots[k.Ifindex]
		if ns == nil {
			continue
		}
		clearChanged(&v, f.slots[k.Ifindex], ns)
		if v.Mask != 0 {
			out[k] = v
		}
	}
	return out
}

// clearChanged clears the slots of v whose pattern set differs between
// old and new.
func clearChanged(v *fqdnVal, old, new []nameSlot) {
	for s := range maxNameSlots {
		var oh, nh uint64
		if s < len(old) {
			oh = old[s].Hash
		}
		if s < len(new) {
			nh = new[s].Hash
		}
		if oh != nh && v.Mask&(1<<s) != 0 {
			v.Mask &^= 1 << s
			v.Expires[s] = 0
		}
	}
}

func (f *fqdnKernel) desired(attached map[string]uint32, slots map[uint32][]nameSlot) map[fqdnKey]fqdnVal {
	want := f.learned.entries(attached, slots)
	for k, v := range f.adoptedFor(slots) {
		want[k] = mergeVal(want[k], v)
	}
	return want
}

// reslot moves fm_fqdn from the active tables' slots to those of the
// tables flip activates: before the flip it writes only what both agree
// on (a slot that changes meaning is cleared, so neither revision reads
// another's answers), after it the whole new state. A failed flip leaves
// the old state rewritten.
func (f *fqdnKernel) reslot(attached map[string]uint32, slots map[uint32][]nameSlot, flip func() error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.learned.sweep(monotonicNow())
	slots = f.nextSlots(attached, slots)
	safe := f.desired(attached, slots)
	for k, v := range safe {
		clearChanged(&v, f.slots[k.Ifindex], slots[k.Ifindex])
		if v.Mask == 0 {
			delete(safe, k)
		} else {
			safe[k] = v
		}
	}
	err := f.sync(safe)
	if err == nil {
		err = f.syncSlots(slots)
	}
	if err == nil {
		err = flip()
	}
	if err != nil {
		// The old tables stay active: put their state back.
		if rerr := errors.Join(f.syncSlots(f.slots), f.sync(f.desired(f.attached, f.slots))); rerr != nil {
			return errors.Join(err, fmt.Errorf("restore learned addresses: %w", rerr))
		}
		return err
	}
	f.adopted = f.adoptedFor(slots)
	f.attached, f.slots = maps.Clone(attached), slots
	if err := f.sync(f.desired(f.attached, f.slots)); err != nil {
		return fmt.Errorf("write learned addresses: %w", err)
	}
	return nil
}

// sync makes fm_fqdn hold want.
func (f *fqdnKernel) sync(want map[fqdnKey]fqdnVal) error {
	for k := range f.written {
		if _, ok := want[k]; ok {
			continue
		}
		if err := f.drop(k); err != nil {
			return fmt.Errorf("delete learned address: %w", err)
		}
	}
	for k, v := range want {
		if old, ok := f.written[k]; ok && old == v {
			continue
		}
		if err := f.put(k, v); err != nil {
			return fmt.Errorf("write learned address: %w", err)
		}
	}
	return nil
}

func (f *fqdnKernel) syncSlots(slots map[uint32][]nameSlot) error {
	want := map[fqdnSlotKey]uint64{}
	for idx, ns := range slots {
		for s, sl := range ns {
			if sl.Hash != 0 {
				want[fqdnSlotKey{Ifindex: idx, Slot: uint32(s)}] = sl.Hash
			}
		}
	}
	for k := range f.writtenSlots {
		if _, ok := want[k]; !ok {
			if err := f.slotsMap.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete name slot: %w", err)
			}
			delete(f.writtenSlots, k)
		}
	}
	for k, h := range want {
		if f.writtenSlots[k] != h {
			if err := f.slotsMap.Put(k, h); err != nil {
				return fmt.Errorf("write name slot: %w", err)
			}
			f.writtenSlots[k] = h
		}
	}
	return nil
}

func (f *fqdnKernel) learn(addrs []LearnedAddr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errLearnedClosed
	}
	now, wall := monotonicNow(), time.Now()
	for _, a := range addrs {
		if !f.learned.learn(a, now, wall) {
			continue
		}
		idx, ok := f.attached[a.Endpoint]
		if !ok || f.slots[idx] == nil {
			continue // written when the endpoint is attached
		}
		addr := a.Addr.Unmap()
		v, _ := entry(f.learned[a.Endpoint][addr], f.slots[idx])
		k := fqdnKey{Ifindex: idx, IP: mapped(addr)}
		v = mergeVal(v, f.adopted[k])
		if v.Mask == 0 || f.written[k] == v {
			continue
		}
		if err := f.put(k, v); err != nil {
			return fmt.Errorf("write learned address %s for %s: %w", addr, a.Endpoint, err)
		}
	}
	return nil
}

func (f *fqdnKernel) forget(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.learned, id)
	idx, ok := f.attached[id]
	if !ok {
		return nil
	}
	for k := range f.adopted {
		if k.Ifindex == idx {
			delete(f.adopted, k)
		}
	}
	return f.sync(f.desired(f.attached, f.slots))
}

// sweep drops what expired from fm_fqdn.
func (f *fqdnKernel) sweep() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := monotonicNow()
	f.learned.sweep(now)
	for k, v := range f.adopted {
		for s := range maxNameSlots {
			if v.Expires[s] <= now {
				v.Mask &^= 1 << s
				v.Expires[s] = 0
			}
		}
		if v.Mask == 0 {
			delete(f.adopted, k)
		} else {
			f.adopted[k] = v
		}
	}
	slots := f.nextSlots(f.attached, nil)
	for _, idx := range f.attached {
		if f.slots[idx] != nil {
			slots[idx] = f.slots[idx]
		}
	}
	if err := f.syncSlots(slots); err != nil {
		return err
	}
	f.slots = slots
	if err := f.sync(f.desired(f.attached, f.slots)); err != nil {
		return err
	}
	// Expired and deleted entries stop costing packets their lookup.
	f.rebuildFilter()
	f.index.retry()
	return nil
}

func (f *fqdnKernel) sweepLoop() {
	// A failed delete is retried at the next tick.
	everyTick(fqdnSweepInterval, f.stop, f.done, func() { _ = f.sweep() })
}

// Learn implements Dataplane.
func (e *EBPF) Learn(ctx context.Context, addrs []LearnedAddr) error {
	if err := validateLearned(addrs); err != nil {
		return fmt.Errorf("learn addresses: %w", err)
	}
	if err := e.fq.learn(addrs); err != nil {
		return fmt.Errorf("learn addresses: %w", err)
	}
	return nil
}

// Forget implements Dataplane.
func (e *EBPF) Forget(ctx context.Context, endpoint string) error {
	if err := e.fq.forget(endpoint); err != nil {
		return fmt.Errorf("forget learned addresses of %s: %w", endpoint, err)
	}
	return nil
}
