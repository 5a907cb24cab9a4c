package dataplane

import (
	"context"
	"encoding/binary"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// memIndex is an fqdnIndex over plain memory: what the shared mapping
// would hold, without a kernel.
func memIndex(enabled bool, buckets uint32) *fqdnIndex {
	return &fqdnIndex{ctl: new(uint64), entries: make([]fqxEntry, buckets*cuckooWays),
		t: newCuckoo[fqdnKey, fqxVal](buckets, fqxHash), enabled: enabled, unplaced: map[fqdnKey]fqdnVal{}}
}

func (x *fqdnIndex) moves() uint32 { return uint32(*x.ctl) }

// indexed reads the entry of k as a packet would: from either candidate
// bucket, an even sequence word, the key's words equal.
func (x *fqdnIndex) indexed(k fqdnKey) (fqxEntry, bool) {
	for _, b := range x.t.candidates(k) {
		for w := range cuckooWays {
			e := x.entries[int(b)*cuckooWays+w]
			if e.Seq&1 == 0 && e.Ifindex == k.Ifindex && e.IP == fqxWords(k) {
				return e, true
			}
		}
	}
	return fqxEntry{}, false
}

func fqxWords(k fqdnKey) (ip [4]uint32) {
	for i := range ip {
		ip[i] = binary.NativeEndian.Uint32(k.IP[4*i:])
	}
	return ip
}

func TestFQXOfHoldsTheEarliestLiveExpiry(t *testing.T) {
	for _, c := range []struct {
		name string
		v    fqdnVal
		want fqxVal
	}{
		{"one slot", fqdnVal{Mask: 0b1, Expires: [maxNameSlots]uint64{500}}, fqxVal{Mask: 0b1, LiveUntil: 500}},
		{"earliest of two", fqdnVal{Mask: 0b101, Expires: [maxNameSlots]uint64{900, 0, 300}}, fqxVal{Mask: 0b101, LiveUntil: 300}},
		{"a time without its bit is ignored", fqdnVal{Mask: 0b10, Expires: [maxNameSlots]uint64{1, 700}}, fqxVal{Mask: 0b10, LiveUntil: 700}},
		{"the last slot", fqdnVal{Mask: 1 << 15, Expires: [maxNameSlots]uint64{15: 42}}, fqxVal{Mask: 1 << 15, LiveUntil: 42}},
	} {
		if got := fqxOf(c.v); got != c.want {
			t.Errorf("%s: fqxOf = %+v, want %+v", c.name, got, c.want)
		}
	}
}

// TestFQDNIndexWritesWhatItPlaces drives the index through puts, updates
// and removals, and checks the shared memory after each: every placed key
// readable with its value, removed keys gone, each write two sequence
// steps, an unchanged entry not rewritten, and the keys a full table
// cannot place reported unplaced, never half-written.
func TestFQDNIndexWritesWhatItPlaces(t *testing.T) {
	x := memIndex(true, fqxBuckets)
	key := func(ifindex uint32, a string) fqdnKey {
		return fqdnKey{Ifindex: ifindex, IP: mapped(netip.MustParseAddr(a))}
	}
	val := func(exp uint64) fqdnVal { return fqdnVal{Mask: 0b11, Expires: [maxNameSlots]uint64{exp, exp + 5}} }
	k1, k2 := key(3, "203.0.113.5"), key(3, "2001:db8::5")
	x.put(k1, val(100))
	x.put(k2, val(200))
	if x.state() != fqxComplete || x.moves() != 4 {
		t.Errorf("after placing two keys: state %d, moves %d; want complete (%d) and two even move counts (4)",
			x.state(), x.moves(), fqxComplete)
	}
	for k, until := range map[fqdnKey]uint64{k1: 100, k2: 200} {
		e, ok := x.indexed(k)
		if !ok || e.Mask != 0b11 || e.LiveUntil != until || e.Seq != 2 {
			t.Fatalf("entry of %v: %+v, %v; want mask 0b11 until %d after one write", k, e, ok, until)
		}
	}
	x.put(k1, val(100)) // unchanged: not rewritten
	if e, _ := x.indexed(k1); e.Seq != 2 {
		t.Errorf("an unchanged put rewrote the entry: seq %d", e.Seq)
	}
	x.put(k1, val(150))
	if e, _ := x.indexed(k1); e.Seq != 4 || e.LiveUntil != 150 {
		t.Errorf("updated entry: %+v; want until 150 at seq 4", e)
	}
	if x.moves() != 4 {
		t.Errorf("an update in place counted as a move: moves %d, want 4", x.moves())
	}
	x.remove(k1)
	if _, ok := x.indexed(k1); ok {
		t.Error("a removed key is still readable")
	}
	if _, ok := x.indexed(k2); !ok {
		t.Error("removing one key lost another")
	}

	// A new process resets the index to what fm_fqdn holds, ending a
	// move an earlier one left open.
	*x.ctl |= 1
	x.reset(map[fqdnKey]fqdnVal{k1: val(400)})
	if x.state() != fqxComplete || x.moves()&1 != 0 {
		t.Errorf("after reset: state %d, moves %d; want complete and an even move count", x.state(), x.moves())
	}
	if e, ok := x.indexed(k1); !ok || e.LiveUntil != 400 {
		t.Errorf("after reset, entry of k1: %+v, %v; want until 400", e, ok)
	}
	if _, ok := x.indexed(k2); ok {
		t.Error("after reset, a key fm_fqdn no longer holds is still readable")
	}
}

// TestFQDNIndexLeavesOutWhatItCannotPlace fills a two-bucket index: eight
// ways hold eight keys, every further key is reported unplaced and
// nothing placed is disturbed or left mid-write; a removal makes room
// again.
func TestFQDNIndexLeavesOutWhatItCannotPlace(t *testing.T) {
	x := memIndex(true, 2)
	var keys []fqdnKey
	for i := range 12 {
		keys = append(keys, fqdnKey{Ifindex: uint32(3 + i%2), IP: mapped(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}))})
		x.put(keys[i], fqdnVal{Mask: 1, Expires: [maxNameSlots]uint64{uint64(100 + i)}})
	}
	placed := 0
	for i, k := range keys {
		if e, ok := x.indexed(k); ok {
			placed++
			if e.LiveUntil != uint64(100+i) {
				t.Errorf("key %d reads until %d, want %d", i, e.LiveUntil, 100+i)
			}
		} else if _, ok := x.unplaced[k]; !ok {
			t.Errorf("key %d is neither readable nor reported unplaced", i)
		}
	}
	if placed != 2*cuckooWays || len(x.unplaced) != len(keys)-placed {
		t.Errorf("%d of %d keys readable, %d unplaced; want %d and the rest", placed, len(keys), len(x.unplaced), 2*cuckooWays)
	}
	if x.state() != fqxHits {
		t.Errorf("with keys left out: state %d, want hits only (%d): a miss proves nothing", x.state(), fqxHits)
	}
	for _, e := range x.entries {
		if e.Seq&1 != 0 {
			t.Fatalf("an entry was left mid-write: %+v", e)
		}
	}
	// Removing placed keys frees room: a sweep's retry places the rest,
	// and misses are trusted again.
	var in []fqdnKey
	for _, k := range keys {
		if _, ok := x.unplaced[k]; !ok && len(in) < len(x.unplaced) {
			in = append(in, k)
		}
	}
	for _, k := range in {
		x.remove(k)
	}
	x.retry()
	for i, k := range keys {
		if slices.Contains(in, k) {
			continue
		}
		if e, ok := x.indexed(k); !ok || e.LiveUntil != uint64(100+i) {
			t.Errorf("after the retry, key %d: %+v, %v; want it readable until %d", i, e, ok, 100+i)
		}
	}
	if len(x.unplaced) != 0 || x.state() != fqxComplete || x.moves()&1 != 0 {
		t.Errorf("after the retry: %d unplaced, state %d, moves %d; want none, complete, even", len(x.unplaced), x.state(), x.moves())
	}
}

