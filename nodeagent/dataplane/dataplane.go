// Package dataplane owns packet-level enforcement of compiled policy on a
// node: the Dataplane interface the agent programs, the eBPF implementation
// (tcx programs on each local endpoint's host-side veth, C in ./bpf) and an
// in-memory implementation with the same semantics for agent tests and large
// simulations.
//
// Both implementations load the same value: Render turns a Revision plus the
// attached endpoints into Tables, a plain description of every map entry.
// The kernel reads Tables from BPF maps; Memory reads them from Go maps and
// decides with decide.go, a line-by-line twin of bpf/fedmesh.c. The
// differential test holds the two to identical verdicts.
//
// The ipcache is the part that grows with the federation (every endpoint
// of every cluster), so it is never copied: a Revision carries an IPCache,
// an immutable value whose successive versions share all but what changed;
// Tables holds the same value; the eBPF dataplane writes a slot by diffing
// the version the slot holds against the new one, which costs the changes,
// not the size. Everything else in Tables is rendered per Apply from the
// attached endpoints' rules.
//
// Semantics (both implementations):
//   - Order of decision per direction (policy.DirectionRules): the Admin
//     tier's best matching rule (lowest RuleID: the compiler numbers tier
//     rules by precedence) decides if it is Accept or Deny; else (Pass or
//     no match), when NetworkPolicy enforces the direction, a matching
//     NetworkPolicy rule allows and nothing else does; else the Baseline
//     tier's best matching rule decides (Deny denies, Accept and Pass
//     allow); else the packet passes. A direction with neither
//     NetworkPolicy nor tier rules passes every IP packet.
//   - Tier rules live in the same tables as NetworkPolicy rules under
//     their own kinds; each entry's value packs the best Admin and the best
//     Baseline candidate (RuleID and action) of every rule covering it, the
//     covering shorter port prefixes folded in at Render, so one lookup per
//     (peer kind, protocol kind) yields the best candidates and the tier
//     stage keeps the per-tier minimum over its lookups. An endpoint's tier
//     rules may use RuleIDs up to policy.MaxTierRuleID; Render refuses more.
//   - Lookups per packet are fixed, whatever the number of rules: at most
//     the endpoint (an array indexed by ifindex, fm_endpoints_fast, which
//     the verifier inlines; the hash only for an ifindex past 65535 or
//     tables an older agent wrote), conntrack (one LRU hash; skipped when
//     the conntrack filter, a Bloom filter in an array, proves no flow has
//     the packet's key: a new flow, a denied packet; see fm_ct_filter and
//     ctfilter_linux.go), ipcache
//     (host entries in a static cuckoo table in an array, fm_ipcache_hostarr,
//     up to ~235k of them, 5 MiB per slot; in the hash past that; then the
//     trie on a miss, unless the revision has host entries only, as the
//     agent's have: EPF_IPC_HOSTS_ONLY), then up to six lookup shapes (peer x protocol,
//     peer x any, any x protocol, any x any, CIDR class x protocol, CIDR
//     class x any), each answering both layers: the tier layer when the
//     endpoint has tier rules in the direction (the shapes its tier
//     summary names; the summary is inline in the endpoint array, a hash
//     with the endpoint hash), the NetworkPolicy layer when NetworkPolicy
//     enforces the direction (the shapes its Lookups name, stopping at the
//     first allow); the CIDR class (fm_cidr_arr probes, else one trie
//     lookup) is read at most once.
//     A shape costs one index lookup for both layers when the revision
//     fits the array (policy_fixed in the kernel as a static cuckoo table,
//     fm_policy_fixarr_v2, whose ways pair a shape's NetworkPolicy entry
//     with its tier entry, read with inlined array lookups, cuckoo.go; up
//     to ~118k paired entries, 9.5 MiB per slot),
//     else one hash lookup per layer; then, per layer, at most one port
//     hash or trie walk (skipped when no range entry of the key touches
//     the packet's 4096-port block): at most 1+2+6x2+1+6x2 = 28 hash,
//     index or trie lookups (30 through the endpoint hash; an ICMP error
//     one more conntrack lookup), besides the array lookups the verifier
//     inlines; the per-endpoint summaries skip the lookups that cannot
//     match. BenchmarkProgramPerPacketTiers measures the case where all of
//     them run. handle() (parse, conntrack, ipcache) tail calls
//     decide (fm_decide_from_pod, fm_decide_to_pod: a program per
//     direction, verified apart from handle()) with the packet and the
//     stage's inputs in per-CPU scratch; decide runs both layers' lookups
//     and decides from their results in the order above. A tail call is a
//     jump, where a BPF-to-BPF call and its return cost ~9 ns on hosts
//     that mitigate every return. The lookups of an unfolded endpoint run
//     in one global BPF function (fm_policy_stage), verified once.
//     Render folds the shapes (fold.go): any-protocol entries into the
//     TCP, UDP and SCTP ones, and the any peer's single ports and
//     all-ports value into each peer's entry (its ranges walked from its
//     own trie entries). An endpoint whose entries are folded and all in
//     the array (EPF_FOLDED) is read by policy_folded instead (inlined
//     in decide): the peer's entry, the any peer's only when the peer's
//     is not merged, and the CIDR class's, each of the packet's protocol (TCP, UDP,
//     SCTP) or of any protocol (others): at most three index probes, not
//     six. Folded tables read shape by shape decide the same, so programs
//     of an earlier version and the other paths keep reading every shape.
//   - domainNames rules (policy.NameRule, egress tier rules): the address
//     a packet goes to matches a name rule only while the endpoint holds
//     a live answer for it (Learn) for a name one of the rule's patterns
//     matches (policy.MatchDomainName). fqdn.go gives the layout: the
//     endpoint's distinct pattern sets get name slots (at most 16 per
//     endpoint; Render refuses more, the previous revision stays),
//     stable across revisions while the set exists and pinned
//     (fm_fqdn_slots); the rules render under KIND_TIER_FQDN with the slot
//     as peer and fold into the tier stage like identity and CIDR tier
//     entries. A learned address is one fm_fqdn entry (endpoint, address)
//     holding, per slot, the monotonic expiry of the latest answer for a
//     matching name; the dataplane recomputes the entries from the names
//     at every Apply and Learn. Only when the endpoint's tier summary says
//     name rules exist, egress packets cost one more lookup: a probe of
//     fm_fqdn_index, a cuckoo array that answers for live entries it
//     holds whole and, while it holds every key, for absent ones (the
//     agent writes it in place under a sequence word per entry and a
//     control word; fqdnindex_linux.go); when it cannot say, a Bloom
//     filter of fm_fqdn's keys (fm_fqdn_filter) and the fm_fqdn hash
//     lookup decide. Then, per slot whose
//     answer is live, the policy lookups that slot has entries for
//     (one-protocol, any-protocol; the tier summary says which; one of
//     them when folded) in fqdn_stage and fqdn_slot, inlined in decide
//     (no BPF-to-BPF call). An address usually serves one or two
//     slots, so this is the one part of the lookup count that depends on
//     the data (bounded by 1 + 2x16). BenchmarkProgramPerPacketNames
//     measures it. Expiry is checked in the datapath (now < expiry on the
//     coarse clock, so up to a tick late), so a stopped agent extends
//     nothing; established flows outlive it through conntrack. Learn
//     returns after the map write; a sweeper (every 10s) deletes expired
//     entries to free room. A restarted agent adopts the pinned entries as
//     written (their names unknown): they stay in force until they expire,
//     narrowed only where a revision changes a slot's pattern set; an
//     address learned again is merged (the later expiry of each slot).
//     Between two revisions that change slots, fm_fqdn first holds only
//     what both agree on, then the new state after the flip, so no
//     revision reads another's answers.
//   - An enforced NetworkPolicy direction passes what an identity rule or
//     a CIDR rule allows.
//   - Peer identity comes from the ipcache (longest prefix match over all
//     clusters). An address outside it has identity 0, which only
//     IdentityAny rules and CIDR rules match.
//   - Port ranges become prefixes of the destination port in an LPM trie (at
//     most 30 entries per range), so a packet costs a fixed number of
//     lookups whatever the ranges; the most specific port prefix wins. ICMP
//     and other portless protocols match only rules with the full port
//     range. The trie's answers mostly come from a hash index in front of
//     it (per endpoint, direction, peer and protocol: the all-ports rule,
//     single ports inline or in a second hash, whether ranges exist) and a
//     per-endpoint summary of which lookups can match at all; the trie is
//     walked only for ports covered by a range. Tables without the summary
//     (written by an older agent) are read with every lookup in the trie.
//   - Rule counters count new flows per rule ID, and packets denied by a
//     tier Deny rule (any ID; up to 65536 distinct rules per revision in
//     the kernel). Verdict events carry the deciding RuleID (a tier Deny's
//     too), which Compiled.Origin maps to tier, policy, rule and action;
//     an allow or deny decided by no rule carries 0.
//   - ipBlock rules: every distinct prefix and except of one endpoint and
//     direction becomes an LPM entry whose value names the set of rules that
//     hold for addresses whose longest match it is (a "CIDR class"); the
//     class then keys the policy trie like an identity. An IPv6 rule
//     prefix covering ::ffff:0:0/96 does not match IPv4 peers.
//   - The packet clock (conntrack idle times, name expiry, the event
//     token bucket) is jiffies x tick + base, which the verifier inlines
//     (jiffies_linux.go measures the tick once per process): the coarse
//     monotonic clock's scale and resolution without a helper call, which
//     costs ~16 ns on hosts whose returns are mitigated.
//   - Conntrack: a flow allowed at an endpoint in a direction is recorded
//     (LRU); its later packets and its replies pass without policy, so
//     established flows survive a policy change until idle (TCP 6h, other
//     60s, after FIN/RST 10s; measured on the coarse clock, to a tick). ICMP
//     errors pass when the packet they quote belongs to a recorded flow. A
//     packet in the flow's direction with its ends swapped is not a reply.
//     In the kernel one entry per endpoint and pair of ends (ordered, so a
//     packet and its reply build the same key) holds a flow per class
//     (direction xor orientation): one hash lookup per packet, IPv4 in its
//     own table with a 20-byte key.
//   - Endpoint counters: in the kernel a per-CPU array at an index the
//     eBPF dataplane gives each attached endpoint (kept across restarts),
//     so counting costs no hash lookup; what has no index (an interface the
//     revision does not know) is counted by interface in a hash.
//   - Upgrades: per-revision tables keep their layout across versions (the
//     old programs read them until their links are re-pointed). Tier
//     entries use kinds and an endpoint summary bit that programs before
//     tiers never read: until its link is re-pointed, an old program
//     enforces the NetworkPolicy layer exactly as before the upgrade, and
//     the new program reads tables an older agent wrote (no tier bit) as
//     NetworkPolicy only. Likewise name rules: KIND_TIER_FQDN entries,
//     fm_fqdn and the summary bits above 0xff are new; an older program
//     never reads them (its endpoints' name rules match nothing until the
//     link is re-pointed: fail closed), and tables an older agent wrote
//     have none. Soft state
//     (conntrack, fragments, counters, events) pinned with another layout is
//     replaced, logged; the conntrack and endpoints tables of the version
//     before fm_ct4/fm_ct6 and fm_endpoints_v2 are migrated.
//   - Fragments: non-first fragments pass only after their allowed first
//     fragment (or when the direction has neither NetworkPolicy nor tier
//     rules); otherwise they are dropped and counted (ReasonDenyFragment).
//   - Malformed IP packets are dropped in every direction; ARP and IPv6
//     neighbour discovery/MLD always pass; other non-IP frames pass only
//     when the direction is open. A packet on an attached interface that the
//     loaded revision does not know is dropped (fail closed).
//   - Atomic revisions: tables live in two slots; Apply fills the inactive
//     slot and flips one index, so a packet sees one whole revision.
//
// ClusterSetIP translation (ServiceTable, services.go) is socket-level:
// cgroup v2 connect/sendmsg/recvmsg/getpeername hooks (bpf/sock_lb.c,
// loaded by SockLB, twin SockLBMemory) rewrite a connect() or sendto() to a
// VIP into a weighted-random backend before routing, so every packet
// already carries the backend's address and the tc policy programs decide
// against the backend's identity unchanged; established flows cost nothing
// per packet. Unlike tc DNAT it translates only sockets of processes in the
// attached cgroup (the cgroup v2 root or kubepods on a real node, a
// per-node cgroup in the lab), not forwarded traffic. socklb.go gives the
// trade-offs, the attach point and the update protocol in full.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// Endpoint is a local endpoint (pod) whose host-side veth the dataplane
// guards.
type Endpoint struct {
	// ID is the agent's stable key for the endpoint (for example
	// "<cluster>/<namespace>/<pod>"); Revision.Rules uses the same key.
	ID string
	// Interface is the host-side veth name.
	Interface string
}

