// Package policy owns fedmesh's network-policy semantics: Kubernetes
// NetworkPolicy plus federated policy, and the ClusterNetworkPolicy tiers
// (sigs.k8s.io/network-policy-api apis/v1alpha2) around them, compiled per
// local endpoint into the form the dataplane loads, and explained for Reach.
//
// # Order of decision
//
// Each direction is decided on its own side: egress at the source endpoint,
// ingress at the destination endpoint; a flow passes only when both allow.
// A side that is not a federation endpoint (an outside address) enforces
// nothing. For one side the layers are, in order:
//
//  1. Admin tier (ClusterNetworkPolicy with tier Admin): policies in
//     evaluation order (below); the first policy that applies to the local
//     pod and has a rule of this direction matching the flow decides, by
//     its first matching rule (rules in the order written). Accept and Deny
//     are final. Pass skips every later Admin rule and goes to 2.
//  2. NetworkPolicy (Kubernetes semantics, federated NetworkPolicy
//     included): if any NetworkPolicy selects the pod for this direction,
//     it decides (allow if some rule allows, else deny).
//  3. Baseline tier: as the Admin tier. Accept and Deny are final; Pass
//     skips the rest of the Baseline tier, to 4.
//  4. Default: allow.
//
// Explain (Tiers.Explain) names for each direction the layer that decided,
// the deciding tier, policy, priority, rule name and index and action, and
// every Pass rule that handed the decision on.
//
// # Compiled form
//
// The compiler (Engine) gives each local endpoint, per direction, its
// NetworkPolicy allow rules and its tier rules as identity and CIDR rules
// (DirectionRules), a tier rule carrying its tier and action. RuleIDs of
// tier rules come first and follow the order of evaluation above (tier,
// priority, the equal-priority order below, rule order), so among the
// matching rules of a tier the lowest RuleID is the one Explain names;
// a dataplane needs only the minimum per tier over a fixed set of lookups
// (DirectionRules.Evaluate is the reference). RuleOrigin maps every RuleID
// back to its tier, policy, priority, rule index and name, and action, for
// counters and flow events. A ClusterNetworkPolicy change recompiles only
// the local endpoints its old or new version applies to; an endpoint
// change only the users of the tier peers matching its group.
//
// # Readings of the upstream spec
//
// The upstream API reference (apis/v1alpha2 field docs, site-src/
// api-overview.md) and conformance tests (conformance/tests/*admin* and
// *baseline*) leave these points open or implicit; fedmesh reads them so:
//
//   - Equal priorities. The spec lets an implementation apply any of the
//     matching policies. fedmesh orders a tier by ascending priority, then
//     federated policies before synced ones (a federated policy is written
//     by the federation's administrators, who outrank one cluster's), then
//     by cluster name, then by policy name. Deterministic, so Reach, the
//     agents and every replica agree.
//   - A policy with no rules of a direction does not affect that direction
//     ("CNPs with no ingress rules do not affect ingress traffic"); a
//     policy whose rules of a direction all miss the flow falls through to
//     the next policy of the tier, not to a decision.
//   - Pass in the Baseline tier. The CRD allows it; "passes evaluation to
//     the next tier", and after Baseline comes only the default, so a
//     Baseline Pass allows (and Explain shows the Pass).
//   - Accept in the Admin tier on egress is final for egress only; the
//     destination's ingress is still decided at the destination ("any
//     ingress rules at the destination do apply").
//   - A peer with none of its fields set (a CRD newer than this code) fails
//     closed as the peer type's doc says: in an Accept rule it matches
//     nothing; a Deny or Pass rule with such a peer becomes "Deny all":
//     it matches every flow its protocols match, and a Pass rule denies.
//   - Protocols unset match every protocol, ICMP included. A protocol entry
//     (tcp/udp/sctp) with no destinationPort matches every port of that
//     protocol. ICMP and ICMPv6 match no protocol entry (they have no
//     ports).
//   - destinationNamedPort resolves against the destination pod: the local
//     pod on ingress, the peer pod on egress. It matches the flow's
//     protocol and port if the destination pod declares that name for that
//     protocol. To an address outside the federation it matches nothing.
//   - Networks peers match the peer's address whatever it is, pod addresses
//     included (the field doc says cluster-internal traffic is checked
//     too). An IPv4-mapped IPv6 address is compared unmapped.
//   - Nodes peers (experimental channel) match nothing yet: fedmesh does
//     not know node addresses. The API edge rejects them until they are
//     supported.
//   - domainNames peers (experimental channel; egress Accept rules only,
//     as the API edge enforces) compile into NameRules
//     (DirectionRules.Egress.Names), in their tier and with their
//     precedence like any tier rule:
//   - A pattern is an exact name or "*." followed by a name. The wildcard
//     matches ONE OR MORE entire labels, as the upstream DomainName doc
//     says ("*.kubernetes.io" matches "www.kubernetes.io" and
//     "latest.blog.kubernetes.io", never "kubernetes.io" nor
//     "my-kubernetes.io"); issue #22 says "one label level", and we follow
//     upstream. Names compare case-insensitively (DNS does), ignoring one
//     trailing dot on either side (a name from a DNS message is absolute).
//     MatchDomainName is the one implementation; its test holds it to
//     every example of the upstream doc comment.
//   - A domainNames peer matches an egress destination address only after
//     the subject pod itself received that address in a DNS answer (A or
//     AAAA; through a CNAME chain the addresses at its end count for the
//     name the pod asked, not for the chain's targets) for a name matching
//     one of the peer's patterns, until the answer's TTL (with the agent's
//     floor) runs out. Another pod's answer, or an answer for a name the
//     pattern does not match, does not count. A connection opened while
//     the answer was live outlives its expiry (conntrack, as for any rule
//     change); a new one after it is not matched by the rule.
//   - A federated policy's domainNames peer is the same in every cluster
//     the policy applies to (a name has no cluster); a per-peer
//     clusterSelector does not narrow it.
//   - The address is what matters, wherever it points: a name that
//     resolves to a pod address makes the rule match that pod too (the
//     upstream doc leaves cluster-internal names to implementations).
//   - A rule with a domainNames peer and a destinationNamedPort (which the
//     API edge rejects: a name has no named ports) matches nothing through
//     that peer.
//   - An address alone cannot decide a domainNames rule. Explain and Reach
//     take the names the source resolved the destination from
//     (Flow.DstNames) and decide with them; a domainNames rule that would
//     have matched but for the name is listed, in order, in
//     TieredVerdict.IfResolved ("would accept if the destination was
//     resolved from a name matching …"), and the walk falls through to
//     the next rule, as the dataplane does for an address the pod did not
//     learn.
//   - A synced ClusterNetworkPolicy applies to the pods of the cluster it
//     was synced from, with peers in that cluster (as a synced
//     NetworkPolicy). A federated one applies to the pods of every cluster
//     its clusterSelector matches; each namespaces/pods peer may carry a
//     clusterSelector (nil: the subject pod's own cluster; empty: every
//     cluster), as the federated NetworkPolicy's peers do.
//   - Every cluster carries ClusterNameLabel (fedmesh.io/cluster-name) with
//     its own name, over whatever it was registered with, as every
//     namespace carries kubernetes.io/metadata.name: a cluster selector can
//     name one cluster (federation/recommend writes peers so).
//   - Hairpin traffic (a pod to itself) is subject to both directions like
//     any other flow, as api-overview.md says.
package policy