// TestFQDNIndexStaysEmptyWhereLoadsMayReorder: on an architecture whose
// loads may pass each other, nothing is indexed and a reset empties what
// an earlier process left.
func TestFQDNIndexStaysEmptyWhereLoadsMayReorder(t *testing.T) {
	for arch, want := range map[string]bool{"amd64": true, "386": true, "arm64": false, "riscv64": false} {
		if fqxIndexable(arch) != want {
			t.Errorf("fqxIndexable(%s) = %v, want %v", arch, !want, want)
		}
	}
	x := memIndex(false, fqxBuckets)
	*x.ctl = fqxComplete << 32
	x.entries[5] = fqxEntry{Seq: 2, Ifindex: 9, Mask: 1, LiveUntil: 1 << 62}
	k := fqdnKey{Ifindex: 3, IP: mapped(netip.MustParseAddr("203.0.113.5"))}
	x.reset(map[fqdnKey]fqdnVal{k: {Mask: 1, Expires: [maxNameSlots]uint64{1 << 62}}})
	x.put(k, fqdnVal{Mask: 1, Expires: [maxNameSlots]uint64{1 << 62}})
	for i, e := range x.entries {
		if e.Ifindex != 0 || e.Mask != 0 {
			t.Fatalf("entry %d: %+v; want the index empty", i, e)
		}
	}
	if x.state() != fqxUnused {
		t.Errorf("state %d, want unused (%d): packets must not probe it", x.state(), fqxUnused)
	}
}

