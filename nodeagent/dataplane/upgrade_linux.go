package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Pinned maps outlive the agent, so a new version finds the maps an older
// one pinned. Tables (the per-revision outer maps, fm_state) keep their
// layout across versions: the programs still attached read them while the
// new agent starts. Soft state may change layout: an incompatible pin of it
// is replaced (its contents lost, logged) rather than failing the start.

// softState names the pinned maps a new version may start empty: flows are
// judged by policy again, fragments wait for their next first fragment,
// counters restart, the event budget refills.
var softState = map[string]bool{"fm_ct4": true, "fm_ct6": true, "fm_frag": true, "fm_ep_counters": true,
	"fm_event_bucket": true, "fm_events": true,
	// Learned addresses: losing them denies until pods resolve again,
	// which beats refusing to start.
	"fm_fqdn": true, "fm_fqdn_slots": true,
	// Rebuilt from fm_fqdn at every start; emptied before it is replaced.
	"fm_fqdn_index": true}

// answeringState names the soft-state maps whose entries programs act on
// without a second source to check: an incompatible pin of one is emptied
// (all-zero values, which every version reads as no entry) before it is
// replaced, since the programs still attached keep reading it until they
// are replaced too, and nothing would keep it current meanwhile.
var answeringState = map[string]bool{"fm_fqdn_index": true}

// replaceIncompatiblePins removes the pins in dir of soft-state maps whose
// type, key, value, size or flags differ from spec, so that loading creates
// them afresh. Other incompatible pins are left for the load to report.
func replaceIncompatiblePins(spec *ebpf.CollectionSpec, dir string, log *slog.Logger) error {
	return replaceIncompatibleSoftState(spec, dir, softState, log)
}

// replaceIncompatibleSoftState removes the pins in dir of the maps named
// in soft whose layout differs from spec (the policy program's and the
// service translation's soft state alike): what they held is lost, and
// loading creates them afresh.
func replaceIncompatibleSoftState(spec *ebpf.CollectionSpec, dir string, soft map[string]bool, log *slog.Logger) error {
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName || !soft[name] {
			continue
		}
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", path, err)
		}
		err = ms.Compatible(m)
		if err == nil {
			m.Close()
			continue
		}
		if !errors.Is(err, ebpf.ErrMapIncompatible) {
			m.Close()
			return fmt.Errorf("check pinned map %s: %w", path, err)
		}
		log.Warn("replacing a pinned map an incompatible fedmesh version left; its state is lost",
			"map", path, "difference", err)
		if answeringState[name] {
			if err := emptyArray(m); err != nil {
				m.Close()
				return fmt.Errorf("empty pinned map %s before replacing it: %w", path, err)
			}
		}
		m.Close()
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove incompatible pinned map %s: %w", path, err)
		}
	}
	return nil
}

// legacyCT is the conntrack table of versions before fm_ct4/fm_ct6: one
// entry per (endpoint, direction, tuple), both families in IPv4-mapped form.
const legacyCT = "fm_ct"

type legacyCTKey struct {
	Ifindex      uint32
	Dir, Proto   uint8
	Sport, Dport uint16
	Pad          uint16
	Src, Dst     [16]byte
}

type legacyCTVal struct {
	LastSeen    uint64
	Rule, Flags uint32
}

// ct4Key and ct6Key are struct ct4_key and ct6_key of bpf/fedmesh.c.
type ct4Key struct {
	Ifindex            uint32
	Proto, Pad         uint8
	PortA, PortB, Pad2 uint16
	A, B               [4]byte
}

type ct6Key struct {
	Ifindex            uint32
	Proto, Pad         uint8
	PortA, PortB, Pad2 uint16
	A, B               [16]byte
}

func (k ctKey) ct4() ct4Key {
	return ct4Key{Ifindex: k.Ifindex, Proto: k.Proto, PortA: k.PortA, PortB: k.PortB,
		A: [4]byte(k.A[12:]), B: [4]byte(k.B[12:])}
}