// Revision is everything the dataplane enforces at one control-plane
// revision: the contract between the agent, which builds one per revision,
// and both implementations. It is applied whole or not at all. The caller
// never changes a Revision (nor its Rules map) it handed over, so
// implementations keep it.
type Revision struct {
	Number uint64
	// IPCache maps the addresses of every cluster to their identities.
	// Successive revisions share all but what changed, and an Apply writes
	// only the entries that differ from what the kernel holds.
	IPCache IPCache
	// Rules per local endpoint, by Endpoint.ID. An attached endpoint missing
	// here is open in both directions (Kubernetes default) with identity 0.
	Rules map[string]policy.EndpointRules
}

// Counter is a packet and byte count.
type Counter struct {
	Packets, Bytes uint64
}

// EndpointCounterKey splits an endpoint's counters.
type EndpointCounterKey struct {
	Direction policy.Direction
	Reason    Reason
}

// Counters are the dataplane's counters at one moment.
type Counters struct {
	// Revision whose rule counters these are.
	Revision uint64
	// Rules counts the packets that opened a flow through each rule of the
	// active revision (established packets are counted per endpoint only).
	Rules map[policy.RuleID]Counter
	// Endpoints by Endpoint.ID: every packet, by direction and reason.
	Endpoints map[string]map[EndpointCounterKey]Counter
}