// TestLearnedAddressIndexAnswersOnlyWholeEntries runs the kernel program
// against fm_fqdn_index directly. A learned address is answered by the
// index alone (its fm_fqdn entry removed behind the agent's back, the
// packet still passes: the program's hash and layout are the agent's); an
// entry mid-write or whose earliest slot expired is not used (fm_fqdn
// decides, and it no longer has the address); a miss is trusted only
// while the index is complete and no entries move. Then a writer rewrites one
// entry between two keys for a million packets to an address of neither:
// the key a packet could read torn from the two is never allowed.
func TestLearnedAddressIndexAnswersOnlyWholeEntries(t *testing.T) {
	requireKernel(t)
	ns, nsPath := newNetNS(t)
	run(t, "ip", "-n", ns, "link", "add", "na", "type", "veth", "peer", "name", "pna")
	ctx := context.Background()
	kern, _ := newEBPF(t, nsPath)
	if err := kern.Apply(ctx, nameRevision(1)); err != nil {
		t.Fatal(err)
	}
	if err := kern.Attach(ctx, Endpoint{ID: "a", Interface: "na"}); err != nil {
		t.Fatal(err)
	}
	idx, err := ifindexIn(nsPath, "na")
	if err != nil {
		t.Fatal(err)
	}
	learned := netip.MustParseAddr("203.0.113.5")
	if err := kern.Learn(ctx, []LearnedAddr{{Endpoint: "a", Addr: learned, Name: "www.example.com",
		Expires: time.Now().Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	sport := uint16(30000)
	syn := func(dst netip.Addr) Verdict {
		t.Helper()
		sport++ // a new flow: conntrack must not answer
		return egressSYN(t, kern, nsPath, idx, dst, sport, 443)
	}
	x := kern.fq.index
	key := fqdnKey{Ifindex: idx, IP: mapped(learned)}
	b, w, placed := x.t.find(key)
	if !x.enabled {
		// Loads may pass each other here: nothing may be indexed.
		if placed {
			t.Fatalf("%s indexed on an architecture without ordered loads", learned)
		}
		return
	}
	if !placed {
		t.Fatalf("%s learned but not indexed", learned)
	}
	if err := kern.coll.Maps["fm_fqdn"].Delete(key); err != nil {
		t.Fatal(err)
	}
	if v := syn(learned); v != Allow {
		t.Fatalf("learned address answered by the index alone: %s, want allow (the program's hash or layout differs from the agent's)", v)
	}
	e := &x.entries[int(b)*cuckooWays+w]
	kern.fq.mu.Lock() // the sweeper must not write meanwhile
	defer kern.fq.mu.Unlock()
	seq := atomic.LoadUint32(&e.Seq)
	atomic.StoreUint32(&e.Seq, seq|1)
	if v := syn(learned); v != Deny {
		t.Errorf("entry mid-write: %s, want deny (the index must not answer, fm_fqdn has no entry)", v)
	}
	atomic.StoreUint32(&e.Seq, seq)
	until := atomic.LoadUint64(&e.LiveUntil)
	atomic.StoreUint64(&e.LiveUntil, 1)
	if v := syn(learned); v != Deny {
		t.Errorf("entry whose earliest slot expired: %s, want deny", v)
	}
	atomic.StoreUint64(&e.LiveUntil, until)
	if v := syn(learned); v != Allow {
		t.Fatalf("entry restored: %s, want allow", v)
	}

	// A miss: fm_fqdn holds an address behind the agent's back (its
	// filter bit set too) that the index lacks. While the index is
	// complete its miss is trusted; with hits only, or while entries
	// move, fm_fqdn is asked, and allows the packet.
	hidden := fqdnKey{Ifindex: idx, IP: mapped(netip.MustParseAddr("203.0.113.9"))}
	kern.fq.filter.set(fqfHash(hidden))
	if err := kern.coll.Maps["fm_fqdn"].Put(hidden, kern.fq.written[key]); err != nil {
		t.Fatal(err)
	}
	if x.state() != fqxComplete {
		t.Fatalf("index state %d with every key placed, want complete (%d)", x.state(), fqxComplete)
	}
	for _, c := range []struct {
		name  string
		set   func()
		want  Verdict
		reset func()
	}{
		{"complete", func() {}, Deny, func() {}},
		{"hits only", func() { x.setState(fqxHits) }, Allow, func() { x.setState(fqxComplete) }},
		{"entries moving", x.bumpMoves, Allow, x.bumpMoves},
		{"unused", func() { x.setState(fqxUnused) }, Allow, func() { x.setState(fqxComplete) }},
	} {
		c.set()
		if v := syn(netip.AddrFrom16(hidden.IP).Unmap()); v != c.want {
			t.Errorf("address only fm_fqdn holds, index %s: %s, want %s", c.name, v, c.want)
		}
		c.reset()
	}
	if err := kern.coll.Maps["fm_fqdn"].Delete(hidden); err != nil {
		t.Fatal(err)
	}

	// The writer alternates the entry between (a, learned) and (another
	// endpoint, never), never chosen so that a packet from a to never
	// probes the entry's bucket. A packet reading the entry while it
	// changes can see a's endpoint and never's address: a key neither
	// entry has, which fm_fqdn does not hold either.
	var never netip.Addr
	for i := 1; !never.IsValid(); i++ {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if c := x.t.candidates(fqdnKey{Ifindex: idx, IP: mapped(a)}); c[0] == b || c[1] == b {
			never = a
		}
	}
	other := fqdnKey{Ifindex: idx + 1000, IP: mapped(never)}
	// The filter must not spare the packets the index probe.
	kern.fq.filter.set(fqfHash(fqdnKey{Ifindex: idx, IP: mapped(never)}))
	val := fqxVal{Mask: 0b1111, LiveUntil: until}
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				x.store(e, key, val)
				done <- n
				return
			default:
			}
			x.store(e, other, val)
			x.store(e, key, val)
			n++
		}
	}()
	before, err := kern.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := pktSpec{src: netip.MustParseAddr("198.18.0.1"), dst: never, proto: protoTCP, sport: 40001, dport: 443, tcpFlags: 2}.frame()
	const packets = 1 << 20
	err = inNetNS(nsPath, func() error {
		_, err := kern.coll.Programs["fm_from_pod"].Run(&ebpf.RunOptions{Data: f, Context: skbCtx{Ifindex: idx}, Repeat: packets})
		return err
	})
	close(stop)
	rewrites := <-done
	if err != nil {
		t.Fatal(err)
	}
	after, err := kern.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var denied, passed uint64
	for k, c := range after.Endpoints["a"] {
		if k.Direction != policy.Egress {
			continue
		}
		n := c.Packets - before.Endpoints["a"][k].Packets
		if k.Reason == ReasonDenyPolicy {
			denied += n
		} else {
			passed += n
		}
	}
	if passed != 0 || denied != packets {
		t.Errorf("%d packets to %s during %d rewrites: %d passed, %d denied; want every one denied",
			packets, never, rewrites, passed, denied)
	}
	if rewrites < 1000 {
		t.Errorf("only %d rewrites ran beside the packets: the race was not exercised", rewrites)
	}
}
