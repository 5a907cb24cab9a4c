package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ServiceConfig configures the kernel ClusterSetIP translation (SockLB).
type ServiceConfig struct {
	// PinDir holds its pinned maps and links/ (default DefaultPinDir +
	// "/services"), on a bpffs.
	PinDir string
	// Cgroup is the cgroup v2 directory whose processes' sockets are
	// translated (and every cgroup below it): the cgroup v2 root or the
	// kubepods cgroup on a real node, the node's own cgroup in the lab.
	Cgroup string
	// Limits are the map sizes (zero fields: DefaultServiceLimits). Maps
	// pinned with other sizes must be uninstalled first.
	Limits ServiceLimits
	Logger *slog.Logger
}

// sockHooks are the programs and where they attach.
var sockHooks = []struct {
	prog   string
	attach ebpf.AttachType
}{
	{"fm_connect4", ebpf.AttachCGroupInet4Connect},
	{"fm_connect6", ebpf.AttachCGroupInet6Connect},
	{"fm_sendmsg4", ebpf.AttachCGroupUDP4Sendmsg},
	{"fm_sendmsg6", ebpf.AttachCGroupUDP6Sendmsg},
	{"fm_recvmsg4", ebpf.AttachCGroupUDP4Recvmsg},
	{"fm_recvmsg6", ebpf.AttachCGroupUDP6Recvmsg},
	{"fm_getpeername4", ebpf.AttachCgroupInet4GetPeername},
	{"fm_getpeername6", ebpf.AttachCgroupInet6GetPeername},
}

const (
	familyV4 = 4
	familyV6 = 6
)

// Statistics indexes of fm_svc_stats (bpf/sock_lb.c).
const (
	svcStatTranslated = iota
	svcStatRejected
	svcStatReversed
	svcStatSetMissing
	svcStatDNSRedirected
	svcStatDNSExempt
	numSvcStats
)

// svcKeyC is struct svc_key.
type svcKeyC struct {
	Addr   [16]byte
	Port   [2]byte // network order
	Proto  uint8
	Family uint8
}

// svcValC is struct svc_val.
type svcValC struct {
	Set, Count, Total, Pad uint32
}

// beKeyC is struct be_key.
type beKeyC struct {
	Set, Idx uint32
}

// beValC is struct be_val.
type beValC struct {
	Addr [16]byte
	Port [2]byte
	Pad  uint16
	Cum  uint32
}

func addrBytes(a netip.Addr) [16]byte {
	var out [16]byte
	if a.Is4() {
		v := a.As4()
		copy(out[:], v[:])
		return out
	}
	return a.As16()
}

func toSvcKey(k ServiceKey) svcKeyC {
	c := svcKeyC{Addr: addrBytes(k.VIP), Port: [2]byte{byte(k.Port >> 8), byte(k.Port)}, Proto: k.Protocol, Family: familyV6}
	if k.VIP.Is4() {
		c.Family = familyV4
	}
	return c
}

func fromSvcKey(c svcKeyC) ServiceKey {
	k := ServiceKey{Port: uint16(c.Port[0])<<8 | uint16(c.Port[1]), Protocol: c.Proto, VIP: netip.AddrFrom16(c.Addr)}
	if c.Family == familyV4 {
		k.VIP = netip.AddrFrom4([4]byte(c.Addr[:4]))
	}
	return k
}

func toBeVal(b lbBackend) beValC {
	return beValC{Addr: addrBytes(b.Addr), Port: [2]byte{byte(b.Port >> 8), byte(b.Port)}, Cum: b.Cum}
}

func fromBeVal(c beValC, v4 bool) lbBackend {
	b := lbBackend{Addr: netip.AddrFrom16(c.Addr), Port: uint16(c.Port[0])<<8 | uint16(c.Port[1]), Cum: c.Cum}
	if v4 {
		b.Addr = netip.AddrFrom4([4]byte(c.Addr[:4]))
	}
	return b
}

// loadedSet is a frontend's set as the maps hold it.
type loadedSet struct {
	set uint32
	f   lbFrontend
}

