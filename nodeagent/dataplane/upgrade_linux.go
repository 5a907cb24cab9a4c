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
	"fm_event_bucket": true, "fm_events": true}

// replaceIncompatiblePins removes the pins in dir of soft-state maps whose
// type, key, value, size or flags differ from spec, so that loading creates
// them afresh. Other incompatible pins are left for the load to report.
func replaceIncompatiblePins(spec *ebpf.CollectionSpec, dir string, log *slog.Logger) error {
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName || !softState[name] {
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
		m.Close()
		if err == nil {
			continue
		}
		if !errors.Is(err, ebpf.ErrMapIncompatible) {
			return fmt.Errorf("check pinned map %s: %w", path, err)
		}
		log.Warn("replacing a pinned map an incompatible fedmesh version left; its state is lost",
			"map", path, "difference", err)
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
				*f = ctFlow{LastSeen: v.LastSeen, Rule: v.Rule, Flags: v.Flags}
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
