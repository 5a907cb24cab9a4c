package store

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// SnapshotVersion is the newest snapshot format this binary writes. It
// reads every version up to this one; a field added later gets its zero
// value when an older snapshot is read.
//
// Version 2 adds the used join tokens (header field usedTokens). Version 3
// adds the audit log (recAudit records). A snapshot is written in the
// oldest version that holds its state: the audit log fills only once every
// replica applies log format 2, so until then an older replica can still
// restore a newer one's snapshot during a rolling upgrade. Version 4 adds
// endpoints that keep every pod label (recEndpointFull); recEndpoint
// records are legacy endpoints (see Identities), so a snapshot holding
// only those stays readable by older binaries, and full endpoints exist
// only once every replica applies log format 3.
// Version 5 adds the BGP peers and filters (recBGPPeer, recBGPFilter),
// likewise written only once there are some (log format 4).
// Version 6 adds the ClusterNetworkPolicies (recClusterPolicy, log format
// 5), likewise.
// Version 7 adds service advertisements (recServiceAdvert, svcadverts.go),
// likewise written only once there are some (log format 7).
// Version 8 adds staged policies (recStagedPolicy, staged.go), likewise
// (log format 8).
const SnapshotVersion = SnapshotVersionStaged

const snapshotMagic = "fedmesh-snapshot\n"

// ErrSnapshotTooNew is returned when restoring a snapshot written by a newer
// binary.
var ErrSnapshotTooNew = errors.New("snapshot written by a newer fedmesh-controlplane; upgrade this replica")

type recKind uint64

const (
	recHeader recKind = iota + 1
	recCluster
	recNode
	recEndpoint
	recExport
	recImport
	recPolicy
	recMember
	recEnd
	recAudit        // version 3
	recEndpointFull // version 4: an endpoint with every pod label (not legacy)
	recBGPPeer      // version 5
	recBGPFilter    // version 5
)

type snapHeader struct {
	Version      int             `json:"version"`
	Revision     uint64          `json:"revision"`
	NextIdentity uint32          `json:"nextIdentity"`
	Gens         []snapGen       `json:"gens,omitempty"`
	Clusters     []snapClusterMD `json:"clusters,omitempty"`
	UsedTokens   []snapToken     `json:"usedTokens,omitempty"` // version 2
	// ClustersetCIDRs (log format 6; an older reader ignores them, and
	// cannot apply the log that set them anyway).
	ClustersetCIDRs []string `json:"clustersetCidrs,omitempty"`
}

type snapToken struct {
	ID      []byte `json:"id"`
	Expires int64  `json:"expires"`
}

type snapGen struct {
	Owner string `json:"owner"`
	Kind  uint8  `json:"kind"`
	Gen   uint64 `json:"gen"`
}

type snapClusterMD struct {
	Name      string `json:"name"`
	ResyncGen uint64 `json:"resyncGen,omitempty"`
	LastSync  int64  `json:"lastSync,omitempty"`
}

// Frozen is a point-in-time copy of a State that later applies do not
// change; writing it out may take long and runs without the FSM's lock.
type Frozen struct{ s *State }

// Freeze copies the state's indexes (not the immutable objects): quick
// enough for raft.FSM.Snapshot, which must not block applies for long.
func (s *State) Freeze() Frozen {
	c := &State{
		rev:        s.rev,
		clusters:   make(map[string]*clusterEntry, len(s.clusters)),
		nodes:      make(map[string]map[string]*fedmeshv1.Node, len(s.nodes)),
		frozenEps:  make(map[string][]*epEntry, len(s.endpoints)),
		exports:    make(map[string]map[nsName]*exportEntry, len(s.exports)),
		imports:    make(map[nsName]*fedmeshv1.ServiceImport, len(s.imports)),
		policies:   make(map[string]map[nsName]*policyEntry, len(s.policies)),
		gens:       make(map[genKey]uint64, len(s.gens)),
		members:    s.Members(),
		audit:      s.audit.clone(),
		ids:        s.ids.frozen(),
		usedTokens: make(map[[16]byte]int64, len(s.usedTokens)),
		bgp:        s.bgp.clone(),
		cnp:        s.cnp.clone(),
		adverts:    s.adverts.clone(),
		staged:     s.staged.clone(),
		clusterset: s.clusterset,
	}
	for k, v := range s.usedTokens {
		c.usedTokens[k] = v
	}
	for k, v := range s.clusters {
		ce := *v
		c.clusters[k] = &ce
	}
	copyInner(c.nodes, s.nodes)
	for cl, m := range s.endpoints {
		eps := make([]*epEntry, 0, len(m))
		for _, e := range m {
			eps = append(eps, e)
		}
		c.frozenEps[cl] = eps
	}
	copyInner(c.exports, s.exports)
	copyInner(c.policies, s.policies)
	for k, v := range s.imports {
		c.imports[k] = v
	}
	for k, v := range s.gens {
		c.gens[k] = v
	}
	return Frozen{s: c}
}

