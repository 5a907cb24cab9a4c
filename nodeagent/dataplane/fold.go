package dataplane

// Folding lookup shapes, so that a packet probes the policy index fewer
// times. The program looks a packet up under up to six shapes (peer and
// protocol, peer and any protocol, any peer and protocol, any peer and any
// protocol, CIDR class and protocol, CIDR class and any protocol), each
// answering a NetworkPolicy rule and a tier value. Render folds the entries
// of the wider shapes into the narrower ones, so that one probe answers for
// several:
//
//   - any protocol into each port protocol: a (peer, any) entry is merged
//     into (peer, TCP), (peer, UDP) and (peer, SCTP), created where
//     missing; likewise for any peer and for CIDR classes. A TCP, UDP or
//     SCTP packet then needs only the protocol shapes; any other packet
//     (ICMP, no rule names its protocol) only the any-protocol ones.
//   - any peer into each peer: the (any peer, P) entry of a port protocol P
//     is merged into every (peer, P) entry, which is then flagged
//     pfAllMerged, so that a packet whose peer has an entry makes one
//     identity probe, not two. Only the single ports and the all-ports
//     value are copied: the any peer's port ranges stay in its own trie
//     entries, which the program walks beside the peer's for a port in
//     their blocks (pfAllRanges), so the trie does not grow by a copy per
//     peer. A merge that would make the peer's entry costlier to read
//     (more single ports than its value holds inline) or the revision
//     larger than its budget is not made, and the flag stays clear.
//
// A folded entry answers what the lookups it replaces answered in the
// program's order: the NetworkPolicy rule of the first shape that allows
// (peer before any peer, protocol before any protocol), and for tiers the
// best candidate of each tier. The wider entries stay, and programs
// without EPF_FOLDED (an earlier version's, still attached while a new
// agent starts; endpoints past the fast array; tables not all in the
// array) read every shape in order and decide as before:
// TestFoldedTablesDecideLikeEveryShape holds both readings to the
// unfolded tables.

import (
	"cmp"
	"slices"
)

// portProtos are the protocols rules name ports of: the only ones with
// protocol entries, so the only ones folded into.
var portProtos = [...]uint8{protoTCP, protoUDP, protoSCTP}

// isPortProto reports whether proto is one of portProtos.
func isPortProto(proto uint8) bool { return slices.Contains(portProtos[:], proto) }

const (
	// pfAllMerged (PF_ALL_MERGED): the entry holds its any-peer entry of
	// the same protocol too.
	pfAllMerged = 0x8
	// epfFolded (EPF_FOLDED): the endpoint's entries are folded; the
	// program reads only the narrowest shapes (needs epfPFPairs).
	epfFolded = 0x10
	// pfAllRanges (PF_ALL_RANGES): with pfAllMerged, the any-peer entry
	// has port ranges, in Blocks too: a port there walks both tries.
	pfAllRanges = 0x10
	// minAllFoldEntries is the least budget of single-port entries that
	// merging any-peer entries into peers' may add to a revision's tables
	// (else an eighth of its entries).
	minAllFoldEntries = 1024
)

// portKey is one port prefix of a shape: the trie's key below the fixed
// part.
type portKey struct {
	bits uint8 // of the port, 0-16
	port uint16
}

// shape is one (endpoint, direction, kind, protocol, peer)'s port entries.
type shape map[portKey]uint32

// lpm is the trie's answer for the port prefix k within s: the value of
// the longest entry covering k, 0 for none.
func (s shape) lpm(k portKey) uint32 {
	for b := int(k.bits); b >= 0; b-- {
		p := k.port
		if b < 16 {
			p &= ^uint16(0xffff >> b)
		}
		if v, ok := s[portKey{uint8(b), p}]; ok {
			return v
		}
	}
	return 0
}

// singles counts s's single-port entries.
func (s shape) singles() int {
	n := 0
	for k := range s {
		if k.bits == 16 {
			n++
		}
	}
	return n
}

