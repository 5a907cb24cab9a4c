package dataplane

import (
	"bytes"
	"encoding/binary"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// This file is the Go twin of bpf/fedmesh.c's handle(): the same parse, the
// same lookups in the same order, the same conntrack and fragment state.
// Keep the two in step; TestDifferentialKernelVsMemory compares them.

const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
	protoSCTP   = 132

	ethHdrLen = 14
	ctClosing = 1

	// Program return codes (tcx).
	retNext = -1
	retDrop = 2
)

// Timeouts are the conntrack idle timeouts.
type Timeouts struct {
	TCP, Other, Closing time.Duration
}

// DefaultTimeouts are the conntrack idle timeouts unless configured.
var DefaultTimeouts = Timeouts{TCP: 6 * time.Hour, Other: 60 * time.Second, Closing: 10 * time.Second}

// ctKey is a conntrack key of either family: the program's ct4_key (in
// fm_ct4) or ct6_key (fm_ct6), ends in canonical order (see ctFill).
type ctKey struct {
	Ifindex      uint32
	V6           bool // which table
	Proto        uint8
	PortA, PortB uint16
	A, B         [16]byte
}

// ctFlow is one class of a conntrack entry (struct ct_flow); LastSeen 0
// means no flow.
type ctFlow struct {
	LastSeen uint64
	Rule     uint32
	Flags    uint32
}

// ctVal is a conntrack entry: one flow per class, direction ^ orientation.
type ctVal struct {
	Flow [2]ctFlow
}

// Orientations of a tuple relative to its canonical key.
const (
	ctOrientA   = 0 // the source is end a
	ctOrientB   = 1 // the source is end b
	ctOrientTie = 2 // both ends are equal
)

type fragKey struct {
	Ifindex  uint32
	Dir      uint8
	Proto    uint8
	Pad      uint16
	ID       uint32
	Src, Dst [16]byte
}

type tuple struct {
	src, dst     [16]byte
	sport, dport uint16
	proto        uint8
}

type pkt struct {
	t        tuple
	v6       bool
	hasPorts bool
	frag     uint8
	tcpFlags uint8
	related  bool
	fragID   uint32
	inner    tuple
}

// flowState is the in-memory conntrack and fragment tables.
type flowState struct {
	timeouts Timeouts
	ct       map[ctKey]*ctVal
	frag     map[fragKey]uint64
	// fqdn is fm_fqdn: learned addresses, outside the revision tables.
	fqdn map[fqdnKey]fqdnVal
}

func newFlowState(t Timeouts) *flowState {
	return &flowState{timeouts: t, ct: map[ctKey]*ctVal{}, frag: map[fragKey]uint64{}, fqdn: map[fqdnKey]fqdnVal{}}
}

type decision struct {
	reason      Reason
	rule        uint32
	epID        uint32
	peerID      uint32
	p           pkt
	dir         uint8
	eventWorthy bool
}

type frame []byte

// load mirrors bpf_skb_load_bytes: nil when the bytes are not all there.
func (f frame) load(off, n uint32) []byte {
	if uint64(off)+uint64(n) > uint64(len(f)) {
		return nil
	}
	return f[off : off+n]
}

func v4mapped(b []byte) (out [16]byte) {
	out[10], out[11] = 0xff, 0xff
	copy(out[12:], b)
	return out
}

func isICMP4Error(t uint8) bool { return t == 3 || t == 4 || t == 5 || t == 11 || t == 12 }
func isICMP6Error(t uint8) bool { return t >= 1 && t <= 4 }

const (
	parseOK = iota
	parseControl
	parseMalformed
	parseNotIP
)

