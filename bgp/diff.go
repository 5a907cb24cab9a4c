package bgp

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/fedmesh/fedmesh/bgp/peering"
)

// ActionKind is one kind of change to the embedded GoBGP server.
type ActionKind uint8

// The actions Diff emits, in the order it emits them within one plan.
const (
	// ActionStop stops GoBGP: every session gets a CEASE and is deleted.
	ActionStop ActionKind = iota + 1
	// ActionStart starts GoBGP with Action.Global; GoBGP cannot change its
	// ASN, router ID or listeners live, so a change there is Stop+Start.
	ActionStart
	// ActionSetPolicy replaces the routing policy with Action.Policy (and
	// the speaker's defaults); routes already exchanged are re-evaluated
	// without a session reset. It follows every start, so the policy is in
	// place before any route is sent.
	ActionSetPolicy
	// ActionDeletePath withdraws Action.Prefix.
	ActionDeletePath
	// ActionDeletePeer removes Action.Peer (its session gets a CEASE).
	ActionDeletePeer
	// ActionAddPath advertises Action.Prefix, replacing the attributes of
	// an already advertised prefix (an implicit withdraw at the peer).
	ActionAddPath
	// ActionUpdatePeer changes a peer in place; GoBGP resets the session
	// only when the change needs a new OPEN (ASN, password, port, GR).
	ActionUpdatePeer
	// ActionAddPeer adds Action.Peer.
	ActionAddPeer
)

var actionNames = map[ActionKind]string{
	ActionStop: "stop", ActionStart: "start", ActionSetPolicy: "set-policy", ActionDeletePath: "delete-path",
	ActionDeletePeer: "delete-peer", ActionAddPath: "add-path",
	ActionUpdatePeer: "update-peer", ActionAddPeer: "add-peer",
}

func (k ActionKind) String() string {
	if n, ok := actionNames[k]; ok {
		return n
	}
	return fmt.Sprintf("action(%d)", uint8(k))
}

// Global is the part of Desired GoBGP fixes at start.
type Global struct {
	ASN             uint32
	RouterID        netip.Addr
	ListenPort      uint16
	ListenAddresses []netip.Addr
}

func (g Global) equal(o Global) bool {
	return g.ASN == o.ASN && g.RouterID == o.RouterID && g.ListenPort == o.ListenPort &&
		slices.Equal(g.ListenAddresses, o.ListenAddresses)
}

// Action is one step of a plan. Only the field its Kind names is set.
type Action struct {
	Kind   ActionKind
	Global Global // ActionStart
	Peer   Peer   // peer actions
	Prefix Prefix // path actions
	Policy Policy // ActionSetPolicy
}

// String is a stable one-line form for logs and test tables.
func (a Action) String() string {
	switch a.Kind {
	case ActionStart:
		return fmt.Sprintf("start asn=%d router-id=%s port=%d", a.Global.ASN, a.Global.RouterID, a.Global.ListenPort)
	case ActionStop:
		return "stop"
	case ActionSetPolicy:
		return fmt.Sprintf("set-policy peers=%d", len(a.Policy.Peers))
	case ActionAddPeer, ActionUpdatePeer, ActionDeletePeer:
		return fmt.Sprintf("%s %s asn=%d", a.Kind, a.Peer.Address, a.Peer.ASN)
	case ActionAddPath, ActionDeletePath:
		s := fmt.Sprintf("%s %s", a.Kind, a.Prefix.CIDR)
		if len(a.Prefix.Communities) > 0 {
			s += " communities=" + joinStrings(a.Prefix.Communities)
		}
		if len(a.Prefix.LargeCommunities) > 0 {
			s += " large=" + joinStrings(a.Prefix.LargeCommunities)
		}
		return s
	}
	return a.Kind.String()
}

func joinStrings[T fmt.Stringer](v []T) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func globalOf(d *Desired) Global {
	return Global{ASN: d.LocalASN, RouterID: d.RouterID, ListenPort: d.ListenPort, ListenAddresses: d.ListenAddresses}
}

// Diff returns the minimal plan that turns the applied state into want.
// Both are effective states (health already applied, see Effective); nil or
// a disabled Desired means "no speaker". Equal inputs give an empty plan.
// Diff is pure: no I/O, no clock, deterministic order.
func Diff(applied, want *Desired) []Action {
	plan, _ := diff(applied, want)
	return plan
}

