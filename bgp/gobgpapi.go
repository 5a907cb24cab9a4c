package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/fedmesh/fedmesh/bgp/peering"
)

// This file converts the package's types to GoBGP's API types: protobuf
// messages for global and peer configuration, native paths for routes. Pure.

var (
	familyV4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	familyV6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

func familyOf(a netip.Addr) *api.Family {
	if a.Is4() {
		return familyV4
	}
	return familyV6
}

func apiGlobal(g Global) *api.Global {
	port := int32(g.ListenPort)
	if port == 0 {
		port = DefaultPort
	}
	out := &api.Global{Asn: g.ASN, RouterId: g.RouterID.String(), ListenPort: port}
	for _, a := range g.ListenAddresses {
		out.ListenAddresses = append(out.ListenAddresses, a.String())
	}
	return out
}

func seconds(d time.Duration) uint64 { return uint64(d / time.Second) }

// apiPeer builds the GoBGP neighbor. restarting sets the Restart State bit
// (RFC 4724 §4.1): the speaker just (re)started and peers may hold our
// routes as stale, so GoBGP defers its UPDATEs until the peers' End-of-RIB.
func apiPeer(p Peer, global GracefulRestart, routerID netip.Addr, restarting bool) *api.Peer {
	gr := p.gracefulRestart(global)
	hold := p.HoldTime
	if hold == 0 {
		hold = DefaultHoldTime
	}
	keep := p.Keepalive
	if keep == 0 {
		keep = hold / 3
	}
	port := uint32(p.Port)
	if port == 0 {
		port = DefaultPort
	}
	af := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: familyOf(p.Address), Enabled: true}}
	out := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			LocalAsn:        p.LocalASN, // 0: GoBGP uses the global ASN
			AuthPassword:    p.Password,
		},
		Transport: &api.Transport{RemotePort: port},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:               seconds(hold),
			KeepaliveInterval:      seconds(keep),
			ConnectRetry:           seconds(DefaultConnectRetry),
			IdleHoldTimeAfterReset: seconds(defaultIdleHoldAfter),
		}},
		AfiSafis: []*api.AfiSafi{af},
	}
	if p.MultihopTTL > 0 {
		out.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.MultihopTTL)}
	}
	if p.RouteReflectorClient {
		// The node's router ID is its cluster ID: a node reflects for its
		// own clients only.
		out.RouteReflector = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: routerID.String()}
	}
	if gr.Enabled() {
		deferral := gr.DeferralTime
		if deferral == 0 {
			deferral = DefaultDeferralTime
		}
		out.GracefulRestart = &api.GracefulRestart{
			Enabled:         true,
			RestartTime:     uint32(seconds(gr.RestartTime)),
			DeferralTime:    uint32(seconds(deferral)),
			LocalRestarting: restarting,
		}
		af.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	return out
}

// apiPath builds the locally originated route as GoBGP's native path (no
// protobuf on the way in). The next hop is left unspecified so GoBGP fills
// in the session's local address, per peer. age is the path's timestamp.
func apiPath(p Prefix, age int64) (*apiutil.Path, error) {
	nlri, err := bgp.NewIPAddrPrefix(p.CIDR)
	if err != nil {
		return nil, fmt.Errorf("encode prefix %s: %w", p.CIDR, err)
	}
	attrs := make([]bgp.PathAttributeInterface, 0, 4)
	attrs = append(attrs, bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP))
	family := bgp.RF_IPv4_UC
	if p.CIDR.Addr().Is4() {
		nh, err := bgp.NewPathAttributeNextHop(netip.IPv4Unspecified())
		if err != nil {
			return nil, fmt.Errorf("encode next hop of %s: %w", p.CIDR, err)
		}
		attrs = append(attrs, nh)
	} else {
		family = bgp.RF_IPv6_UC
		mp, err := bgp.NewPathAttributeMpReachNLRI(family, []bgp.PathNLRI{{NLRI: nlri}}, netip.IPv6Unspecified())
		if err != nil {
			return nil, fmt.Errorf("encode next hop of %s: %w", p.CIDR, err)
		}
		attrs = append(attrs, mp)
	}
	if len(p.Communities) > 0 {
		c := make([]uint32, len(p.Communities))
		for i, v := range p.Communities {
			c[i] = uint32(v)
		}
		attrs = append(attrs, bgp.NewPathAttributeCommunities(c))
	}
	if len(p.LargeCommunities) > 0 {
		l := make([]*bgp.LargeCommunity, len(p.LargeCommunities))
		for i, v := range p.LargeCommunities {
			l[i] = bgp.NewLargeCommunity(v.Global, v.Local1, v.Local2)
		}
		attrs = append(attrs, bgp.NewPathAttributeLargeCommunities(l))
	}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs, Age: age}, nil
}