// SockLB is the kernel ClusterSetIP translation: the sock_addr programs of
// bpf/sock_lb.c attached to one cgroup, and their pinned maps. It keeps
// translating after Close (pins stay), so a restarted agent re-adopts it
// with no gap; Uninstall removes it. Create it with NewSockLB.
type SockLB struct {
	cfg ServiceConfig
	log *slog.Logger

	mu      sync.Mutex // serialises ApplyServices, Close, Uninstall
	coll    *ebpf.Collection
	links   []link.Link
	shadow  map[ServiceKey]loadedSet // what the maps hold
	orphans []uint32                 // sets no frontend points at, still to delete
	nextSet uint32
	rev     uint64
	trunc   []ServiceTruncation
	closed  bool
}

var _ ServiceTranslator = (*SockLB)(nil)

// NewSockLB loads (or re-adopts) the translation programs and maps and
// attaches them to cfg.Cgroup. What the pinned maps hold keeps being
// translated until the first ApplyServices; pinned links are re-pointed at
// the new programs, or moved when cfg.Cgroup changed.
func NewSockLB(ctx context.Context, cfg ServiceConfig) (*SockLB, error) {
	if cfg.PinDir == "" {
		cfg.PinDir = filepath.Join(DefaultPinDir, "services")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Limits = cfg.Limits.withDefaults()
	if err := Probe(filepath.Dir(cfg.PinDir)); err != nil {
		return nil, err
	}
	cgID, err := cgroupV2ID(cfg.Cgroup)
	if err != nil {
		return nil, err
	}
	s := &SockLB{cfg: cfg, log: cfg.Logger, shadow: map[ServiceKey]loadedSet{}}
	if err := s.load(); err != nil {
		return nil, err
	}
	if err := s.recover(); err != nil {
		s.coll.Close()
		return nil, err
	}
	if err := s.attach(cgID); err != nil {
		for _, l := range s.links {
			l.Close()
		}
		s.coll.Close()
		return nil, err
	}
	return s, nil
}

func (s *SockLB) load() error {
	spec, err := loadSocklb()
	if err != nil {
		return fmt.Errorf("load embedded service translation object: %w", err)
	}
	spec.Maps["fm_svc"].MaxEntries = uint32(s.cfg.Limits.Frontends)
	spec.Maps["fm_svc_be"].MaxEntries = uint32(s.cfg.Limits.Backends)
	if err := os.MkdirAll(filepath.Join(s.cfg.PinDir, "links"), 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", s.cfg.PinDir, err)
	}
	if err := replaceIncompatibleSocketState(spec, s.cfg.PinDir, s.log); err != nil {
		return err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: s.cfg.PinDir}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("load service translation: maps pinned in %s have other sizes or an incompatible layout; "+
			"uninstall (remove %s) or keep the previous limits: %w", s.cfg.PinDir, s.cfg.PinDir, err)
	}
	if err != nil {
		return fmt.Errorf("load service translation programs: %w", err)
	}
	s.coll = coll
	return nil
}

// svcSoftState names the pinned maps a new version may start empty: a
// socket translated before loses its reverse entry (its peer shows the
// backend) and its UDP affinity (it chooses again), counters restart. The
// frontends and backend sets are the table in force and keep their layout.
// The DNS redirect is set again by the agent at every start, so a new
// layout of it may start empty too.
var svcSoftState = map[string]bool{"fm_sock_rev": true, "fm_sock_aff": true, "fm_svc_stats": true, "fm_dns_redir": true}

// replaceIncompatibleSocketState removes the pins of soft-state maps whose
// layout differs from spec, so that loading creates them afresh.
func replaceIncompatibleSocketState(spec *ebpf.CollectionSpec, dir string, log *slog.Logger) error {
	return replaceIncompatibleSoftState(spec, dir, svcSoftState, log)
}

