package policy

import "net/netip"

// Evaluate is the map-level lookup every dataplane implements: whether the
// compiled rules of one direction allow a packet to or from a peer with
// identity peer and address peerIP (the unmapped form; the zero Addr
// matches no CIDR rule), with IP protocol proto and destination port port
// (ignored for ICMP/ICMPv6, which only a rule covering every port of every
// protocol matches), through the order of decision DirectionRules states.
// It returns the deciding RuleID: the Admin or Baseline rule that decided
// (a Baseline Pass included), the lowest matching NetworkPolicy rule, or 0
// when no rule decided (default allow, or the NetworkPolicy default deny).
func (dr *DirectionRules) Evaluate(peer uint32, peerIP netip.Addr, proto uint8, port uint16) (bool, RuleID) {
	return dr.EvaluateResolved(peer, peerIP, proto, port, nil)
}

// EvaluateResolved is Evaluate for a destination the endpoint resolved
// from DNS: names are the names it learned peerIP for whose answers have
// not expired (nil: none). A NameRule matches when one of its patterns
// matches one of names, on its protocol and ports, and then takes part in
// its tier like any tier rule.
func (dr *DirectionRules) EvaluateResolved(peer uint32, peerIP netip.Addr, proto uint8, port uint16, names []string) (bool, RuleID) {
	var best [3]RuleID // by RuleTier
	var act [3]Action
	better := func(t RuleTier, id RuleID, a Action) {
		if best[t] == 0 || id < best[t] {
			best[t], act[t] = id, a
		}
	}
	for i := range dr.Identities {
		r := &dr.Identities[i]
		if (r.Peer == IdentityAny || r.Peer == peer) && protoPortMatch(r.Proto, r.Ports, proto, port) {
			better(r.Tier, r.Rule, r.Action)
		}
	}
	if peerIP.IsValid() {
		peerIP = peerIP.Unmap()
		for i := range dr.CIDRs {
			r := &dr.CIDRs[i]
			if r.Prefix.Contains(peerIP) && !excepted(r.Except, peerIP) && protoPortMatch(r.Proto, r.Ports, proto, port) {
				better(r.Tier, r.Rule, r.Action)
			}
		}
	}
	if len(names) > 0 {
		for i := range dr.Names {
			r := &dr.Names[i]
			if protoPortMatch(r.Proto, r.Ports, proto, port) && r.matchesAny(names) {
				better(r.Tier, r.Rule, r.Action)
			}
		}
	}
	if best[TierAdmin] != 0 && act[TierAdmin] != ActionPass {
		return act[TierAdmin] == ActionAccept, best[TierAdmin]
	}
	if dr.Enforced {
		return best[TierNetworkPolicy] != 0, best[TierNetworkPolicy]
	}
	if best[TierBaseline] != 0 {
		return act[TierBaseline] != ActionDeny, best[TierBaseline]
	}
	return true, 0
}

// Evaluate looks up direction dir of the endpoint's rules; see
// DirectionRules.Evaluate.
func (r *EndpointRules) Evaluate(dir Direction, peer uint32, peerIP netip.Addr, proto uint8, port uint16) (bool, RuleID) {
	if dir == Egress {
		return r.Egress.Evaluate(peer, peerIP, proto, port)
	}
	return r.Ingress.Evaluate(peer, peerIP, proto, port)
}

func excepted(except []netip.Prefix, a netip.Addr) bool {
	for _, x := range except {
		if x.Contains(a) {
			return true
		}
	}
	return false
}

func protoPortMatch(ruleProto uint8, ports PortRange, proto uint8, port uint16) bool {
	if ruleProto != ProtoAny && ruleProto != proto {
		return false
	}
	if proto == ProtoICMP || proto == ProtoICMPv6 {
		return ports == AllPorts
	}
	return ports.Contains(port)
}

func (r *NameRule) matchesAny(names []string) bool {
	for _, n := range names {
		if r.MatchesName(n) {
			return true
		}
	}
	return false
}
