package dataplane

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// DefaultPinDir is where the eBPF dataplane pins its maps and links.
const DefaultPinDir = "/sys/fs/bpf/fedmesh"

// Config configures the eBPF dataplane.
type Config struct {
	// PinDir holds the pinned maps and links/ (default DefaultPinDir). It must
	// be on a bpffs; /sys/fs/bpf is mounted if nothing is mounted there.
	PinDir string
	// NetNS is the network namespace (a /proc/<pid>/ns/net or /run/netns
	// path) whose interfaces Attach names; empty means the caller's.
	NetNS string
	// Timeouts of conntrack entries (default DefaultTimeouts).
	Timeouts Timeouts
	// EventsPerSecond and EventsBurst rate-limit verdict events per CPU
	// (defaults 1000 and 100).
	EventsPerSecond, EventsBurst uint64
	// IPCacheMaxEntries sizes each ipcache table (0: the default); see
	// mapsize_linux.go.
	IPCacheMaxEntries uint32
	Logger            *slog.Logger
	// object (tests) is a BPF object file loaded instead of the embedded
	// one: the paired benchmark's baseline.
	object string
}

// graceAfterFlip is how long a slot stays untouched after it stopped being
// active: programs run under RCU for microseconds, so a packet that read the
// old index has long finished when the slot is rewritten.
const graceAfterFlip = 5 * time.Millisecond

const (
	tabIPCache = iota
	tabIPHosts
	tabPolicy
	tabCIDR
	tabEndpoints
	tabRuleCounters
	tabPolicyFixed
	tabPolicyPort
	tabEndpointsFast
	tabPolicyFixArr
	tabIPHostArr
	tabCIDRArr
	tabCIDRLens
	numTabs
)

var outerNames = [numTabs]string{"fm_ipcache", "fm_ipcache_host", "fm_policy", "fm_cidr", "fm_endpoints_v2",
	"fm_rule_stats", "fm_policy_fixed", "fm_policy_port", "fm_endpoints_fast", "fm_policy_fixarr_v2", "fm_ipcache_hostarr",
	"fm_cidr_arr", "fm_cidr_lens"}

type stateVal struct {
	Active   uint32
	Pad      uint32
	Revision uint64
}

type counterVal struct {
	Packets, Bytes uint64
}

type epCounterKey struct {
	Ifindex uint32
	Dir     uint8
	Reason  uint8
	Pad     uint16
}

// epStats is struct ep_stats: an endpoint's counters in fm_ep_stats.
type epStats struct {
	C [2][numReasons]counterVal // by policy.Direction, Reason
}

// epStatsEntries is EP_STATS_ENTRIES: index 0 means "no index".
const epStatsEntries = 1 + 4096

type attachment struct {
	ep      Endpoint
	ifindex uint32
	links   [2]link.Link // by policy.Direction: ingress = tcx egress
}

// EBPF is the kernel dataplane. Create it with New.
type EBPF struct {
	cfg  Config
	log  *slog.Logger
	spec *ebpf.CollectionSpec
	coll *ebpf.Collection

	mu     sync.Mutex // serialises Apply/Attach/Detach/Counters/Close
	outer  [numTabs]*ebpf.Map
	inner  [2][numTabs]*ebpf.Map // handles of inner maps this process wrote
	shadow [2]*Tables            // contents of each slot; nil = unknown
	// installed says the outer maps' entries of a slot point at inner[slot]
	// already: an update of a map-in-map entry waits for an RCU grace
	// period (about 10ms each), so it is done only for new inner maps.
	installed [2]bool
	// pfa and ipc are the array tables (cuckoo.go) fm_policy_fixarr_v2 and
	// fm_ipcache_hostarr as this process wrote each slot's.
	pfa cuckooState[policyFixedKey, pfaVal]
	// cidra is fm_cidr_arr as this process wrote each slot's.
	cidra cuckooState[cidrArrKey, uint32]
	ipc   cuckooState[[16]byte, uint32]
	// pfaLimit, ipcLimit and cidrLimit (tests): a revision with more
	// policy index array entries (pfaLen), host ipcache or CIDR entries is
	// taken as not fitting its array.
	pfaLimit, ipcLimit, cidrLimit int
	// unfolded (tests): render without folding the lookup shapes (fold.go),
	// as before it, for benchmarks that compare both in one run.
	unfolded  bool
	active    uint32
	lastFlip  time.Time
	rev       *Revision
	attached  map[string]*attachment
	unclaimed map[string]bool // pinned link files found at start
	// staleTails are the tail-call arrays a previous process pinned (see
	// pinTails): removed once no program of it is attached.
	staleTails []string
	// stats gives attached endpoints (and, until the first Apply, those
	// the pinned revision holds) their fm_ep_stats index, by ifindex.
	stats map[uint32]uint32
	// legacyEps is the endpoints table programs of an older version read
	// (see adoptLegacyEndpoints); written too until the first Apply.
	legacyEps *ebpf.Map
	// fq is the learned-address state (fm_fqdn), under its own lock.
	fq *fqdnKernel
	// ctf is the conntrack filter (fm_ct_filter), rebuilt from the first
	// Apply on.
	ctf *ctFilter

	ifmu   sync.RWMutex
	byIdx  map[uint32]string // ifindex -> endpoint ID, for events
	events chan Event
	reader *ringbuf.Reader
	done   chan struct{}
	closed bool
}