func (k ctKey) ct6() ct6Key {
	return ct6Key{Ifindex: k.Ifindex, Proto: k.Proto, PortA: k.PortA, PortB: k.PortB, A: k.A, B: k.B}
}

// migrateLegacyCT moves the flows of a legacy conntrack table pinned in dir
// into ct4 and ct6 and removes its pin, so that an upgrade keeps
// established flows and their replies passing. Flows the old programs open
// after this (they run until Attach re-points their links) are lost.
func migrateLegacyCT(dir string, ct4, ct6 *ebpf.Map, log *slog.Logger) error {
	path := filepath.Join(dir, legacyCT)
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open legacy conntrack %s: %w", path, err)
	}
	defer old.Close()
	flows := map[ctKey]*ctVal{}
	if old.KeySize() == 44 && old.ValueSize() == 16 {
		var k legacyCTKey
		var v legacyCTVal
		it := old.Iterate()
		for it.Next(&k, &v) {
			t := tuple{src: k.Src, dst: k.Dst, sport: k.Sport, dport: k.Dport, proto: k.Proto}
			v6 := !netip.AddrFrom16(k.Src).Is4In6() || !netip.AddrFrom16(k.Dst).Is4In6()
			ck, o := ctFill(k.Ifindex, v6, &t)
			cv := flows[ck]
			if cv == nil {
				cv = &ctVal{}
				flows[ck] = cv
			}
			// Both a flow and its reply may have an entry (one gone idle):
			// the latest is the one that counts.
			if f := &cv.Flow[ctClass(k.Dir, o)]; v.LastSeen > f.LastSeen {
				*f = ctFlow(v)
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("read legacy conntrack %s: %w", path, err)
		}
	}
	for k, v := range flows {
		var err error
		if k.V6 {
			err = ct6.Update(k.ct6(), v, ebpf.UpdateNoExist)
		} else {
			err = ct4.Update(k.ct4(), v, ebpf.UpdateNoExist)
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return fmt.Errorf("migrate legacy conntrack: %w", err)
		}
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove legacy conntrack %s: %w", path, err)
	}
	log.Info("migrated the conntrack table of an older fedmesh version", "flows", len(flows), "map", path)
	return nil
}

// legacyEndpoints is the endpoints outer map of versions before counter
// indexes (fm_endpoints_v2): values without endpointVal.Stats.
const legacyEndpoints = "fm_endpoints"

type legacyEndpointVal struct {
	Identity uint32
	Enforced [2]uint8
	Lookups  [2]uint8
}

// legacyEndpointsInner is the inner map layout the legacy outer map takes.
var legacyEndpointsInner = ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 4096}

// adoptLegacyEndpoints prepares an upgrade from a version that pinned the
// legacy endpoints table in dir. The new programs read out: each of its
// slots that is empty gets the legacy slot's endpoints (without counter
// indexes: they count in fm_ep_counters as before), so the pinned revision
// stays enforced when Attach re-points links before the first Apply. The
// returned legacy map is what programs of the old version, still attached
// until their endpoint is attached again, read: Apply keeps it in step
// (fillLegacy) until the first Apply has pruned the links no one claimed,
// then its pin goes (closeLegacy). Nil when there is no legacy table.
func adoptLegacyEndpoints(dir string, out *ebpf.Map, inner *ebpf.MapSpec, log *slog.Logger) (*ebpf.Map, error) {
	path := filepath.Join(dir, legacyEndpoints)
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open legacy endpoints %s: %w", path, err)
	}
	n := 0
	for slot := uint32(0); slot < 2; slot++ {
		var have *ebpf.Map
		err := out.Lookup(slot, &have)
		if err == nil {
			have.Close() // adopted by an agent that stopped before applying
			continue
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			old.Close()
			return nil, fmt.Errorf("read endpoints slot %d: %w", slot, err)
		}
		c, err := copyLegacyEndpoints(old, slot, inner)
		if err != nil {
			old.Close()
			return nil, err
		}
		if c == nil {
			continue
		}
		err = out.Put(slot, c)
		c.Close()
		if err != nil {
			old.Close()
			return nil, fmt.Errorf("install adopted endpoints slot %d: %w", slot, err)
		}
		n++
	}
	log.Info("adopted the endpoints table of an older fedmesh version", "slots", n, "map", path)
	return old, nil
}

