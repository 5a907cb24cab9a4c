package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/fedmesh/fedmesh/federation/identity"
)

// Target is one side of a flow: an endpoint by key, an address, or both
// (an endpoint and which of its addresses the flow uses).
type Target struct {
	Endpoint *EndpointKey
	IP       netip.Addr
}

// Flow is what Explain decides on. Port is the destination port, ignored
// for ICMP/ICMPv6.
type Flow struct {
	Src, Dst Target
	Proto    uint8
	Port     uint16
	// DstNames are the names the source resolved the destination's
	// address from (and whose answers have not expired): the only input
	// a domainNames peer decides on. Nil when unknown; Tiers.Explain then
	// names the domainNames rules that would have matched
	// (TieredVerdict.IfResolved).
	DstNames []string
}

// Reason says why a direction decided as it did.
type Reason uint8

const (
	// ReasonNotSelected: no policy selects the endpoint in this direction,
	// so it is open (Kubernetes default).
	ReasonNotSelected Reason = iota + 1
	// ReasonRuleAllows: a rule of a selecting policy allows the flow.
	ReasonRuleAllows
	// ReasonNoRuleAllows: policies select the endpoint and none allows it.
	ReasonNoRuleAllows
	// ReasonNotEnforced: the side is not a federation endpoint.
	ReasonNotEnforced
)

func (r Reason) String() string {
	switch r {
	case ReasonNotSelected:
		return "not-selected"
	case ReasonRuleAllows:
		return "rule-allows"
	case ReasonNoRuleAllows:
		return "no-rule-allows"
	case ReasonNotEnforced:
		return "not-enforced"
	}
	return "unknown"
}

// DirectionVerdict is the decision of one side: the source's egress or the
// destination's ingress.
type DirectionVerdict struct {
	Direction Direction
	Allowed   bool
	Reason    Reason
	// Rule is the deciding rule (for ReasonRuleAllows): the first allowing
	// rule in policy-key order, the one whose RuleID the dataplane counts.
	Rule RuleOrigin
	// Selecting are the policies selecting the endpoint in this direction.
	Selecting []PolicyKey
}

// String is a sentence for humans.
func (d DirectionVerdict) String() string {
	side := "destination ingress"
	if d.Direction == Egress {
		side = "source egress"
	}
	switch d.Reason {
	case ReasonNotSelected:
		return fmt.Sprintf("%s: allowed: no policy selects the endpoint for %s", side, d.Direction)
	case ReasonNotEnforced:
		return fmt.Sprintf("%s: allowed: not a federation endpoint, nothing enforced", side)
	case ReasonRuleAllows:
		k := PolicyKey{Cluster: d.Rule.Cluster, Namespace: d.Rule.Namespace, Name: d.Rule.Name}
		return fmt.Sprintf("%s: allowed by %s rule %d of policy %s", side, d.Rule.Direction, d.Rule.Index, k)
	default:
		names := make([]string, len(d.Selecting))
		for i, k := range d.Selecting {
			names[i] = k.String()
		}
		return fmt.Sprintf("%s: denied: selected by %s and none of their %s rules allows the flow", side, strings.Join(names, ", "), d.Direction)
	}
}

// Resolved is a side of the flow as the engine resolved it.
type Resolved struct {
	// Endpoint is nil for an external address.
	Endpoint *EndpointKey
	IP       netip.Addr
	// Identity is the endpoint's, or identity.World for an external address.
	Identity uint32
}

// Explanation is the verdict on a flow with its reasons.
type Explanation struct {
	// Allowed only when both directions allow.
	Allowed  bool
	Egress   DirectionVerdict
	Ingress  DirectionVerdict
	Src, Dst Resolved
}

// ErrUnknownEndpoint is returned by Explain for a target endpoint the
// engine does not have.
var ErrUnknownEndpoint = errors.New("unknown endpoint")

// ErrBadTarget is returned by Explain for a target with neither endpoint
// nor address, or with an address the endpoint does not have.
var ErrBadTarget = errors.New("bad flow target")

// Explain decides a flow from the policies directly (not from compiled
// rules) and names the deciding policy and rule per direction. For every
// flow between endpoints with addresses, the verdict and deciding rule
// equal what Evaluate on the compiled rules gives (the property test holds
// the two together).
func (e *Engine) Explain(f Flow) (Explanation, error) {
	src, srcEp, err := e.resolveTarget(f.Src)
	if err != nil {
		return Explanation{}, fmt.Errorf("explain flow: source: %w", err)
	}
	dst, dstEp, err := e.resolveTarget(f.Dst)
	if err != nil {
		return Explanation{}, fmt.Errorf("explain flow: destination: %w", err)
	}
	x := Explanation{Src: src, Dst: dst}
	x.Egress = DirectionVerdict{Direction: Egress, Allowed: true, Reason: ReasonNotEnforced}
	if srcEp != nil {
		x.Egress = e.explainDirection(srcEp, Egress, dstEp, dst.IP, f.Proto, f.Port)
	}
	x.Ingress = DirectionVerdict{Direction: Ingress, Allowed: true, Reason: ReasonNotEnforced}
	if dstEp != nil {
		x.Ingress = e.explainDirection(dstEp, Ingress, srcEp, src.IP, f.Proto, f.Port)
	}
	x.Allowed = x.Egress.Allowed && x.Ingress.Allowed
	return x, nil
}

