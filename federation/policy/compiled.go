package policy

import "net/netip"

// This file is the contract between the compiler (this package) and every
// dataplane (nodeagent/dataplane): the compiler produces these values, the
// eBPF and in-memory dataplanes load them as they are. Change it only with
// both sides.

// Direction is the direction of traffic relative to the local endpoint.
type Direction uint8

const (
	// Ingress is traffic entering the local endpoint.
	Ingress Direction = iota
	// Egress is traffic leaving the local endpoint.
	Egress
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// IP protocol numbers a rule may carry. ProtoAny matches every protocol.
const (
	ProtoAny    uint8 = 0
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
	ProtoSCTP   uint8 = 132
)

// IdentityAny as a rule's peer matches every peer identity, world included
// (a rule with no `from`/`to`).
const IdentityAny uint32 = 0

// PortRange is an inclusive destination-port range. {0, 65535} is every port;
// for ICMP (which has no ports) only that full range matches.
type PortRange struct {
	First, Last uint16
}

// AllPorts matches every port.
var AllPorts = PortRange{First: 0, Last: 65535}

// Contains reports whether p is inside the range.
func (r PortRange) Contains(p uint16) bool { return p >= r.First && p <= r.Last }

// RuleID names one compiled rule for counters, flow logs and Explain. IDs are
// dense per compile result, starting at 1; 0 means "no rule" (default verdict).
type RuleID uint32

// RuleOrigin is where a RuleID came from.
type RuleOrigin struct {
	// Policy key: owning cluster ("" for federated), namespace, name.
	Cluster, Namespace, Name string
	// Federated is true for a federated policy.
	Federated bool
	Direction Direction
	// Index of the rule in the policy's ingress or egress list.
	Index int
}

// IdentityRule allows traffic to or from Peer on Proto/Ports.
type IdentityRule struct {
	Peer  uint32 // IdentityAny or a numeric identity
	Proto uint8  // ProtoAny or an IP protocol number
	Ports PortRange
	Rule  RuleID
}

// CIDRRule allows traffic to or from addresses inside Prefix but outside
// every Except prefix (ipBlock.except) on Proto/Ports. Rules are additive: a
// packet passes when any rule allows it; Except only carves out its own rule.
type CIDRRule struct {
	Prefix netip.Prefix
	Except []netip.Prefix
	Proto  uint8
	Ports  PortRange
	Rule   RuleID
}

// DirectionRules is the compiled policy of one endpoint in one direction.
type DirectionRules struct {
	// Enforced is true when some policy selects the endpoint in this
	// direction: only what a rule allows passes (default deny). False means
	// the direction is open (Kubernetes default) and the rules are empty.
	Enforced   bool
	Identities []IdentityRule
	CIDRs      []CIDRRule
}

// EndpointRules is the compiled policy of one local endpoint. A packet in a
// direction is allowed when the direction is not enforced, or an identity
// rule matches (peer identity, proto, port), or a CIDR rule matches (peer IP,
// proto, port).
type EndpointRules struct {
	// Identity of the endpoint itself.
	Identity uint32
	Ingress  DirectionRules
	Egress   DirectionRules
}