func copyInner[K comparable, V any](dst, src map[string]map[K]V) {
	for o, m := range src {
		n := make(map[K]V, len(m))
		for k, v := range m {
			n[k] = v
		}
		dst[o] = n
	}
}

// Revision of the frozen state.
func (f Frozen) Revision() uint64 { return f.s.rev }

// WriteTo serialises the frozen state: a magic line, then records of
// (kind, length, bytes), in a deterministic order, ending with an end record
// so a truncated snapshot is detected.
func (f Frozen) WriteTo(w io.Writer) (int64, error) {
	s := f.s
	bw := bufio.NewWriterSize(w, 1<<16)
	cw := &countWriter{w: bw}
	if _, err := io.WriteString(cw, snapshotMagic); err != nil {
		return cw.n, err
	}
	h := snapHeader{Version: 2, Revision: s.rev, NextIdentity: s.ids.a.Next()}
	audit := s.audit.Records(nil)
	if len(audit) > 0 {
		h.Version = 3
	}
	if s.fullEndpoints() {
		h.Version = 4
	}
	if !s.bgp.empty() {
		h.Version = 5
	}
	if !s.cnp.empty() {
		h.Version = SnapshotVersionClusterPolicies
	}
	if !s.adverts.empty() {
		h.Version = SnapshotVersionServiceAdvertisements
	}
	if !s.staged.empty() {
		h.Version = SnapshotVersionStaged
	}
	for _, gk := range sortedGenKeys(s.gens) {
		h.Gens = append(h.Gens, snapGen{Owner: gk.owner, Kind: uint8(gk.kind), Gen: s.gens[gk]})
	}
	for _, id := range sortedTokenIDs(s.usedTokens) {
		h.UsedTokens = append(h.UsedTokens, snapToken{ID: id[:], Expires: s.usedTokens[id]})
	}
	for _, p := range s.clusterset {
		h.ClustersetCIDRs = append(h.ClustersetCIDRs, p.String())
	}
	for _, n := range sortedKeys(s.clusters) {
		ce := s.clusters[n]
		h.Clusters = append(h.Clusters, snapClusterMD{Name: n, ResyncGen: ce.resyncGen, LastSync: ce.lastSync})
	}
	hb, err := json.Marshal(h)
	if err != nil {
		return cw.n, err
	}
	rw := recWriter{w: cw}
	rw.raw(recHeader, hb)
	for _, n := range sortedKeys(s.clusters) {
		rw.msg(recCluster, 0, false, s.clusters[n].spec)
	}
	for _, c := range sortedKeys(s.nodes) {
		for _, n := range sortedKeys(s.nodes[c]) {
			rw.msg(recNode, 0, false, s.nodes[c][n])
		}
	}
	for _, c := range sortedKeys(s.frozenEps) {
		eps := s.frozenEps[c]
		slices.SortFunc(eps, func(a, b *epEntry) int {
			return cmpNsName(nsName{a.ep.GetNamespace(), a.ep.GetName()}, nsName{b.ep.GetNamespace(), b.ep.GetName()})
		})
		for _, e := range eps {
			kind := recEndpoint
			if !e.legacy {
				kind = recEndpointFull
			}
			rw.msg(kind, e.gen, true, e.ep)
		}
	}
	for _, c := range sortedKeys(s.exports) {
		for _, k := range sortedNsNames(s.exports[c]) {
			e := s.exports[c][k]
			rw.msg(recExport, e.gen, true, e.x)
		}
	}
	for _, k := range sortedNsNames(s.imports) {
		rw.msg(recImport, 0, false, s.imports[k])
	}
	for _, c := range sortedKeys(s.policies) {
		for _, k := range sortedNsNames(s.policies[c]) {
			e := s.policies[c][k]
			rw.msg(recPolicy, e.gen, true, e.p)
		}
	}
	for _, id := range sortedKeys(s.members) {
		rw.msg(recMember, 0, false, s.members[id])
	}
	for _, rec := range audit {
		rw.msg(recAudit, 0, false, rec)
	}
	s.bgp.write(&rw)
	s.cnp.write(&rw)
	s.adverts.write(&rw)
	s.staged.write(&rw)
	rw.raw(recEnd, nil)
	if rw.err != nil {
		return cw.n, fmt.Errorf("write snapshot: %w", rw.err)
	}
	if err := bw.Flush(); err != nil {
		return cw.n, fmt.Errorf("write snapshot: %w", err)
	}
	return cw.n, nil
}