var _ Dataplane = (*EBPF)(nil)

// New loads (or re-adopts) the pinned programs and maps. A pinned revision
// keeps being enforced until the first Apply; pinned links are re-pointed at
// the new programs when their endpoints are attached again, and links no
// endpoint claims are removed at the first Apply.
func New(ctx context.Context, cfg Config) (*EBPF, error) {
	if cfg.PinDir == "" {
		cfg.PinDir = DefaultPinDir
	}
	if cfg.Timeouts == (Timeouts{}) {
		cfg.Timeouts = DefaultTimeouts
	}
	if cfg.EventsPerSecond == 0 {
		cfg.EventsPerSecond = 1000
	}
	if cfg.EventsBurst == 0 {
		cfg.EventsBurst = 100
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := Probe(filepath.Dir(cfg.PinDir)); err != nil {
		return nil, err
	}
	e := &EBPF{cfg: cfg, log: cfg.Logger, attached: map[string]*attachment{}, unclaimed: map[string]bool{},
		stats: map[uint32]uint32{},
		byIdx: map[uint32]string{}, events: make(chan Event, 1024), done: make(chan struct{})}
	if err := e.load(); err != nil {
		return nil, err
	}
	if err := probeTCX(e.coll.Programs["fm_from_pod"]); err != nil {
		e.fq.close()
		e.ctf.close()
		e.coll.Close()
		return nil, err
	}
	r, err := ringbuf.NewReader(e.coll.Maps["fm_events"])
	if err != nil {
		e.fq.close()
		e.ctf.close()
		e.coll.Close()
		return nil, fmt.Errorf("open event ring buffer: %w", err)
	}
	e.reader = r
	go e.readEvents()
	return e, nil
}

func (e *EBPF) load() error {
	readSpec := loadFedmesh
	if e.cfg.object != "" {
		readSpec = func() (*ebpf.CollectionSpec, error) { return ebpf.LoadCollectionSpec(e.cfg.object) }
	}
	spec, err := readSpec()
	if err != nil {
		return fmt.Errorf("load BPF object: %w", err)
	}
	vars := map[string]uint64{
		"ct_timeout_tcp_ns":     uint64(e.cfg.Timeouts.TCP),
		"ct_timeout_other_ns":   uint64(e.cfg.Timeouts.Other),
		"ct_timeout_closing_ns": uint64(e.cfg.Timeouts.Closing),
		"events_per_sec":        e.cfg.EventsPerSecond,
		"events_burst":          e.cfg.EventsBurst,
		"event_token_ns":        max(1, uint64(time.Second)/e.cfg.EventsPerSecond),
	}
	if tick, base, err := jiffyClock(); err == nil {
		vars["jiffy_ns"], vars["jiffy_base_ns"] = tick, base
	} else {
		e.log.Warn("packet clock falls back to bpf_ktime_get_coarse_ns", "err", err)
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	if err := sizeMaps(spec, e.cfg); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(e.cfg.PinDir, "links"), 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", e.cfg.PinDir, err)
	}
	if err := replaceIncompatiblePins(spec, e.cfg.PinDir, e.log); err != nil {
		return fmt.Errorf("load fedmesh programs: %w", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: e.cfg.PinDir},
	})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("load fedmesh programs: maps pinned in %s come from an incompatible fedmesh version; "+
			"uninstall (remove %s) and start again: %w", e.cfg.PinDir, e.cfg.PinDir, err)
	}
	if err != nil {
		return fmt.Errorf("load fedmesh programs: %w", err)
	}
	// What load opens from here on is closed again, newest first, when a
	// later step fails: one unwind for every way out.
	var undo []func()
	fail := func(err error) error {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return err
	}
	undo = append(undo, func() { coll.Close() })
	if err := migrateLegacyCT(e.cfg.PinDir, coll.Maps["fm_ct4"], coll.Maps["fm_ct6"], e.log); err != nil {
		return fail(fmt.Errorf("load fedmesh programs: %w", err))
	}
	if err := removeRetiredPins(e.cfg.PinDir, e.log); err != nil {
		return fail(fmt.Errorf("load fedmesh programs: %w", err))
	}
	e.spec, e.coll = spec, coll
	for i, n := range outerNames {
		e.outer[i] = coll.Maps[n]
	}
	var st stateVal
	if err := coll.Maps["fm_state"].Lookup(uint32(0), &st); err != nil {
		return fail(fmt.Errorf("read pinned state: %w", err))
	}
	e.active = st.Active & 1
	e.lastFlip = time.Now()
	// The pinned endpoint array may be older than the pinned revision (an
	// agent of a version without it wrote the revision since): until this
	// process's first Apply, the programs read the endpoints and the
	// tables from the hashes, which always hold the pinned revision.
	for slot := range uint32(2) {
		if err := e.outer[tabEndpointsFast].Delete(slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fail(fmt.Errorf("load fedmesh programs: reset the endpoint array: %w", err))
		}
	}
	e.legacyEps, err = adoptLegacyEndpoints(e.cfg.PinDir, e.outer[tabEndpoints], spec.Maps[outerNames[tabEndpoints]].InnerMap, e.log)
	if err != nil {
		return fail(fmt.Errorf("load fedmesh programs: %w", err))
	}
	undo = append(undo, func() { e.closeLegacy(false) })
	if err := e.recoverStats(); err != nil {
		return fail(fmt.Errorf("load fedmesh programs: %w", err))
	}
	if e.fq, err = openFQDN(coll.Maps["fm_fqdn"], coll.Maps["fm_fqdn_slots"], coll.Maps["fm_fqdn_filter"],
		coll.Maps["fm_fqdn_index"]); err != nil {
		return fail(fmt.Errorf("load fedmesh programs: %w", err))
	}
	undo = append(undo, e.fq.close)
	if e.ctf, err = openCTFilter(coll.Maps["fm_ct_filter"], coll.Maps["fm_ct4"], coll.Maps["fm_ct6"], e.log); err != nil {
		return fail(fmt.Errorf("load fedmesh programs: %w", err))
	}
	undo = append(undo, e.ctf.close)
	if err := e.pinTails(); err != nil {
		return fail(fmt.Errorf("load fedmesh programs: %w", err))
	}
	undo = append(undo, e.unpinTails)
	entries, err := os.ReadDir(filepath.Join(e.cfg.PinDir, "links"))
	if err != nil {
		return fail(fmt.Errorf("list pinned links: %w", err))
	}
	for _, de := range entries {
		e.unclaimed[de.Name()] = true
	}
	if st.Revision != 0 || len(entries) > 0 {
		e.log.Info("re-adopted pinned dataplane", "revision", st.Revision, "links", len(entries), "pin_dir", e.cfg.PinDir)
	}
	return nil
}