// recover reads back what the pinned maps hold (a previous agent's table),
// and deletes the sets no frontend points at (an update cut short).
func (s *SockLB) recover() error {
	var st struct{ Revision uint64 }
	if err := s.coll.Maps["fm_svc_state"].Lookup(uint32(0), &st); err != nil {
		return fmt.Errorf("read pinned service state: %w", err)
	}
	s.rev = st.Revision
	used := map[uint32]bool{}
	var k svcKeyC
	var v svcValC
	it := s.coll.Maps["fm_svc"].Iterate()
	for it.Next(&k, &v) {
		key := fromSvcKey(k)
		f := lbFrontend{Backends: make([]lbBackend, 0, v.Count)}
		for i := range v.Count {
			var b beValC
			if err := s.coll.Maps["fm_svc_be"].Lookup(beKeyC{Set: v.Set, Idx: i}, &b); err != nil {
				return fmt.Errorf("read pinned backend set %d of %s:%d/%d: %w", v.Set, key.VIP, key.Port, key.Protocol, err)
			}
			f.Backends = append(f.Backends, fromBeVal(b, k.Family == familyV4))
		}
		s.shadow[key] = loadedSet{set: v.Set, f: f}
		used[v.Set] = true
		s.nextSet = max(s.nextSet, v.Set)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pinned frontends: %w", err)
	}
	var orphans []beKeyC
	var bk beKeyC
	var bv beValC
	it = s.coll.Maps["fm_svc_be"].Iterate()
	for it.Next(&bk, &bv) {
		if !used[bk.Set] {
			orphans = append(orphans, bk)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pinned backends: %w", err)
	}
	for _, o := range orphans {
		if err := s.coll.Maps["fm_svc_be"].Delete(o); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete orphan backend set %d: %w", o.Set, err)
		}
	}
	if len(s.shadow) > 0 {
		s.log.Info("re-adopted pinned service translation", "revision", s.rev, "frontends", len(s.shadow),
			"orphan_backends_deleted", len(orphans), "pin_dir", s.cfg.PinDir)
	}
	return nil
}

// attach links every hook to the cgroup with id cgID, re-pointing pinned
// links there at the new programs.
func (s *SockLB) attach(cgID uint64) error {
	for _, h := range sockHooks {
		prog := s.coll.Programs[h.prog]
		pin := filepath.Join(s.cfg.PinDir, "links", h.prog)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			info, ierr := l.Info()
			if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgID {
				if err := l.Update(prog); err != nil {
					l.Close()
					return fmt.Errorf("re-point pinned %s link at the new program: %w", h.prog, err)
				}
				s.links = append(s.links, l)
				continue
			}
			// Attached elsewhere (the configured cgroup changed): the new
			// link replaces it.
			s.log.Info("moving service translation hook to a new cgroup", "hook", h.prog, "cgroup", s.cfg.Cgroup)
			l.Unpin()
			l.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("load pinned link %s: %w", pin, err)
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: s.cfg.Cgroup, Attach: h.attach, Program: prog})
		if err != nil {
			return fmt.Errorf("attach %s to cgroup %s: %w", h.prog, s.cfg.Cgroup, err)
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pin %s link: %w", h.prog, err)
		}
		s.links = append(s.links, l)
	}
	return nil
}

// allocSet returns a set id no frontend or orphan uses (0 is never used).
func (s *SockLB) allocSet(taken map[uint32]bool) uint32 {
	for {
		s.nextSet++
		if s.nextSet != 0 && !taken[s.nextSet] {
			taken[s.nextSet] = true
			return s.nextSet
		}
	}
}

func setKeys(set uint32, n int) []beKeyC {
	ks := make([]beKeyC, n)
	for i := range ks {
		ks[i] = beKeyC{Set: set, Idx: uint32(i)}
	}
	return ks
}

func svcVal(set uint32, f lbFrontend) svcValC {
	return svcValC{Set: set, Count: uint32(len(f.Backends)), Total: f.total()}
}

