package dataplane

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// The ipcache (every cluster's addresses → identities) is the one table
// that grows with the federation, not with the node: its size is the
// operator's choice (--ipcache-max-entries, chart value
// agent.ipcacheMaxEntries), set on the inner maps' spec before loading,
// and a revision that does not fit is refused whole, never half written
// (Cilium's fixed 512k ipcache silently drops updates beyond it,
// cilium#47894).
//
// Upgrade path. The size lives on the inner maps only: the pinned outer
// maps (two slots) keep their layout, and the kernel installs an inner
// hash or LPM map of another max_entries into them (map-in-map compares
// type, key, value and flags, not the size). So an agent restarted with
// another size keeps enforcing the pinned revision in the old-sized maps,
// creates the new size for the first slot it writes, and has both slots at
// the new size after its second revision; no uninstall is needed. A
// smaller size than the pinned revision needs is refused at its first
// Apply with IPCacheFullError, the pinned revision staying enforced.

const (
	// DefaultIPCacheMaxEntries is each ipcache table's size (host entries
	// and prefixes alike, per slot) unless Config.IPCacheMaxEntries sets it.
	DefaultIPCacheMaxEntries = 1 << 20
	// MaxIPCacheMaxEntries bounds the setting: 64M entries are ~5 GiB of
	// kernel memory per slot, far past any federation the control plane
	// holds.
	MaxIPCacheMaxEntries = 1 << 26
	// minIPCacheMaxEntries keeps a typo (--ipcache-max-entries 1) from
	// making every revision fail.
	minIPCacheMaxEntries = 1024
)

// ipcacheTables are the maps Config.IPCacheMaxEntries sizes.
var ipcacheTables = [...]string{outerNames[tabIPCache], outerNames[tabIPHosts]}

// ErrIPCacheFull is wrapped by IPCacheFullError.
var ErrIPCacheFull = errors.New("ipcache map full")

// IPCacheFullError is a revision whose ipcache does not fit the maps. It is
// refused before anything is written: the previous revision stays
// enforced, and the agent reports the error in the node's status.
type IPCacheFullError struct {
	Revision    uint64
	Hosts, Nets int
	MaxEntries  uint32
}

func (e *IPCacheFullError) Error() string {
	return fmt.Sprintf("revision %d needs %d host and %d prefix ipcache entries, over the maps' %d per table: "+
		"raise --ipcache-max-entries (chart value agent.ipcacheMaxEntries); the previous revision stays enforced",
		e.Revision, e.Hosts, e.Nets, e.MaxEntries)
}

func (e *IPCacheFullError) Unwrap() error { return ErrIPCacheFull }

// ValidateIPCacheMaxEntries checks a configured ipcache size (0: the
// default).
func ValidateIPCacheMaxEntries(n uint32) error {
	if n != 0 && (n < minIPCacheMaxEntries || n > MaxIPCacheMaxEntries) {
		return fmt.Errorf("--ipcache-max-entries %d: want %d to %d (0: the default %d)", n, minIPCacheMaxEntries, MaxIPCacheMaxEntries, DefaultIPCacheMaxEntries)
	}
	return nil
}

// ipcacheMaxEntries is cfg's ipcache size.
func (cfg Config) ipcacheMaxEntries() uint32 {
	if cfg.IPCacheMaxEntries == 0 {
		return DefaultIPCacheMaxEntries
	}
	return cfg.IPCacheMaxEntries
}

// sizeMaps sets the ipcache inner maps' max_entries in spec, before it is
// loaded: every inner map this process creates (ebpf.NewMap of the inner
// spec, at a slot's first write) then has the configured size.
func sizeMaps(spec *ebpf.CollectionSpec, cfg Config) error {
	if err := ValidateIPCacheMaxEntries(cfg.IPCacheMaxEntries); err != nil {
		return err
	}
	for _, name := range ipcacheTables {
		ms := spec.Maps[name]
		if ms == nil || ms.InnerMap == nil {
			return fmt.Errorf("size %s: the BPF object has no such map-in-map (a build of another version?)", name)
		}
		ms.InnerMap.MaxEntries = cfg.ipcacheMaxEntries()
	}
	return nil
}

// checkIPCacheFits refuses t when its ipcache exceeds the maps' size. The
// maps are written with deletes first, so only the new revision's counts
// matter.
func (e *EBPF) checkIPCacheFits(t *Tables) error {
	max := e.cfg.ipcacheMaxEntries()
	if t.IPCache.nHosts > int(max) || t.IPCache.nNets > int(max) {
		return &IPCacheFullError{Revision: t.Revision, Hosts: t.IPCache.nHosts, Nets: t.IPCache.nNets, MaxEntries: max}
	}
	return nil
}