// Apply implements Dataplane.
func (e *EBPF) Apply(ctx context.Context, rev *Revision) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errors.New("apply revision: dataplane closed")
	}
	t, err := e.render(rev)
	if err == nil {
		err = e.checkIPCacheFits(t)
	}
	if err != nil {
		return fmt.Errorf("apply revision %d: %w", rev.Number, err)
	}
	if err := e.writeAndFlip(ctx, t); err != nil {
		return fmt.Errorf("apply revision %d: %w", rev.Number, err)
	}
	first := e.rev == nil
	e.rev = rev
	if first {
		e.pruneUnclaimed()
		e.ctf.start()
	}
	return nil
}

// render is Render with the endpoints' counter indexes filled in.
func (e *EBPF) render(rev *Revision) (*Tables, error) {
	t, err := renderFolded(rev, e.ifindexes(), e.fq.activeSlots(), !e.unfolded)
	if err != nil {
		return nil, err
	}
	for ifindex, v := range t.Endpoints {
		v.Stats = e.stats[ifindex]
		t.Endpoints[ifindex] = v
	}
	return t, nil
}

// statsIndex returns ifindex's fm_ep_stats index, giving it the lowest
// free one (zeroed) if it has none. With every index taken it returns 0:
// the endpoint is then counted in fm_ep_counters, more slowly.
func (e *EBPF) statsIndex(ifindex uint32) (uint32, error) {
	if i, ok := e.stats[ifindex]; ok {
		return i, nil
	}
	used := make(map[uint32]bool, len(e.stats))
	for _, i := range e.stats {
		used[i] = true
	}
	for i := uint32(1); i < epStatsEntries; i++ {
		if used[i] {
			continue
		}
		ncpu, err := ebpf.PossibleCPU()
		if err != nil {
			return 0, err
		}
		if err := e.coll.Maps["fm_ep_stats"].Put(i, make([]epStats, ncpu)); err != nil {
			return 0, fmt.Errorf("zero endpoint counters %d: %w", i, err)
		}
		e.stats[ifindex] = i
		return i, nil
	}
	return 0, nil
}

// recoverStats takes over the counter indexes the pinned revision gives
// its endpoints, so their counters survive a restart.
func (e *EBPF) recoverStats() error {
	var inner *ebpf.Map
	if err := e.outer[tabEndpoints].Lookup(e.active, &inner); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("read pinned endpoints: %w", err)
	}
	defer inner.Close()
	var k uint32
	var v endpointVal
	it := inner.Iterate()
	for it.Next(&k, &v) {
		if v.Stats != 0 && v.Stats < epStatsEntries {
			e.stats[k] = v.Stats
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pinned endpoints: %w", err)
	}
	return nil
}

func (e *EBPF) ifindexes() map[string]uint32 {
	m := make(map[string]uint32, len(e.attached))
	for id, a := range e.attached {
		m[id] = a.ifindex
	}
	return m
}

// writeAndFlip fills the inactive slot with t and makes it active.
func (e *EBPF) writeAndFlip(ctx context.Context, t *Tables) error {
	slot := e.active ^ 1
	if wait := graceAfterFlip - time.Since(e.lastFlip); wait > 0 {
		time.Sleep(wait)
	}
	old := e.shadow[slot]
	e.shadow[slot] = nil // unknown until fully written
	if err := e.fillSlot(ctx, slot, old, t); err != nil {
		return err
	}
	if err := e.fillLegacy(slot, t); err != nil {
		return err
	}
	st := stateVal{Active: slot, Revision: t.Revision}
	flip := func() error {
		if err := e.coll.Maps["fm_state"].Put(uint32(0), st); err != nil {
			return fmt.Errorf("flip to slot %d: %w", slot, err)
		}
		return nil
	}
	if err := e.fq.reslot(e.ifindexes(), t.NameSlots, flip); err != nil {
		return err
	}
	e.shadow[slot], e.active, e.lastFlip = t, slot, time.Now()
	return nil
}