func (f frame) l4Ports(off, end uint32, t *tuple, hasPorts *bool, tcpFlags, icmpType *uint8) bool {
	switch t.proto {
	case protoTCP:
		h := f.load(off, 14)
		if off+20 > end || h == nil {
			return false
		}
		t.sport, t.dport = be16(h[0:]), be16(h[2:])
		*tcpFlags = h[13]
		*hasPorts = true
	case protoUDP, protoSCTP:
		need := uint32(12)
		if t.proto == protoUDP {
			need = 8
		}
		h := f.load(off, 4)
		if off+need > end || h == nil {
			return false
		}
		t.sport, t.dport = be16(h[0:]), be16(h[2:])
		*hasPorts = true
	case protoICMP, protoICMPv6:
		h := f.load(off, 8)
		if off+8 > end || h == nil {
			return false
		}
		*icmpType = h[0]
		if (t.proto == protoICMP && h[0] == 8) || (t.proto == protoICMPv6 && h[0] == 128) {
			t.sport = be16(h[4:])
		} else if (t.proto == protoICMP && h[0] == 0) || (t.proto == protoICMPv6 && h[0] == 129) {
			t.dport = be16(h[4:])
		}
	}
	return true
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

func (f frame) parseInner(off, end uint32, v6 bool, in *tuple) bool {
	var l4 uint32
	if !v6 {
		h := f.load(off, 20)
		if off+20 > end || h == nil {
			return false
		}
		if h[0]>>4 != 4 || h[0]&0xf < 5 {
			return false
		}
		in.src, in.dst = v4mapped(h[12:16]), v4mapped(h[16:20])
		in.proto = h[9]
		l4 = off + uint32(h[0]&0xf)*4
	} else {
		h := f.load(off, 40)
		if off+40 > end || h == nil {
			return false
		}
		if h[0]>>4 != 6 {
			return false
		}
		copy(in.src[:], h[8:24])
		copy(in.dst[:], h[24:40])
		in.proto = h[6]
		l4 = off + 40
	}
	switch in.proto {
	case protoTCP, protoUDP, protoSCTP:
		p := f.load(l4, 4)
		if l4+8 > end || p == nil {
			return false
		}
		in.sport, in.dport = be16(p[0:]), be16(p[2:])
		return true
	case protoICMP, protoICMPv6:
		if l4+8 > end {
			return false
		}
		var hp bool
		var fl, ty uint8
		return f.l4Ports(l4, end, in, &hp, &fl, &ty)
	}
	return false
}

func isExt6(nh uint8) bool { return nh == 0 || nh == 43 || nh == 60 || nh == 51 || nh == 44 }

func (f frame) parse(p *pkt) int {
	var end, l4 uint32
	var icmpType uint8
	v6 := false
	off := uint32(ethHdrLen)
	e := f.load(12, 2)
	if e == nil {
		return parseMalformed
	}
	switch be16(e) {
	case 0x0806:
		return parseControl
	case 0x0800:
		h := f.load(off, 20)
		if h == nil || h[0]>>4 != 4 || h[0]&0xf < 5 {
			return parseMalformed
		}
		hlen := uint32(h[0]&0xf) * 4
		tot := uint32(be16(h[2:]))
		if tot < hlen || off+tot > uint32(len(f)) {
			return parseMalformed
		}
		end = off + tot
		p.t.src, p.t.dst = v4mapped(h[12:16]), v4mapped(h[16:20])
		p.t.proto = h[9]
		fo := be16(h[6:])
		p.fragID = uint32(be16(h[4:]))
		if fo&0x1fff != 0 {
			p.frag = 2
			return parseOK
		}
		if fo&0x2000 != 0 {
			p.frag = 1
		}
		l4 = off + hlen
	case 0x86dd:
		h := f.load(off, 40)
		if h == nil || h[0]>>4 != 6 {
			return parseMalformed
		}
		end = off + 40 + uint32(be16(h[4:]))
		if end > uint32(len(f)) {
			return parseMalformed
		}
		copy(p.t.src[:], h[8:24])
		copy(p.t.dst[:], h[24:40])
		v6 = true
		p.v6 = true
		nh := h[6]
		l4 = off + 40
		for i := 0; i < 4; i++ {
			if !isExt6(nh) {
				break
			}
			eh := f.load(l4, 8)
			if l4+8 > end || eh == nil {
				return parseMalformed
			}
			if nh == 44 {
				fo := be16(eh[2:])
				p.fragID = binary.BigEndian.Uint32(eh[4:])
				nh = eh[0]
				l4 += 8
				if fo&0xfff8 != 0 {
					p.t.proto = nh
					p.frag = 2
					return parseOK
				}
				if fo&1 != 0 {
					p.frag = 1
				}
				continue
			}
			if nh == 51 {
				l4 += (uint32(eh[1]) + 2) * 4
			} else {
				l4 += (uint32(eh[1]) + 1) * 8
			}
			nh = eh[0]
		}
		if isExt6(nh) {
			return parseMalformed
		}
		p.t.proto = nh
	default:
		return parseNotIP
	}
	if !f.l4Ports(l4, end, &p.t, &p.hasPorts, &p.tcpFlags, &icmpType) {
		return parseMalformed
	}
	if v6 && p.t.proto == protoICMPv6 {
		if (icmpType >= 133 && icmpType <= 137) || (icmpType >= 130 && icmpType <= 132) || icmpType == 143 {
			return parseControl
		}
		if isICMP6Error(icmpType) && f.parseInner(l4+8, end, true, &p.inner) {
			p.related = true
		}
	}
	if !v6 && p.t.proto == protoICMP && isICMP4Error(icmpType) && f.parseInner(l4+8, end, false, &p.inner) {
		p.related = true
	}
	return parseOK
}

// ctFill builds the canonical conntrack key of t: end a is the (address,
// port) that sorts first, addresses as big-endian numbers, then ports. It
// returns the tuple's orientation, so a packet and its reply share the key.
func ctFill(ifindex uint32, v6 bool, t *tuple) (ctKey, int) {
	k := ctKey{Ifindex: ifindex, V6: v6, Proto: t.proto}
	o := ctOrientTie
	switch c := bytes.Compare(t.src[:], t.dst[:]); {
	case c < 0, c == 0 && t.sport < t.dport:
		o = ctOrientA
	case c > 0, c == 0 && t.sport > t.dport:
		o = ctOrientB
	}
	if o == ctOrientB {
		k.A, k.PortA, k.B, k.PortB = t.dst, t.dport, t.src, t.sport
	} else {
		k.A, k.PortA, k.B, k.PortB = t.src, t.sport, t.dst, t.dport
	}
	return k, o
}

// ctClass is the class of a packet of orientation o seen in direction dir:
// a flow and its replies share one; a tie counts as orientation a.
func ctClass(dir uint8, o int) uint8 { return (dir ^ uint8(o)) & 1 }

func (fs *flowState) timeout(proto uint8, flags uint32) uint64 {
	switch {
	case flags&ctClosing != 0:
		return uint64(fs.timeouts.Closing)
	case proto == protoTCP:
		return uint64(fs.timeouts.TCP)
	}
	return uint64(fs.timeouts.Other)
}

// flowLive mirrors ct_flow_live: a LastSeen after now was written since
// the clock was read, so the flow is live.
func (fs *flowState) flowLive(f *ctFlow, proto uint8, now uint64) bool {
	if f.LastSeen == 0 {
		return false
	}
	return now < f.LastSeen || now-f.LastSeen <= fs.timeout(proto, f.Flags)
}

// match mirrors ct_match: the live flow of v that a packet of orientation o
// in direction dir belongs to, itself or as a reply; a tie matches either.
func (fs *flowState) match(v *ctVal, dir uint8, o int, proto uint8, now uint64) *ctFlow {
	if v == nil {
		return nil
	}
	c := ctClass(dir, o)
	if fs.flowLive(&v.Flow[c], proto, now) {
		return &v.Flow[c]
	}
	if o == ctOrientTie && fs.flowLive(&v.Flow[c^1], proto, now) {
		return &v.Flow[c^1]
	}
	return nil
}

func (tb *memTables) policyTrieLookup(ifindex uint32, dir, kind uint8, peer uint32, p *pkt, proto uint8) uint32 {
	k := policyKey{Prefixlen: policyFixedBits, Ifindex: ifindex, Dir: dir, Kind: kind, Proto: proto, Peer: peer,
		Port: [2]byte{byte(p.t.dport >> 8), byte(p.t.dport)}}
	if p.hasPorts {
		k.Prefixlen = policyAllBits
	}
	v, _ := tb.policy.lookup(k.data(), k.Prefixlen)
	return v
}

// policyLookup mirrors the program's policy_lookup: the trie's answer, from
// PolicyFixed and PolicyPort when fast (the endpoint's Lookups are valid).
func (tb *memTables) policyLookup(fast bool, ifindex uint32, dir, kind uint8, peer uint32, p *pkt, proto uint8) uint32 {
	if !fast {
		return tb.policyTrieLookup(ifindex, dir, kind, peer, p, proto)
	}
	fk := policyFixedKey{Ifindex: ifindex, Dir: dir, Kind: kind, Proto: proto, Peer: peer}
	fv, ok := tb.t.PolicyFixed[fk]
	if !ok {
		return 0
	}
	return tb.policyEntry(fk, fv, p, false)
}

// policyEntry mirrors the program's policy_entry: the answer of the
// PolicyFixed entry fv of key fk for p; all as for a folded entry
// (policy_probe), whose any-peer ranges are in the any peer's trie entries.
func (tb *memTables) policyEntry(fk policyFixedKey, fv policyFixedVal, p *pkt, all bool) uint32 {
	if !p.hasPorts {
		return fv.AllRule
	}
	port := [2]byte{byte(p.t.dport >> 8), byte(p.t.dport)}
	if fv.Flags&pfExact != 0 {
		if r, ok := tb.t.PolicyPort[policyPortKey{policyFixedKey: fk, Port: port}]; ok {
			return r
		}
	} else {
		for i := range pfInline {
			if i < int(fv.NPorts) && fv.Ports[i] == port {
				return fv.Rules[i]
			}
		}
	}
	if fv.Flags&pfRanges != 0 && (fv.Flags&pfBlocks == 0 || fv.Blocks>>(p.t.dport>>12)&1 != 0) {
		v := tb.policyTrieLookup(fk.Ifindex, fk.Dir, fk.Kind, fk.Peer, p, fk.Proto)
		if !all || fv.Flags&pfAllMerged == 0 {
			return v
		}
		w := fv.AllRule
		if fv.Flags&pfAllRanges != 0 {
			w = tb.policyTrieLookup(fk.Ifindex, fk.Dir, fk.Kind, 0, p, fk.Proto)
		}
		if isTierKind(fk.Kind) {
			return foldTierValues(v, w)
		}
		return firstRule(v, w)
	}
	return fv.AllRule
}

// foldedLookups mirrors policy_folded: the policy lookups of an endpoint
// whose entries are folded (fold.go), for the peer identity peer (0: none)
// with NetworkPolicy lookups np (0 when not enforced) and tier mask tm (0
// without tiers). fold takes each tier value; it returns the allowing
// NetworkPolicy rule, 0 for none.
func (tb *memTables) foldedLookups(ifindex uint32, dir uint8, peer uint32, p *pkt, np, tm uint32,
	cidrClass func() uint32, fold func(uint32)) uint32 {
	const id, cidr = eplPeerProto | eplPeerAny | eplAllProto | eplAllAny, eplCIDRProto | eplCIDRAny
	proto := p.t.proto
	if !isPortProto(proto) {
		proto = 0
	}
	rule := uint32(0)
	// probe is policy_probe: whether a pair holds the key merged with its
	// any-peer entry.
	probe := func(kind uint8, peer uint32, wantNP, wantTier bool) (merged bool) {
		nk := policyFixedKey{Ifindex: ifindex, Dir: dir, Kind: kind, Proto: proto, Peer: peer}
		tk := nk
		tk.Kind |= 2
		nv, okN := tb.t.PolicyFixed[nk]
		tv, okT := tb.t.PolicyFixed[tk]
		if !okN && !okT {
			return false
		}
		if wantNP {
			rule = tb.policyEntry(nk, nv, p, true)
		}
		if wantTier {
			fold(tb.policyEntry(tk, tv, p, true))
		}
		return (nv.Flags|tv.Flags)&pfAllMerged != 0
	}
	merged := false
	if peer != 0 && (np|tm)&(eplPeerProto|eplPeerAny) != 0 {
		merged = probe(kindIdentity, peer, np&id != 0, tm&id != 0)
	}
	npLeft := np
	if rule != 0 {
		npLeft = 0
	}
	if !merged && (npLeft|tm)&(eplAllProto|eplAllAny) != 0 {
		probe(kindIdentity, 0, rule == 0 && np&id != 0, tm&id != 0)
	}
	if rule == 0 && np&cidr != 0 || tm&cidr != 0 {
		if cls := cidrClass(); cls != 0 {
			probe(kindCIDR, cls, rule == 0 && np&cidr != 0, tm&cidr != 0)
		}
	}
	return rule
}

// decide judges one frame seen on the host veth ifindex in direction dir at
// monotonic time now, updating fs like the kernel updates its maps.
func decide(f frame, ifindex uint32, dir uint8, tb *memTables, fs *flowState, now uint64) decision {
	d := decision{dir: dir}
	if now == 0 {
		now = 1 // the kernel's clock is never 0, and LastSeen 0 means no flow
	}
	if tb == nil {
		d.reason = ReasonDenyNoEndpoint
		return d
	}
	ep, ok := tb.t.Endpoints[ifindex]
	if !ok {
		d.reason = ReasonDenyNoEndpoint
		return d
	}
	enforced := ep.Enforced[dir] != 0
	// tiers: the endpoint has ClusterNetworkPolicy entries in this
	// direction (only in tables with the fast index).
	tiers := ep.Lookups[dir&1]&(eplValid|eplTier) == eplValid|eplTier
	d.epID = ep.Identity
	p := &d.p

	switch f.parse(p) {
	case parseControl:
		d.reason = ReasonAllowControl
		return d
	case parseNotIP:
		d.reason = ReasonAllowOpen
		if enforced {
			d.reason = ReasonDenyL3
		}
		return d
	case parseMalformed:
		d.reason, d.eventWorthy = ReasonDenyMalformed, true
		return d
	}
	fk := fragKey{Ifindex: ifindex, Dir: dir, Proto: p.t.proto, ID: p.fragID, Src: p.t.src, Dst: p.t.dst}
	if p.frag == 2 {
		switch _, ok := fs.frag[fk]; {
		case !enforced && !tiers:
			d.reason = ReasonAllowOpen
		case ok:
			d.reason = ReasonAllowFragment
		default:
			d.reason = ReasonDenyFragment
		}
		return d
	}

	allowNoCT := func(r Reason) decision {
		if p.frag == 1 {
			fs.frag[fk] = now
		}
		d.reason = r
		return d
	}
	ck, orient := ctFill(ifindex, p.v6, &p.t)
	cv := fs.ct[ck]
	allow := func(r Reason) decision {
		nf := ctFlow{LastSeen: now, Rule: d.rule}
		if p.t.proto == protoTCP && p.tcpFlags&0x05 != 0 {
			nf.Flags = ctClosing
		}
		if cv == nil {
			cv = &ctVal{}
			fs.ct[ck] = cv
		}
		cv.Flow[ctClass(dir, orient)] = nf // the other class survives
		return allowNoCT(r)
	}

	if cf := fs.match(cv, dir, orient, p.t.proto, now); cf != nil {
		cf.LastSeen = now
		if p.t.proto == protoTCP && p.tcpFlags&0x05 != 0 {
			cf.Flags |= ctClosing
		}
		return allowNoCT(ReasonAllowConntrack)
	}
	if p.related {
		// The quote travelled the other way.
		ik, io := ctFill(ifindex, p.v6, &p.inner)
		if fs.match(fs.ct[ik], dir^1, io, p.inner.proto, now) != nil {
			return allowNoCT(ReasonAllowRelated)
		}
	}

	peerIP := p.t.dst
	if dir == uint8(0) { // ingress: the peer is the source
		peerIP = p.t.src
	}
	d.peerID, _ = tb.t.IPCache.lookup(peerIP) // the host hash, then the trie
	if !enforced && !tiers {
		// A new flow no policy decides is reported too, as the kernel
		// does (fedmesh.c allow_open).
		d.eventWorthy = true
		return allow(ReasonAllowOpen)
	}
	lookups := ep.Lookups[dir&1]
	fast := lookups&eplValid != 0
	if !fast {
		lookups = 0xff
	}
	var class uint32
	classDone := false
	cidrClass := func() uint32 {
		if !classDone {
			classDone = true
			ck := cidrKey{Prefixlen: cidrFixedBits + 128, Ifindex: ifindex, Dir: dir, IP: peerIP}
			class, _ = tb.cidr.lookup(ck.data(), ck.Prefixlen)
		}
		return class
	}
	d.eventWorthy = true
	// Tier stage: every tier lookup that can match, each value folded in;
	// the best Admin and Baseline candidates come out.
	var admin, base uint32
	fold := func(v uint32) {
		if a := v >> 16; a != 0 && (admin == 0 || a < admin) {
			admin = a
		}
		if b := v & 0xffff; b != 0 && (base == 0 || b < base) {
			base = b
		}
	}
	// Folded entries (fold.go): the program reads only the narrowest shapes
	// (policy_folded) when the fast array holds them all (EPF_FOLDED);
	// the twin whenever they are folded: both readings decide alike
	// (TestFoldedTablesDecideLikeEveryShape), and this one is the one the
	// differential tests then hold to the kernel's.
	folded := fast && tb.t.folded[ifindex]
	var foldedRule uint32
	if folded {
		var np, tm uint32
		if enforced {
			np = uint32(lookups)
		}
		if tiers {
			tm = tb.t.PolicyFixed[policyFixedKey{Ifindex: ifindex, Dir: dir, Kind: kindTierSummary}].AllRule
		}
		foldedRule = tb.foldedLookups(ifindex, dir, d.peerID, p, np, tm, cidrClass, fold)
	}
	if tiers {
		sv := tb.t.PolicyFixed[policyFixedKey{Ifindex: ifindex, Dir: dir, Kind: kindTierSummary}]
		tm := sv.AllRule
		if folded {
			tm &^= eplPeerProto | eplPeerAny | eplAllProto | eplAllAny | eplCIDRProto | eplCIDRAny
		}
		if d.peerID != 0 && tm&eplPeerProto != 0 {
			fold(tb.policyLookup(true, ifindex, dir, kindTierIdentity, d.peerID, p, p.t.proto))
		}
		if d.peerID != 0 && tm&eplPeerAny != 0 {
			fold(tb.policyLookup(true, ifindex, dir, kindTierIdentity, d.peerID, p, 0))
		}
		if tm&eplAllProto != 0 {
			fold(tb.policyLookup(true, ifindex, dir, kindTierIdentity, 0, p, p.t.proto))
		}
		if tm&eplAllAny != 0 {
			fold(tb.policyLookup(true, ifindex, dir, kindTierIdentity, 0, p, 0))
		}
		if tm&(eplCIDRProto|eplCIDRAny) != 0 && cidrClass() != 0 {
			if tm&eplCIDRProto != 0 {
				fold(tb.policyLookup(true, ifindex, dir, kindTierCIDR, class, p, p.t.proto))
			}
			if tm&eplCIDRAny != 0 {
				fold(tb.policyLookup(true, ifindex, dir, kindTierCIDR, class, p, 0))
			}
		}
		// Name rules: the slots whose answer for this address is live.
		if dir == uint8(policy.Egress) && tm&(eplFQDNProto|eplFQDNAny) != 0 {
			if fv, ok := fs.fqdn[fqdnKey{Ifindex: ifindex, IP: peerIP}]; ok {
				portProto := isPortProto(p.t.proto)
				for s := range uint32(maxNameSlots) {
					if fv.Mask>>s&1 == 0 || fv.Expires[s] <= now {
						continue
					}
					// Folded: a port protocol's entries hold the slot's
					// any-protocol ones (fqdn_slot).
					if tm&eplFQDNProto != 0 && sv.Rules[0]>>s&1 != 0 && (!folded || portProto) {
						fold(tb.policyLookup(true, ifindex, dir, kindTierFQDN, s, p, p.t.proto))
					}
					if tm&eplFQDNAny != 0 && sv.Rules[1]>>s&1 != 0 && (!folded || !portProto) {
						fold(tb.policyLookup(true, ifindex, dir, kindTierFQDN, s, p, 0))
					}
				}
			}
		}
	}
	if admin != 0 && admin&3 != tierPass {
		d.rule = admin >> 2
		if admin&3 == tierAccept {
			return allow(ReasonAllowPolicy)
		}
		d.reason = ReasonDenyPolicy
		return d
	}
	if !enforced {
		if base == 0 {
			return allow(ReasonAllowOpen) // reported, as an open direction
		}
		d.rule = base >> 2
		if base&3 == tierDeny {
			d.reason = ReasonDenyPolicy
			return d
		}
		return allow(ReasonAllowPolicy)
	}
	rule := foldedRule
	if folded {
		lookups = 0
	}
	if d.peerID != 0 && lookups&eplPeerProto != 0 {
		rule = tb.policyLookup(fast, ifindex, dir, kindIdentity, d.peerID, p, p.t.proto)
	}
	if rule == 0 && d.peerID != 0 && lookups&eplPeerAny != 0 {
		rule = tb.policyLookup(fast, ifindex, dir, kindIdentity, d.peerID, p, 0)
	}
	if rule == 0 && lookups&eplAllProto != 0 {
		rule = tb.policyLookup(fast, ifindex, dir, kindIdentity, 0, p, p.t.proto)
	}
	if rule == 0 && lookups&eplAllAny != 0 {
		rule = tb.policyLookup(fast, ifindex, dir, kindIdentity, 0, p, 0)
	}
	if rule == 0 && lookups&(eplCIDRProto|eplCIDRAny) != 0 && cidrClass() != 0 {
		if lookups&eplCIDRProto != 0 {
			rule = tb.policyLookup(fast, ifindex, dir, kindCIDR, class, p, p.t.proto)
		}
		if rule == 0 && lookups&eplCIDRAny != 0 {
			rule = tb.policyLookup(fast, ifindex, dir, kindCIDR, class, p, 0)
		}
	}
	if rule == 0 {
		d.reason = ReasonDenyPolicy
		return d
	}
	d.rule = rule
	return allow(ReasonAllowPolicy)
}

// Actions in the low two bits of a tier candidate (policy.Action values).
const (
	tierAccept = 1
	tierDeny   = 2
	tierPass   = 3
)