// diff is Diff that also returns the normalized want (nil when want is
// off): the state GoBGP holds once the whole plan is carried out, so the
// Speaker records it without folding 10,000 actions over the old state.
func diff(applied, want *Desired) ([]Action, *Desired) {
	if !want.Enabled() {
		if applied.Enabled() {
			return []Action{{Kind: ActionStop}}, nil
		}
		return nil, nil
	}
	w := normalize(want)
	if !applied.Enabled() || !globalOf(applied).equal(globalOf(&w)) {
		plan := make([]Action, 0, 2+len(w.Prefixes)+len(w.Peers))
		if applied.Enabled() {
			plan = append(plan, Action{Kind: ActionStop})
		}
		plan = append(plan, Action{Kind: ActionStart, Global: globalOf(&w)}, Action{Kind: ActionSetPolicy, Policy: w.Policy})
		// Paths before peers: the first UPDATE after OPEN then carries all
		// of them, and a restarting speaker's End-of-RIB follows them.
		for _, p := range w.Prefixes {
			plan = append(plan, Action{Kind: ActionAddPath, Prefix: p})
		}
		for _, p := range w.Peers {
			plan = append(plan, Action{Kind: ActionAddPeer, Peer: p})
		}
		return plan, &w
	}
	a := normalize(applied)

	// Both prefix lists are sorted (normalize), so one merge walk finds the
	// withdrawals and another the advertisements, with no maps: this is the
	// part of a reconcile that scales with the 10,000 prefixes.
	nDelete, nAdd := 0, 0
	mergePrefixes(a.Prefixes, w.Prefixes, func(old, cur *Prefix) {
		switch {
		case cur == nil:
			nDelete++
		case old == nil || !prefixEqual(*old, *cur):
			nAdd++
		}
	})
	plan := make([]Action, 0, 1+nDelete+nAdd+len(a.Peers)+len(w.Peers))
	if !policyEqual(a.Policy, w.Policy) {
		// Before the paths and peers change, so a route the new policy
		// rejects is never sent to a new peer nor as a new path.
		plan = append(plan, Action{Kind: ActionSetPolicy, Policy: w.Policy})
	}
	if nDelete > 0 {
		mergePrefixes(a.Prefixes, w.Prefixes, func(old, cur *Prefix) {
			if cur == nil {
				plan = append(plan, Action{Kind: ActionDeletePath, Prefix: *old})
			}
		})
	}

	oldPeers := make(map[netip.Addr]Peer, len(a.Peers))
	for _, p := range a.Peers {
		oldPeers[p.Address] = p
	}
	newPeers := make(map[netip.Addr]bool, len(w.Peers))
	for _, p := range w.Peers {
		newPeers[p.Address] = true
	}
	for _, p := range a.Peers {
		if !newPeers[p.Address] {
			plan = append(plan, Action{Kind: ActionDeletePeer, Peer: p})
		}
	}

	if nAdd > 0 {
		mergePrefixes(a.Prefixes, w.Prefixes, func(old, cur *Prefix) {
			if cur != nil && (old == nil || !prefixEqual(*old, *cur)) {
				plan = append(plan, Action{Kind: ActionAddPath, Prefix: *cur})
			}
		})
	}
	grChanged := a.GracefulRestart != w.GracefulRestart
	var adds []Action
	for _, p := range w.Peers {
		old, ok := oldPeers[p.Address]
		switch {
		case !ok:
			adds = append(adds, Action{Kind: ActionAddPeer, Peer: p})
		case !old.sameSession(p) || (grChanged && p.GracefulRestart == nil):
			plan = append(plan, Action{Kind: ActionUpdatePeer, Peer: p})
		}
	}
	return append(plan, adds...), &w
}

// mergePrefixes walks two prefix lists sorted by comparePrefix in step and
// calls f once per CIDR: (old, nil) only in old, (nil, cur) only in cur,
// (old, cur) in both.
func mergePrefixes(old, cur []Prefix, f func(old, cur *Prefix)) {
	i, j := 0, 0
	for i < len(old) || j < len(cur) {
		c := 0
		switch {
		case i == len(old):
			c = 1
		case j == len(cur):
			c = -1
		default:
			c = comparePrefix(old[i].CIDR, cur[j].CIDR)
		}
		switch {
		case c < 0:
			f(&old[i], nil)
			i++
		case c > 0:
			f(nil, &cur[j])
			j++
		default:
			f(&old[i], &cur[j])
			i++
			j++
		}
	}
}

