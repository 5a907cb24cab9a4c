package dataplane

import (
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"sort"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// Map keys and values, laid out exactly as in bpf/fedmesh.c (no implicit
// padding, little-endian host fields, network-order ports and addresses).

const (
	kindIdentity = 0
	kindCIDR     = 1
	// Tier entries (ClusterNetworkPolicy rules) live in the same tables
	// under their own kinds, so programs of a version before tiers never
	// read them (they keep enforcing the NetworkPolicy layer as before).
	// Their value packs two candidates: the Admin tier's in the high 16
	// bits, the Baseline tier's in the low 16, each RuleID<<2 | action
	// (policy.Action), 0 for none; the lowest value of a half is the
	// highest precedence.
	kindTierIdentity = 2
	kindTierCIDR     = 3
	// kindTierSummary is a PolicyFixed entry per endpoint and direction
	// with tier entries (eplTier): AllRule holds the epl* bits of the tier
	// lookups that can match.
	kindTierSummary = 4
	// kindTierFQDN entries are domainNames rules (policy.NameRule): peer
	// is the endpoint's name slot (fqdn.go), the value a tier value like
	// kindTierIdentity's. Programs before domainNames never read them.
	kindTierFQDN = 5

	policyFixedBits = 96
	policyAllBits   = 112
	cidrFixedBits   = 64

	// maxCountedRules is the size of the per-revision rule counter map:
	// past that many distinct rules in one revision, the rules with the
	// highest IDs are enforced but not counted.
	maxCountedRules = 65536
)

type ipcacheKey struct {
	Prefixlen uint32
	IP        [16]byte
}

type policyKey struct {
	Prefixlen uint32
	Ifindex   uint32
	Dir       uint8
	Kind      uint8
	Proto     uint8
	Pad       uint8
	Peer      uint32
	Port      [2]byte // big endian
	Pad2      uint16
}

type cidrKey struct {
	Prefixlen uint32
	Ifindex   uint32
	Dir       uint8
	Pad       [3]uint8
	IP        [16]byte
}

type endpointVal struct {
	Identity uint32
	Enforced [2]uint8 // by policy.Direction
	Lookups  [2]uint8 // epl* by policy.Direction
	// Stats is the endpoint's counter index in the kernel (fm_ep_stats),
	// given by the eBPF dataplane after Render; 0 (no index) elsewhere.
	Stats uint32
}

// endpointFastVal is struct endpoint_fast: an endpoint in fm_endpoints_fast,
// the array the programs read before the endpoints hash, with its tier
// summary inline.
type endpointFastVal struct {
	Ep             endpointVal
	Flags          uint32    // epfValid
	TierMask       [2]uint32 // by policy.Direction: the kindTierSummary entry's AllRule
	FQDNProtoSlots [2]uint16 // by policy.Direction: its Rules[0]
	FQDNAnySlots   [2]uint16 // by policy.Direction: its Rules[1]
}

const (
	// epFastEntries is EP_FAST_ENTRIES: endpoints with a larger ifindex are
	// found in the hash only.
	epFastEntries = 65536
	epfValid      = 0x1
	epfIPCArray   = 0x4 // EPF_IPC_ARRAY: the revision's host ipcache entries are all in fm_ipcache_hostarr
	// epfPFPairs (EPF_PF_PAIRS): the revision's PolicyFixed is all in
	// fm_policy_fixarr_v2. EPF_PF_ARRAY (0x2) stays clear: programs before
	// the pairs would read it as "all in fm_policy_fixarr", which this
	// version no longer writes, and use the hash instead.
	epfPFPairs = 0x8
	// epfIPCHostsOnly (EPF_IPC_HOSTS_ONLY): the revision's ipcache has no
	// prefix shorter than a host, so the program skips fm_ipcache's trie
	// for an address the host entries lack. Older programs ignore it.
	epfIPCHostsOnly = 0x20
)

// fastEndpoints is what fm_endpoints_fast holds for t: every endpoint with
// an ifindex below epFastEntries, with its tier summaries.
func (t *Tables) fastEndpoints() map[uint32]endpointFastVal {
	if t.fast != nil {
		return t.fast
	}
	m := make(map[uint32]endpointFastVal, len(t.Endpoints))
	for idx, ep := range t.Endpoints {
		if idx >= epFastEntries {
			continue
		}
		v := endpointFastVal{Ep: ep, Flags: epfValid}
		if t.pfaComplete {
			v.Flags |= epfPFPairs
			if t.folded[idx] {
				v.Flags |= epfFolded
			}
		}
		if t.ipcComplete {
			v.Flags |= epfIPCArray
		}
		if t.IPCache.nNets == 0 {
			v.Flags |= epfIPCHostsOnly
		}
		for dir := range uint8(2) {
			sv, ok := t.PolicyFixed[policyFixedKey{Ifindex: idx, Dir: dir, Kind: kindTierSummary}]
			if !ok {
				continue
			}
			v.TierMask[dir] = sv.AllRule
			v.FQDNProtoSlots[dir], v.FQDNAnySlots[dir] = uint16(sv.Rules[0]), uint16(sv.Rules[1])
		}
		m[idx] = v
	}
	t.fast = m
	return m
}

// endpointVal.Lookups: which policy lookups can match for an endpoint and
// direction (bpf/fedmesh.c EPL_*). The program skips the others.
const (
	eplPeerProto = 0x01 // identity rules for a peer, one protocol
	eplPeerAny   = 0x02 // identity rules for a peer, any protocol
	eplAllProto  = 0x04 // rules for any identity, one protocol
	eplAllAny    = 0x08 // rules for any identity, any protocol
	eplCIDRProto = 0x10 // CIDR rules, one protocol
	eplCIDRAny   = 0x20 // CIDR rules, any protocol
	eplTier      = 0x40 // tier entries exist: read the kindTierSummary entry
	eplValid     = 0x80 // PolicyFixed and PolicyPort are filled
	// Bits of the kindTierSummary mask only (wider than Lookups): name
	// rules exist, one protocol / any protocol. Older programs ignore them.
	eplFQDNProto = 0x100
	eplFQDNAny   = 0x200
)

// policyFixedKey is a policyKey without its prefix length and port: one
// (endpoint, direction, kind, protocol, peer).
type policyFixedKey struct {
	Ifindex uint32
	Dir     uint8
	Kind    uint8
	Proto   uint8
	Pad     uint8
	Peer    uint32
}

// policyFixedVal says which port entries a policyFixedKey has.
type policyFixedVal struct {
	AllRule uint32 // rule of the all-ports entry, 0 if none
	Flags   uint8  // pf*
	NPorts  uint8  // Ports[:NPorts] are single-port entries (unless pfExact)
	Ports   [pfInline][2]byte
	Blocks  uint16 // with pfBlocks: bit i set when a range entry covers a port of block i (ports i*4096...)
	Rules   [pfInline]uint32
}

const (
	pfExact  = 0x1 // single-port entries, in PolicyPort
	pfRanges = 0x2 // range entries shorter than a port and longer than all ports
	// pfBlocks: Blocks is filled, so a port in a block no range entry
	// touches skips the trie walk. Older agents leave it (and Blocks, then
	// padding) zero: their tables are walked as before.
	pfBlocks = 0x4
	// pfInline single-port entries or fewer live in the policyFixedVal: one
	// hash lookup answers most packets.
	pfInline = 4
)

// policyPortKey is a single-port policy entry (a /112 policyKey).
type policyPortKey struct {
	policyFixedKey
	Port [2]byte // big endian
	Pad2 uint16
}

func (k policyPortKey) policyKey() policyKey {
	return policyKey{Prefixlen: policyAllBits, Ifindex: k.Ifindex, Dir: k.Dir, Kind: k.Kind, Proto: k.Proto,
		Peer: k.Peer, Port: k.Port}
}

// Tables is what one revision puts into the per-revision maps: a plain,
// deterministic value that both implementations load as it is.
type Tables struct {
	Revision uint64
	// IPCache is the revision's, shared: its host entries fill
	// fm_ipcache_host, shorter prefixes fm_ipcache.
	IPCache IPCache
	Policy  map[policyKey]uint32 // -> RuleID
	// PolicyFixed and PolicyPort index Policy so that most lookups are
	// hash hits or misses instead of trie walks; Policy keeps every entry.
	PolicyFixed map[policyFixedKey]policyFixedVal
	PolicyPort  map[policyPortKey]uint32 // -> RuleID
	CIDR        map[cidrKey]uint32       // -> CIDR class (0: no rule holds)
	Endpoints   map[uint32]endpointVal
	// NameSlots are the name-rule slots of each endpoint with egress
	// domainNames rules, by ifindex (fqdn.go).
	NameSlots map[uint32][]nameSlot

	fast map[uint32]endpointFastVal // fastEndpoints, derived once Endpoints are final
	// pfaComplete: fm_policy_fixarr_v2 holds every PolicyFixed entry (set by
	// the eBPF dataplane before it derives fast).
	pfaComplete bool
	// ipcComplete: fm_ipcache_hostarr holds every host entry of IPCache.
	ipcComplete bool
	// cidrComplete: fm_cidr_arr holds every CIDR entry.
	cidrComplete bool
	// allMerged are the PolicyFixed keys flagged pfAllMerged, folded the
	// endpoints whose entries foldShapes folded (fold.go).
	allMerged map[policyFixedKey]allMerge
	folded    map[uint32]bool
}

// cidrProbes is CIDR_PROBES: an endpoint direction with more distinct
// prefix lengths is read from the trie.
const cidrProbes = 7

// cidrLensVal is struct cidr_lens.
type cidrLensVal struct {
	N    [2]uint8             // by policy.Direction; 0: read the trie
	Bits [2][cidrProbes]uint8 // longest first
}

// arrayCIDR is CIDR keyed as fm_cidr_arr keys it.
func arrayCIDR(c map[cidrKey]uint32) map[cidrArrKey]uint32 {
	m := make(map[cidrArrKey]uint32, len(c))
	for k, cls := range c {
		m[cidrArrKey{Ifindex: k.Ifindex, Dir: k.Dir, Bits: uint8(k.Prefixlen - cidrFixedBits), IP: k.IP}] = cls
	}
	return m
}

// cidrLens is what fm_cidr_lens holds for t: per endpoint below
// epFastEntries and direction, its CIDR entries' distinct prefix lengths,
// when fm_cidr_arr holds them all and there are at most cidrProbes.
func (t *Tables) cidrLens() map[uint32]cidrLensVal {
	if !t.cidrComplete {
		return nil
	}
	// Per endpoint and direction, a bitset of the lengths 0-128.
	lens := map[uint32]*[2][3]uint64{}
	for k := range t.CIDR {
		if k.Ifindex >= epFastEntries || k.Dir > 1 {
			continue
		}
		l := lens[k.Ifindex]
		if l == nil {
			l = new([2][3]uint64)
			lens[k.Ifindex] = l
		}
		b := k.Prefixlen - cidrFixedBits
		l[k.Dir][b/64] |= 1 << (b % 64)
	}
	m := make(map[uint32]cidrLensVal, len(lens))
	for idx, l := range lens {
		var v cidrLensVal
		for dir, set := range l {
			if bits.OnesCount64(set[0])+bits.OnesCount64(set[1])+bits.OnesCount64(set[2]) > cidrProbes {
				continue
			}
			for b := 128; b >= 0; b-- {
				if set[b/64]>>(b%64)&1 != 0 {
					v.Bits[dir][v.N[dir]] = uint8(b)
					v.N[dir]++
				}
			}
		}
		if v.N != [2]uint8{} {
			m[idx] = v
		}
	}
	return m
}

func mapped(a netip.Addr) [16]byte { return a.Unmap().As16() }

// prefixKey gives the address bytes and the prefix length of p in the
// IPv4-mapped IPv6 space the programs use.
func prefixKey(p netip.Prefix) ([16]byte, uint32) {
	p = p.Masked()
	bits := uint32(p.Bits())
	if p.Addr().Is4() {
		bits += 96
	}
	return mapped(p.Addr()), bits
}

// Render computes the tables for rev with the attached endpoints (ID ->
// host-side ifindex). It is pure, and its work is proportional to the
// rules of the attached endpoints: the ipcache is shared, not copied.
func Render(rev *Revision, attached map[string]uint32) (*Tables, error) {
	return render(rev, attached, nil)
}

// render is Render keeping the name slots of prev (by ifindex) where the
// pattern sets remain.
func render(rev *Revision, attached map[string]uint32, prev map[uint32][]nameSlot) (*Tables, error) {
	return renderFolded(rev, attached, prev, true)
}

// renderFolded is render, folding the lookup shapes (fold.go) when fold is
// set: tests compare both.
func renderFolded(rev *Revision, attached map[string]uint32, prev map[uint32][]nameSlot, fold bool) (*Tables, error) {
	t := &Tables{
		NameSlots: map[uint32][]nameSlot{},
		IPCache:   rev.IPCache,
		Policy:    map[policyKey]uint32{},
		CIDR:      map[cidrKey]uint32{},
		Endpoints: make(map[uint32]endpointVal, len(attached)),
		Revision:  rev.Number,
	}
	tier := map[policyKey]uint32{}
	ids := make([]string, 0, len(attached))
	for id := range attached {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ifindex := attached[id]
		rules := rev.Rules[id]
		t.Endpoints[ifindex] = endpointVal{Identity: rules.Identity,
			Enforced: [2]uint8{b2u(rules.Ingress.Enforced), b2u(rules.Egress.Enforced)}}
		for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
			dr := rules.Ingress
			if dir == policy.Egress {
				dr = rules.Egress
			}
			// NetworkPolicy rules count only when the layer is enforced
			// (the compiler emits none otherwise); tier rules always.
			for _, r := range dr.Identities {
				if r.Tier == policy.TierNetworkPolicy {
					if !dr.Enforced {
						continue
					}
					if err := t.addPolicy(ifindex, dir, kindIdentity, r.Peer, r.Proto, r.Ports, r.Rule); err != nil {
						return nil, fmt.Errorf("render endpoint %s: %w", id, err)
					}
					continue
				}
				v, err := tierValue(r.Tier, r.Action, r.Rule)
				if err != nil {
					return nil, fmt.Errorf("render endpoint %s: %w", id, err)
				}
				if err := t.addTier(tier, ifindex, dir, kindTierIdentity, r.Peer, r.Proto, r.Ports, v); err != nil {
					return nil, fmt.Errorf("render endpoint %s: %w", id, err)
				}
			}
			if err := t.addCIDRs(tier, ifindex, dir, dr.Enforced, dr.CIDRs); err != nil {
				return nil, fmt.Errorf("render endpoint %s: %w", id, err)
			}
		}
		if len(rules.Ingress.Names) > 0 {
			return nil, fmt.Errorf("render endpoint %s: domainNames rules on ingress", id)
		}
		if err := t.addNames(tier, ifindex, rules.Egress.Names, prev[ifindex]); err != nil {
			return nil, fmt.Errorf("render endpoint %s: %w", id, err)
		}
	}
	t.foldTiers(tier)
	if fold {
		t.foldShapes()
	}
	t.indexPolicy()
	return t, nil
}

