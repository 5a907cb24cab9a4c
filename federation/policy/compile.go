package policy

import (
	"cmp"
	"net/netip"
	"slices"
)

// compile computes the rules of one endpoint from the current indexes.
// RuleIDs are dense from 1: first the tier rules (compileTiers: per
// direction, Admin then Baseline, each in evaluation order, so a lower ID
// is a higher precedence), then the NetworkPolicy rules, ingress first, then
// egress, each in policy-key order and rule order, the same order Explain
// walks, so the lowest matching RuleID of a layer is the rule Explain names.
func (e *Engine) compile(ep *endpoint) *Compiled {
	c := &Compiled{Rules: EndpointRules{Identity: ep.identity}}
	e.compileTiers(c, ep)
	pols := make([]*policyState, 0, len(ep.group.selectedBy))
	for ps := range ep.group.selectedBy {
		pols = append(pols, ps)
	}
	slices.SortFunc(pols, func(a, b *policyState) int { return comparePolicyKeys(a.key, b.key) })
	for _, dir := range []Direction{Ingress, Egress} {
		dr := c.Rules.dir(dir)
		for _, ps := range pols {
			if !ps.applies[dir] {
				continue
			}
			dr.Enforced = true
			for _, r := range ps.rules[dir] {
				id := RuleID(len(c.Origins) + 1)
				c.Origins = append(c.Origins, RuleOrigin{
					Cluster: ps.key.Cluster, Namespace: ps.key.Namespace, Name: ps.key.Name,
					Federated: ps.federated, Direction: dir, Index: r.index,
				})
				em := emitter{dr: dr, rule: id}
				e.emitRule(&em, ep, r)
			}
		}
		sortRules(dr)
	}
	return c
}

func (r *EndpointRules) dir(d Direction) *DirectionRules {
	if d == Egress {
		return &r.Egress
	}
	return &r.Ingress
}

type idKey struct {
	peer  uint32
	proto uint8
	ports PortRange
}

type emitter struct {
	dr     *DirectionRules
	rule   RuleID
	tier   RuleTier
	action Action
	seen   map[idKey]struct{}
}

func (em *emitter) identity(peer uint32, proto uint8, ports PortRange) {
	k := idKey{peer, proto, ports}
	if em.seen == nil {
		em.seen = map[idKey]struct{}{}
	}
	if _, dup := em.seen[k]; dup {
		return
	}
	em.seen[k] = struct{}{}
	em.dr.Identities = append(em.dr.Identities, IdentityRule{Peer: peer, Proto: proto, Ports: ports, Rule: em.rule, Tier: em.tier, Action: em.action})
}

func (em *emitter) cidr(c cidrPeer, proto uint8, ports PortRange) {
	em.dr.CIDRs = append(em.dr.CIDRs, CIDRRule{Prefix: c.prefix, Except: slices.Clone(c.except), Proto: proto, Ports: ports, Rule: em.rule,
		Tier: em.tier, Action: em.action})
}

// names emits a domainNames rule; the patterns are shared, never changed.
func (em *emitter) names(patterns []string, proto uint8, ports PortRange) {
	em.dr.Names = append(em.dr.Names, NameRule{Names: patterns, Proto: proto, Ports: ports, Rule: em.rule,
		Tier: em.tier, Action: em.action})
}

func (em *emitter) host(a netip.Addr, proto uint8, port uint16) {
	em.dr.CIDRs = append(em.dr.CIDRs, CIDRRule{Prefix: netip.PrefixFrom(a, a.BitLen()), Proto: proto, Ports: PortRange{port, port}, Rule: em.rule,
		Tier: em.tier, Action: em.action})
}

type protoPorts struct {
	proto uint8
	ports PortRange
}

// fixedPorts are the rule's ports that do not depend on the peer: all of
// them for ingress (named ports resolve against the local endpoint, the
// destination), the numeric ones for egress.
func fixedPorts(r *rule, local *endpoint) []protoPorts {
	if r.anyPort {
		return []protoPorts{{ProtoAny, AllPorts}}
	}
	var out []protoPorts
	for _, s := range r.ports {
		if s.name == "" {
			out = append(out, protoPorts{s.proto, s.ports})
			continue
		}
		if r.dir == Ingress {
			if n, ok := local.resolve(s.name, s.proto); ok {
				out = append(out, protoPorts{s.proto, PortRange{n, n}})
			}
		}
	}
	return out
}