// Names of the speaker's routing policy in GoBGP. The speaker owns every
// policy and defined set in its GoBGP server; the two policies are assigned
// to the global RIB, where GoBGP applies them per peer (a statement's
// neighbor set matches the peer a route is sent to, or came from).
const (
	exportPolicyName = "fedmesh-export"
	importPolicyName = "fedmesh-import"
	podClassSet      = "fedmesh-class-pod-cidr"
)

// apiPolicies compiles the routing policy of d (its Policy, its pod CIDRs
// as the pod-CIDR prefix class) into GoBGP's. Export, in order: reject a
// route the speaker did not originate; then per peer, reject the classes
// it is not sent, add the peer's attributes and its classes' (no decision,
// so evaluation goes on), and its filter rules, each final; no decision
// accepts. Import: per peer its filter rules; no decision accepts. Pure.
func apiPolicies(d *Desired) *api.SetPoliciesRequest {
	c := policyCompiler{}
	// A GoBGP prefix set holds one family: a class has a set per family.
	classSets := map[peering.PrefixClass][]string{}
	kindSets := map[peering.ServiceKind][]string{}
	for _, fam := range []struct {
		name string
		is4  bool
	}{{"v4", true}, {"v6", false}} {
		set := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: podClassSet + "-" + fam.name}
		for _, p := range d.PodCIDRs {
			if p.Addr().Is4() == fam.is4 {
				set.Prefixes = append(set.Prefixes, &api.Prefix{IpPrefix: p.String(), MaskLengthMin: uint32(p.Bits()), MaskLengthMax: uint32(p.Bits())})
			}
		}
		if len(set.Prefixes) > 0 {
			c.sets = append(c.sets, set)
			classSets[peering.ClassPodCIDR] = append(classSets[peering.ClassPodCIDR], set.Name)
		}
	}
	export := &api.Policy{Name: exportPolicyName}
	imp := &api.Policy{Name: importPolicyName}
	for _, t := range []api.Conditions_RouteType{api.Conditions_ROUTE_TYPE_INTERNAL, api.Conditions_ROUTE_TYPE_EXTERNAL} {
		export.Statements = append(export.Statements, c.statement(&api.Conditions{RouteType: t}, &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_REJECT}))
	}
	// Service addresses go only to the peers whose SERVICE advertisement
	// lists their kind: a kind's ranges are rejected for every other
	// neighbor (cluster-level peers and peer objects without the class
	// included), before any per-peer statement can accept.
	for _, kind := range peering.ServiceKinds {
		var optIn []string
		for _, pp := range d.Policy.Peers {
			if slices.ContainsFunc(pp.Advertise, func(a peering.Advertisement) bool {
				return a.Class == peering.ClassService && slices.Contains(a.Service.Kinds(), kind)
			}) {
				optIn = append(optIn, netip.PrefixFrom(pp.Address, pp.Address.BitLen()).String())
			}
		}
		sets := c.serviceSets(kind, d.Policy.ServiceRanges)
		if len(sets) == 0 {
			continue
		}
		classSets[peering.ClassService] = append(classSets[peering.ClassService], sets...)
		kindSets[kind] = sets
		for _, set := range sets {
			cond := &api.Conditions{PrefixSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: set}}
			if len(optIn) > 0 {
				nb := "fedmesh-svc-peers-" + kind.String()
				if !slices.ContainsFunc(c.sets, func(s *api.DefinedSet) bool { return s.Name == nb }) {
					c.sets = append(c.sets, &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: nb, List: optIn})
				}
				cond.NeighborSet = &api.MatchSet{Type: api.MatchSet_TYPE_INVERT, Name: nb}
			}
			export.Statements = append(export.Statements, c.statement(cond, &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_REJECT}))
		}
	}
	for i, pp := range d.Policy.Peers {
		nb := fmt.Sprintf("fedmesh-peer-%d", i)
		c.sets = append(c.sets, &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: nb, List: []string{netip.PrefixFrom(pp.Address, pp.Address.BitLen()).String()}})
		peer := func(prefixSet string) *api.Conditions {
			cond := &api.Conditions{NeighborSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: nb}}
			if prefixSet != "" {
				cond.PrefixSet = &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: prefixSet}
			}
			return cond
		}
		if pp.Advertise != nil {
			for _, class := range []peering.PrefixClass{peering.ClassPodCIDR} {
				if slices.ContainsFunc(pp.Advertise, func(a peering.Advertisement) bool { return a.Class == class }) {
					continue
				}
				for _, set := range classSets[class] {
					export.Statements = append(export.Statements, c.statement(peer(set), &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_REJECT}))
				}
			}
		}
		if !pp.Attributes.Empty() {
			export.Statements = append(export.Statements, c.statement(peer(""), apiAttributes(pp.Attributes)))
		}
		for _, a := range pp.Advertise {
			if a.Attributes.Empty() {
				continue
			}
			sets := classSets[a.Class]
			if a.Class == peering.ClassService {
				// Only the kinds this peer is sent: a kind it is not sent
				// was rejected above.
				sets = nil
				for _, k := range a.Service.Kinds() {
					sets = append(sets, kindSets[k]...)
				}
			}
			for _, set := range sets {
				export.Statements = append(export.Statements, c.statement(peer(set), apiAttributes(a.Attributes)))
			}
		}
		for _, r := range pp.Export {
			export.Statements = append(export.Statements, c.rule(peer(""), r))
		}
		for _, r := range pp.Import {
			imp.Statements = append(imp.Statements, c.rule(peer(""), r))
		}
	}
	return &api.SetPoliciesRequest{DefinedSets: c.sets, Policies: []*api.Policy{export, imp}}
}