func (e *EBPF) fillSlot(ctx context.Context, slot uint32, old, t *Tables) error {
	if old == nil || e.inner[slot][0] == nil {
		// Fresh inner maps: what is in the slot now is unknown (written by a
		// previous process) or this is the first write.
		for i := range numTabs {
			m, err := ebpf.NewMap(e.spec.Maps[outerNames[i]].InnerMap)
			if err != nil {
				return fmt.Errorf("create %s inner map: %w", outerNames[i], err)
			}
			if e.inner[slot][i] != nil {
				e.inner[slot][i].Close()
			}
			e.inner[slot][i] = m
		}
		e.installed[slot] = false
		e.pfa.forget(slot)
		e.ipc.forget(slot)
		e.cidra.forget(slot)
		old = &Tables{}
	}
	in := e.inner[slot]
	if err := resetRuleCounters(ctx, in[tabRuleCounters], old.countedRules(), t.countedRules()); err != nil {
		return fmt.Errorf("write rule counters: %w", err)
	}
	var hostChanges []hostChange
	if err := syncIPCache(ctx, in[tabIPHosts], in[tabIPCache], old.IPCache, t.IPCache, &hostChanges); err != nil {
		return fmt.Errorf("write ipcache: %w", err)
	}
	var err error
	// An ipcache past 90% of the ways (a federation of that size) stays in
	// the hash, and no table is built for it.
	nHosts := t.IPCache.nHosts
	ipcFits := nHosts <= ipcBuckets*cuckooWays*9/10 && (e.ipcLimit == 0 || nHosts <= e.ipcLimit)
	t.ipcComplete, err = syncCuckoo(&e.ipc, slot, in[tabIPHostArr], ipcFits, func() *ipcTable { return newIPCTable(ipcBuckets) },
		func(tab *ipcTable, fromEmpty bool) bool {
			if fromEmpty {
				return fillIPCacheArray(tab, t.IPCache)
			}
			return applyHostChanges(tab, hostChanges)
		})
	if err != nil {
		return fmt.Errorf("write ipcache array: %w", err)
	}
	if err := syncMap(ctx, in[tabPolicy], old.Policy, t.Policy); err != nil {
		return fmt.Errorf("write policy: %w", err)
	}
	if err := syncMap(ctx, in[tabPolicyFixed], old.PolicyFixed, t.PolicyFixed); err != nil {
		return fmt.Errorf("write policy index: %w", err)
	}
	// Past 90% of the ways placements fail often: such a revision stays in
	// the hash, and no table is built for it.
	nPFA := pfaLen(t.PolicyFixed)
	pfaFits := nPFA <= pfaBuckets*cuckooWays*9/10 && (e.pfaLimit == 0 || nPFA <= e.pfaLimit)
	complete, err := syncCuckoo(&e.pfa, slot, in[tabPolicyFixArr], pfaFits, func() *pfaTable { return newPFATable(pfaBuckets) },
		func(tab *pfaTable, fromEmpty bool) bool {
			if fromEmpty {
				return tab.sync(nil, pfaEntries(t.PolicyFixed))
			}
			return tab.sync(pfaChanges(old.PolicyFixed, t.PolicyFixed))
		})
	if err != nil {
		return fmt.Errorf("write policy index array: %w", err)
	}
	if !complete {
		e.log.Warn("policy index does not fit its array; packets of this revision use the hash",
			"entries", nPFA, "capacity", pfaBuckets*cuckooWays)
	}
	t.pfaComplete = complete
	if err := syncMap(ctx, in[tabPolicyPort], old.PolicyPort, t.PolicyPort); err != nil {
		return fmt.Errorf("write policy ports: %w", err)
	}
	if err := syncMap(ctx, in[tabCIDR], old.CIDR, t.CIDR); err != nil {
		return fmt.Errorf("write CIDR rules: %w", err)
	}
	cidrFits := len(t.CIDR) <= cidrBuckets*cuckooWays*9/10 && (e.cidrLimit == 0 || len(t.CIDR) <= e.cidrLimit)
	t.cidrComplete, err = syncCuckoo(&e.cidra, slot, in[tabCIDRArr], cidrFits, func() *cidrTable { return newCIDRTable(cidrBuckets) },
		func(tab *cidrTable, fromEmpty bool) bool {
			var have map[cidrArrKey]uint32
			if !fromEmpty {
				have = arrayCIDR(old.CIDR)
			}
			return tab.sync(have, arrayCIDR(t.CIDR))
		})
	if err != nil {
		return fmt.Errorf("write CIDR array: %w", err)
	}
	if err := syncArray(ctx, in[tabCIDRLens], old.cidrLens(), t.cidrLens()); err != nil {
		return fmt.Errorf("write CIDR prefix lengths: %w", err)
	}
	if err := syncMap(ctx, in[tabEndpoints], old.Endpoints, t.Endpoints); err != nil {
		return fmt.Errorf("write endpoints: %w", err)
	}
	if err := syncArray(ctx, in[tabEndpointsFast], old.fastEndpoints(), t.fastEndpoints()); err != nil {
		return fmt.Errorf("write endpoint array: %w", err)
	}
	if e.installed[slot] {
		return nil
	}
	for i := range numTabs {
		if err := e.outer[i].Put(slot, in[i]); err != nil {
			return fmt.Errorf("install %s slot %d: %w", outerNames[i], slot, err)
		}
	}
	e.installed[slot] = true
	return nil
}