func (e *Engine) resolveTarget(t Target) (Resolved, *endpoint, error) {
	ip := t.IP.Unmap()
	if t.Endpoint != nil {
		ep := e.endpoints[*t.Endpoint]
		if ep == nil {
			return Resolved{}, nil, fmt.Errorf("%w %s", ErrUnknownEndpoint, *t.Endpoint)
		}
		if ip.IsValid() {
			if !slices.Contains(ep.ips, ip) {
				return Resolved{}, nil, fmt.Errorf("%w: endpoint %s has no address %s", ErrBadTarget, *t.Endpoint, ip)
			}
		} else if len(ep.ips) > 0 {
			ip = ep.ips[0]
		}
		k := ep.key
		return Resolved{Endpoint: &k, IP: ip, Identity: ep.identity}, ep, nil
	}
	if !ip.IsValid() {
		return Resolved{}, nil, fmt.Errorf("%w: neither endpoint nor address", ErrBadTarget)
	}
	if ep := e.byIP[ip]; ep != nil {
		k := ep.key
		return Resolved{Endpoint: &k, IP: ip, Identity: ep.identity}, ep, nil
	}
	return Resolved{IP: ip, Identity: identity.World}, nil, nil
}

func (e *Engine) explainDirection(local *endpoint, dir Direction, peerEp *endpoint, peerIP netip.Addr, proto uint8, port uint16) DirectionVerdict {
	v := DirectionVerdict{Direction: dir}
	cl := e.clusterLabels(local.key.Cluster)
	var allowing *rule
	for _, ps := range e.sortedPolicies() {
		if !ps.applies[dir] || !ps.selects(local.group, cl) {
			continue
		}
		v.Selecting = append(v.Selecting, ps.key)
		if allowing != nil {
			continue
		}
		for _, r := range ps.rules[dir] {
			if e.ruleAllows(r, local, peerEp, peerIP, proto, port) {
				allowing = r
				break
			}
		}
	}
	switch {
	case len(v.Selecting) == 0:
		v.Allowed, v.Reason = true, ReasonNotSelected
	case allowing != nil:
		ps := allowing.pol
		v.Allowed, v.Reason = true, ReasonRuleAllows
		v.Rule = RuleOrigin{Cluster: ps.key.Cluster, Namespace: ps.key.Namespace, Name: ps.key.Name,
			Federated: ps.federated, Direction: dir, Index: allowing.index}
	default:
		v.Reason = ReasonNoRuleAllows
	}
	return v
}

// ruleAllows applies one rule to one flow, looking at the pods themselves:
// named ports resolve against the destination pod.
func (e *Engine) ruleAllows(r *rule, local, peerEp *endpoint, peerIP netip.Addr, proto uint8, port uint16) bool {
	peerMatch := func(p *peer) bool {
		if peerEp == nil || peerEp.identity == 0 || !p.matches(peerEp.group, e.clusterLabels(peerEp.key.Cluster)) {
			return false
		}
		return p.mode != peerSameCluster || peerEp.key.Cluster == local.key.Cluster
	}
	anyPeerMatches := func() bool {
		if r.anyPeer {
			return true
		}
		for _, p := range r.peers {
			if peerMatch(p) {
				return true
			}
		}
		for i := range r.cidrs {
			if r.cidrs[i].contains(peerIP) {
				return true
			}
		}
		return false
	}
	for _, pp := range fixedPorts(r, local) {
		if protoPortMatch(pp.proto, pp.ports, proto, port) {
			return anyPeerMatches()
		}
	}
	if r.dir != Egress || !r.named || peerEp == nil {
		return false
	}
	for _, s := range r.ports {
		if s.name == "" {
			continue
		}
		n, ok := peerEp.resolve(s.name, s.proto)
		if !ok || !protoPortMatch(s.proto, PortRange{n, n}, proto, port) {
			continue
		}
		// A named port only reaches pods the dataplane can address.
		if r.anyPeer && peerEp.identity != 0 {
			return true
		}
		for _, p := range r.peers {
			if peerMatch(p) {
				return true
			}
		}
		for i := range r.cidrs {
			if r.cidrs[i].contains(peerIP) {
				return true
			}
		}
	}
	return false
}