// ApplyServices implements ServiceTranslator: new and changed frontends get
// their sets written whole, then every frontend entry is switched (each in
// one map update); the replaced sets are deleted after a grace period. On a
// write error everything switched is switched back and the new sets are
// deleted, so the previous table stays in force.
func (s *SockLB) ApplyServices(ctx context.Context, t *ServiceTable) error {
	nt, trunc := renderServices(t, s.cfg.Limits)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("apply services: translation closed")
	}
	svc, be := s.coll.Maps["fm_svc"], s.coll.Maps["fm_svc_be"]
	taken := map[uint32]bool{}
	for _, ls := range s.shadow {
		taken[ls.set] = true
	}
	for _, o := range s.orphans {
		taken[o] = true
	}
	keys := make([]ServiceKey, 0, len(nt.Frontends))
	for k := range nt.Frontends {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, CompareServiceKeys)

	type change struct {
		key      ServiceKey
		old      loadedSet
		hadOld   bool
		new      loadedSet
		switched bool
	}
	var changes []*change
	var removed []ServiceKey
	for k := range s.shadow {
		if _, ok := nt.Frontends[k]; !ok {
			removed = append(removed, k)
		}
	}
	slices.SortFunc(removed, CompareServiceKeys)
	rollback := func(cause error) error {
		for _, c := range changes {
			if !c.switched {
				continue
			}
			var err error
			if c.hadOld {
				err = svc.Put(toSvcKey(c.key), svcVal(c.old.set, c.old.f))
			} else {
				err = svc.Delete(toSvcKey(c.key))
			}
			if err != nil {
				s.log.Error("roll back service frontend", "vip", c.key.VIP, "port", c.key.Port, "error", err)
			}
		}
		for _, c := range changes {
			if n := len(c.new.f.Backends); n > 0 {
				if _, err := be.BatchDelete(setKeys(c.new.set, n), nil); err != nil {
					s.orphans = append(s.orphans, c.new.set)
				}
			}
		}
		return fmt.Errorf("apply services revision %d: %w", t.Revision, cause)
	}
	for _, k := range keys {
		f := nt.Frontends[k]
		old, had := s.shadow[k]
		if had && slices.Equal(old.f.Backends, f.Backends) {
			continue
		}
		c := &change{key: k, old: old, hadOld: had, new: loadedSet{set: s.allocSet(taken), f: f}}
		changes = append(changes, c)
		if n := len(f.Backends); n > 0 {
			vals := make([]beValC, n)
			for i, b := range f.Backends {
				vals[i] = toBeVal(b)
			}
			if _, err := be.BatchUpdate(setKeys(c.new.set, n), vals, nil); err != nil {
				return rollback(fmt.Errorf("write backend set of %s:%d/%d: %w", k.VIP, k.Port, k.Protocol, err))
			}
		}
		if err := ctx.Err(); err != nil {
			return rollback(err)
		}
	}
	for _, c := range changes {
		if err := svc.Put(toSvcKey(c.key), svcVal(c.new.set, c.new.f)); err != nil {
			return rollback(fmt.Errorf("switch frontend %s:%d/%d: %w", c.key.VIP, c.key.Port, c.key.Protocol, err))
		}
		c.switched = true
	}
	for i, k := range removed {
		if err := svc.Delete(toSvcKey(k)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			for _, back := range removed[:i] {
				ls := s.shadow[back]
				if perr := svc.Put(toSvcKey(back), svcVal(ls.set, ls.f)); perr != nil {
					s.log.Error("roll back removed service frontend", "vip", back.VIP, "port", back.Port, "error", perr)
				}
			}
			return rollback(fmt.Errorf("remove frontend %s:%d/%d: %w", k.VIP, k.Port, k.Protocol, err))
		}
	}
	if err := s.coll.Maps["fm_svc_state"].Put(uint32(0), struct{ Revision uint64 }{t.Revision}); err != nil {
		s.log.Warn("record service revision", "error", err)
	}
	// The table is in force. Replaced sets go after the grace period.
	for _, c := range changes {
		if c.hadOld {
			s.orphans = append(s.orphans, c.old.set)
		}
		s.shadow[c.key] = c.new
	}
	for _, k := range removed {
		s.orphans = append(s.orphans, s.shadow[k].set)
		delete(s.shadow, k)
	}
	s.rev, s.trunc = t.Revision, trunc
	if len(s.orphans) > 0 {
		time.Sleep(graceAfterFlip)
		s.deleteOrphans()
	}
	return nil
}