// cuckooState is one array table's slots as this process wrote them.
type cuckooState[K, V comparable] struct {
	tab [2]*cuckoo[K, V]
	// unknown: the kernel's array may differ from a fresh table (a
	// placement failed half way): the slot's next write rewrites every
	// bucket.
	unknown [2]bool
}

// forget is a slot with fresh (zeroed) inner maps.
func (s *cuckooState[K, V]) forget(slot uint32) { s.tab[slot], s.unknown[slot] = nil, false }

// syncCuckoo writes slot's array m: fill brings the slot's table (a fresh
// one from newTab when the slot has none: fromEmpty) to the revision's
// entries. It reports whether every entry was placed; when one was not, or
// the revision does not fit (fits false: nothing is built), the programs
// read the hash for this revision and the slot's next write starts from
// an empty table.
func syncCuckoo[K, V comparable](s *cuckooState[K, V], slot uint32, m *ebpf.Map, fits bool, newTab func() *cuckoo[K, V],
	fill func(tab *cuckoo[K, V], fromEmpty bool) bool) (bool, error) {
	if !fits {
		s.tab[slot], s.unknown[slot] = nil, true
		return false, nil
	}
	tab, writeAll := s.tab[slot], false
	fromEmpty := tab == nil
	if fromEmpty {
		tab, writeAll = newTab(), s.unknown[slot]
	}
	s.tab[slot] = nil
	if !fill(tab, fromEmpty) {
		s.unknown[slot] = true
		return false, nil
	}
	var keys []uint32
	if writeAll {
		keys = make([]uint32, tab.nb())
		for i := range keys {
			keys[i] = uint32(i)
		}
	} else {
		keys = make([]uint32, 0, len(tab.dirty))
		for b := range tab.dirty {
			keys = append(keys, b)
		}
	}
	clear(tab.dirty)
	if len(keys) > 0 {
		vals := make([]cuckooBucket[K, V], len(keys))
		for i, b := range keys {
			vals[i] = tab.b[b]
		}
		if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
			s.unknown[slot] = true
			return false, err
		}
	}
	s.tab[slot], s.unknown[slot] = tab, false
	return true, nil
}

// hostChange is a host ipcache entry syncIPCache wrote (or deleted): the
// array follows the same diff instead of walking the tries again.
type hostChange struct {
	ip  [16]byte
	id  uint32
	del bool
}

// fillIPCacheArray places every host entry of c in the empty table tab.
func fillIPCacheArray(tab *ipcTable, c IPCache) bool {
	return c.hosts.all(func(k ipKey, id uint32) bool { return tab.put(k.ip, id) })
}

// applyHostChanges applies changes (deletes first, as syncIPCache wrote
// them) to tab.
func applyHostChanges(tab *ipcTable, changes []hostChange) bool {
	for _, c := range changes {
		if c.del {
			tab.remove(c.ip)
		} else if !tab.put(c.ip, c.id) {
			return false
		}
	}
	return true
}