func prefixEqual(a, b Prefix) bool {
	return a.CIDR == b.CIDR && slices.Equal(a.Communities, b.Communities) &&
		slices.Equal(a.LargeCommunities, b.LargeCommunities)
}

// normalize returns a copy with peers, prefixes and communities sorted and
// communities deduplicated, so order in the input never causes a change.
func normalize(d *Desired) Desired {
	n := *d
	n.Peers = slices.Clone(d.Peers)
	slices.SortFunc(n.Peers, func(a, b Peer) int { return a.Address.Compare(b.Address) })
	n.ListenAddresses = slices.Clone(d.ListenAddresses)
	slices.SortFunc(n.ListenAddresses, netip.Addr.Compare)
	n.ListenAddresses = slices.Compact(n.ListenAddresses)
	n.Prefixes = make([]Prefix, len(d.Prefixes))
	for i, p := range d.Prefixes {
		if len(p.Communities) > 0 {
			p.Communities = slices.Compact(slices.Sorted(slices.Values(p.Communities)))
		}
		if len(p.LargeCommunities) > 0 {
			p.LargeCommunities = slices.Clone(p.LargeCommunities)
			slices.SortFunc(p.LargeCommunities, LargeCommunity.Compare)
			p.LargeCommunities = slices.Compact(p.LargeCommunities)
		}
		n.Prefixes[i] = p
	}
	slices.SortFunc(n.Prefixes, func(a, b Prefix) int { return comparePrefix(a.CIDR, b.CIDR) })
	n.Policy = normalizePolicy(d.Policy)
	return n
}

// normalizePolicy sorts peers by address, drops the ones that say nothing
// and sorts and deduplicates communities; rule order is meaning and stays.
func normalizePolicy(p Policy) Policy {
	var out Policy
	for _, pp := range p.Peers {
		if pp.empty() {
			continue
		}
		pp.Attributes = normalizeAttributes(pp.Attributes)
		if pp.Advertise != nil {
			adv := make([]peering.Advertisement, len(pp.Advertise))
			for i, a := range pp.Advertise {
				adv[i] = peering.Advertisement{Class: a.Class, Attributes: normalizeAttributes(a.Attributes), Service: a.Service}
			}
			slices.SortFunc(adv, func(a, b peering.Advertisement) int { return cmp.Compare(a.Class, b.Class) })
			pp.Advertise = adv
		}
		out.Peers = append(out.Peers, pp)
	}
	slices.SortFunc(out.Peers, func(a, b PeerPolicy) int { return a.Address.Compare(b.Address) })
	if len(p.ServiceRanges) > 0 {
		out.ServiceRanges = slices.Clone(p.ServiceRanges)
		slices.SortFunc(out.ServiceRanges, compareServiceRange)
		out.ServiceRanges = slices.Compact(out.ServiceRanges)
	}
	return out
}

func normalizeAttributes(a peering.Attributes) peering.Attributes {
	if len(a.Communities) > 0 {
		a.Communities = slices.Compact(slices.Sorted(slices.Values(a.Communities)))
	}
	if len(a.LargeCommunities) > 0 {
		a.LargeCommunities = slices.Clone(a.LargeCommunities)
		slices.SortFunc(a.LargeCommunities, LargeCommunity.Compare)
		a.LargeCommunities = slices.Compact(a.LargeCommunities)
	}
	return a
}

// policyEqual compares two normalized policies.
func policyEqual(a, b Policy) bool {
	return slices.EqualFunc(a.Peers, b.Peers, func(x, y PeerPolicy) bool {
		return x.Address == y.Address && slices.Equal(x.Export, y.Export) && slices.Equal(x.Import, y.Import) &&
			attributesEqual(x.Attributes, y.Attributes) && (x.Advertise == nil) == (y.Advertise == nil) &&
			slices.EqualFunc(x.Advertise, y.Advertise, func(p, q peering.Advertisement) bool {
				return p.Class == q.Class && attributesEqual(p.Attributes, q.Attributes) && p.Service.Equal(q.Service)
			})
	}) && slices.Equal(a.ServiceRanges, b.ServiceRanges)
}

func attributesEqual(a, b peering.Attributes) bool {
	return slices.Equal(a.Communities, b.Communities) && slices.Equal(a.LargeCommunities, b.LargeCommunities) &&
		a.HasLocalPref == b.HasLocalPref && a.LocalPref == b.LocalPref
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}