func sortedGenKeys(m map[genKey]uint64) []genKey {
	ks := make([]genKey, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	for i := 1; i < len(ks); i++ {
		for j := i; j > 0 && (ks[j].owner < ks[j-1].owner || (ks[j].owner == ks[j-1].owner && ks[j].kind < ks[j-1].kind)); j-- {
			ks[j], ks[j-1] = ks[j-1], ks[j]
		}
	}
	return ks
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type recWriter struct {
	w   io.Writer
	buf []byte
	err error
}

func (r *recWriter) raw(k recKind, b []byte) {
	if r.err != nil {
		return
	}
	hdr := binary.AppendUvarint(nil, uint64(k))
	hdr = binary.AppendUvarint(hdr, uint64(len(b)))
	if _, r.err = r.w.Write(hdr); r.err == nil {
		_, r.err = r.w.Write(b)
	}
}

func (r *recWriter) msg(k recKind, gen uint64, withGen bool, m proto.Message) {
	r.buf = r.buf[:0]
	if withGen {
		r.buf = binary.AppendUvarint(r.buf, gen)
	}
	var err error
	r.buf, err = proto.MarshalOptions{Deterministic: true}.MarshalAppend(r.buf, m)
	if err != nil && r.err == nil {
		r.err = err
	}
	r.raw(k, r.buf)
}

// ReadSnapshot restores a state written by Frozen.WriteTo (any version up to
// SnapshotVersion). The event log starts empty, compacted at the snapshot's
// revision: watchers behind it get a snapshot.
func ReadSnapshot(r io.Reader, logSize int) (*State, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != snapshotMagic {
		return nil, fmt.Errorf("read snapshot: not a fedmesh snapshot (bad magic)")
	}
	s := NewState(logSize)
	var h snapHeader
	sawHeader := false
	ids := newIdentityRestorer()
	metas := map[metaKey]*fedmeshv1.ObjectMeta{}
	for {
		kind, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, fmt.Errorf("read snapshot: truncated (no end record): %w", err)
		}
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, fmt.Errorf("read snapshot: truncated record: %w", err)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, fmt.Errorf("read snapshot: truncated record: %w", err)
		}
		if recKind(kind) != recHeader && !sawHeader {
			return nil, errors.New("read snapshot: first record is not the header")
		}
		switch recKind(kind) {
		case recHeader:
			if err := json.Unmarshal(b, &h); err != nil {
				return nil, fmt.Errorf("read snapshot header: %w", err)
			}
			if h.Version > SnapshotVersion {
				return nil, fmt.Errorf("read snapshot version %d (this binary reads up to %d): %w", h.Version, SnapshotVersion, ErrSnapshotTooNew)
			}
			sawHeader = true
		case recCluster:
			c := &fedmeshv1.Cluster{}
			if err := proto.Unmarshal(b, c); err != nil {
				return nil, fmt.Errorf("read snapshot cluster: %w", err)
			}
			s.clusters[c.GetName()] = &clusterEntry{spec: c}
		case recNode:
			n := &fedmeshv1.Node{}
			if err := proto.Unmarshal(b, n); err != nil {
				return nil, fmt.Errorf("read snapshot node: %w", err)
			}
			inner(s.nodes, n.GetCluster())[n.GetName()] = n
		case recEndpoint, recEndpointFull:
			e, gen, err := readEndpoint(b, metas)
			if err != nil {
				return nil, fmt.Errorf("read snapshot endpoint: %w", err)
			}
			key := nsName{e.GetNamespace(), e.GetName()}
			en := &epEntry{ep: e, gen: gen, legacy: recKind(kind) == recEndpoint}
			inner(s.endpoints, e.GetCluster())[key] = en
			s.ownAddrs(en)
			ids.add(en)
		case recExport:
			x := &fedmeshv1.ServiceExport{}
			gen, err := unmarshalWithGen(b, x)
			if err != nil {
				return nil, fmt.Errorf("read snapshot export: %w", err)
			}
			inner(s.exports, x.GetCluster())[nsName{x.GetNamespace(), x.GetName()}] = &exportEntry{x: x, gen: gen}
		case recImport:
			x := &fedmeshv1.ServiceImport{}
			if err := proto.Unmarshal(b, x); err != nil {
				return nil, fmt.Errorf("read snapshot import: %w", err)
			}
			s.imports[nsName{x.GetNamespace(), x.GetName()}] = x
		case recPolicy:
			p := &fedmeshv1.Policy{}
			gen, err := unmarshalWithGen(b, p)
			if err != nil {
				return nil, fmt.Errorf("read snapshot policy: %w", err)
			}
			inner(s.policies, p.GetCluster())[nsName{p.GetNamespace(), p.GetName()}] = &policyEntry{p: p, gen: gen}
		case recMember:
			m := &fedmeshv1.Member{}
			if err := proto.Unmarshal(b, m); err != nil {
				return nil, fmt.Errorf("read snapshot member: %w", err)
			}
			s.members[m.GetId()] = m
		case recAudit:
			rec := &fedmeshv1.AuditRecord{}
			if err := proto.Unmarshal(b, rec); err != nil {
				return nil, fmt.Errorf("read snapshot audit record: %w", err)
			}
			s.audit.add(rec)
		case recEnd:
			s.rev = h.Revision
			if err := ids.finish(s, h.NextIdentity); err != nil {
				return nil, fmt.Errorf("read snapshot: %w", err)
			}
			for _, tk := range h.UsedTokens {
				var id [16]byte
				if len(tk.ID) != len(id) {
					return nil, fmt.Errorf("read snapshot: used join token id of %d bytes, want 16", len(tk.ID))
				}
				copy(id[:], tk.ID)
				s.usedTokens[id] = tk.Expires
			}
			for _, v := range h.ClustersetCIDRs {
				p, err := netip.ParsePrefix(v)
				if err != nil {
					return nil, fmt.Errorf("read snapshot: clusterset CIDR %q: %w", v, err)
				}
				s.clusterset = append(s.clusterset, p)
			}
			for _, g := range h.Gens {
				s.gens[genKey{owner: g.Owner, kind: genKind(g.Kind)}] = g.Gen
			}
			for _, md := range h.Clusters {
				if ce := s.clusters[md.Name]; ce != nil {
					ce.resyncGen, ce.lastSync = md.ResyncGen, md.LastSync
				}
			}
			s.adverts.restored(s.rev)
			s.log = NewEventLog(logSize, s.rev)
			return s, nil
		default:
			if ok, err := s.adverts.read(recKind(kind), b); ok {
				if err != nil {
					return nil, err
				}
				continue
			}
			if ok, err := s.bgp.read(recKind(kind), b); ok {
				if err != nil {
					return nil, err
				}
				continue
			}
			if ok, err := s.cnp.read(recKind(kind), b); ok {
				if err != nil {
					return nil, err
				}
				continue
			}
			if ok, err := s.staged.read(recKind(kind), b); ok {
				if err != nil {
					return nil, err
				}
				continue
			}
			return nil, fmt.Errorf("read snapshot: unknown record kind %d in version %d", kind, h.Version)
		}
	}
}