func (e *Engine) emitRule(em *emitter, ep *endpoint, r *rule) {
	for _, pp := range fixedPorts(r, ep) {
		if r.anyPeer {
			em.identity(IdentityAny, pp.proto, pp.ports)
		}
		for _, p := range r.peers {
			for id := range p.identities(ep.key.Cluster) {
				em.identity(id, pp.proto, pp.ports)
			}
		}
		for _, c := range r.cidrs {
			em.cidr(c, pp.proto, pp.ports)
		}
	}
	if r.dir != Egress || !r.named {
		return
	}
	// Egress named ports resolve per destination pod.
	for _, s := range r.ports {
		if s.name == "" {
			continue
		}
		e.emitNamedEgress(em, ep, r, s)
	}
}

// emitNamedEgress allows the destination pods matched by r's peers on the
// number each gives the named port. When every pod of an identity agrees
// on the number, one identity rule does; otherwise each pod's addresses
// get a host CIDR rule, so a pod is never allowed on another pod's number.
func (e *Engine) emitNamedEgress(em *emitter, ep *endpoint, r *rule, s portSpec) {
	matched := map[uint32][]*group{}
	match := func(g *group) {
		for id := range g.ids {
			if id != 0 {
				matched[id] = append(matched[id], g)
			}
		}
	}
	if r.anyPeer {
		for _, g := range e.groups {
			match(g)
		}
	}
	for _, p := range r.peers {
		for g := range p.groups {
			if p.mode == peerSameCluster && g.cluster != ep.key.Cluster {
				continue
			}
			match(g)
		}
	}
	for id, gs := range matched {
		if n, ok := e.identityPort(id, s); ok {
			em.identity(id, s.proto, PortRange{n, n})
			continue
		}
		for _, g := range gs {
			for d := range g.eps {
				if d.identity != id {
					continue
				}
				if n, ok := d.resolve(s.name, s.proto); ok {
					for _, a := range d.ips {
						em.host(a, s.proto, n)
					}
				}
			}
		}
	}
	if len(r.cidrs) > 0 {
		for _, d := range e.endpoints {
			n, ok := d.resolve(s.name, s.proto)
			if !ok {
				continue
			}
			for _, a := range d.ips {
				for _, c := range r.cidrs {
					if c.contains(a) {
						em.host(a, s.proto, n)
						break
					}
				}
			}
		}
	}
}

// identityPort returns the number every endpoint of identity id gives the
// named port, when they all have it and agree.
func (e *Engine) identityPort(id uint32, s portSpec) (uint16, bool) {
	var port uint16
	first := true
	for g := range e.groupsByIdentity[id] {
		for d := range g.eps {
			if d.identity != id {
				continue
			}
			n, ok := d.resolve(s.name, s.proto)
			if !ok || (!first && n != port) {
				return 0, false
			}
			port, first = n, false
		}
	}
	return port, !first
}

// identities yields the identities p matches for a local endpoint of
// cluster.
func (p *peer) identities(cluster string) func(func(uint32) bool) {
	return func(yield func(uint32) bool) {
		if p.mode == peerSameCluster {
			for id := range p.ids[cluster] {
				if !yield(id) {
					return
				}
			}
			return
		}
		for _, ids := range p.ids {
			for id := range ids {
				if !yield(id) {
					return
				}
			}
		}
	}
}

func sortRules(dr *DirectionRules) {
	slices.SortFunc(dr.Identities, func(a, b IdentityRule) int {
		return cmp.Or(cmp.Compare(a.Rule, b.Rule), cmp.Compare(a.Peer, b.Peer), cmp.Compare(a.Proto, b.Proto),
			cmp.Compare(a.Ports.First, b.Ports.First), cmp.Compare(a.Ports.Last, b.Ports.Last))
	})
	slices.SortStableFunc(dr.CIDRs, func(a, b CIDRRule) int {
		return cmp.Or(cmp.Compare(a.Rule, b.Rule), a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()),
			cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Ports.First, b.Ports.First), cmp.Compare(a.Ports.Last, b.Ports.Last))
	})
	dr.CIDRs = slices.CompactFunc(dr.CIDRs, func(a, b CIDRRule) bool {
		return a.Rule == b.Rule && a.Prefix == b.Prefix && a.Proto == b.Proto && a.Ports == b.Ports && slices.Equal(a.Except, b.Except)
	})
}