// deleteOrphans deletes the backends of sets no frontend points at; what
// fails stays listed for the next update.
func (s *SockLB) deleteOrphans() {
	be := s.coll.Maps["fm_svc_be"]
	var left []uint32
	for _, set := range s.orphans {
		var ks []beKeyC
		for i := uint32(0); ; i++ {
			var v beValC
			k := beKeyC{Set: set, Idx: i}
			if err := be.Lookup(k, &v); err != nil {
				break
			}
			ks = append(ks, k)
		}
		if len(ks) == 0 {
			continue
		}
		if _, err := be.BatchDelete(ks, nil); err != nil {
			s.log.Warn("delete replaced backend set; retried at the next update", "set", set, "error", err)
			left = append(left, set)
		}
	}
	s.orphans = left
}

// ServiceStatus implements ServiceTranslator.
func (s *SockLB) ServiceStatus(ctx context.Context) (ServiceStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ServiceStatus{}, errors.New("read service status: translation closed")
	}
	st := ServiceStatus{Revision: s.rev, Frontends: len(s.shadow), Truncated: slices.Clone(s.trunc)}
	for _, ls := range s.shadow {
		st.Backends += len(ls.f.Backends)
	}
	var counts [numSvcStats]uint64
	for i := range uint32(numSvcStats) {
		var per []uint64
		if err := s.coll.Maps["fm_svc_stats"].Lookup(i, &per); err != nil {
			return ServiceStatus{}, fmt.Errorf("read service counters: %w", err)
		}
		for _, v := range per {
			counts[i] += v
		}
	}
	st.Translated, st.Rejected, st.Reversed = counts[svcStatTranslated], counts[svcStatRejected], counts[svcStatReversed]
	st.DNSRedirected, st.DNSExempt = counts[svcStatDNSRedirected], counts[svcStatDNSExempt]
	if counts[svcStatSetMissing] > 0 {
		s.log.Warn("service translation refused connections whose backend set vanished mid-lookup",
			"count", counts[svcStatSetMissing])
	}
	return st, nil
}

// Close releases this process's handles; the programs stay attached and
// keep translating the loaded table (pins stay).
func (s *SockLB) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	for _, l := range s.links {
		l.Close()
	}
	s.coll.Close()
	return nil
}

// Uninstall detaches the programs and removes the pinned maps and links.
func (s *SockLB) Uninstall(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		for _, l := range s.links {
			if err := l.Unpin(); err != nil {
				s.log.Warn("unpin service translation link", "error", err)
			}
		}
	}
	s.mu.Unlock()
	if err := s.Close(); err != nil {
		return err
	}
	return UninstallServices(ctx, s.cfg.PinDir)
}

// UninstallServices removes a pinned service translation under pinDir: the
// links detach as their pins go (unless a process still holds them).
func UninstallServices(ctx context.Context, pinDir string) error {
	if !strings.HasPrefix(filepath.Clean(pinDir), "/sys/fs/bpf/") {
		return fmt.Errorf("uninstall services: refusing a pin directory outside /sys/fs/bpf: %s", pinDir)
	}
	if err := os.RemoveAll(pinDir); err != nil {
		return fmt.Errorf("uninstall services: remove %s: %w", pinDir, err)
	}
	return nil
}

// cgroupV2ID checks that dir is a cgroup v2 directory and returns its id
// (the inode number, which the kernel reports as the link's cgroup id).
func cgroupV2ID(dir string) (uint64, error) {
	if dir == "" {
		return 0, errors.New("service translation: no cgroup configured; set the cgroup v2 directory whose pods' sockets are translated")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("open cgroup %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		mnt, _ := Cgroup2Mount()
		return 0, &UnsupportedError{Feature: "cgroup v2",
			Remedy: fmt.Sprintf("%s is not a cgroup v2 directory; use one under the cgroup2 mount (%s)", dir, mnt)}
	}
	var fst unix.Stat_t
	if err := unix.Stat(dir, &fst); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", dir, err)
	}
	return fst.Ino, nil
}

// Cgroup2Mount returns where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup on a unified system, /sys/fs/cgroup/unified on a hybrid
// one).
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	return "", &UnsupportedError{Feature: "cgroup v2", Remedy: "mount a cgroup2 hierarchy (mount -t cgroup2 none /sys/fs/cgroup/unified)"}
}