// readEndpoint decodes an endpoint record as the log's endpoints are
// decoded (cluster, namespace, node and label strings interned), its
// metadata shared with an equal one read before: a restored state then
// costs what the state that wrote it did, not a copy of every shared
// string and ObjectMeta per endpoint.
func readEndpoint(b []byte, metas map[metaKey]*fedmeshv1.ObjectMeta) (*fedmeshv1.Endpoint, uint64, error) {
	gen, n := binary.Uvarint(b)
	if n <= 0 {
		return nil, 0, errors.New("bad generation")
	}
	e, ok := fastUnmarshalEndpoint(b[n:], shared)
	if !ok {
		e = &fedmeshv1.Endpoint{}
		if err := proto.Unmarshal(b[n:], e); err != nil {
			return nil, 0, err
		}
	}
	if k, ok := keyOfMeta(e.GetMeta()); ok {
		if m, ok := metas[k]; ok {
			e.Meta = m
		} else {
			metas[k] = e.GetMeta()
		}
	}
	return e, gen, nil
}

// metaKey is an ObjectMeta's value, for sharing equal ones.
type metaKey struct {
	rev, created uint64
	by           string
	sec          int64
	nanos        int32
	hasTime      bool
}

// keyOfMeta is m's value; false when m is nil or carries fields this
// binary does not know (those are kept as they are).
func keyOfMeta(m *fedmeshv1.ObjectMeta) (metaKey, bool) {
	if m == nil || len(m.ProtoReflect().GetUnknown()) > 0 {
		return metaKey{}, false
	}
	k := metaKey{rev: m.GetRevision(), created: m.GetCreateRevision(), by: m.GetUpdatedBy()}
	if t := m.GetUpdateTime(); t != nil {
		if len(t.ProtoReflect().GetUnknown()) > 0 {
			return metaKey{}, false
		}
		k.sec, k.nanos, k.hasTime = t.GetSeconds(), t.GetNanos(), true
	}
	return k, true
}

func unmarshalWithGen(b []byte, m proto.Message) (uint64, error) {
	gen, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, errors.New("bad generation")
	}
	return gen, proto.Unmarshal(b[n:], m)
}

func sortedTokenIDs(m map[[16]byte]int64) [][16]byte {
	ks := make([][16]byte, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b [16]byte) int { return bytes.Compare(a[:], b[:]) })
	return ks
}