// resetRuleCounters makes m, which holds a counter for each of have, hold
// a zero counter for each of want: rule counters start at zero for every
// revision, and the program only increments existing entries. Entries are
// zeroed in place rather than the map recreated: allocating per-CPU
// entries is slow.
func resetRuleCounters(ctx context.Context, m *ebpf.Map, have, want []uint32) error {
	var gone []uint32
	for _, r := range have {
		if _, ok := slices.BinarySearch(want, r); !ok {
			gone = append(gone, r)
		}
	}
	if len(gone) > 0 {
		if _, err := m.BatchDelete(gone, nil); err != nil {
			return err
		}
	}
	rules := want
	if len(rules) == 0 {
		return nil
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	zeros := make([]counterVal, len(rules)*ncpu)
	return retryNoMem(ctx, len(rules), func(from int) (int, error) {
		return m.BatchUpdate(rules[from:], zeros[from*ncpu:], nil)
	})
}

// retryNoMem runs write(from) until it has written all n entries, from the
// first one write has not yet written, waiting out ENOMEM. The kernel
// allocates a per-CPU hash map's entries from the per-CPU allocator's
// atomic pool, which a worker refills in the background: a big revision's
// batch write can drain it (more likely on a busy node, where that worker
// waits for a CPU) and fails with ENOMEM although memory is there. Other
// errors, and ENOMEM that lasts past ctx or ~5 s, are returned.
func retryNoMem(ctx context.Context, n int, write func(from int) (int, error)) error {
	from, wait := 0, time.Millisecond
	deadline := time.Now().Add(5 * time.Second)
	for from < n {
		done, err := write(from)
		from += done
		if err == nil {
			if done == 0 {
				return fmt.Errorf("batch write stopped at entry %d of %d without an error", from, n)
			}
			continue
		}
		if !errors.Is(err, unix.ENOMEM) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (waiting out: %w)", ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
	return nil
}

// syncIPCache makes hosts (fm_ipcache_host) and nets (fm_ipcache) hold
// want, given that they hold have: it writes the entries that differ
// (IPCache versions share the rest, so finding them costs the changes, not
// the size), deletes first so a full map makes room before it grows.
// Host entries written are appended to changes, when not nil.
func syncIPCache(ctx context.Context, hosts, nets *ebpf.Map, have, want IPCache, changes *[]hostChange) error {
	var err error
	n := 0
	write := func(deletes bool) diffFunc {
		return func(k ipKey, _ uint32, _ bool, id uint32, inNew bool) bool {
			if inNew == deletes {
				return true
			}
			if k.bits == 128 && changes != nil {
				*changes = append(*changes, hostChange{ip: k.ip, id: id, del: deletes})
			}
			switch {
			case k.bits == 128 && deletes:
				err = hosts.Delete(k.ip)
			case k.bits == 128:
				err = hosts.Put(k.ip, id)
			case deletes:
				err = nets.Delete(ipcacheKey{Prefixlen: uint32(k.bits), IP: k.ip})
			default:
				err = nets.Put(ipcacheKey{Prefixlen: uint32(k.bits), IP: k.ip}, id)
			}
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				err = nil
			}
			if n++; err == nil && n%4096 == 0 {
				err = ctx.Err()
			}
			return err == nil
		}
	}
	if !diffIPCache(have, want, write(true)) {
		return err
	}
	diffIPCache(have, want, write(false))
	return err
}

// syncArray makes the array m hold want, given that it holds have: an
// index in neither holds the zero value (an array has no deletes).
func syncArray[V comparable](ctx context.Context, m *ebpf.Map, have, want map[uint32]V) error {
	var zero V
	n := 0
	for k := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := m.Put(k, zero); err != nil {
			return err
		}
	}
	for k, v := range want {
		if hv, ok := have[k]; ok && hv == v {
			continue
		}
		if err := m.Put(k, v); err != nil {
			return err
		}
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
	return nil
}

// syncMap makes m hold want, given that it holds have.
func syncMap[K comparable, V comparable](ctx context.Context, m *ebpf.Map, have, want map[K]V) error {
	n := 0
	for k := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
		if n++; n%4096 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
	}
	for k, v := range want {
		if hv, ok := have[k]; ok && hv == v {
			continue
		}
		if err := m.Put(k, v); err != nil {
			return err
		}
		if n++; n%4096 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

func (e *EBPF) linkPin(iface string, dir policy.Direction) string {
	// bpffs refuses names with dots; interface names never hold ':'.
	return filepath.Join(e.cfg.PinDir, "links", strings.ReplaceAll(iface, ".", ":")+"_"+dir.String())
}

// Attach implements Dataplane.
func (e *EBPF) Attach(ctx context.Context, ep Endpoint) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errors.New("attach endpoint: dataplane closed")
	}
	if a, ok := e.attached[ep.ID]; ok {
		if a.ep.Interface == ep.Interface {
			return nil
		}
		if err := e.detachLocked(ctx, ep.ID); err != nil {
			return err
		}
	}
	var ifindex uint32
	err := inNetNS(e.cfg.NetNS, func() error {
		ifi, err := net.InterfaceByName(ep.Interface)
		if err != nil {
			return err
		}
		ifindex = uint32(ifi.Index)
		return nil
	})
	if err != nil {
		return fmt.Errorf("attach endpoint %s: find interface %s: %w", ep.ID, ep.Interface, err)
	}
	_, had := e.stats[ifindex]
	if _, err := e.statsIndex(ifindex); err != nil {
		return fmt.Errorf("attach endpoint %s: %w", ep.ID, err)
	}
	a := &attachment{ep: ep, ifindex: ifindex}
	e.attached[ep.ID] = a
	undo := func() {
		delete(e.attached, ep.ID)
		if !had {
			delete(e.stats, ifindex)
		}
	}
	if e.rev != nil {
		// Its rules must be in the maps before its first packet is judged.
		t, err := e.render(e.rev)
		if err == nil {
			err = e.writeAndFlip(ctx, t)
		}
		if err != nil {
			undo()
			return fmt.Errorf("attach endpoint %s: %w", ep.ID, err)
		}
	}
	progs := [2]*ebpf.Program{policy.Ingress: e.coll.Programs["fm_to_pod"], policy.Egress: e.coll.Programs["fm_from_pod"]}
	types := [2]ebpf.AttachType{policy.Ingress: ebpf.AttachTCXEgress, policy.Egress: ebpf.AttachTCXIngress}
	for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
		l, err := e.attachLink(ep.Interface, ifindex, dir, progs[dir], types[dir])
		if err != nil {
			for _, l := range a.links {
				if l != nil {
					l.Unpin()
					l.Close()
				}
			}
			undo()
			return fmt.Errorf("attach endpoint %s to %s: %w", ep.ID, ep.Interface, err)
		}
		a.links[dir] = l
	}
	e.ifmu.Lock()
	e.byIdx[ifindex] = ep.ID
	e.ifmu.Unlock()
	return nil
}