// mergeShapes is the shape answering, for every port, comb of first's and
// second's answers: each prefix of either gets comb of both longest
// matches, so the longest match in the result is right for every port.
func mergeShapes(first, second shape, comb func(a, b uint32) uint32) shape {
	return mergeSome(first, second, comb, nil)
}

// mergeSome is mergeShapes keeping only the prefixes keep takes (nil: all),
// told whether a prefix is second's.
func mergeSome(first, second shape, comb func(a, b uint32) uint32, keep func(k portKey, ofSecond bool) bool) shape {
	out := make(shape, len(first)+len(second))
	for i, s := range []shape{first, second} {
		for k := range s {
			if _, done := out[k]; done || keep != nil && !keep(k, i == 1) {
				continue
			}
			if v := comb(first.lpm(k), second.lpm(k)); v != 0 {
				out[k] = v
			}
		}
	}
	return out
}

// firstRule is the NetworkPolicy combination: the first shape's rule when
// it allows.
func firstRule(a, b uint32) uint32 {
	if a != 0 {
		return a
	}
	return b
}

// foldShapes folds t.Policy's identity and CIDR entries as the package doc
// above says, recording the pfAllMerged keys in t.allMerged and the
// endpoints whose entries are folded in t.folded. Call it after foldTiers,
// before indexPolicy.
func (t *Tables) foldShapes() {
	shapes := map[policyFixedKey]shape{}
	skip := map[uint32]bool{} // endpoints with a rule of another protocol
	for k, v := range t.Policy {
		if k.Kind > kindTierCIDR && k.Kind != kindTierFQDN {
			continue
		}
		if k.Proto != 0 && !isPortProto(k.Proto) {
			skip[k.Ifindex] = true
		}
		fk := policyFixedKey{Ifindex: k.Ifindex, Dir: k.Dir, Kind: k.Kind, Proto: k.Proto, Peer: k.Peer}
		s := shapes[fk]
		if s == nil {
			s = shape{}
			shapes[fk] = s
		}
		s[portKey{uint8(k.Prefixlen - policyFixedBits), uint16(k.Port[0])<<8 | uint16(k.Port[1])}] = v
	}
	comb := func(kind uint8) func(a, b uint32) uint32 {
		if isTierKind(kind) {
			return foldTierValues
		}
		return firstRule
	}
	changed := map[policyFixedKey]shape{}
	// Any protocol into each port protocol (sources are never targets).
	for fk, s := range shapes {
		if fk.Proto != 0 || skip[fk.Ifindex] {
			continue
		}
		for _, p := range portProtos {
			tk := fk
			tk.Proto = p
			changed[tk] = mergeShapes(shapes[tk], s, comb(fk.Kind))
		}
	}
	for fk, s := range changed {
		shapes[fk] = s
		t.putShape(fk, s)
	}
	// Any peer into each peer, per port protocol, both layers of a key
	// together: the flag is the pair's. Not the any-protocol shapes: a
	// program of an earlier version reads a peer's any-protocol entry
	// before the any peer's protocol entry, so merging the any peer's
	// any-protocol entry into it would make that program report the
	// wrong NetworkPolicy rule; a packet of another protocol (ICMP) probes
	// both. Only the single ports and the all-ports value are
	// merged into the peer's entry; the any-peer shape's port ranges stay
	// in its own trie entries, which the program walks beside the peer's
	// when the port is in one of their blocks (pfAllRanges): copied into
	// every peer's, they would multiply the trie.
	//
	// The budget makes the outcome depend on the order: keys are taken in
	// sorted order, so that equal revisions render equal tables.
	t.allMerged = map[policyFixedKey]allMerge{}
	budget := max(minAllFoldEntries, len(t.Policy)/8)
	var peers []policyFixedKey
	seen := map[policyFixedKey]bool{}
	for fk := range shapes {
		if fk.Peer == 0 || fk.Proto == 0 || fk.Kind != kindIdentity && fk.Kind != kindTierIdentity || skip[fk.Ifindex] {
			continue
		}
		fk.Kind = kindIdentity
		if !seen[fk] {
			seen[fk] = true
			peers = append(peers, fk)
		}
	}
	slices.SortFunc(peers, func(a, b policyFixedKey) int {
		return cmp.Or(cmp.Compare(a.Ifindex, b.Ifindex), cmp.Compare(a.Dir, b.Dir), cmp.Compare(a.Proto, b.Proto),
			cmp.Compare(a.Peer, b.Peer))
	})
	for _, nk := range peers {
		tk := nk
		tk.Kind = kindTierIdentity
		an, at := nk, tk
		an.Peer, at.Peer = 0, 0
		if len(shapes[an])+len(shapes[at]) == 0 {
			continue
		}
		sn := mergeSingles(shapes[nk], shapes[an], firstRule)
		st := mergeSingles(shapes[tk], shapes[at], foldTierValues)
		if costlier(shapes[nk], shapes[an], sn) || costlier(shapes[tk], shapes[at], st) {
			continue
		}
		// The budget: at most an eighth more entries than the revision has
		// (minAllFoldEntries at least).
		extra := len(sn) - shapes[nk].singles() + len(st) - shapes[tk].singles()
		if extra > budget {
			continue
		}
		budget -= extra
		t.putShape(nk, sn)
		t.putShape(tk, st)
		t.allMerged[nk] = allMerge{rule: firstRule(shapes[nk][portKey{}], shapes[an][portKey{}]), blocks: shapes[an].blocks()}
		t.allMerged[tk] = allMerge{rule: foldTierValues(shapes[tk][portKey{}], shapes[at][portKey{}]), blocks: shapes[at].blocks()}
	}
	t.folded = map[uint32]bool{}
	for idx := range t.Endpoints {
		if !skip[idx] {
			t.folded[idx] = true
		}
	}
}