// serviceSets defines the prefix sets of one service kind's ranges (one
// per family: a GoBGP prefix set holds one), each matching the range and
// every longer prefix inside it, and returns their names.
func (c *policyCompiler) serviceSets(kind peering.ServiceKind, ranges []ServiceRange) []string {
	var names []string
	for _, fam := range []struct {
		name string
		is4  bool
	}{{"v4", true}, {"v6", false}} {
		set := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: "fedmesh-class-svc-" + kind.String() + "-" + fam.name}
		for _, r := range ranges {
			if r.Kind == kind && r.CIDR.Addr().Is4() == fam.is4 {
				set.Prefixes = append(set.Prefixes, &api.Prefix{IpPrefix: r.CIDR.String(), MaskLengthMin: uint32(r.CIDR.Bits()), MaskLengthMax: uint32(r.CIDR.Addr().BitLen())})
			}
		}
		if len(set.Prefixes) > 0 {
			c.sets = append(c.sets, set)
			names = append(names, set.Name)
		}
	}
	return names
}

// policyAssignments assign the speaker's policies to the global RIB.
func policyAssignments() []*api.PolicyAssignment {
	return []*api.PolicyAssignment{
		{Name: "global", Direction: api.PolicyDirection_POLICY_DIRECTION_EXPORT, Policies: []*api.Policy{{Name: exportPolicyName}}, DefaultAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
		{Name: "global", Direction: api.PolicyDirection_POLICY_DIRECTION_IMPORT, Policies: []*api.Policy{{Name: importPolicyName}}, DefaultAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
	}
}

// policyCompiler names statements and defined sets uniquely.
type policyCompiler struct {
	sets []*api.DefinedSet
	n    int
}

func (c *policyCompiler) statement(cond *api.Conditions, act *api.Actions) *api.Statement {
	c.n++
	return &api.Statement{Name: fmt.Sprintf("fedmesh-s%d", c.n), Conditions: cond, Actions: act}
}

// rule compiles one filter rule: the peer, the rule's family, and for a
// rule with a CIDR a one-prefix set (inverted for NotIn); the action is
// final.
func (c *policyCompiler) rule(cond *api.Conditions, r peering.Rule) *api.Statement {
	fam := familyV4
	if r.Family == peering.IPv6 {
		fam = familyV6
	}
	// The family condition keeps an inverted (NotIn) set from matching the
	// other family's routes.
	cond.AfiSafiIn = []*api.Family{fam}
	if r.Op != peering.MatchAny {
		lo, hi := r.MinLen, r.MaxLen
		if r.Op == peering.MatchEqual {
			lo, hi = uint8(r.CIDR.Bits()), uint8(r.CIDR.Bits())
		}
		name := fmt.Sprintf("fedmesh-prefix-%d", len(c.sets))
		c.sets = append(c.sets, &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: name,
			Prefixes: []*api.Prefix{{IpPrefix: r.CIDR.String(), MaskLengthMin: uint32(lo), MaskLengthMax: uint32(hi)}}})
		typ := api.MatchSet_TYPE_ANY
		if r.Op == peering.MatchNotIn {
			typ = api.MatchSet_TYPE_INVERT
		}
		cond.PrefixSet = &api.MatchSet{Type: typ, Name: name}
	}
	act := api.RouteAction_ROUTE_ACTION_ACCEPT
	if r.Action == peering.Reject {
		act = api.RouteAction_ROUTE_ACTION_REJECT
	}
	return c.statement(cond, &api.Actions{RouteAction: act})
}

// apiAttributes adds a's communities and sets its local preference,
// leaving the decision to later statements.
func apiAttributes(a peering.Attributes) *api.Actions {
	act := &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_UNSPECIFIED}
	if len(a.Communities) > 0 {
		act.Community = &api.CommunityAction{Type: api.CommunityAction_TYPE_ADD}
		for _, c := range a.Communities {
			act.Community.Communities = append(act.Community.Communities, c.String())
		}
	}
	if len(a.LargeCommunities) > 0 {
		act.LargeCommunity = &api.CommunityAction{Type: api.CommunityAction_TYPE_ADD}
		for _, c := range a.LargeCommunities {
			act.LargeCommunity.Communities = append(act.LargeCommunity.Communities, c.String())
		}
	}
	if a.HasLocalPref {
		act.LocalPref = &api.LocalPrefAction{Value: a.LocalPref}
	}
	return act
}