// attachLink re-points a pinned link at prog when one exists for this
// interface (no gap on restart) or creates and pins a new one.
func (e *EBPF) attachLink(iface string, ifindex uint32, dir policy.Direction, prog *ebpf.Program, typ ebpf.AttachType) (link.Link, error) {
	pin := e.linkPin(iface, dir)
	delete(e.unclaimed, filepath.Base(pin))
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := l.Info()
		if ierr == nil && info.TCX() != nil && info.TCX().Ifindex == ifindex {
			if err := l.Update(prog); err != nil {
				l.Close()
				return nil, fmt.Errorf("update pinned link %s: %w", pin, err)
			}
			return l, nil
		}
		// The interface was recreated: the old link is dead.
		l.Unpin()
		l.Close()
	}
	var l link.Link
	err := inNetNS(e.cfg.NetNS, func() error {
		var err error
		l, err = link.AttachTCX(link.TCXOptions{Interface: int(ifindex), Program: prog, Attach: typ})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach tcx %s: %w", typ, err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin link %s: %w", pin, err)
	}
	return l, nil
}

// tailArrays are the program arrays handle() tail calls through (to
// fm_decide_from_pod and fm_decide_to_pod).
var tailArrays = []string{"fm_tail_from_pod", "fm_tail_to_pod"}

// pinTails pins this process's tail-call arrays under names of their own
// (the ID of the fm_from_pod they serve): the kernel empties a program
// array when its last user reference goes, so unpinned, an array would
// lose its decide program when this process exits, and the programs left
// attached would drop every packet policy decides until the next agent
// re-attached them. A name per load, not one name for all: the attached
// programs of a previous process keep tail calling their own decide
// program, whose scratch layout is theirs, until this process re-points
// their links; the previous arrays' pins are removed then
// (pruneUnclaimed).
func (e *EBPF) pinTails() error {
	dir := filepath.Join(e.cfg.PinDir, "tail")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	old, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list pinned tail-call arrays: %w", err)
	}
	info, err := e.coll.Programs["fm_from_pod"].Info()
	if err != nil {
		return fmt.Errorf("read fm_from_pod's ID: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return errors.New("read fm_from_pod's ID: the kernel does not report program IDs")
	}
	for _, n := range tailArrays {
		p := filepath.Join(dir, fmt.Sprintf("%s_%d", n, id)) // bpffs refuses dots
		if err := e.coll.Maps[n].Pin(p); err != nil {
			e.unpinTails()
			return fmt.Errorf("pin tail-call array %s: %w", p, err)
		}
	}
	for _, de := range old {
		e.staleTails = append(e.staleTails, filepath.Join(dir, de.Name()))
	}
	return nil
}

// unpinTails removes the pins pinTails made (best effort: called when the
// start fails anyway; an array never pinned has nothing to remove).
func (e *EBPF) unpinTails() {
	for _, n := range tailArrays {
		e.coll.Maps[n].Unpin()
	}
}

// pruneUnclaimed removes pinned links of a previous process that no
// endpoint re-attached: their pods are gone.
func (e *EBPF) pruneUnclaimed() {
	for name := range e.unclaimed {
		p := filepath.Join(e.cfg.PinDir, "links", name)
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			e.log.Warn("remove stale link pin", "path", p, "err", err)
		}
	}
	e.unclaimed = map[string]bool{}
	// No program of a previous process is attached any more (re-attached
	// links run this process's): their tail-call arrays can go.
	for _, p := range e.staleTails {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			e.log.Warn("remove a previous process's tail-call array", "path", p, "err", err)
		}
	}
	e.staleTails = nil
	// Endpoints of the pinned revision that no one re-attached free their
	// counter indexes, and no program of an older version is left.
	attached := map[uint32]bool{}
	for _, a := range e.attached {
		attached[a.ifindex] = true
	}
	for ifindex := range e.stats {
		if !attached[ifindex] {
			delete(e.stats, ifindex)
		}
	}
	e.closeLegacy(true)
}

// Detach implements Dataplane.
func (e *EBPF) Detach(ctx context.Context, id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.detachLocked(ctx, id)
}