// indexPolicy derives PolicyFixed, PolicyPort and the endpoints' Lookups
// from Policy.
func (t *Tables) indexPolicy() {
	t.PolicyFixed = map[policyFixedKey]policyFixedVal{}
	t.PolicyPort = map[policyPortKey]uint32{}
	exact := map[policyFixedKey][]policyPortKey{}
	lookups := map[uint32]*[2]uint8{}
	for idx, ep := range t.Endpoints {
		ep.Lookups = [2]uint8{eplValid, eplValid}
		t.Endpoints[idx] = ep
		lookups[idx] = &ep.Lookups
	}
	tierMasks := map[policyFixedKey]uint32{}
	// nameSlots: per summary key, the name slots with entries of one
	// protocol ([0]) and of any protocol ([1]).
	nameSlots := map[policyFixedKey]*[2]uint32{}
	for k, rule := range t.Policy {
		fk := policyFixedKey{Ifindex: k.Ifindex, Dir: k.Dir, Kind: k.Kind, Proto: k.Proto, Peer: k.Peer}
		fv := t.PolicyFixed[fk]
		switch k.Prefixlen {
		case policyAllBits:
			exact[fk] = append(exact[fk], policyPortKey{policyFixedKey: fk, Port: k.Port})
		case policyFixedBits:
			fv.AllRule = rule
		default:
			fv.Flags |= pfRanges | pfBlocks
			fv.Blocks |= portKey{uint8(k.Prefixlen - policyFixedBits), uint16(k.Port[0])<<8 | uint16(k.Port[1])}.blocks()
		}
		t.PolicyFixed[fk] = fv
		var bit uint32
		switch {
		case k.Kind == kindTierFQDN && k.Proto != 0:
			bit = eplFQDNProto
		case k.Kind == kindTierFQDN:
			bit = eplFQDNAny
		case (k.Kind == kindCIDR || k.Kind == kindTierCIDR) && k.Proto != 0:
			bit = eplCIDRProto
		case k.Kind == kindCIDR || k.Kind == kindTierCIDR:
			bit = eplCIDRAny
		case k.Peer != 0 && k.Proto != 0:
			bit = eplPeerProto
		case k.Peer != 0:
			bit = eplPeerAny
		case k.Proto != 0:
			bit = eplAllProto
		default:
			bit = eplAllAny
		}
		l := lookups[k.Ifindex]
		if l == nil {
			continue
		}
		if isTierKind(k.Kind) {
			l[k.Dir&1] |= eplTier
			sk := policyFixedKey{Ifindex: k.Ifindex, Dir: k.Dir, Kind: kindTierSummary}
			tierMasks[sk] |= bit
			if k.Kind == kindTierFQDN {
				if nameSlots[sk] == nil {
					nameSlots[sk] = &[2]uint32{}
				}
				nameSlots[sk][b2u(k.Proto == 0)] |= 1 << k.Peer
			}
			continue
		}
		l[k.Dir&1] |= uint8(bit)
	}
	for fk, mask := range tierMasks {
		v := policyFixedVal{AllRule: mask}
		// The summary has no ports: Rules carries the name slots (older
		// programs read only AllRule), so a live slot costs only the
		// lookups it has entries for.
		if ns := nameSlots[fk]; ns != nil {
			v.Rules[0], v.Rules[1] = ns[0], ns[1]
		}
		t.PolicyFixed[fk] = v
	}
	// Merged entries (fold.go) exist in both layers, even empty: the flags
	// are the pair's.
	for fk, m := range t.allMerged {
		fv := t.PolicyFixed[fk]
		fv.Flags |= pfAllMerged
		fv.AllRule = m.rule
		if m.blocks != 0 {
			fv.Flags |= pfRanges | pfBlocks | pfAllRanges
			fv.Blocks |= m.blocks
		}
		t.PolicyFixed[fk] = fv
	}
	for fk, ports := range exact {
		fv := t.PolicyFixed[fk]
		if len(ports) > pfInline {
			fv.Flags |= pfExact
			for _, pk := range ports {
				t.PolicyPort[pk] = t.Policy[pk.policyKey()]
			}
		} else {
			// Sorted so that equal revisions render equal values.
			slices.SortFunc(ports, func(a, b policyPortKey) int { return slices.Compare(a.Port[:], b.Port[:]) })
			fv.NPorts = uint8(len(ports))
			for i, pk := range ports {
				fv.Ports[i], fv.Rules[i] = pk.Port, t.Policy[pk.policyKey()]
			}
		}
		t.PolicyFixed[fk] = fv
	}
	for idx, l := range lookups {
		ep := t.Endpoints[idx]
		ep.Lookups = *l
		t.Endpoints[idx] = ep
	}
}