// copyLegacyEndpoints returns a new inner map (layout inner) holding the
// endpoints of the legacy table's slot, or nil when the slot is empty.
func copyLegacyEndpoints(old *ebpf.Map, slot uint32, inner *ebpf.MapSpec) (*ebpf.Map, error) {
	var oin *ebpf.Map
	if err := old.Lookup(slot, &oin); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read legacy endpoints slot %d: %w", slot, err)
	}
	defer oin.Close()
	m, err := ebpf.NewMap(inner)
	if err != nil {
		return nil, fmt.Errorf("create endpoints map: %w", err)
	}
	var k uint32
	var v legacyEndpointVal
	it := oin.Iterate()
	for it.Next(&k, &v) {
		if err := m.Put(k, endpointVal{Identity: v.Identity, Enforced: v.Enforced, Lookups: v.Lookups}); err != nil {
			m.Close()
			return nil, fmt.Errorf("copy legacy endpoint %d: %w", k, err)
		}
	}
	if err := it.Err(); err != nil {
		m.Close()
		return nil, fmt.Errorf("read legacy endpoints slot %d: %w", slot, err)
	}
	return m, nil
}

// fillLegacy writes t's endpoints into the legacy table's slot, for the
// programs of an older version still attached.
func (e *EBPF) fillLegacy(slot uint32, t *Tables) error {
	if e.legacyEps == nil {
		return nil
	}
	m, err := ebpf.NewMap(&legacyEndpointsInner)
	if err != nil {
		return fmt.Errorf("create legacy endpoints map: %w", err)
	}
	defer m.Close()
	for k, v := range t.Endpoints {
		if err := m.Put(k, legacyEndpointVal{Identity: v.Identity, Enforced: v.Enforced, Lookups: v.Lookups}); err != nil {
			return fmt.Errorf("write legacy endpoint %d: %w", k, err)
		}
	}
	if err := e.legacyEps.Put(slot, m); err != nil {
		return fmt.Errorf("install legacy endpoints slot %d: %w", slot, err)
	}
	return nil
}

// closeLegacy drops this process's handle on the legacy endpoints table;
// with remove, its pin too (no program of the old version is left).
func (e *EBPF) closeLegacy(remove bool) {
	if e.legacyEps == nil {
		return
	}
	e.legacyEps.Close()
	e.legacyEps = nil
	if !remove {
		return
	}
	path := filepath.Join(e.cfg.PinDir, legacyEndpoints)
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		e.log.Warn("remove the legacy endpoints table", "path", path, "err", err)
		return
	}
	e.log.Info("removed the endpoints table of an older fedmesh version", "path", path)
}

// retiredPins are pinned maps of older versions that this one neither
// reads nor writes: fm_policy_fixarr held one policy index entry per way
// (fm_policy_fixarr_v2 pairs the layers). Programs of that version still
// attached hold their own reference (and read the hash once a revision of
// this version clears EPF_PF_ARRAY), so removing the pin frees the map
// when the last of them is replaced.
var retiredPins = []string{"fm_policy_fixarr"}

// removeRetiredPins removes the pins in dir of retiredPins.
func removeRetiredPins(dir string, log *slog.Logger) error {
	for _, name := range retiredPins {
		path := filepath.Join(dir, name)
		err := os.Remove(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("remove retired pinned map %s: %w", path, err)
		}
		log.Info("removed a pinned map an older fedmesh version used", "map", path)
	}
	return nil
}

// emptyArray writes all-zero values to every entry of an array map.
func emptyArray(m *ebpf.Map) error {
	if m.Type() != ebpf.Array {
		return fmt.Errorf("%s is a %s, not an array", m, m.Type())
	}
	zero := make([]byte, m.ValueSize())
	for i := range m.MaxEntries() {
		if err := m.Update(i, zero, ebpf.UpdateExist); err != nil {
			return err
		}
	}
	return nil
}