func (e *EBPF) detachLocked(ctx context.Context, id string) error {
	a, ok := e.attached[id]
	if !ok {
		return nil
	}
	for _, l := range a.links {
		if l == nil {
			continue
		}
		if err := l.Unpin(); err != nil {
			return fmt.Errorf("detach endpoint %s: unpin link: %w", id, err)
		}
		l.Close()
	}
	delete(e.attached, id)
	e.ifmu.Lock()
	delete(e.byIdx, a.ifindex)
	e.ifmu.Unlock()
	if e.rev != nil {
		t, err := e.render(e.rev)
		if err == nil {
			err = e.writeAndFlip(ctx, t)
		}
		if err != nil {
			return fmt.Errorf("detach endpoint %s: %w", id, err)
		}
	}
	delete(e.stats, a.ifindex) // zeroed when given out again
	var k epCounterKey
	var v []counterVal
	var stale []epCounterKey
	it := e.coll.Maps["fm_ep_counters"].Iterate()
	for it.Next(&k, &v) {
		if k.Ifindex == a.ifindex {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		e.coll.Maps["fm_ep_counters"].Delete(k)
	}
	return nil
}

// Counters implements Dataplane.
func (e *EBPF) Counters(ctx context.Context) (Counters, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := Counters{Rules: map[policy.RuleID]Counter{}, Endpoints: map[string]map[EndpointCounterKey]Counter{}}
	if t := e.shadow[e.active]; t != nil {
		c.Revision = t.Revision
		m := e.inner[e.active][tabRuleCounters]
		for _, r := range t.countedRules() {
			var per []counterVal
			if err := m.Lookup(r, &per); err != nil {
				return Counters{}, fmt.Errorf("read rule %d counters: %w", r, err)
			}
			if s := sum(per); s.Packets > 0 {
				c.Rules[policy.RuleID(r)] = s
			}
		}
	}
	ids := map[uint32]string{}
	for id, a := range e.attached {
		ids[a.ifindex] = id
	}
	var k epCounterKey
	var per []counterVal
	it := e.coll.Maps["fm_ep_counters"].Iterate()
	for it.Next(&k, &per) {
		id, ok := ids[k.Ifindex]
		if !ok {
			continue
		}
		if c.Endpoints[id] == nil {
			c.Endpoints[id] = map[EndpointCounterKey]Counter{}
		}
		c.Endpoints[id][EndpointCounterKey{Direction: policy.Direction(k.Dir), Reason: Reason(k.Reason)}] = sum(per)
	}
	if err := it.Err(); err != nil {
		return Counters{}, fmt.Errorf("read endpoint counters: %w", err)
	}
	var st []epStats
	for id, a := range e.attached {
		i := e.stats[a.ifindex]
		if i == 0 {
			continue
		}
		if err := e.coll.Maps["fm_ep_stats"].Lookup(i, &st); err != nil {
			return Counters{}, fmt.Errorf("read endpoint %s counters: %w", id, err)
		}
		for dir := range 2 {
			for r := range numReasons {
				var s Counter
				for _, cpu := range st {
					s.Packets += cpu.C[dir][r].Packets
					s.Bytes += cpu.C[dir][r].Bytes
				}
				if s.Packets == 0 {
					continue // as if there were no entry, like fm_ep_counters
				}
				if c.Endpoints[id] == nil {
					c.Endpoints[id] = map[EndpointCounterKey]Counter{}
				}
				k := EndpointCounterKey{Direction: policy.Direction(dir), Reason: Reason(r)}
				old := c.Endpoints[id][k]
				c.Endpoints[id][k] = Counter{Packets: old.Packets + s.Packets, Bytes: old.Bytes + s.Bytes}
			}
		}
	}
	return c, nil
}

func sum(per []counterVal) Counter {
	var s Counter
	for _, v := range per {
		s.Packets += v.Packets
		s.Bytes += v.Bytes
	}
	return s
}

// Events implements Dataplane.
func (e *EBPF) Events() <-chan Event { return e.events }

// eventSize is sizeof(struct event) in bpf/fedmesh.c.
const eventSize = 64

func (e *EBPF) readEvents() {
	defer close(e.done)
	defer close(e.events)
	for {
		rec, err := e.reader.Read()
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				e.log.Warn("read verdict events", "err", err)
			}
			return
		}
		b := rec.RawSample
		if len(b) < eventSize {
			continue
		}
		le := binary.LittleEndian
		ev := Event{
			MonotonicTimestamp: le.Uint64(b[0:]),
			Src:                netip.AddrFrom16([16]byte(b[8:24])).Unmap(),
			Dst:                netip.AddrFrom16([16]byte(b[24:40])).Unmap(),
			SrcIdentity:        le.Uint32(b[44:]),
			DstIdentity:        le.Uint32(b[48:]),
			Rule:               policy.RuleID(le.Uint32(b[52:])),
			SrcPort:            le.Uint16(b[56:]),
			DstPort:            le.Uint16(b[58:]),
			Proto:              b[60],
			Direction:          policy.Direction(b[61]),
			Verdict:            Verdict(b[62]),
			Reason:             Reason(b[63]),
		}
		e.ifmu.RLock()
		ev.EndpointID = e.byIdx[le.Uint32(b[40:])]
		e.ifmu.RUnlock()
		select {
		case e.events <- ev:
		default: // the consumer lags; flow logs are best effort
		}
	}
}

// Close implements Dataplane: handles are released, pins (and so
// enforcement) stay.
func (e *EBPF) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	e.fq.close()
	e.ctf.close()
	e.closeLegacy(false)
	e.reader.Close()
	<-e.done
	for _, a := range e.attached {
		for _, l := range a.links {
			if l != nil {
				l.Close()
			}
		}
	}
	for s := range e.inner {
		for _, m := range e.inner[s] {
			if m != nil {
				m.Close()
			}
		}
	}
	e.coll.Close()
	return nil
}

// Uninstall detaches every endpoint and removes all pinned state. The
// dataplane is closed afterwards.
func (e *EBPF) Uninstall(ctx context.Context) error {
	pinDir := e.cfg.PinDir
	if err := e.Close(); err != nil {
		return err
	}
	return Uninstall(ctx, pinDir)
}

// Uninstall removes a pinned fedmesh dataplane under pinDir: unpinning the
// links detaches the programs, unpinning the maps frees them. It needs no
// running dataplane (use it to clear an incompatible version).
func Uninstall(ctx context.Context, pinDir string) error {
	if !strings.HasPrefix(filepath.Clean(pinDir), "/sys/fs/bpf/") {
		return fmt.Errorf("uninstall %s: refusing a pin directory outside /sys/fs/bpf", pinDir)
	}
	if err := os.RemoveAll(pinDir); err != nil {
		return fmt.Errorf("uninstall: remove %s: %w", pinDir, err)
	}
	return nil
}