// countedRules are the rule IDs the kernel counts for t, ascending.
func (t *Tables) countedRules() []uint32 {
	seen := map[uint32]bool{}
	var ids []uint32
	add := func(r uint32) {
		if r != 0 && !seen[r] {
			seen[r] = true
			ids = append(ids, r)
		}
	}
	for k, r := range t.Policy {
		if isTierKind(k.Kind) {
			add(r >> 18)           // Admin candidate
			add((r & 0xffff) >> 2) // Baseline candidate
			continue
		}
		add(r)
	}
	slices.Sort(ids)
	if len(ids) > maxCountedRules {
		ids = ids[:maxCountedRules]
	}
	return ids
}

func isTierKind(kind uint8) bool {
	return kind == kindTierIdentity || kind == kindTierCIDR || kind == kindTierFQDN
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

func (t *Tables) addPolicy(ifindex uint32, dir policy.Direction, kind uint8, peer uint32, proto uint8,
	ports policy.PortRange, rule policy.RuleID) error {
	if ports.First > ports.Last {
		return fmt.Errorf("rule %d: port range %d-%d is empty", rule, ports.First, ports.Last)
	}
	for _, pp := range portPrefixes(ports) {
		k := policyKey{Prefixlen: policyFixedBits + uint32(pp.bits), Ifindex: ifindex, Dir: uint8(dir),
			Kind: kind, Proto: proto, Peer: peer, Port: [2]byte{byte(pp.value >> 8), byte(pp.value)}}
		// Several rules may cover the same key: the lowest rule ID names it,
		// so counters and events are deterministic.
		if old, ok := t.Policy[k]; !ok || uint32(rule) < old {
			t.Policy[k] = uint32(rule)
		}
	}
	return nil
}

type portPrefix struct {
	value uint16
	bits  uint8 // leading bits of value that matter
}

// portPrefixes covers [First, Last] with the fewest aligned prefixes.
func portPrefixes(r policy.PortRange) []portPrefix {
	var out []portPrefix
	lo, hi := uint32(r.First), uint32(r.Last)
	for lo <= hi {
		size := uint32(1)
		bits := uint8(16)
		// Grow the block while it stays aligned at lo and inside the range.
		for bits > 0 && lo&(size*2-1) == 0 && lo+size*2-1 <= hi {
			size *= 2
			bits--
		}
		out = append(out, portPrefix{value: uint16(lo), bits: bits})
		lo += size
	}
	return out
}

// v4MappedSpace is where IPv4 addresses live in the programs' address space.
var v4MappedSpace = netip.MustParsePrefix("::ffff:0:0/96")

type mprefix struct {
	ip   [16]byte
	bits uint32
}

func toM(p netip.Prefix) mprefix {
	ip, bits := prefixKey(p)
	return mprefix{ip, bits}
}

// contains reports whether a contains b (a is no longer than b and agrees
// on a's bits).
func (a mprefix) contains(b mprefix) bool {
	if a.bits > b.bits {
		return false
	}
	return maskedEqual(a.ip[:], b.ip[:], int(a.bits))
}

func maskedEqual(a, b []byte, bits int) bool {
	for i := 0; bits > 0; i++ {
		if bits >= 8 {
			if a[i] != b[i] {
				return false
			}
			bits -= 8
			continue
		}
		m := byte(0xff << (8 - bits))
		return a[i]&m == b[i]&m
	}
	return true
}

type cidrRule struct {
	prefix  mprefix
	excepts []mprefix
	r       policy.CIDRRule
}

// addCIDRs adds the CIDR rules of one endpoint and direction: the
// NetworkPolicy ones when enforced, the tier ones always. Both share one
// set of classes (one trie lookup per packet); a class keys kindCIDR
// entries for its NetworkPolicy rules and kindTierCIDR ones (into tier,
// folded later) for its tier rules.
func (t *Tables) addCIDRs(tier map[policyKey]uint32, ifindex uint32, dir policy.Direction, enforced bool, all []policy.CIDRRule) error {
	var rules []policy.CIDRRule
	for _, r := range all {
		if r.Tier != policy.TierNetworkPolicy || enforced {
			rules = append(rules, r)
		}
	}
	if len(rules) == 0 {
		return nil
	}
	v4space := toM(v4MappedSpace)
	var crs []cidrRule
	points := map[mprefix]bool{}
	for _, r := range rules {
		if !r.Prefix.IsValid() {
			return fmt.Errorf("rule %d: invalid CIDR", r.Rule)
		}
		cr := cidrRule{prefix: toM(r.Prefix), r: r}
		for _, e := range r.Except {
			if !e.IsValid() || e.Addr().Is4() != r.Prefix.Addr().Is4() {
				continue // an except of the other family carves nothing
			}
			cr.excepts = append(cr.excepts, toM(e))
		}
		// ::/0 and friends must not reach IPv4 peers through the mapping.
		if r.Prefix.Addr().Is6() && cr.prefix.contains(v4space) {
			cr.excepts = append(cr.excepts, v4space)
		}
		crs = append(crs, cr)
		points[cr.prefix] = true
		for _, e := range cr.excepts {
			points[e] = true
		}
	}
	// Each distinct prefix P gets the set of rules holding for addresses whose
	// longest match is P: rules whose prefix contains P and none of whose
	// excepts does. Equal sets share a class.
	sorted := make([]mprefix, 0, len(points))
	for p := range points {
		sorted = append(sorted, p)
	}
	slices.SortFunc(sorted, func(a, b mprefix) int {
		if c := slices.Compare(a.ip[:], b.ip[:]); c != 0 {
			return c
		}
		return int(a.bits) - int(b.bits)
	})
	classes := map[string]uint32{}
	for _, p := range sorted {
		var set []int
		for i, cr := range crs {
			if !cr.prefix.contains(p) {
				continue
			}
			excluded := false
			for _, e := range cr.excepts {
				if e.contains(p) {
					excluded = true
					break
				}
			}
			if !excluded {
				set = append(set, i)
			}
		}
		class := uint32(0)
		if len(set) > 0 {
			sig := fmt.Sprint(set)
			c, ok := classes[sig]
			if !ok {
				c = uint32(len(classes) + 1)
				classes[sig] = c
				for _, i := range set {
					r := crs[i].r
					if r.Tier == policy.TierNetworkPolicy {
						if err := t.addPolicy(ifindex, dir, kindCIDR, c, r.Proto, r.Ports, r.Rule); err != nil {
							return err
						}
						continue
					}
					v, err := tierValue(r.Tier, r.Action, r.Rule)
					if err != nil {
						return err
					}
					if err := t.addTier(tier, ifindex, dir, kindTierCIDR, c, r.Proto, r.Ports, v); err != nil {
						return err
					}
				}
			}
			class = c
		}
		t.CIDR[cidrKey{Prefixlen: cidrFixedBits + p.bits, Ifindex: ifindex, Dir: uint8(dir), IP: p.ip}] = class
	}
	return nil
}

// addNames adds an endpoint's egress domainNames rules under its name
// slots.
func (t *Tables) addNames(tier map[policyKey]uint32, ifindex uint32, rules []policy.NameRule, prev []nameSlot) error {
	if len(rules) == 0 {
		return nil
	}
	slots, bySet, err := assignNameSlots(rules, prev)
	if err != nil {
		return err
	}
	t.NameSlots[ifindex] = slots
	for _, r := range rules {
		if r.Tier == policy.TierNetworkPolicy {
			return fmt.Errorf("rule %d: a domainNames rule must be an Admin or Baseline tier rule", r.Rule)
		}
		v, err := tierValue(r.Tier, r.Action, r.Rule)
		if err != nil {
			return err
		}
		if err := t.addTier(tier, ifindex, policy.Egress, kindTierFQDN, bySet[patternHash(r.Names)], r.Proto, r.Ports, v); err != nil {
			return err
		}
	}
	return nil
}

// tierValue is the packed value (see kindTierIdentity) of one tier rule.
func tierValue(tier policy.RuleTier, act policy.Action, rule policy.RuleID) (uint32, error) {
	if rule == 0 || rule > policy.MaxTierRuleID {
		return 0, fmt.Errorf("tier rule %d: over the %d tier rules one endpoint's tables can rank", rule, policy.MaxTierRuleID)
	}
	if act < policy.ActionAccept || act > policy.ActionPass {
		return 0, fmt.Errorf("tier rule %d: action %s is not Accept, Deny or Pass", rule, act)
	}
	half := uint32(rule)<<2 | uint32(act)
	if tier == policy.TierAdmin {
		return half << 16, nil
	}
	return half, nil
}

// foldTierValues keeps, per half, the higher-precedence (lower, non-zero)
// candidate of a and b.
func foldTierValues(a, b uint32) uint32 {
	lo := func(x, y uint32) uint32 {
		switch {
		case x == 0:
			return y
		case y == 0 || x < y:
			return x
		}
		return y
	}
	return lo(a>>16, b>>16)<<16 | lo(a&0xffff, b&0xffff)
}

// addTier records the tier value v for every port prefix of ports.
func (t *Tables) addTier(tier map[policyKey]uint32, ifindex uint32, dir policy.Direction, kind uint8, peer uint32,
	proto uint8, ports policy.PortRange, v uint32) error {
	if ports.First > ports.Last {
		return fmt.Errorf("tier value %#x: port range %d-%d is empty", v, ports.First, ports.Last)
	}
	for _, pp := range portPrefixes(ports) {
		k := policyKey{Prefixlen: policyFixedBits + uint32(pp.bits), Ifindex: ifindex, Dir: uint8(dir),
			Kind: kind, Proto: proto, Peer: peer, Port: [2]byte{byte(pp.value >> 8), byte(pp.value)}}
		tier[k] = foldTierValues(tier[k], v)
	}
	return nil
}

// foldTiers moves the tier entries into Policy, each folded with every
// shorter entry of its key that covers it: a lookup returns only the
// longest matching port prefix, and a rule whose ports cover that prefix
// matches the packet too, so the longest match must carry the best of all.
// Each entry looks up its at most 16 ancestors.
func (t *Tables) foldTiers(tier map[policyKey]uint32) {
	for k, v := range tier {
		port := uint16(k.Port[0])<<8 | uint16(k.Port[1])
		for bits := uint32(0); bits < k.Prefixlen-policyFixedBits; bits++ {
			a := k
			a.Prefixlen = policyFixedBits + bits
			p := port & uint16(0xffff<<(16-bits)&0xffff)
			if bits == 0 {
				p = 0
			}
			a.Port = [2]byte{byte(p >> 8), byte(p)}
			if av, ok := tier[a]; ok {
				v = foldTierValues(v, av)
			}
		}
		t.Policy[k] = v
	}
}