// Verdict of a packet.
type Verdict uint8

const (
	Allow Verdict = iota
	Deny
)

func (v Verdict) String() string {
	if v == Deny {
		return "deny"
	}
	return "allow"
}

// Reason says why a packet got its verdict. Values match bpf/fedmesh.c.
type Reason uint8

const (
	ReasonAllowPolicy    Reason = 0  // a rule allowed a new flow
	ReasonAllowConntrack Reason = 1  // established flow or reply
	ReasonAllowRelated   Reason = 2  // ICMP error of a known flow
	ReasonAllowOpen      Reason = 3  // direction not enforced
	ReasonAllowControl   Reason = 4  // ARP, neighbour discovery, MLD
	ReasonAllowFragment  Reason = 5  // later fragment of an allowed packet
	ReasonDenyPolicy     Reason = 6  // no rule allows it, or a tier Deny rule denies it
	ReasonDenyMalformed  Reason = 7  // truncated or invalid headers
	ReasonDenyFragment   Reason = 8  // later fragment without an allowed first
	ReasonDenyL3         Reason = 9  // non-IP frame in an enforced direction
	ReasonDenyNoEndpoint Reason = 10 // interface unknown to the loaded revision
	numReasons                  = 11
)

var reasonNames = [numReasons]string{"allow-policy", "allow-conntrack", "allow-related", "allow-open",
	"allow-control", "allow-fragment", "deny-policy", "deny-malformed", "deny-fragment", "deny-l3",
	"deny-no-endpoint"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Verdict is the verdict a reason implies.
func (r Reason) Verdict() Verdict {
	if r >= ReasonDenyPolicy {
		return Deny
	}
	return Allow
}

// Event is one policy decision: a new flow allowed by a rule, a new flow
// of a direction no policy decides (ReasonAllowOpen, no rule: flow logs
// and policy recommendation see all traffic), or a denied packet.
// Established packets raise no event. Events are rate limited
// (Config.EventsPerSecond per CPU) and dropped when the reader lags.
type Event struct {
	EndpointID         string
	Direction          policy.Direction
	Src, Dst           netip.Addr
	SrcIdentity        uint32
	DstIdentity        uint32
	Proto              uint8
	SrcPort, DstPort   uint16
	Verdict            Verdict
	Reason             Reason
	Rule               policy.RuleID
	MonotonicTimestamp uint64 // CLOCK_MONOTONIC ns
}

// Dataplane enforces compiled policy for the node's local endpoints.
//
// Contract: the agent's sync loop is the only caller of Apply, Attach and
// Detach, from one goroutine; implementations serialise them anyway. They
// block on kernel I/O (Apply of 100k entries takes a fraction of a second)
// and must not be called from a packet or event path. Counters may be called
// from any goroutine at any time. Events returns the same channel every time;
// one consumer should drain it; it is closed by Close. None of the methods
// call back into the agent.
type Dataplane interface {
	// Apply makes rev the enforced revision for every attached endpoint, all
	// or nothing: on error the previous revision stays in force.
	Apply(ctx context.Context, rev *Revision) error
	// Attach starts guarding ep. Its rules come from the applied revision
	// (re-rendered at once); attaching an attached ID with the same
	// interface is a no-op, so a restarted agent re-attaches everything.
	Attach(ctx context.Context, ep Endpoint) error
	// Detach stops guarding the endpoint with this ID and forgets its
	// counters. Detaching an unknown ID is a no-op.
	Detach(ctx context.Context, id string) error
	// Counters reads the counters.
	Counters(ctx context.Context) (Counters, error)
	// Learn records addresses endpoints received in DNS answers, for
	// their domainNames rules (policy.NameRule). It returns only once
	// packets see every address (the DNS proxy releases the answer after
	// it); all or nothing; idempotent; for the same endpoint, address and
	// name a later Expires wins. The dataplane matches the names against
	// the endpoint's rules itself, again at every Apply, and enforces
	// Expires in the datapath. Learning for an endpoint not attached (yet)
	// is kept for when it is.
	Learn(ctx context.Context, addrs []LearnedAddr) error
	// Forget drops an endpoint's learned addresses (the endpoint is gone).
	Forget(ctx context.Context, endpoint string) error
	// Events streams verdict events.
	Events() <-chan Event
	// Close releases this process's handles. The eBPF implementation keeps
	// enforcing (pins stay) so a restarted agent re-adopts without a gap.
	Close() error
}

// ErrUnknownEndpoint is returned for an operation on an endpoint that is not
// attached.
var ErrUnknownEndpoint = errors.New("endpoint not attached")