// allMerge is what a pfAllMerged entry takes from its any-peer entry
// besides the single ports: its all-ports value folded with the peer's,
// and the port blocks of its ranges.
type allMerge struct {
	rule   uint32
	blocks uint16
}

// mergeSingles are the single-port entries of the merge of a peer's shape s
// and its any-peer shape a: each single port of s, and of a outside the
// port blocks of a's ranges (a port there walks a's trie entries), with
// comb of both shapes' answers for it.
func mergeSingles(s, a shape, comb func(a, b uint32) uint32) shape {
	walked := a.blocks()
	return mergeSome(s, a, comb, func(k portKey, ofA bool) bool {
		return k.bits == 16 && (!ofA || walked>>(k.port>>12)&1 == 0)
	})
}

// blocks are the port blocks (pfBlocks: block i is ports i*4096 to
// i*4096+4095) the port prefix k covers.
func (k portKey) blocks() uint16 {
	var b uint16
	last := uint32(k.port) + 1<<(16-k.bits) - 1
	for i := uint32(k.port) >> 12; i <= last>>12; i++ {
		b |= 1 << i
	}
	return b
}

// blocks are the port blocks s's ranges (neither all ports nor one) touch.
func (s shape) blocks() uint16 {
	var b uint16
	for k := range s {
		if k.bits != 0 && k.bits != 16 {
			b |= k.blocks()
		}
	}
	return b
}

// putShape writes s's entries into t.Policy under fk.
func (t *Tables) putShape(fk policyFixedKey, s shape) {
	for pk, v := range s {
		t.Policy[policyKey{Prefixlen: policyFixedBits + uint32(pk.bits), Ifindex: fk.Ifindex, Dir: fk.Dir,
			Kind: fk.Kind, Proto: fk.Proto, Peer: fk.Peer, Port: [2]byte{byte(pk.port >> 8), byte(pk.port)}}] = v
	}
}

// costlier reports whether the merged single ports m of a peer's shape s
// and its any-peer shape a read slower than both did: they no longer fit
// the value inline while each shape's did (the port hash lookup costs more
// than the probe the merge saves).
func costlier(s, a, m shape) bool {
	return len(m) > pfInline && s.singles() <= pfInline && a.singles() <= pfInline
}
