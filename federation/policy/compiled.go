package policy

import (
	"net/netip"

	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

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

// MaxTierRuleID bounds the RuleIDs of tier rules (RuleTier Admin or
// Baseline): a dataplane packs one Admin and one Baseline candidate, each
// an ID and an action, into one 32-bit lookup value. The compiler numbers
// tier rules first, so only an endpoint with more tier rules than this in
// its compile result exceeds it; the dataplane then refuses the revision
// (the previous one stays enforced) instead of enforcing part of it.
const MaxTierRuleID RuleID = 1<<14 - 1

// RuleTier is the layer of the order of decision a compiled rule belongs to.
type RuleTier uint8

const (
	// TierNetworkPolicy rules are NetworkPolicy allow rules (the zero value,
	// so rules written before tiers existed keep their meaning).
	TierNetworkPolicy RuleTier = iota
	// TierAdmin rules are ClusterNetworkPolicy Admin tier rules.
	TierAdmin
	// TierBaseline rules are ClusterNetworkPolicy Baseline tier rules.
	TierBaseline
)

func (t RuleTier) String() string {
	switch t {
	case TierAdmin:
		return "admin"
	case TierBaseline:
		return "baseline"
	}
	return "networkpolicy"
}

// Action is what a matching compiled rule does.
type Action uint8

const (
	// ActionAllow is a NetworkPolicy rule's: allow (the zero value).
	ActionAllow Action = iota
	// ActionAccept, ActionDeny and ActionPass are a tier rule's.
	ActionAccept
	ActionDeny
	ActionPass
)

func (a Action) String() string {
	switch a {
	case ActionAccept:
		return "Accept"
	case ActionDeny:
		return "Deny"
	case ActionPass:
		return "Pass"
	}
	return "Allow"
}

// RuleOrigin is where a RuleID came from.
type RuleOrigin struct {
	// Policy key: owning cluster ("" for federated), namespace ("" for a
	// ClusterNetworkPolicy), name.
	Cluster, Namespace, Name string
	// Federated is true for a federated policy.
	Federated bool
	Direction Direction
	// Index of the rule in the policy's ingress or egress list.
	Index int
	// Tier is the layer the rule belongs to; the fields below are set for
	// tier rules only.
	Tier RuleTier
	// Priority of the ClusterNetworkPolicy.
	Priority int32
	// RuleName is the rule's name ("" when it has none).
	RuleName string
	// Action of the rule: Allow for a NetworkPolicy rule.
	Action Action
}

// TierRule is the ClusterNetworkPolicy rule o names, as Tiers.Explain names
// it; ok is false for a NetworkPolicy rule.
func (o RuleOrigin) TierRule() (TierRule, bool) {
	var tier cnpv1.Tier
	switch o.Tier {
	case TierAdmin:
		tier = cnpv1.AdminTier
	case TierBaseline:
		tier = cnpv1.BaselineTier
	default:
		return TierRule{}, false
	}
	return TierRule{Tier: tier, Policy: ClusterPolicyKey{Cluster: o.Cluster, Name: o.Name}, Priority: o.Priority,
		Direction: o.Direction, Index: o.Index, Name: o.RuleName, Action: cnpAction(o.Action)}, true
}

// IdentityRule matches traffic to or from Peer on Proto/Ports. A
// NetworkPolicy rule (Tier TierNetworkPolicy) allows it; a tier rule does
// its Action.
type IdentityRule struct {
	Peer  uint32 // IdentityAny or a numeric identity
	Proto uint8  // ProtoAny or an IP protocol number
	Ports PortRange
	Rule  RuleID
	// Tier and Action of the rule (zero: a NetworkPolicy allow rule).
	Tier   RuleTier
	Action Action
}

// CIDRRule matches traffic to or from addresses inside Prefix but outside
// every Except prefix (ipBlock.except) on Proto/Ports. NetworkPolicy rules
// are additive: a packet passes when any rule allows it; Except only
// carves out its own rule. Tier rules have no Except.
type CIDRRule struct {
	Prefix netip.Prefix
	Except []netip.Prefix
	Proto  uint8
	Ports  PortRange
	Rule   RuleID
	Tier   RuleTier
	Action Action
}

// DirectionRules is the compiled policy of one endpoint in one direction:
// the ClusterNetworkPolicy tier rules and the NetworkPolicy allow rules,
// each tier rule's precedence folded into its RuleID.
//
// The order of decision (Evaluate is its reference implementation for
// dataplanes):
//  1. Among the matching Admin rules, the lowest RuleID decides (the
//     compiler numbers tier rules in evaluation order: priority, then the
//     policy order doc.go gives for equal priorities, then rule order).
//     Accept allows, Deny denies, Pass goes on to 2.
//  2. If Enforced (some NetworkPolicy selects the endpoint in this
//     direction): allowed when some NetworkPolicy rule matches, else denied.
//  3. Among the matching Baseline rules, the lowest RuleID decides: Deny
//     denies, Accept and Pass allow.
//  4. Allowed.
type DirectionRules struct {
	// Enforced is true when some NetworkPolicy selects the endpoint in this
	// direction: only what a NetworkPolicy rule allows passes (default
	// deny), unless a tier rule decides first. False means the
	// NetworkPolicy layer is open (Kubernetes default).
	Enforced   bool
	Identities []IdentityRule
	CIDRs      []CIDRRule
	// Names are the domainNames rules (egress only): they match addresses
	// the endpoint learned from DNS answers, which only the dataplane
	// knows, so Evaluate takes the names an address was learned for.
	Names []NameRule
}

// NameRule matches egress traffic to addresses the endpoint learned from
// DNS answers for a name matching one of Names, on Proto/Ports. Tier rules
// only (Admin or Baseline, Accept): ClusterNetworkPolicy allows domainNames
// peers only in Accept rules.
type NameRule struct {
	// Names are canonical patterns: lower case, no trailing dot:
	// "api.example.com", "*.example.com".
	Names  []string
	Proto  uint8
	Ports  PortRange
	Rule   RuleID
	Tier   RuleTier
	Action Action
}

// MatchesName reports whether some pattern of r matches name.
func (r *NameRule) MatchesName(name string) bool {
	for _, p := range r.Names {
		if MatchDomainName(p, name) {
			return true
		}
	}
	return false
}

// MatchesName reports whether some NameRule of d matches name (whatever
// its protocol and ports): the DNS proxy answers only such names when d
// has any NameRule.
func (d DirectionRules) MatchesName(name string) bool {
	for i := range d.Names {
		if d.Names[i].MatchesName(name) {
			return true
		}
	}
	return false
}

// EndpointRules is the compiled policy of one local endpoint: per
// direction, see DirectionRules.
type EndpointRules struct {
	// Identity of the endpoint itself.
	Identity uint32
	Ingress  DirectionRules
	Egress   DirectionRules
}

func cnpAction(a Action) cnpv1.ClusterNetworkPolicyRuleAction {
	switch a {
	case ActionAccept:
		return cnpv1.ClusterNetworkPolicyRuleActionAccept
	case ActionDeny:
		return cnpv1.ClusterNetworkPolicyRuleActionDeny
	case ActionPass:
		return cnpv1.ClusterNetworkPolicyRuleActionPass
	}
	return ""
}

func actionOf(a cnpv1.ClusterNetworkPolicyRuleAction) Action {
	switch a {
	case cnpv1.ClusterNetworkPolicyRuleActionAccept:
		return ActionAccept
	case cnpv1.ClusterNetworkPolicyRuleActionDeny:
		return ActionDeny
	case cnpv1.ClusterNetworkPolicyRuleActionPass:
		return ActionPass
	}
	return ActionAllow
}
