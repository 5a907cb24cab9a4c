package policy

import (
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/labels"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// This file compiles the ClusterNetworkPolicy tiers into each local
// endpoint's rules and keeps that incremental: a policy change recompiles
// only the local endpoints its old or new subject selects, an endpoint
// change only the users of the tier peers that match its group.

// tierTiers are the tiers in the order the compiler numbers their rules.
var tierTiers = [2]struct {
	tier cnpv1.Tier
	rt   RuleTier
}{{cnpv1.AdminTier, TierAdmin}, {cnpv1.BaselineTier, TierBaseline}}

// compileTiers numbers and emits the tier rules that apply to ep: per
// direction, the Admin tier then the Baseline tier, each in evaluation
// order (policies as Tiers.tier sorts them, rules as written), so the
// lowest matching RuleID of a tier is the rule Tiers.Explain names.
func (e *Engine) compileTiers(c *Compiled, ep *endpoint) {
	if e.tiers.Len() == 0 {
		return
	}
	pols := e.groupTiers(ep.group)
	for _, dir := range []Direction{Ingress, Egress} {
		dr := c.Rules.dir(dir)
		for ti, t := range tierTiers {
			for _, tp := range pols[ti] {
				rules := tp.rules[dir]
				for i := range rules {
					r := &rules[i]
					id := RuleID(len(c.Origins) + 1)
					act := actionOf(r.action)
					c.Origins = append(c.Origins, RuleOrigin{Cluster: tp.key.Cluster, Name: tp.key.Name,
						Federated: tp.key.Cluster == "", Direction: dir, Index: r.index, Tier: t.rt,
						Priority: tp.src.Spec.Priority, RuleName: r.name, Action: act})
					em := emitter{dr: dr, rule: id, tier: t.rt, action: act}
					e.emitTierRule(&em, ep, tp, r, dir)
				}
			}
		}
	}
}

// tierProtoNumbers are the protocols a destinationNamedPort can name.
var tierProtoNumbers = [3]uint8{ProtoTCP, ProtoUDP, ProtoSCTP}

// emitTierRule emits r for local endpoint ep in direction dir.
func (e *Engine) emitTierRule(em *emitter, ep *endpoint, tp *tierPolicy, r *tierRule, dir Direction) {
	var fixed []protoPorts
	var named []string // egress named ports: resolved per destination pod
	if r.anyProto {
		fixed = []protoPorts{{ProtoAny, AllPorts}}
	}
	for _, p := range r.protos {
		switch {
		case p.named == "":
			fixed = append(fixed, protoPorts{p.proto, p.ports})
		case dir == Ingress: // the local pod is the destination
			for _, np := range ep.namedPorts {
				if np.name == p.named {
					fixed = append(fixed, protoPorts{np.proto, PortRange{np.port, np.port}})
				}
			}
		default:
			named = append(named, p.named)
		}
	}
	// A Deny (or Pass turned Deny) rule with a peer this code cannot read
	// matches every peer (doc.go).
	anyPeer := r.failClosed && r.action != cnpv1.ClusterNetworkPolicyRuleActionAccept
	var names []string
	if dir == Egress && !anyPeer {
		for i := range r.peers {
			names = append(names, r.peers[i].names...)
		}
		names = slices.Compact(slices.Sorted(slices.Values(names)))
	}
	for _, pp := range fixed {
		if anyPeer {
			em.identity(IdentityAny, pp.proto, pp.ports)
			continue
		}
		if len(names) > 0 {
			em.names(names, pp.proto, pp.ports)
		}
		for i := range r.peers {
			pe := &r.peers[i]
			for _, n := range pe.networks {
				em.cidr(cidrPeer{prefix: n}, pp.proto, pp.ports)
			}
			if pe.pods == nil {
				continue
			}
			for _, g := range e.tierPeerGroups(tp, pe) {
				if pe.mode == peerSameCluster && g.cluster != ep.key.Cluster {
					continue
				}
				for id := range g.ids {
					if id != 0 {
						em.identity(id, pp.proto, pp.ports)
					}
				}
			}
		}
	}
	for _, name := range slices.Compact(slices.Sorted(slices.Values(named))) {
		e.emitTierNamedEgress(em, ep, tp, r, name, anyPeer)
	}
}

// emitTierNamedEgress matches the destination pods r's peers match on the
// number each gives the named port, per protocol, as emitNamedEgress does
// for a NetworkPolicy: an identity rule when every pod of the identity
// agrees, else host rules per pod.
func (e *Engine) emitTierNamedEgress(em *emitter, ep *endpoint, tp *tierPolicy, r *tierRule, name string, anyPeer bool) {
	var gs []*group
	if anyPeer {
		for _, g := range e.groups {
			gs = append(gs, g)
		}
	} else {
		for i := range r.peers {
			pe := &r.peers[i]
			if pe.pods == nil {
				continue
			}
			for _, g := range e.tierPeerGroups(tp, pe) {
				if pe.mode != peerSameCluster || g.cluster == ep.key.Cluster {
					gs = append(gs, g)
				}
			}
		}
	}
	for _, proto := range tierProtoNumbers {
		s := portSpec{proto: proto, name: name}
		matched := map[uint32][]*group{}
		for _, g := range gs {
			for id := range g.ids {
				if id != 0 {
					matched[id] = append(matched[id], g)
				}
			}
		}
		for id, mgs := range matched {
			if n, ok := e.identityPort(id, s); ok {
				em.identity(id, proto, PortRange{n, n})
				continue
			}
			for _, g := range mgs {
				for d := range g.eps {
					if d.identity != id {
						continue
					}
					if n, ok := d.resolve(name, proto); ok {
						for _, a := range d.ips {
							em.host(a, proto, n)
						}
					}
				}
			}
		}
		if anyPeer {
			continue
		}
		for i := range r.peers {
			if len(r.peers[i].networks) == 0 {
				continue
			}
			for _, d := range e.endpoints {
				n, ok := d.resolve(name, proto)
				if !ok {
					continue
				}
				for _, a := range d.ips {
					if networksContain(r.peers[i].networks, a) {
						em.host(a, proto, n)
					}
				}
			}
		}
	}
}

func networksContain(nets []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, n := range nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// groupTiers returns the tier policies that apply to g's endpoints, per
// tier in evaluation order, computing them when stale.
func (e *Engine) groupTiers(g *group) *[2][]*tierPolicy {
	if g.tiersValid {
		return &g.tiers
	}
	cl := e.clusterLabels(g.cluster)
	for ti, t := range tierTiers {
		g.tiers[ti] = g.tiers[ti][:0]
		for _, tp := range e.tiers.tier(t.tier) {
			if tp.appliesToGroup(g, cl) {
				g.tiers[ti] = append(g.tiers[ti], tp)
			}
		}
	}
	g.tiersValid = true
	return &g.tiers
}

func (tp *tierPolicy) appliesToGroup(g *group, cl labels.Set) bool {
	if tp.key.Cluster != "" {
		if g.cluster != tp.key.Cluster {
			return false
		}
	} else if tp.clusterSel != nil && !tp.clusterSel.Matches(cl) {
		return false
	}
	return tp.subject.matchesGroup(g)
}

func (s podSelector) matchesGroup(g *group) bool {
	return s.nsSel.Matches(g.nsLabels) && (s.podSel == nil || s.podSel.Matches(g.labels))
}

// tierPeerGroups returns the groups a namespaces/pods peer of tp matches
// (its peerSameCluster filter is the caller's: it depends on the local
// endpoint), cached until a matching group changes.
func (e *Engine) tierPeerGroups(tp *tierPolicy, pe *tierPeer) []*group {
	if gs, ok := e.tierPeers[pe]; ok {
		return gs
	}
	gs := []*group{}
	for cns, set := range e.groupsByClusterNS {
		if !pe.clusterAllows(tp, cns.cluster, e.clusterLabels(cns.cluster)) {
			continue
		}
		first := true
		for g := range set {
			if first && !pe.pods.nsSel.Matches(g.nsLabels) {
				break // every group of a namespace has its namespace labels
			}
			first = false
			if pe.pods.podSel == nil || pe.pods.podSel.Matches(g.labels) {
				gs = append(gs, g)
			}
		}
	}
	e.tierPeers[pe] = gs
	return gs
}

// clusterAllows reports whether the peer may match pods of cluster (whose
// labels are cl); peerSameCluster allows every cluster here.
func (pe *tierPeer) clusterAllows(tp *tierPolicy, cluster string, cl labels.Set) bool {
	switch pe.mode {
	case peerOwnCluster:
		return cluster == tp.key.Cluster
	case peerClusterSelector:
		return pe.clusterSel.Matches(cl)
	}
	return true
}

// tierGroupChanged is called when g gained, lost or changed endpoints: the
// users of every tier peer matching g recompile and the peers' cached groups
// are dropped; so do the users of rules whose named egress ports resolve
// against every endpoint.
func (e *Engine) tierGroupChanged(g *group) {
	if e.tiers.Len() == 0 {
		return
	}
	cl := e.clusterLabels(g.cluster)
	for _, tp := range e.tiers.policies {
		hit := false
		for dir := range tp.rules {
			for i := range tp.rules[dir] {
				r := &tp.rules[dir][i]
				if Direction(dir) == Egress && r.namedAnywhere() {
					hit = true
				}
				for j := range r.peers {
					pe := &r.peers[j]
					if pe.pods != nil && pe.clusterAllows(tp, g.cluster, cl) && pe.pods.matchesGroup(g) {
						delete(e.tierPeers, pe)
						hit = true
					}
				}
			}
		}
		if hit {
			e.markTierUsers(tp)
		}
	}
}

// namedAnywhere reports whether an egress rule has a named port whose
// destinations are not bounded by a pods peer: a Deny matching every peer,
// or a networks peer (any endpoint in it may declare the name).
func (r *tierRule) namedAnywhere() bool {
	named := false
	for _, p := range r.protos {
		named = named || p.named != ""
	}
	if !named {
		return false
	}
	if r.failClosed && r.action != cnpv1.ClusterNetworkPolicyRuleActionAccept {
		return true
	}
	for i := range r.peers {
		if len(r.peers[i].networks) > 0 {
			return true
		}
	}
	return false
}

// localGroupsOf yields the groups with local endpoints (or a computed tier
// list) that tp's subject selects.
func (e *Engine) localGroupsOf(tp *tierPolicy, yield func(*group)) {
	for cns, set := range e.groupsByClusterNS {
		cl := e.clusterLabels(cns.cluster)
		if tp.key.Cluster != "" && cns.cluster != tp.key.Cluster {
			continue
		}
		first := true
		for g := range set {
			if first && !tp.subject.nsSel.Matches(g.nsLabels) {
				break
			}
			first = false
			// A group without local endpoints may still hold a tier list
			// from when it had some.
			if (g.locals > 0 || g.tiersValid) && tp.appliesToGroup(g, cl) {
				yield(g)
			}
		}
	}
}

// markTierUsers marks the local endpoints tp applies to.
func (e *Engine) markTierUsers(tp *tierPolicy) {
	e.localGroupsOf(tp, e.markGroup)
}

// tierPolicyChanged updates the tier lists of the local groups that old
// (the replaced policy, or nil) or next (the new one, or nil) applies to,
// in place, and marks their endpoints; other groups are unaffected.
func (e *Engine) tierPolicyChanged(old, next *tierPolicy) {
	if old != nil {
		for dir := range old.rules {
			for i := range old.rules[dir] {
				for j := range old.rules[dir][i].peers {
					delete(e.tierPeers, &old.rules[dir][i].peers[j])
				}
			}
		}
		e.localGroupsOf(old, func(g *group) {
			if g.tiersValid {
				for ti := range g.tiers {
					g.tiers[ti] = slices.DeleteFunc(g.tiers[ti], func(tp *tierPolicy) bool { return tp == old })
				}
			}
			e.markGroup(g)
		})
	}
	if next != nil {
		ti := 0
		if next.src.Spec.Tier == cnpv1.BaselineTier {
			ti = 1
		}
		e.localGroupsOf(next, func(g *group) {
			if g.tiersValid {
				i, _ := slices.BinarySearchFunc(g.tiers[ti], next, comparePolicyOrder)
				g.tiers[ti] = slices.Insert(g.tiers[ti], i, next)
			}
			e.markGroup(g)
		})
	}
}
