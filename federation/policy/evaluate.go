package policy

import "net/netip"

// Evaluate is the map-level lookup every dataplane implements: whether the
// compiled rules of one direction allow a packet to or from a peer with
// identity peer and address peerIP (the unmapped form; the zero Addr
// matches no CIDR rule), with IP protocol proto and destination port port
// (ignored for ICMP/ICMPv6, which only a rule covering every port of every
// protocol allows). It returns the lowest matching RuleID, 0 when the
// direction is not enforced or nothing matched.
func (dr *DirectionRules) Evaluate(peer uint32, peerIP netip.Addr, proto uint8, port uint16) (bool, RuleID) {
	if !dr.Enforced {
		return true, 0
	}
	var best RuleID
	better := func(id RuleID) {
		if best == 0 || id < best {
			best = id
		}
	}
	for i := range dr.Identities {
		r := &dr.Identities[i]
		if (r.Peer == IdentityAny || r.Peer == peer) && protoPortMatch(r.Proto, r.Ports, proto, port) {
			better(r.Rule)
		}
	}
	if peerIP.IsValid() {
		peerIP = peerIP.Unmap()
		for i := range dr.CIDRs {
			r := &dr.CIDRs[i]
			if r.Prefix.Contains(peerIP) && !excepted(r.Except, peerIP) && protoPortMatch(r.Proto, r.Ports, proto, port) {
				better(r.Rule)
			}
		}
	}
	return best != 0, best
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
