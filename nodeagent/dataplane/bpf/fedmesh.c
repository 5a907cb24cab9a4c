// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// fedmesh policy enforcement on the host-side veth of each local endpoint.
//
// fm_from_pod runs on tcx ingress of the host veth (traffic leaving the pod:
// the endpoint's egress policy); fm_to_pod runs on tcx egress (traffic
// entering the pod: its ingress policy). The Go twin of this file is
// nodeagent/dataplane/decide.go: every rule below is mirrored there and the
// differential test holds the two to the same verdicts. Change both together.
//
// Documented choices (see also the package doc):
//   - Malformed IP packets (truncated L3/L4 header, IHL < 5, total length
//     beyond the frame, too many IPv6 extension headers) are dropped in every
//     direction, enforced or not. Headers are read with load(): directly
//     from the packet's linear part or else bpf_skb_load_bytes, bounds
//     checked either way, so no read can leave the packet.
//   - ARP and IPv6 neighbour discovery / MLD always pass. Other non-IP frames
//     pass only when the direction is not enforced.
//   - IPv4/IPv6 fragments: the first fragment is judged like any packet and,
//     when allowed, records (endpoint, direction, addresses, id, proto) in an
//     LRU fragment map; non-first fragments pass only when that record exists
//     (or the direction is open) and are otherwise dropped with a counter.
//     Fragments arriving before their first fragment are therefore dropped.
//   - Conntrack: a packet of a flow already allowed at this endpoint (same
//     direction) or a reply to one (opposite direction) passes without a
//     policy lookup, so established flows survive a policy change until they
//     go idle or close (Calico/Cilium behaviour). ICMP errors pass when the
//     packet they quote belongs to such a flow. A packet travelling the
//     same direction as a flow but with its ends swapped is not a reply.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TCX_NEXT -1
#define TCX_DROP 2

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define KIND_IDENTITY 0
#define KIND_CIDR 1
// ClusterNetworkPolicy tier entries, in the same tables under their own
// kinds (programs before tiers never look them up). A value packs the best
// Admin candidate (high 16 bits) and Baseline candidate (low 16 bits), each
// rule << 2 | TIER_*, 0 for none: the lower, the higher its precedence.
// Entries are folded at render time, so the longest port prefix carries the
// best candidate of every prefix covering it.
#define KIND_TIER_IDENTITY 2
#define KIND_TIER_CIDR 3
// One fixed-table entry per endpoint and direction with tier entries:
// all_rule holds the EPL_* bits of the tier lookups that can match.
#define KIND_TIER_SUMMARY 4
// domainNames rules (egress): peer is the endpoint's name slot (0 to
// FQDN_SLOTS-1), the value a tier value. They match a destination only
// through a live fm_fqdn entry for the endpoint and address.
#define KIND_TIER_FQDN 5
#define FQDN_SLOTS 16

#define TIER_ACCEPT 1
#define TIER_DENY 2
#define TIER_PASS 3

#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define PROTO_SCTP 132

// Reasons: keep in sync with reason.go.
enum {
	REASON_ALLOW_POLICY = 0,
	REASON_ALLOW_CT = 1,
	REASON_ALLOW_RELATED = 2,
	REASON_ALLOW_OPEN = 3,
	REASON_ALLOW_CONTROL = 4,
	REASON_ALLOW_FRAG = 5,
	REASON_DENY_POLICY = 6,
	REASON_DENY_MALFORMED = 7,
	REASON_DENY_FRAG = 8,
	REASON_DENY_L3 = 9,
	REASON_DENY_NO_ENDPOINT = 10,
	NREASONS = 11,
};

#define CT_CLOSING 1

#define POLICY_FIXED_BITS 96
#define POLICY_ALL_BITS 112
#define CIDR_FIXED_BITS 64

#define MAX_COUNTED_RULES 65536 // distinct rules per revision, any IDs
#define SLOTS 2

// Tunables set by the loader (CollectionSpec.Variables).
volatile const __u64 ct_timeout_tcp_ns = 6ULL * 3600 * 1000000000ULL;
volatile const __u64 ct_timeout_other_ns = 60ULL * 1000000000ULL;
volatile const __u64 ct_timeout_closing_ns = 10ULL * 1000000000ULL;
volatile const __u64 events_per_sec = 1000;
volatile const __u64 events_burst = 100;
// event_token_ns is 1e9 / events_per_sec (the loader computes it): a packet
// between two tokens compares, and only a refill divides.
volatile const __u64 event_token_ns = 1000000;
// The packet clock: with jiffy_ns set (the loader measured the tick), now
// is bpf_jiffies64() * jiffy_ns + jiffy_base_ns, which the verifier inlines
// (a load), on CLOCK_MONOTONIC's scale within a tick; bpf_ktime_get_coarse_ns
// is a helper call, ~16 ns a packet on hosts whose every return is
// mitigated. 0: the coarse clock (what the loader falls back to).
volatile const __u64 jiffy_ns = 0;
volatile const __u64 jiffy_base_ns = 0;

struct ipcache_key {
	__u32 prefixlen;
	__u8 ip[16];
};

struct host_key {
	__u8 ip[16];
};

struct ipcache_val {
	__u32 identity;
};

struct policy_key {
	__u32 prefixlen;
	__u32 ifindex;
	__u8 dir;
	__u8 kind;
	__u8 proto;
	__u8 pad;
	__u32 peer;
	__u16 port; // network byte order so that prefixes cover ranges
	__u16 pad2;
};

struct policy_val {
	__u32 rule;
};

struct cidr_key {
	__u32 prefixlen;
	__u32 ifindex;
	__u8 dir;
	__u8 pad[3];
	__u8 ip[16];
};

struct cidr_val {
	__u32 class_id;
};

struct endpoint_val {
	__u32 identity;
	__u8 enforced[2]; // indexed by DIR_*
	__u8 lookups[2];  // EPL_* by DIR_*: which policy lookups can match
	__u32 stats;      // the endpoint's fm_ep_stats index; 0: count in fm_ep_counters
};

// fm_endpoints_fast: the endpoints again, in an array indexed by ifindex
// (below EP_FAST_ENTRIES), with what the tier stage would otherwise look up
// in the KIND_TIER_SUMMARY entry. An array lookup is a bounds check the
// verifier inlines; a hash lookup is three calls (~30 ns here). Entries
// without EPF_VALID (an ifindex with no endpoint, or tables an older agent
// wrote) send the packet to the hash, which stays complete.
#define EP_FAST_ENTRIES 65536
#define EPF_VALID 0x1
#define EPF_PF_ARRAY 0x2 // the revision's policy_fixed entries are all in fm_policy_fixarr (before pairs)
#define EPF_IPC_ARRAY 0x4 // the revision's host ipcache entries are all in fm_ipcache_hostarr
#define EPF_PF_PAIRS 0x8  // the revision's policy_fixed entries are all in fm_policy_fixarr_v2
// EPF_FOLDED: the endpoint's entries are folded (fold.go), so with
// EPF_PF_PAIRS a packet reads only the narrowest shapes: its protocol's
// (TCP, UDP, SCTP) or any protocol's (others), and the any-peer shape only
// when the peer's entry lacks PF_ALL_MERGED.
#define EPF_FOLDED 0x10
// EPF_IPC_HOSTS_ONLY: the revision's ipcache has host entries only, so an
// address missing from them is missing from fm_ipcache too, whose trie
// lookup (a call, ~15 ns here) is skipped. The agent writes only hosts.
#define EPF_IPC_HOSTS_ONLY 0x20
struct endpoint_fast {
	struct endpoint_val ep;
	__u32 flags;                // EPF_*
	__u32 tier_mask[2];         // by DIR_*: the KIND_TIER_SUMMARY mask, 0 if none
	__u16 fqdn_proto_slots[2];  // by DIR_*: the summary's rules[0]
	__u16 fqdn_any_slots[2];    // by DIR_*: the summary's rules[1]
};

// endpoint_val.lookups: the policy lookups that can match anything for this
// endpoint and direction, so the others are skipped. A table written by an
// older agent has 0 here (no EPL_VALID): every lookup then runs, in the trie.
#define EPL_PEER_PROTO 0x01 // identity rules for a peer, one protocol
#define EPL_PEER_ANY 0x02   // identity rules for a peer, any protocol
#define EPL_ALL_PROTO 0x04  // rules for any identity, one protocol
#define EPL_ALL_ANY 0x08    // rules for any identity, any protocol
#define EPL_CIDR_PROTO 0x10 // CIDR rules, one protocol
#define EPL_CIDR_ANY 0x20   // CIDR rules, any protocol
#define EPL_IDENTITY (EPL_PEER_PROTO | EPL_PEER_ANY | EPL_ALL_PROTO | EPL_ALL_ANY)
#define EPL_CIDR (EPL_CIDR_PROTO | EPL_CIDR_ANY)
#define EPL_TIER 0x40       // tier entries exist (needs EPL_VALID): see KIND_TIER_SUMMARY
#define EPL_VALID 0x80      // the fast tables of this revision are filled
// Bits of the KIND_TIER_SUMMARY mask only: name rules exist, one protocol /
// any protocol. Programs before domainNames ignore them.
#define EPL_FQDN_PROTO 0x100
#define EPL_FQDN_ANY 0x200

// The fast path in front of the policy trie. policy_fixed holds, for each
// (endpoint, direction, kind, protocol, peer) with any policy entry, the
// rule of its all-ports entry, its single-port entries (inline when there
// are at most PF_INLINE, else in policy_port, a hash) and whether it has
// range entries (only in the trie). The trie still holds every entry: it
// answers range lookups and serves older programs.
#define PF_EXACT 0x1  // single-port entries are in policy_port
#define PF_RANGES 0x2 // range entries are in the trie
// PF_BLOCKS: blocks is filled: bit i is set when a range entry covers a port
// of block i (ports i*4096 to i*4096+4095), so other ports skip the trie
// walk. Older agents wrote 0 there (padding) and no PF_BLOCKS.
#define PF_BLOCKS 0x4
// PF_ALL_MERGED: the entry holds the any-peer entry of its protocol too
// (fold.go); on either half of a pair, it is the pair's.
#define PF_ALL_MERGED 0x8
// PF_ALL_RANGES: with PF_ALL_MERGED, the any-peer entry has port ranges
// (in blocks too), left in its own trie entries: a port in blocks walks both.
#define PF_ALL_RANGES 0x10
#define PF_INLINE 4

struct policy_port_key {
	__u32 ifindex;
	__u8 dir;
	__u8 kind;
	__u8 proto;
	__u8 pad;
	__u32 peer;
	__u16 port; // network byte order, as in policy_key
	__u16 pad2;
};

// policy_fixed's key is the first 12 bytes of a policy_port_key.
struct policy_fixed_key {
	__u32 ifindex;
	__u8 dir;
	__u8 kind;
	__u8 proto;
	__u8 pad;
	__u32 peer;
};

struct policy_fixed_val {
	__u32 all_rule; // rule of the all-ports entry, 0 if none
	__u8 flags;     // PF_*
	__u8 nports;    // ports[:nports] are single-port entries
	__u16 ports[PF_INLINE]; // network byte order
	__u16 blocks;           // with PF_BLOCKS, see there
	__u32 rules[PF_INLINE];
};

// fm_ipcache_hostarr: the host ipcache entries again, as a static cuckoo
// table like fm_policy_fixarr_v2 (ipc_find, cuckoo.go). Its size is fixed:
// a revision with more host entries than it holds stays in the hash.
#define IPC_WAYS 4
#define IPC_BUCKETS (1 << 16)
struct ipc_bucket {
	struct host_key k[IPC_WAYS]; // :: is a free way
	__u32 v[IPC_WAYS];           // identity
};

// fm_cidr_arr: the CIDR trie's entries again, as a static cuckoo table
// (cidr_find, cuckoo.go) keyed by (endpoint, direction, prefix length,
// masked address), and fm_cidr_lens, per endpoint (an array by ifindex,
// like fm_endpoints_fast) and direction, the distinct prefix lengths its
// entries have, longest first. Probing each length, longest first, and
// taking the first hit is the trie's longest-prefix match: a few inlined
// array probes where the trie walk is a call of ~100 ns with 1,000
// prefixes. n = 0 (an endpoint with more than CIDR_PROBES lengths, a
// revision whose entries did not all fit, tables an older agent wrote)
// sends the packet to the trie, which stays complete.
#define CIDRA_WAYS 4
#define CIDRA_BUCKETS (1 << 12)
#define CIDR_PROBES 7
struct cidr_akey {
	__u32 ifindex; // 0: a free way
	__u8 dir;
	__u8 bits; // of the 16-byte (IPv4-mapped) address
	__u16 pad;
	__u8 ip[16]; // masked to bits
};

struct cidr_bucket {
	struct cidr_akey k[CIDRA_WAYS];
	__u32 v[CIDRA_WAYS]; // CIDR class
};

struct cidr_lens {
	__u8 n[2];                   // by DIR_*: how many of bits[dir] are set
	__u8 bits[2][CIDR_PROBES];   // longest first
};

// fm_policy_fixarr_v2: policy_fixed again, as a static cuckoo table in an
// array (two candidate buckets of PFA_WAYS entries, chosen by pfa_hash):
// an array lookup is inlined by the verifier, a hash lookup is three calls,
// ~30 ns on hosts whose every return is mitigated. A way pairs the
// NetworkPolicy entry of a key with its tier entry: the tier kinds fold onto
// KIND_IDENTITY and KIND_CIDR (half PFA_TIER), so a packet denied by tier
// and NetworkPolicy rules probes the table once per lookup shape, six
// times, not twelve. Other kinds keep their key, in half PFA_NP. An absent
// half is all zero, which reads as no entry. The Go side places every
// entry of a revision (cuckoo.go, the same hash) and marks the endpoints
// with EPF_PF_PAIRS when all of them fit; otherwise, and for tables an
// older agent wrote, the hash answers as before. Per revision like every
// table: written while its slot is inactive, never in place under a
// reader. (fm_policy_fixarr, one entry per way, is what programs before
// the pairs read, with EPF_PF_ARRAY.)
#define PFA_WAYS 4
#define PFA_BUCKETS (1 << 15)
#define PFA_NP 0
#define PFA_TIER 1
struct pf_pair {
	struct policy_fixed_val v[2]; // by PFA_*
};

struct pf_bucket {
	struct policy_fixed_key k[PFA_WAYS]; // ifindex 0: empty way
	struct pf_pair v[PFA_WAYS];
};

// Conntrack: one entry per (endpoint, protocol, pair of ends), whichever
// way a packet travels. The key orders the two (address, port) ends: end a
// sorts first (address bytes in network order, then host-order port), so a
// packet and its reply build the same key and one lookup answers both the
// "same flow" and the "reply" question; looking up the tuple and then its
// reverse cost a second hash of the key (~20 ns for every new flow and
// every denied packet). IPv4 flows live in fm_ct4 with 4-byte addresses:
// the key is hashed on every packet and 20 bytes hash faster than 44.
//
// A packet's orientation is 0 when its source is end a, 1 when it is end b.
// The value holds two independent flows, one per class = direction ^
// orientation: a flow's packets (direction d, orientation o) and its
// replies (d ^ 1, o ^ 1) share a class, while a packet in the flow's
// direction with the ends swapped (d, o ^ 1) has the other one, so it is
// not taken for a reply. When both ends are equal the orientation is
// ambiguous and a packet matches either class (its tuple is its own
// reverse), as two lookups, tuple then reverse, would have matched.
struct ct4_key {
	__u32 ifindex;
	__u8 proto;
	__u8 pad;
	__u16 port_a;
	__u16 port_b;
	__u16 pad2;
	__u32 a; // network order
	__u32 b;
};

struct ct6_key {
	__u32 ifindex;
	__u8 proto;
	__u8 pad;
	__u16 port_a;
	__u16 port_b;
	__u16 pad2;
	__u8 a[16];
	__u8 b[16];
};

// One class of a conntrack entry; last_seen 0 means no flow.
struct ct_flow {
	__u64 last_seen; // coarse monotonic clock
	__u32 rule;      // the rule that opened the flow (0: open direction)
	__u32 flags;     // CT_*
};

struct ct_val {
	struct ct_flow flow[2]; // by class
};

#define CT_ORIENT_A 0
#define CT_ORIENT_B 1
#define CT_ORIENT_TIE 2

struct frag_key {
	__u32 ifindex;
	__u8 dir;
	__u8 proto;
	__u16 pad;
	__u32 id;
	__u8 src[16];
	__u8 dst[16];
};

struct frag_val {
	__u64 created;
};

// fm_fqdn: the addresses each endpoint learned from DNS answers (the
// agent's DNS proxy hands them over before it releases the answer). Per
// name slot of the endpoint, the coarse monotonic time the latest answer
// for a name the slot's patterns match expires; the slot matches while
// now < expires. Not per revision: the agent rewrites the masks when a
// revision changes the slots, and sweeps what expired.
struct fqdn_key {
	__u32 ifindex;
	__u8 ip[16]; // IPv4-mapped for IPv4
};

struct fqdn_val {
	__u32 mask; // bit s: expires[s] holds an answer
	__u32 pad;
	__u64 expires[FQDN_SLOTS];
};

// fm_fqdn_slots: the pattern-set hash behind each (endpoint, slot), which
// only the agent reads: a restarted agent keeps the slot meanings
// fm_fqdn's entries were written for.
struct fqdn_slot_key {
	__u32 ifindex;
	__u32 slot;
};

struct ep_counter_key {
	__u32 ifindex;
	__u8 dir;
	__u8 reason;
	__u16 pad;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

// Per-endpoint counters live in a per-CPU array at an index the Go side
// gives each attached endpoint (endpoint_val.stats), so counting a packet
// is an array access the verifier inlines instead of a hash lookup.
// fm_ep_counters, keyed by interface, counts what has no index: packets of
// an interface the revision does not know, and endpoints of tables written
// before an index was given (or when every index is taken).
#define EP_STATS_ENTRIES (1 + 4096) // index 0 is "none"; 4096 endpoints

struct ep_stats {
	struct counter c[2][NREASONS]; // by DIR_*, REASON_*
};

struct event {
	__u64 ts;
	__u8 src[16];
	__u8 dst[16];
	__u32 ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u8 verdict; // 0 allow, 1 deny
	__u8 reason;
};

struct bucket {
	__u64 tokens;
	__u64 last_ns;
};

struct state {
	__u32 active; // index of the slot every table is read from
	__u32 pad;
	__u64 revision;
};

// clang 14 emits the types that inner-map definitions point to as forward
// declarations; this read-only anchor makes it emit them in full.
struct btf_anchor {
	struct ipcache_key a;
	struct ipcache_val b;
	struct policy_key c;
	struct policy_val d;
	struct cidr_key e;
	struct cidr_val f;
	struct endpoint_val g;
	struct counter h;
	struct ep_stats m;
	struct host_key i;
	struct policy_port_key j;
	struct policy_fixed_key k;
	struct policy_fixed_val l;
	struct endpoint_fast n;
	struct pf_bucket o;
	struct ipc_bucket p;
	struct cidr_bucket q;
	struct cidr_lens r;
};
volatile const struct btf_anchor fm_btf_anchor;

// Per-revision tables (types only: the Go side creates the inner maps). Each outer map has SLOTS inner maps; the Go side fills
// the inactive slot, then flips state.active, so a packet reads one whole
// revision (it loads `active` once).
#define IPCACHE_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_LPM_TRIE); \
	__uint(max_entries, 1 << 20); \
	__uint(map_flags, BPF_F_NO_PREALLOC); \
	__type(key, struct ipcache_key); \
	__type(value, struct ipcache_val);

// Host entries (/32, /128) live in a hash: they are most of the ipcache and
// always the longest match, so a hash hit is what the trie would return.
#define IPCACHE_HOST_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_HASH); \
	__uint(max_entries, 1 << 20); \
	__uint(map_flags, BPF_F_NO_PREALLOC); \
	__type(key, struct host_key); \
	__type(value, struct ipcache_val);

#define POLICY_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_LPM_TRIE); \
	__uint(max_entries, 1 << 20); \
	__uint(map_flags, BPF_F_NO_PREALLOC); \
	__type(key, struct policy_key); \
	__type(value, struct policy_val);

#define POLICY_FIXED_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_HASH); \
	__uint(max_entries, 1 << 20); \
	__uint(map_flags, BPF_F_NO_PREALLOC); \
	__type(key, struct policy_fixed_key); \
	__type(value, struct policy_fixed_val);

#define POLICY_PORT_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_HASH); \
	__uint(max_entries, 1 << 20); \
	__uint(map_flags, BPF_F_NO_PREALLOC); \
	__type(key, struct policy_port_key); \
	__type(value, struct policy_val);

#define CIDR_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_LPM_TRIE); \
	__uint(max_entries, 1 << 18); \
	__uint(map_flags, BPF_F_NO_PREALLOC); \
	__type(key, struct cidr_key); \
	__type(value, struct cidr_val);

#define ENDPOINTS_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_HASH); \
	__uint(max_entries, 4096); \
	__type(key, __u32); \
	__type(value, struct endpoint_val);

#define POLICY_FIXARR_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_ARRAY); \
	__uint(max_entries, PFA_BUCKETS); \
	__type(key, __u32); \
	__type(value, struct pf_bucket);

#define IPCACHE_HOSTARR_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_ARRAY); \
	__uint(max_entries, IPC_BUCKETS); \
	__type(key, __u32); \
	__type(value, struct ipc_bucket);

#define CIDR_ARR_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_ARRAY); \
	__uint(max_entries, CIDRA_BUCKETS); \
	__type(key, __u32); \
	__type(value, struct cidr_bucket);

#define CIDR_LENS_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_ARRAY); \
	__uint(max_entries, EP_FAST_ENTRIES); \
	__type(key, __u32); \
	__type(value, struct cidr_lens);

#define ENDPOINTS_FAST_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_ARRAY); \
	__uint(max_entries, EP_FAST_ENTRIES); \
	__type(key, __u32); \
	__type(value, struct endpoint_fast);

// Keyed by rule ID and filled by the Go side with every rule of the
// revision (the program only increments), so rule IDs need not be small.
#define RULE_COUNTERS_INNER_DEF \
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH); \
	__uint(max_entries, MAX_COUNTED_RULES); \
	__uint(map_flags, BPF_F_NO_PREALLOC); \
	__type(key, __u32); \
	__type(value, struct counter);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { IPCACHE_INNER_DEF });
} fm_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { IPCACHE_HOST_INNER_DEF });
} fm_ipcache_host SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { POLICY_INNER_DEF });
} fm_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { POLICY_FIXED_INNER_DEF });
} fm_policy_fixed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { POLICY_PORT_INNER_DEF });
} fm_policy_port SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { CIDR_INNER_DEF });
} fm_cidr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { ENDPOINTS_INNER_DEF });
} fm_endpoints_v2 SEC(".maps"); // fm_endpoints had no stats index

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { ENDPOINTS_FAST_INNER_DEF });
} fm_endpoints_fast SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { POLICY_FIXARR_INNER_DEF });
} fm_policy_fixarr_v2 SEC(".maps"); // fm_policy_fixarr held one entry per way

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { IPCACHE_HOSTARR_INNER_DEF });
} fm_ipcache_hostarr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { CIDR_ARR_INNER_DEF });
} fm_cidr_arr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { CIDR_LENS_INNER_DEF });
} fm_cidr_lens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct { RULE_COUNTERS_INNER_DEF });
} fm_rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_state SEC(".maps");

// Each family has the capacity the single table of older versions had.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct ct4_key);
	__type(value, struct ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_ct4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct ct6_key);
	__type(value, struct ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_ct6 SEC(".maps");

// fm_ct_filter: a one-hash Bloom filter of the conntrack keys, so that a
// packet of no known flow (a new flow, every denied packet) skips the
// conntrack lookup: on this host an LRU hash lookup is three calls, ~30 ns,
// where hashing the key here and testing a bit is an inlined array access.
// A clear bit proves the key absent; a set bit (a key present, or one
// present once, or a collision) only sends the packet to the lookup as
// before. Entry 0 is the control word: bit 0 the generation packets test,
// CTF_VALID whether they may test it at all (a table this process did not
// build holds flows no bit records). Entries 1 to CTF_WORDS are generation
// 0, the next CTF_WORDS generation 1.
//
// Programs set a new flow's bit in both generations before they insert its
// entry, never clear one. The agent (ctfilter_linux.go) rebuilds the
// generation packets do not test: it clears it, waits until every program
// that may have set a bit during the clearing has returned, sets the bit of
// every key in fm_ct4 and fm_ct6 with atomic ORs on its memory mapping,
// then makes it the tested one. Every entry present at the switch was
// either walked or inserted after the clearing, so no entry is missed;
// keys gone since (evicted, expired) stop costing lookups. Not pinned: a
// restarted agent builds its own, and until then packets look every flow
// up.
#define CTF_BITS 21
#define CTF_WORDS (1 << (CTF_BITS - 6))
#define CTF_VALID 2

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 + 2 * CTF_WORDS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} fm_ct_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct frag_key);
	__type(value, struct frag_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_frag SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fqdn_key);
	__type(value, struct fqdn_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_fqdn SEC(".maps");

// fm_fqdn_filter: a Bloom filter of fm_fqdn's keys, in fm_ct_filter's
// layout, so that a packet to an address its endpoint never learned skips
// the fm_fqdn lookup (~30 ns here) when fm_fqdn_index cannot prove it. Only the agent writes fm_fqdn, and it
// sets an entry's bit in both generations before it writes the entry; it
// rebuilds the generation packets do not test from what fm_fqdn holds when
// it sweeps (fqdn_linux.go). Not pinned, like fm_ct_filter.
#define FQF_BITS 20
#define FQF_WORDS (1 << (FQF_BITS - 6))

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 + 2 * FQF_WORDS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} fm_fqdn_filter SEC(".maps");

// fm_fqdn_index: a cuckoo index of fm_fqdn that packets probe in place of
// the Bloom filter and the hash lookup (a helper call, its hash and key
// compare: ~40 ns here; a probe of this array the verifier inlines costs a
// few). fm_fqdn stays the source of truth. Element 0 is the control word
// (struct fqx_ctl), the buckets follow. The agent writes the index through
// a shared mapping (fqdnindex_linux.go), each entry under a sequence word
// that is odd while it writes: a packet that reads an odd word, or a
// different one after the entry than before, does not use the entry.
//
// A hit is used when read whole and live (the entry holds the earliest
// expiry of its slots, so it never extends a TTL); otherwise fm_fqdn
// decides. A miss proves the endpoint has no live answer for the address
// only when the control word says the index is complete (every fm_fqdn
// key placed) and reads the same before and after the probe: the agent
// changes it while it moves entries between buckets, the one time a key
// can be in neither. Otherwise the filter and fm_fqdn decide. A key the
// agent is adding is not found until written, which cannot deny a packet
// it should allow: the DNS proxy releases the answer only after.
//
// It relies on loads not being reordered with loads, as on x86; elsewhere
// the agent leaves the index unused. An all-zero index is unused in every
// version, so one a new agent cannot use is emptied, never left stale.
// Pinned, so that programs still attached while a new agent starts see
// what it writes; the agent rebuilds it from fm_fqdn when it starts.
#define FQX_WAYS 4
#define FQX_BUCKETS (1 << 14)

struct fqx_entry {
	__u32 seq;
	__u32 ifindex; // 0: a free way
	__u32 ip[4];   // fqdn_key's
	__u32 mask;    // the slots live until live_until
	__u32 pad;
	__u64 live_until;
};

struct fqx_bucket {
	struct fqx_entry e[FQX_WAYS];
};

// fqx_ctl: element 0's first word.
#define FQX_UNUSED 0   // probe nothing: the filter and fm_fqdn decide
#define FQX_HITS 1     // use hits; on a miss the filter and fm_fqdn decide
#define FQX_COMPLETE 2 // a steady miss proves no entry
struct fqx_ctl {
	__u32 moves; // odd while the agent moves entries
	__u32 state;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 + FQX_BUCKETS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fqx_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_fqdn_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096 * FQDN_SLOTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fqdn_slot_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_fqdn_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ep_counter_key);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_ep_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EP_STATS_ENTRIES);
	__type(key, __u32);
	__type(value, struct ep_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_ep_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_event_bucket SEC(".maps");

// A parsed packet. Addresses are IPv6 or IPv4-mapped IPv6 (::ffff:a.b.c.d).
struct tuple {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
} __attribute__((aligned(4))); // addresses are read as words (v4_mapped)

struct pkt {
	struct tuple t;
	__u8 v6;         // an IPv6 packet (the ICMP error's quote is the same family)
	__u8 has_ports;  // t.dport is a real port (TCP/UDP/SCTP)
	__u8 frag;       // 0 none, 1 first fragment, 2 later fragment
	__u8 tcp_flags;
	__u8 related;    // ICMP error quoting `inner`
	__u32 frag_id;
	struct tuple inner;
};

enum { PARSE_OK = 0, PARSE_CONTROL = 1, PARSE_MALFORMED = 2, PARSE_NOT_IP = 3 };

// v4_mapped writes ::ffff:addr in four word stores: the array lookups read
// the address back as words, and a load that spans several narrower
// stores waits for them to retire (a store-forwarding stall) instead of
// taking the value from the store buffer.
static __always_inline void v4_mapped(__u8 *dst, __u32 addr)
{
	__u32 *w = (__u32 *)dst;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0xffff);
	w[3] = addr;
}

static __always_inline int is_icmp4_error(__u8 type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

static __always_inline int is_icmp6_error(__u8 type)
{
	return type >= 1 && type <= 4;
}

// load copies n (a constant) bytes at offset off of the packet into dst:
// straight from the packet when they lie in its linear part (no helper call:
// the common case), else with bpf_skb_load_bytes. Both read the same bytes;
// the verifier proves neither reads outside the packet. 0 or < 0 like
// bpf_skb_load_bytes.
//
// The packet is read in words, as if its headers were aligned (as every
// program that reads a struct iphdr through a packet pointer does): with
// the source's alignment unknown clang reads it a byte at a time and
// reassembles each field, ~7-12 ns per packet here. The loads it emits
// need a kernel that allows unaligned packet access, which x86-64 and
// arm64 do (the verifier refuses the program where it does not).
#define load(skb, off, dst, n)                                                       \
	({                                                                           \
		void *__data = (void *)(long)(skb)->data;                            \
		void *__end = (void *)(long)(skb)->data_end;                         \
		__u32 __off = (off);                                                 \
		int __ret = 0;                                                       \
		if (__off <= 0xffff && __data + __off + (n) <= __end)                \
			__builtin_memcpy((dst), __builtin_assume_aligned(__data + __off, 4), (n)); \
		else                                                                 \
			__ret = bpf_skb_load_bytes((skb), __off, (dst), (n));        \
		__ret;                                                               \
	})

// l4_ports fills sport/dport of a tuple from the L4 header at off; need is
// how many bytes the header must have. Returns -1 when truncated.
static __always_inline int l4_ports(struct __sk_buff *skb, __u32 off, __u32 end, struct tuple *t,
				    __u8 *has_ports, __u8 *tcp_flags, __u8 *icmp_type)
{
	__u8 hdr[14];

	switch (t->proto) {
	case PROTO_TCP:
		if (off + 20 > end || load(skb, off, hdr, 14) < 0)
			return -1;
		t->sport = ((__u16)hdr[0] << 8) | hdr[1];
		t->dport = ((__u16)hdr[2] << 8) | hdr[3];
		*tcp_flags = hdr[13];
		*has_ports = 1;
		return 0;
	case PROTO_UDP:
	case PROTO_SCTP:
		if (off + (t->proto == PROTO_UDP ? 8 : 12) > end || load(skb, off, hdr, 4) < 0)
			return -1;
		t->sport = ((__u16)hdr[0] << 8) | hdr[1];
		t->dport = ((__u16)hdr[2] << 8) | hdr[3];
		*has_ports = 1;
		return 0;
	case PROTO_ICMP:
	case PROTO_ICMPV6:
		if (off + 8 > end || load(skb, off, hdr, 8) < 0)
			return -1;
		*icmp_type = hdr[0];
		// Echo request carries its id as the source "port", the reply as
		// the destination one, so a reply is the reverse tuple.
		if ((t->proto == PROTO_ICMP && hdr[0] == 8) || (t->proto == PROTO_ICMPV6 && hdr[0] == 128))
			t->sport = ((__u16)hdr[4] << 8) | hdr[5];
		else if ((t->proto == PROTO_ICMP && hdr[0] == 0) || (t->proto == PROTO_ICMPV6 && hdr[0] == 129))
			t->dport = ((__u16)hdr[4] << 8) | hdr[5];
		return 0;
	}
	return 0;
}

// parse_inner reads the packet an ICMP error quotes. It fails softly: an
// unreadable quote just means the error is judged by policy like any packet.
static __always_inline int parse_inner(struct __sk_buff *skb, __u32 off, __u32 end, int v6, struct tuple *in)
{
	__u8 has_ports = 0, flags = 0, type = 0;
	__u32 l4;

	if (!v6) {
		struct iphdr ip;
		if (off + sizeof(ip) > end || load(skb, off, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.version != 4 || ip.ihl < 5)
			return -1;
		v4_mapped(in->src, ip.saddr);
		v4_mapped(in->dst, ip.daddr);
		in->proto = ip.protocol;
		l4 = off + ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;
		if (off + sizeof(ip6) > end || load(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		if (ip6.version != 6)
			return -1;
		__builtin_memcpy(in->src, &ip6.saddr, 16);
		__builtin_memcpy(in->dst, &ip6.daddr, 16);
		in->proto = ip6.nexthdr;
		l4 = off + sizeof(ip6);
	}
	// The quote holds at least 8 bytes of L4: enough for the ports.
	switch (in->proto) {
	case PROTO_TCP:
	case PROTO_UDP:
	case PROTO_SCTP: {
		__u8 p[4];
		if (l4 + 8 > end || load(skb, l4, p, 4) < 0)
			return -1;
		in->sport = ((__u16)p[0] << 8) | p[1];
		in->dport = ((__u16)p[2] << 8) | p[3];
		return 0;
	}
	case PROTO_ICMP:
	case PROTO_ICMPV6: {
		if (l4 + 8 > end)
			return -1;
		return l4_ports(skb, l4, end, in, &has_ports, &flags, &type);
	}
	}
	return -1;
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u16 proto;
	__u32 off = ETH_HLEN, end, l4;
	__u8 icmp_type = 0;
	int v6 = 0;

	if (load(skb, 12, &proto, 2) < 0)
		return PARSE_MALFORMED;
	proto = bpf_ntohs(proto);
	if (proto == ETH_P_ARP)
		return PARSE_CONTROL;
	if (proto == ETH_P_IP) {
		struct iphdr ip;
		__u32 hlen;
		__u16 tot, fo;

		if (load(skb, off, &ip, sizeof(ip)) < 0)
			return PARSE_MALFORMED;
		if (ip.version != 4 || ip.ihl < 5)
			return PARSE_MALFORMED;
		hlen = ip.ihl * 4;
		tot = bpf_ntohs(ip.tot_len);
		if (tot < hlen || off + tot > skb->len)
			return PARSE_MALFORMED;
		end = off + tot;
		v4_mapped(p->t.src, ip.saddr);
		v4_mapped(p->t.dst, ip.daddr);
		p->t.proto = ip.protocol;
		fo = bpf_ntohs(ip.frag_off);
		p->frag_id = bpf_ntohs(ip.id);
		if (fo & 0x1fff) {
			p->frag = 2;
			return PARSE_OK;
		}
		if (fo & 0x2000)
			p->frag = 1;
		l4 = off + hlen;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		__u8 nh;
		int i;

		if (load(skb, off, &ip6, sizeof(ip6)) < 0)
			return PARSE_MALFORMED;
		if (ip6.version != 6)
			return PARSE_MALFORMED;
		end = off + sizeof(ip6) + bpf_ntohs(ip6.payload_len);
		if (end > skb->len)
			return PARSE_MALFORMED;
		__builtin_memcpy(p->t.src, &ip6.saddr, 16);
		__builtin_memcpy(p->t.dst, &ip6.daddr, 16);
		v6 = 1;
		p->v6 = 1;
		nh = ip6.nexthdr;
		l4 = off + sizeof(ip6);
#pragma unroll
		for (i = 0; i < 4; i++) {
			__u8 eh[8];
			if (nh != 0 && nh != 43 && nh != 60 && nh != 51 && nh != 44)
				break;
			if (l4 + 8 > end || load(skb, l4, eh, 8) < 0)
				return PARSE_MALFORMED;
			if (nh == 44) {
				__u16 fo = ((__u16)eh[2] << 8) | eh[3];
				p->frag_id = ((__u32)eh[4] << 24) | ((__u32)eh[5] << 16) | ((__u32)eh[6] << 8) | eh[7];
				nh = eh[0];
				l4 += 8;
				if (fo & 0xfff8) {
					p->t.proto = nh;
					p->frag = 2;
					return PARSE_OK;
				}
				if (fo & 1)
					p->frag = 1;
				continue;
			}
			if (nh == 51)
				l4 += ((__u32)eh[1] + 2) * 4;
			else
				l4 += ((__u32)eh[1] + 1) * 8;
			nh = eh[0];
		}
		if (nh == 0 || nh == 43 || nh == 60 || nh == 51 || nh == 44)
			return PARSE_MALFORMED;
		p->t.proto = nh;
	} else {
		return PARSE_NOT_IP;
	}

	if (l4_ports(skb, l4, end, &p->t, &p->has_ports, &p->tcp_flags, &icmp_type) < 0)
		return PARSE_MALFORMED;
	if (v6 && p->t.proto == PROTO_ICMPV6) {
		// Router/neighbour solicitation and advertisement, redirect, MLD.
		if ((icmp_type >= 133 && icmp_type <= 137) || (icmp_type >= 130 && icmp_type <= 132) ||
		    icmp_type == 143)
			return PARSE_CONTROL;
		if (is_icmp6_error(icmp_type) && parse_inner(skb, l4 + 8, end, 1, &p->inner) == 0)
			p->related = 1;
	}
	if (!v6 && p->t.proto == PROTO_ICMP && is_icmp4_error(icmp_type) &&
	    parse_inner(skb, l4 + 8, end, 0, &p->inner) == 0)
		p->related = 1;
	return PARSE_OK;
}

static __always_inline void count_ep(struct __sk_buff *skb, __u32 stats, __u32 ifindex, __u8 dir, __u8 reason)
{
	struct counter *c;

	if (stats) {
		struct ep_stats *s = bpf_map_lookup_elem(&fm_ep_stats, &stats);
		if (s && reason < NREASONS) {
			c = &s->c[dir & 1][reason];
			c->packets++;
			c->bytes += skb->len;
		}
		return;
	}
	struct ep_counter_key k = {.ifindex = ifindex, .dir = dir, .reason = reason};
	c = bpf_map_lookup_elem(&fm_ep_counters, &k);
	if (c) {
		c->packets++;
		c->bytes += skb->len;
		return;
	}
	struct counter init = {.packets = 1, .bytes = skb->len};
	bpf_map_update_elem(&fm_ep_counters, &k, &init, BPF_NOEXIST);
}

static __always_inline void count_rule(void *counters, struct __sk_buff *skb, __u32 rule)
{
	struct counter *c;

	if (!counters || rule == 0)
		return;
	c = bpf_map_lookup_elem(counters, &rule);
	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
}

// now_ns is the packet clock (see jiffy_ns).
static __always_inline __u64 now_ns(void)
{
	if (jiffy_ns)
		return bpf_jiffies64() * jiffy_ns + jiffy_base_ns;
	return bpf_ktime_get_coarse_ns();
}

// take_token runs on the coarse clock (the last tick, no clock-source
// read): rate limiting needs no better and denied packets then read no clock.
static __always_inline int take_token(void)
{
	__u32 zero = 0;
	struct bucket *b = bpf_map_lookup_elem(&fm_event_bucket, &zero);
	__u64 now = now_ns();

	if (!b)
		return 0;
	if (events_per_sec && event_token_ns && now - b->last_ns >= event_token_ns) {
		b->tokens += (now - b->last_ns) / event_token_ns;
		if (b->tokens > events_burst)
			b->tokens = events_burst;
		b->last_ns = now;
	}
	if (b->tokens == 0)
		return 0;
	b->tokens--;
	return 1;
}

// An event is built here, not on the stack: decide()'s frame and the
// policy stages' share the 512-byte stack. Not pinned: scratch.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} fm_event_scratch SEC(".maps");

static __always_inline void emit(struct pkt *p, __u32 ifindex, __u8 dir, __u32 ep_id, __u32 peer_id,
				 __u32 rule, __u8 deny, __u8 reason)
{
	__u32 zero = 0;
	struct event *e;

	if (!take_token())
		return;
	e = bpf_map_lookup_elem(&fm_event_scratch, &zero);
	if (!e)
		return;
	e->ts = bpf_ktime_get_ns();
	__builtin_memcpy(e->src, p->t.src, 16);
	__builtin_memcpy(e->dst, p->t.dst, 16);
	e->ifindex = ifindex;
	e->src_identity = dir == DIR_INGRESS ? peer_id : ep_id;
	e->dst_identity = dir == DIR_INGRESS ? ep_id : peer_id;
	e->rule = rule;
	e->sport = p->t.sport;
	e->dport = p->t.dport;
	e->proto = p->t.proto;
	e->dir = dir;
	e->verdict = deny;
	e->reason = reason;
	bpf_ringbuf_output(&fm_events, e, sizeof(*e), 0);
}

static __always_inline void frag_fill(struct frag_key *k, __u32 ifindex, __u8 dir, struct pkt *p)
{
	k->ifindex = ifindex;
	k->dir = dir;
	k->proto = p->t.proto;
	k->pad = 0;
	k->id = p->frag_id;
	__builtin_memcpy(k->src, p->t.src, 16);
	__builtin_memcpy(k->dst, p->t.dst, 16);
}

// ct_orient says which end of the canonical key a tuple's source is, from
// the addresses (compared as big-endian numbers) and then the ports.
static __always_inline int ct_orient(__u64 src_hi, __u64 src_lo, __u64 dst_hi, __u64 dst_lo, __u16 sport,
				     __u16 dport)
{
	if (src_hi != dst_hi)
		return src_hi < dst_hi ? CT_ORIENT_A : CT_ORIENT_B;
	if (src_lo != dst_lo)
		return src_lo < dst_lo ? CT_ORIENT_A : CT_ORIENT_B;
	if (sport != dport)
		return sport < dport ? CT_ORIENT_A : CT_ORIENT_B;
	return CT_ORIENT_TIE;
}

// ct_words writes the conntrack key's second and third words (proto, pad,
// port_a; port_b, pad2) whole: the map hashes the key a word at a time,
// and a word load spanning byte stores stalls store forwarding (v4_mapped).
static __always_inline void ct_words(void *k, __u8 proto, __u16 port_a, __u16 port_b)
{
	__u32 *w = (__u32 *)k;

	w[1] = proto | ((__u32)port_a << 16);
	w[2] = port_b;
}

// ct4_fill builds the canonical IPv4 key of t and returns its orientation.
static __always_inline int ct4_fill(struct ct4_key *k, __u32 ifindex, struct tuple *t)
{
	__u32 s, d;
	int o;

	__builtin_memcpy(&s, t->src + 12, 4);
	__builtin_memcpy(&d, t->dst + 12, 4);
	o = ct_orient(0, bpf_ntohl(s), 0, bpf_ntohl(d), t->sport, t->dport);
	k->ifindex = ifindex;
	if (o == CT_ORIENT_B) {
		k->a = d;
		k->b = s;
		ct_words(k, t->proto, t->dport, t->sport);
	} else {
		k->a = s;
		k->b = d;
		ct_words(k, t->proto, t->sport, t->dport);
	}
	return o;
}

// ct6_fill builds the canonical IPv6 key of t and returns its orientation.
static __always_inline int ct6_fill(struct ct6_key *k, __u32 ifindex, struct tuple *t)
{
	__u64 s[2], d[2];
	int o;

	__builtin_memcpy(s, t->src, 16);
	__builtin_memcpy(d, t->dst, 16);
	o = ct_orient(bpf_be64_to_cpu(s[0]), bpf_be64_to_cpu(s[1]), bpf_be64_to_cpu(d[0]), bpf_be64_to_cpu(d[1]),
		      t->sport, t->dport);
	k->ifindex = ifindex;
	if (o == CT_ORIENT_B) {
		__builtin_memcpy(k->a, t->dst, 16);
		__builtin_memcpy(k->b, t->src, 16);
		ct_words(k, t->proto, t->dport, t->sport);
	} else {
		__builtin_memcpy(k->a, t->src, 16);
		__builtin_memcpy(k->b, t->dst, 16);
		ct_words(k, t->proto, t->sport, t->dport);
	}
	return o;
}

static __always_inline __u64 ct_timeout(__u8 proto, __u32 flags)
{
	if (flags & CT_CLOSING)
		return ct_timeout_closing_ns;
	return proto == PROTO_TCP ? ct_timeout_tcp_ns : ct_timeout_other_ns;
}

// clock returns the packet's time on the coarse clock (the last tick, no
// clock-source read: ~15 ns less per established packet; idle timeouts are
// seconds to hours, a tick is milliseconds). It is read on first use only:
// a denied packet that hits no conntrack entry never needs it.
static __always_inline __u64 clock(__u64 *now)
{
	if (!*now)
		*now = now_ns();
	return *now;
}

// ct_flow_live reports whether f holds a flow that has not gone idle. A
// last_seen after now was written by another CPU since this one read the
// clock: the flow is live.
static __always_inline int ct_flow_live(struct ct_flow *f, __u8 proto, __u64 *now)
{
	__u64 seen = f->last_seen;

	if (!seen)
		return 0;
	return clock(now) < seen || clock(now) - seen <= ct_timeout(proto, f->flags);
}

// ct_match returns the live flow of v that a packet of orientation o seen
// in direction dir belongs to (as itself or as its reply), or 0.
static __always_inline struct ct_flow *ct_match(struct ct_val *v, __u8 dir, int o, __u8 proto, __u64 *now)
{
	__u8 c = (dir ^ o) & 1;

	if (!v)
		return 0;
	if (ct_flow_live(&v->flow[c], proto, now))
		return &v->flow[c];
	if (o == CT_ORIENT_TIE && ct_flow_live(&v->flow[c ^ 1], proto, now))
		return &v->flow[c ^ 1];
	return 0;
}

static __always_inline void ct_touch(struct ct_flow *f, struct pkt *p, __u64 now)
{
	f->last_seen = now;
	if (p->t.proto == PROTO_TCP && (p->tcp_flags & 0x05)) // FIN or RST
		f->flags |= CT_CLOSING;
}

// bloom_mix hashes two 64-bit words to a filter bit of bits bits: ipc_hash's
// multiplication over x, then a second one over it and y (bloomMix in
// bloom_linux.go).
static __always_inline __u32 bloom_mix(__u64 x, __u64 y, __u32 bits)
{
	return (__u32)((((x * 0x9E3779B97F4A7C15ULL) ^ y) * 0xC2B2AE3D27D4EB4FULL) >> (64 - bits));
}

// ctf_mix hashes a conntrack key to its filter bit: the two addresses (an
// IPv6 address folded to one word), then the ports, protocol and endpoint.
static __always_inline __u32 ctf_mix(__u32 a, __u32 b, __u32 w0, __u32 w1, __u32 w2)
{
	return bloom_mix((__u64)a << 32 | b, (__u64)w1 << 32 | (w2 ^ w0), CTF_BITS);
}

static __always_inline __u32 ctf_hash4(struct ct4_key *k)
{
	__u32 *w = (__u32 *)k;

	return ctf_mix(w[3], w[4], w[0], w[1], w[2]);
}

static __always_inline __u32 ctf_hash6(struct ct6_key *k)
{
	__u32 *w = (__u32 *)k;

	return ctf_mix(w[3] ^ w[4] ^ w[5] ^ w[6], w[7] ^ w[8] ^ w[9] ^ w[10], w[0], w[1], w[2]);
}

// bloom_absent reports whether filter m (fm_ct_filter's layout: control
// word, then two generations of words u64 words) proves that no entry has
// a key of filter bit h.
static __always_inline int bloom_absent(void *m, __u32 words, __u32 h)
{
	__u32 zero = 0, i;
	__u64 *ctl = bpf_map_lookup_elem(m, &zero), *w, c;

	if (!ctl)
		return 0;
	c = *ctl;
	if (!(c & CTF_VALID))
		return 0;
	i = 1 + (__u32)(c & 1) * words + (h >> 6);
	w = bpf_map_lookup_elem(m, &i);
	return w && !(*w & (1ULL << (h & 63)));
}

static __always_inline int ctf_absent(__u32 h)
{
	return bloom_absent(&fm_ct_filter, CTF_WORDS, h);
}

// ctf_set records a key of filter bit h in both generations; called before
// the entry is inserted, so a packet that can find the entry finds the bit.
static __always_inline void ctf_set(__u32 h)
{
	__u32 i = 1 + (h >> 6);
	__u64 bit = 1ULL << (h & 63), *w;

	w = bpf_map_lookup_elem(&fm_ct_filter, &i);
	if (w)
		__sync_fetch_and_or(w, bit);
	i += CTF_WORDS;
	w = bpf_map_lookup_elem(&fm_ct_filter, &i);
	if (w)
		__sync_fetch_and_or(w, bit);
}

// ct_open records a new flow of class c (a tie opens the class of
// orientation a) under key k of map ct. The entry's other class must
// survive, so an existing entry is written in place; the lookup costs a new
// flow what the reverse lookup used to.
static __always_inline void ct_open(void *ct, void *k, __u8 c, struct ct_flow *nf)
{
	struct ct_val *v = bpf_map_lookup_elem(ct, k);

	if (!v) {
		struct ct_val nv = {};
		nv.flow[c & 1] = *nf;
		if (bpf_map_update_elem(ct, k, &nv, BPF_NOEXIST) == 0)
			return;
		// Another CPU created the entry meanwhile: write our class into it.
		v = bpf_map_lookup_elem(ct, k);
		if (!v)
			return;
	}
	v->flow[c & 1] = *nf;
}

// The policy stage's inputs and outputs.
struct tier_args {
	__u32 slot;
	__u32 ifindex;
	__u32 peer_id;
	__u16 dport;
	__u8 dir;
	__u8 proto;
	__u8 has_ports;
	__u8 pad0;
	__u8 tiers;    // in: the direction has tier entries (EPL_TIER)
	// in: tm and the name slots below come from fm_endpoints_fast, so the
	// KIND_TIER_SUMMARY entry need not be looked up.
	__u8 tm_known;
	__u8 use_arr; // in: read fm_policy_fixarr_v2 (EPF_PF_PAIRS)
	__u8 lookups; // in: the endpoint's EPL_* bits for the direction
	__u8 enforced; // in: NetworkPolicy enforces the direction
	__u8 folded;   // in: EPF_FOLDED with use_arr
	__u32 rule;   // out: the allowing NetworkPolicy rule, 0 for none
	__u32 found;  // the folded path's peer probe result (policy_probe)
	__u32 admin; // out: the best Admin candidate, 0 for none
	__u32 base;  // out: the best Baseline candidate, 0 for none
	__u32 tm;    // out (in with tm_known): the KIND_TIER_SUMMARY mask, for fqdn_stage
	// out (in with tm_known): the name slots with entries of one protocol /
	// of any protocol (the summary's rules[0] and rules[1]).
	__u32 fqdn_proto_slots;
	__u32 fqdn_any_slots;
	struct fqdn_key fk; // fqdn_stage's key, here to spare the stack
	// The policy lookups' keys, here for the same reason.
	struct policy_port_key pk; // policy_fixed's key is its first 12 bytes
	struct policy_key tk;
	struct cidr_key ck;
	// handle()'s fragment key, here for the same reason: fragments are
	// rare, and the first fragment's key is written after the policy
	// stage is done with the rest.
	struct frag_key frag;
	// What decide(), which handle() tail calls, needs of handle()'s state
	// (a tail call keeps no stack): the packet, up to its ICMP error quote
	// (not copied: the policy stages do not read it), and the endpoint's
	// identity and counters index.
	struct pkt p;
	__u32 ep_id;
	__u32 stats;
};

// peer_addr is the address of the packet's other end: its source for
// ingress, its destination for egress.
static __always_inline const __u32 *peer_addr(struct tier_args *a)
{
	return (const __u32 *)(a->dir == DIR_INGRESS ? a->p.t.src : a->p.t.dst);
}

// What the policy lookups need of a packet.
struct l4 {
	__u16 dport;
	__u8 has_ports;
};

// The tables one packet's policy lookups read, all from one slot.
struct policy_tabs {
	void *fixed;  // fm_policy_fixed, or 0 for tables of an older agent
	void *fixarr; // fm_policy_fixarr_v2 when it holds every fm_policy_fixed entry, else 0
	struct tier_args *a; // the endpoint and direction; the keys live in its scratch
};

static __always_inline __u32 policy_trie_lookup(struct policy_tabs *pt, __u8 kind, __u32 peer, struct l4 *p,
						__u8 proto)
{
	struct policy_key *k = &pt->a->tk;
	struct policy_val *v;
	__u32 *w = (__u32 *)k, slot = pt->a->slot;
	void *trie;

	// Written a word at a time: see v4_mapped.
	w[0] = p->has_ports ? POLICY_ALL_BITS : POLICY_FIXED_BITS;
	w[1] = pt->a->ifindex;
	w[2] = pt->a->dir | ((__u32)kind << 8) | ((__u32)proto << 16);
	w[3] = peer;
	w[4] = bpf_htons(p->dport); // port, then pad2 = 0
	// The trie is found only when it is walked: a chain of dependent loads
	// most packets need not wait for.
	trie = bpf_map_lookup_elem(&fm_policy, &slot);
	if (!trie)
		return 0;
	v = bpf_map_lookup_elem(trie, k);
	return v ? v->rule : 0;
}

// is_port_proto: rules name ports of these protocols only, so only they
// have protocol entries (portProtos in fold.go).
static __always_inline int is_port_proto(__u8 proto)
{
	return proto == PROTO_TCP || proto == PROTO_UDP || proto == PROTO_SCTP;
}

// tier_best keeps, per tier (half), the better (lower, non-zero) candidate
// of two tier values (foldTierValues in render.go).
static __always_inline __u32 tier_best(__u32 a, __u32 b)
{
	__u32 ah = a >> 16, bh = b >> 16, al = a & 0xffff, bl = b & 0xffff;

	if (!ah || (bh && bh < ah))
		ah = bh;
	if (!al || (bl && bl < al))
		al = bl;
	return ah << 16 | al;
}

// ipc_hash mixes an address's four words into one 64-bit product, whose
// high bits depend on every input bit (cuckoo.go computes the same): one
// multiplication, where a packet makes up to a dozen of these lookups.
// Buckets come from bits 48-63 and 32-47.
static __always_inline __u64 ipc_hash(const __u32 *w)
{
	return ((__u64)(w[0] ^ w[2]) << 32 | (w[1] ^ w[3])) * 0x9E3779B97F4A7C15ULL;
}

// ipc_find returns the identity slot of address ip (16 bytes, 4-aligned)
// in fm_ipcache_hostarr's table arr, or 0.
static __always_inline __u32 *ipc_find(void *arr, const __u8 *ip)
{
	const __u32 *w = (const __u32 *)ip;
	__u64 h = ipc_hash(w);
	int i, j;

#pragma unroll
	for (i = 0; i < 2; i++) {
		__u32 b = (__u32)(h >> (i ? 32 : 48)) & (IPC_BUCKETS - 1);
		struct ipc_bucket *bk = bpf_map_lookup_elem(arr, &b);
		if (!bk)
			return 0;
#pragma unroll
		for (j = 0; j < IPC_WAYS; j++) {
			__u32 *kw = (__u32 *)&bk->k[j];
			if (kw[3] == w[3] && kw[2] == w[2] && kw[1] == w[1] && kw[0] == w[0])
				return &bk->v[j];
		}
	}
	return 0;
}

// pfa_hash mixes a policy_fixed_key like ipc_hash: peer high, the
// endpoint and the rest of the key (rotated, so its bytes reach all of the
// low word) below.
static __always_inline __u64 pfa_hash(const __u32 *w)
{
	__u32 lo = w[0] ^ ((w[1] << 16) | (w[1] >> 16));

	return ((__u64)w[2] << 32 | lo) * 0x9E3779B97F4A7C15ULL;
}

// pfa_find returns the pair of the key of words w0 to w2 in
// fm_policy_fixarr_v2's table arr, or 0. The words come in registers: read
// back from a key just written byte by byte they would stall (v4_mapped).
static __always_inline struct pf_pair *pfa_find(void *arr, __u32 w0, __u32 w1, __u32 w2)
{
	__u32 w[3] = {w0, w1, w2};
	__u64 h = pfa_hash(w);
	int i, j;

#pragma unroll
	for (i = 0; i < 2; i++) {
		__u32 b = (__u32)(h >> (i ? 32 : 48)) & (PFA_BUCKETS - 1);
		struct pf_bucket *bk = bpf_map_lookup_elem(arr, &b);
		if (!bk)
			return 0;
#pragma unroll
		for (j = 0; j < PFA_WAYS; j++) {
			__u32 *kw = (__u32 *)&bk->k[j];
			if (kw[2] == w2 && kw[1] == w1 && kw[0] == w0)
				return &bk->v[j];
		}
	}
	return 0;
}

// policy_entry returns what the longest-prefix match in the policy trie
// returns for the key (kind, peer, proto, the packet's port) whose
// policy_fixed entry is fv, mostly without touching the trie: a
// single-port entry is the longest match when it exists (hash hit);
// without range entries, the all-ports entry is the only other candidate.
// The port hash's key is written only when it is read: the array path
// needs no key in memory.
static __always_inline __u32 policy_entry(struct policy_tabs *pt, struct policy_fixed_val *fv, __u8 kind,
					  __u32 peer, struct l4 *p, __u8 proto, int all)
{
	struct policy_val *v;
	__u16 port = bpf_htons(p->dport);

	if (!p->has_ports)
		return fv->all_rule; // a 96-bit trie key matches only all-ports entries
	if (fv->flags & PF_EXACT) {
		__u32 *kw = (__u32 *)&pt->a->pk;
		// Written a word at a time: see v4_mapped.
		kw[0] = pt->a->ifindex;
		kw[1] = pt->a->dir | ((__u32)kind << 8) | ((__u32)proto << 16);
		kw[2] = peer;
		kw[3] = port; // then pad2 = 0
		// Found only here, like the trie in policy_trie_lookup.
		__u32 slot = pt->a->slot;
		void *ports = bpf_map_lookup_elem(&fm_policy_port, &slot);
		v = ports ? bpf_map_lookup_elem(ports, &pt->a->pk) : 0;
		if (v)
			return v->rule;
	} else {
		int i;
#pragma unroll
		for (i = 0; i < PF_INLINE; i++)
			if (i < fv->nports && fv->ports[i] == port)
				return fv->rules[i];
	}
	if ((fv->flags & PF_RANGES) && (!(fv->flags & PF_BLOCKS) || ((fv->blocks >> (p->dport >> 12)) & 1))) {
		__u32 v = policy_trie_lookup(pt, kind, peer, p, proto), w;
		// all: a folded entry (policy_probe). Merged with its any-peer
		// entry, the trie holds only the peer's own: the any peer's answer
		// comes from its all-ports value, or its trie entries when it has
		// ranges.
		if (!all || !(fv->flags & PF_ALL_MERGED))
			return v;
		w = fv->flags & PF_ALL_RANGES ? policy_trie_lookup(pt, kind, 0, p, proto) : fv->all_rule;
		return kind & 2 ? tier_best(v, w) : v ? v : w;
	}
	return fv->all_rule;
}

// policy_fixed_find returns the fm_policy_fixed hash entry of the key of
// words w0 to w2 (the array path is pfa_find).
static __always_inline struct policy_fixed_val *policy_fixed_find(struct policy_tabs *pt, __u32 w0, __u32 w1,
								  __u32 w2)
{
	__u32 *kw = (__u32 *)&pt->a->pk;

	// Written a word at a time: see v4_mapped.
	kw[0] = w0;
	kw[1] = w1;
	kw[2] = w2;
	return bpf_map_lookup_elem(pt->fixed, &pt->a->pk); // reads the first 12 bytes
}

// policy_lookup returns the trie's answer for one key of a kind that has
// no pair (the name rules' KIND_TIER_FQDN: half PFA_NP in the array).
static __always_inline __u32 policy_lookup(struct policy_tabs *pt, __u8 kind, __u32 peer, struct l4 *p,
					   __u8 proto)
{
	struct policy_fixed_val *fv;
	struct pf_pair *pp;
	// The key's second word: dir, kind, proto, pad (little endian).
	__u32 w1 = pt->a->dir | ((__u32)kind << 8) | ((__u32)proto << 16);

	if (!pt->fixed)
		return policy_trie_lookup(pt, kind, peer, p, proto);
	if (pt->fixarr) {
		pp = pfa_find(pt->fixarr, pt->a->ifindex, w1, peer);
		fv = pp ? &pp->v[PFA_NP] : 0;
	} else {
		fv = policy_fixed_find(pt, pt->a->ifindex, w1, peer);
	}
	if (!fv)
		return 0;
	return policy_entry(pt, fv, kind, peer, p, proto, 0);
}

// policy_probe answers one lookup shape for both layers with one probe of
// the array, like policy_pair; all for a folded entry (EPF_FOLDED, see
// policy_entry). It returns 0 when no pair holds the key, else 1 with the
// pair's PF_ALL_MERGED bit.
static __always_inline int policy_probe(struct policy_tabs *pt, __u8 kind, __u32 peer, struct l4 *p, __u8 proto,
					int np, int tier, __u32 *rule, __u32 *tv, int all)
{
	struct pf_pair *pp;
	__u32 w1 = pt->a->dir | ((__u32)kind << 8) | ((__u32)proto << 16);

	pp = pfa_find(pt->fixarr, pt->a->ifindex, w1, peer);
	if (!pp)
		return 0;
	if (np)
		*rule = policy_entry(pt, &pp->v[PFA_NP], kind, peer, p, proto, all);
	if (tier)
		*tv = policy_entry(pt, &pp->v[PFA_TIER], kind | 2, peer, p, proto, all);
	return 1 | ((pp->v[PFA_NP].flags | pp->v[PFA_TIER].flags) & PF_ALL_MERGED);
}

// policy_pair answers one lookup shape (base kind KIND_IDENTITY or
// KIND_CIDR, peer, protocol) for both layers: the NetworkPolicy rule into
// *rule when np, the tier value (the kind | 2) into *tv when tier. The
// array finds both entries with one probe; the hash (and the trie of an
// older agent's tables, which have no tier entries) one per layer.
static __always_inline void policy_pair(struct policy_tabs *pt, __u8 kind, __u32 peer, struct l4 *p, __u8 proto,
					int np, int tier, __u32 *rule, __u32 *tv)
{
	struct policy_fixed_val *nv = 0, *tvv = 0;
	__u32 w1 = pt->a->dir | ((__u32)kind << 8) | ((__u32)proto << 16);

	if (!pt->fixed) {
		if (np)
			*rule = policy_trie_lookup(pt, kind, peer, p, proto);
		return;
	}
	if (pt->fixarr) {
		policy_probe(pt, kind, peer, p, proto, np, tier, rule, tv, 0);
		return;
	}
	if (np)
		nv = policy_fixed_find(pt, pt->a->ifindex, w1, peer);
	if (tier)
		tvv = policy_fixed_find(pt, pt->a->ifindex, w1 | (2U << 8), peer); // the tier kind
	if (np && nv)
		*rule = policy_entry(pt, nv, kind, peer, p, proto, 0);
	if (tier && tvv)
		*tv = policy_entry(pt, tvv, kind | 2, peer, p, proto, 0);
}

// tier_fold keeps, per tier, the better (lower, non-zero) candidate.
static __always_inline void tier_fold(__u32 v, __u32 *admin, __u32 *base)
{
	__u32 a = v >> 16, b = v & 0xffff;

	if (a && (!*admin || a < *admin))
		*admin = a;
	if (b && (!*base || b < *base))
		*base = b;
}

// cidr_mask is word i (0-3, network order) of an address masked to its
// first bits bits.
static __always_inline __u32 cidr_mask(__u32 w, __u32 i, __u32 bits)
{
	__u32 lo = i * 32;

	if (bits >= lo + 32)
		return w;
	if (bits <= lo)
		return 0;
	return w & bpf_htonl(0xffffffffU << (32 - (bits - lo)));
}

// cidr_find looks the peer address up in fm_cidr_arr's table arr at each
// of the endpoint's prefix lengths, longest first; the first hit is the
// longest match. Returns 1 with its class in *cls, 0 when none holds.
static __always_inline int cidr_find(void *arr, struct cidr_lens *l, struct tier_args *a, __u32 *cls)
{
	const __u32 *ip = peer_addr(a);
	// The masked address goes to scratch, not registers: the probes run
	// inside the policy stage, whose frame shares the 512-byte stack.
	__u32 *m = (__u32 *)a->ck.ip;
	__u32 ifindex = a->ifindex, dir = a->dir & 1;
	__u32 n = l->n[dir];
	int i, j, k;

	// A bounded loop (the verifier walks each iteration): clang cannot
	// unroll it around the early exits.
	for (i = 0; i < CIDR_PROBES; i++) {
		__u32 bits, kw1;
		__u64 h;

		if (i >= n)
			break;
		bits = l->bits[dir][i];
		// Every IPv4 prefix is at least 96 bits long (IPv4-mapped): only
		// the last word is masked, without cidr_mask's branches (~3 ns
		// per packet here).
		if (bits >= 96) {
			m[0] = ip[0];
			m[1] = ip[1];
			m[2] = ip[2];
			m[3] = ip[3] & bpf_htonl((__u32)(0xffffffff00000000ULL >> (bits - 96)));
		} else {
			m[0] = cidr_mask(ip[0], 0, bits);
			m[1] = cidr_mask(ip[1], 1, bits);
			m[2] = cidr_mask(ip[2], 2, bits);
			m[3] = 0;
		}
		kw1 = dir | (bits << 8);
		// cidrHash in cuckoo.go.
		h = ((__u64)(m[0] ^ m[2] ^ ((ifindex << 16) | (ifindex >> 16))) << 32 | (m[1] ^ m[3] ^ kw1)) *
		    0x9E3779B97F4A7C15ULL;
#pragma unroll
		for (k = 0; k < 2; k++) {
			__u32 b = (__u32)(h >> (k ? 32 : 48)) & (CIDRA_BUCKETS - 1);
			struct cidr_bucket *bk = bpf_map_lookup_elem(arr, &b);
			if (!bk)
				return 0;
#pragma unroll
			for (j = 0; j < CIDRA_WAYS; j++) {
				__u32 *kw = (__u32 *)&bk->k[j];
				if (kw[5] == m[3] && kw[1] == kw1 && kw[0] == ifindex && kw[4] == m[2] && kw[3] == m[1] &&
				    kw[2] == m[0]) {
					*cls = bk->v[j];
					return 1;
				}
			}
		}
	}
	return 0;
}

// cidr_class returns the CIDR class of a's peer address for its endpoint
// and direction (0: no CIDR rule holds for it).
static __always_inline __u32 cidr_class(struct tier_args *a)
{
	struct cidr_key *k = &a->ck;
	struct cidr_val *v;
	__u32 *w = (__u32 *)k;
	__u32 slot = a->slot;
	void *cidr = bpf_map_lookup_elem(&fm_cidr, &slot);

	if (!cidr)
		return 0;
	// Written a word at a time: see v4_mapped.
	w[0] = CIDR_FIXED_BITS + 128;
	w[1] = a->ifindex;
	w[2] = a->dir; // and pad
	__builtin_memcpy(k->ip, peer_addr(a), 16);
	v = bpf_map_lookup_elem(cidr, k);
	return v ? v->class_id : 0;
}

// cidr_class_arr is cidr_class from fm_cidr_arr when the endpoint's
// fm_cidr_lens entry allows (see there), else from the trie.
static __always_inline __u32 cidr_class_arr(struct tier_args *a)
{
	struct cidr_lens *l = 0;
	void *lens = 0, *arr = 0;
	__u32 slot = a->slot, ifindex = a->ifindex, cls = 0;

	if (ifindex < EP_FAST_ENTRIES) {
		lens = bpf_map_lookup_elem(&fm_cidr_lens, &slot);
		arr = bpf_map_lookup_elem(&fm_cidr_arr, &slot);
	}
	if (lens && arr)
		l = bpf_map_lookup_elem(lens, &ifindex);
	if (!l || !l->n[a->dir & 1])
		return cidr_class(a);
	cidr_find(arr, l, a, &cls);
	return cls;
}

// The policy stage's arguments live here, not on the stack: decide() and
// the stages it calls share the 512-byte stack, and handle() passes them
// to decide() through a tail call, which keeps no stack. Not pinned:
// scratch, per packet.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tier_args);
} fm_tier_scratch SEC(".maps");

// fqdn_slot folds the name rules of one live slot into a's candidates.
// Inlined in decide() (the verifier walks it once per slot of the loop in
// fqdn_stage, which the budget allows now that decide() is verified apart
// from handle()): a live slot costs no BPF-to-BPF call (~9 ns here).
static __always_inline int fqdn_slot(struct policy_tabs *pt, __u32 s)
{
	struct tier_args *a = pt->a;
	struct l4 q;
	__u32 admin, base;

	q.dport = a->dport;
	q.has_ports = a->has_ports;
	admin = a->admin;
	base = a->base;
	if (a->folded) {
		// Folded (fold.go): a port protocol's entries hold the slot's
		// any-protocol ones; other protocols have only those.
		if (is_port_proto(a->proto)) {
			if ((a->tm & EPL_FQDN_PROTO) && (a->fqdn_proto_slots & (1U << s)))
				tier_fold(policy_lookup(pt, KIND_TIER_FQDN, s, &q, a->proto), &admin, &base);
		} else if ((a->tm & EPL_FQDN_ANY) && (a->fqdn_any_slots & (1U << s))) {
			tier_fold(policy_lookup(pt, KIND_TIER_FQDN, s, &q, 0), &admin, &base);
		}
	} else {
		if ((a->tm & EPL_FQDN_PROTO) && (a->fqdn_proto_slots & (1U << s)))
			tier_fold(policy_lookup(pt, KIND_TIER_FQDN, s, &q, a->proto), &admin, &base);
		if ((a->tm & EPL_FQDN_ANY) && (a->fqdn_any_slots & (1U << s)))
			tier_fold(policy_lookup(pt, KIND_TIER_FQDN, s, &q, 0), &admin, &base);
	}
	a->admin = admin;
	a->base = base;
	return 0;
}

// fqf_absent reports whether fm_fqdn_filter proves that the endpoint never
// learned the peer address: then fqdn_stage looks no further.
static __always_inline int fqf_absent(struct tier_args *a)
{
	// fqfHash in bloom_linux.go.
	const __u32 *ip = peer_addr(a);

	return bloom_absent(&fm_fqdn_filter, FQF_WORDS,
			    bloom_mix((__u64)(ip[0] ^ ip[2]) << 32 | (ip[1] ^ ip[3]), a->ifindex, FQF_BITS));
}

// fqx_hash is fm_fqdn_index's hash of an fm_fqdn key (fqxHash in
// fqdnindex_linux.go): ipc_hash of the address, the endpoint mixed in by a
// second multiplication. Buckets come from bits 48-63 and 32-47.
static __always_inline __u64 fqx_hash(const __u32 *w, __u32 ifindex)
{
	return (ipc_hash(w) ^ ifindex) * 0xC2B2AE3D27D4EB4FULL;
}

// fqx_live returns the slots fm_fqdn_index holds live at now for the
// endpoint and address of a, FQX_NONE when it proves there are none, or
// FQX_UNSURE.
#define FQX_UNSURE -1
#define FQX_NONE -2
static __always_inline __s64 fqx_live(struct tier_args *a, __u64 now)
{
	const __u32 *w = peer_addr(a);
	__u32 zero = 0;
	struct fqx_ctl *ctl = bpf_map_lookup_elem(&fm_fqdn_index, &zero);
	__u64 c, h;
	int i, j;

	if (!ctl)
		return FQX_UNSURE;
	c = *(volatile __u64 *)ctl;
	if ((__u32)(c >> 32) == FQX_UNUSED)
		return FQX_UNSURE;
	asm volatile("" ::: "memory");
	h = fqx_hash(w, a->ifindex);
#pragma unroll
	for (i = 0; i < 2; i++) {
		__u32 b = 1 + ((__u32)(h >> (i ? 32 : 48)) & (FQX_BUCKETS - 1));
		struct fqx_bucket *bk = bpf_map_lookup_elem(&fm_fqdn_index, &b);
		if (!bk)
			return FQX_UNSURE;
#pragma unroll
		for (j = 0; j < FQX_WAYS; j++) {
			struct fqx_entry *e = &bk->e[j];
			__u32 seq = *(volatile __u32 *)&e->seq, mask;
			__u64 until;

			asm volatile("" ::: "memory");
			if (e->ip[3] != w[3] || e->ifindex != a->ifindex || e->ip[2] != w[2] || e->ip[1] != w[1] ||
			    e->ip[0] != w[0])
				continue;
			mask = e->mask;
			until = e->live_until;
			asm volatile("" ::: "memory");
			if ((seq & 1) || *(volatile __u32 *)&e->seq != seq || until <= now)
				return FQX_UNSURE;
			return mask;
		}
	}
	asm volatile("" ::: "memory");
	if ((__u32)(c >> 32) == FQX_COMPLETE && !(c & 1) && *(volatile __u64 *)ctl == c)
		return FQX_NONE;
	return FQX_UNSURE;
}

// fqdn_stage finds the slots whose answer for the destination is live
// (fm_fqdn_index; when it cannot say, fm_fqdn_filter and one fm_fqdn
// lookup) and folds in their name rules. Inlined in decide(), after the
// policy stage.
static __always_inline int fqdn_stage(struct tier_args *a)
{
	struct policy_tabs pt = {};
	struct fqdn_val *v = 0;
	__u64 now;
	__s64 live;
	__u32 s, mask, slot;

	if (!a)
		return 0;
	now = now_ns();
	live = fqx_live(a, now);
	if (live >= 0) {
		mask = live;
	} else if (live == FQX_NONE || fqf_absent(a)) {
		return 0;
	} else {
		a->fk.ifindex = a->ifindex;
		__builtin_memcpy(a->fk.ip, peer_addr(a), 16);
		v = bpf_map_lookup_elem(&fm_fqdn, &a->fk);
		if (!v)
			return 0;
		mask = v->mask;
	}
	// The slots' lookups share one slot's tables, found once.
	slot = a->slot;
	pt.a = a;
	if (a->use_arr) {
		pt.fixarr = bpf_map_lookup_elem(&fm_policy_fixarr_v2, &slot);
		pt.fixed = pt.fixarr; // not read: every entry is in the array
	} else {
		pt.fixed = bpf_map_lookup_elem(&fm_policy_fixed, &slot);
	}
	if (!pt.fixed)
		return 0;
	mask &= a->fqdn_proto_slots | a->fqdn_any_slots;
	// Up to the highest slot in mask, not every slot: an endpoint's names
	// take the lowest slots, and an iteration cost ~18 instructions.
	for (s = 0; s < FQDN_SLOTS && (mask >> s); s++) {
		if (!(mask & (1U << s)) || (v && v->expires[s] <= now))
			continue;
		fqdn_slot(&pt, s);
	}
	return 0;
}

// stage_start clears a policy stage's results.
static __always_inline void stage_start(struct tier_args *a, struct policy_tabs *pt)
{
	a->admin = 0;
	a->base = 0;
	a->rule = 0;
	pt->a = a;
}

// fm_policy_stage runs the lookups of both layers: every tier lookup that
// can match (the endpoint's KIND_TIER_SUMMARY entry says which), folded
// into the best Admin and Baseline candidates, and, when NetworkPolicy
// enforces the direction, the NetworkPolicy lookups that can match (the
// endpoint's lookups say which; tables of an older agent: all, in the
// trie) up to the first allow, whose rule it leaves in a->rule (0: none
// allows). A shape both layers look up costs one probe of the array
// (policy_pair). A global function: the verifier checks it once, not once
// per path of decide() that reaches it (unfolded endpoints are the
// uncommon case: they pay its call). Its frame shares the 512-byte stack
// with decide()'s, so the results build up in a and the keys live there
// too: as locals they would be spilled across the helper calls.
__attribute__((noinline)) int fm_policy_stage(struct tier_args *a)
{
	struct policy_tabs pt = {};
	struct policy_fixed_val *sv;
	struct l4 q;
	__u32 tm = 0, slot, tv, cls;
	__u8 np = 0, proto;

	if (!a)
		return 0;
	stage_start(a, &pt);
	slot = a->slot;
	proto = a->proto;
	if (a->lookups & EPL_VALID) {
		pt.fixed = bpf_map_lookup_elem(&fm_policy_fixed, &slot);
		if (!pt.fixed)
			return 0;
		if (a->use_arr)
			pt.fixarr = bpf_map_lookup_elem(&fm_policy_fixarr_v2, &slot);
		if (a->enforced)
			np = a->lookups;
	} else if (a->enforced) {
		np = 0xff;
	}
	if (a->tiers && pt.fixed) {
		if (a->tm_known) {
			tm = a->tm;
		} else {
			struct policy_fixed_key sk = {.ifindex = a->ifindex, .dir = a->dir, .kind = KIND_TIER_SUMMARY};
			sv = bpf_map_lookup_elem(pt.fixed, &sk);
			tm = sv ? sv->all_rule : 0;
			if (sv && (tm & (EPL_FQDN_PROTO | EPL_FQDN_ANY))) {
				a->fqdn_proto_slots = sv->rules[0];
				a->fqdn_any_slots = sv->rules[1];
			}
		}
	}
	q.dport = a->dport;
	q.has_ports = a->has_ports;
	// Each shape in the NetworkPolicy stage's order, so the allowing rule
	// is the one the stages reported before they were merged. Once a rule
	// allows, only tier lookups remain.
	if (a->peer_id && ((np & EPL_PEER_PROTO) || (tm & EPL_PEER_PROTO))) {
		tv = 0;
		policy_pair(&pt, KIND_IDENTITY, a->peer_id, &q, proto, np & EPL_PEER_PROTO, tm & EPL_PEER_PROTO,
			    &a->rule, &tv);
		tier_fold(tv, &a->admin, &a->base);
	}
	if (a->peer_id && ((!a->rule && (np & EPL_PEER_ANY)) || (tm & EPL_PEER_ANY))) {
		tv = 0;
		policy_pair(&pt, KIND_IDENTITY, a->peer_id, &q, 0, !a->rule && (np & EPL_PEER_ANY), tm & EPL_PEER_ANY,
			    &a->rule, &tv);
		tier_fold(tv, &a->admin, &a->base);
	}
	if ((!a->rule && (np & EPL_ALL_PROTO)) || (tm & EPL_ALL_PROTO)) {
		tv = 0;
		policy_pair(&pt, KIND_IDENTITY, 0, &q, proto, !a->rule && (np & EPL_ALL_PROTO), tm & EPL_ALL_PROTO,
			    &a->rule, &tv);
		tier_fold(tv, &a->admin, &a->base);
	}
	if ((!a->rule && (np & EPL_ALL_ANY)) || (tm & EPL_ALL_ANY)) {
		tv = 0;
		policy_pair(&pt, KIND_IDENTITY, 0, &q, 0, !a->rule && (np & EPL_ALL_ANY), tm & EPL_ALL_ANY, &a->rule, &tv);
		tier_fold(tv, &a->admin, &a->base);
	}
	if ((!a->rule && (np & (EPL_CIDR_PROTO | EPL_CIDR_ANY))) || (tm & (EPL_CIDR_PROTO | EPL_CIDR_ANY))) {
		cls = cidr_class_arr(a);
		if (cls && ((np & EPL_CIDR_PROTO) || (tm & EPL_CIDR_PROTO))) {
			tv = 0;
			policy_pair(&pt, KIND_CIDR, cls, &q, proto, !a->rule && (np & EPL_CIDR_PROTO), tm & EPL_CIDR_PROTO,
				    &a->rule, &tv);
			tier_fold(tv, &a->admin, &a->base);
		}
		if (cls && ((!a->rule && (np & EPL_CIDR_ANY)) || (tm & EPL_CIDR_ANY))) {
			tv = 0;
			policy_pair(&pt, KIND_CIDR, cls, &q, 0, !a->rule && (np & EPL_CIDR_ANY), tm & EPL_CIDR_ANY, &a->rule, &tv);
			tier_fold(tv, &a->admin, &a->base);
		}
	}
	a->tm = tm;
	return 0;
}

// policy_folded is fm_policy_stage for an endpoint whose entries are
// folded (EPF_FOLDED, fold.go), all in fm_policy_fixarr_v2: at most three
// probes of the array, not six. Inlined in fm_decide, a program of its
// own: the packets it serves pay no BPF-to-BPF call (~9 ns here).
static __always_inline int policy_folded(struct tier_args *a)
{
	struct policy_tabs pt = {};
	struct l4 q;
	__u32 tm, slot, tv, cls;
	__u8 np, proto;

	if (!a)
		return 0;
	stage_start(a, &pt);
	slot = a->slot;
	proto = a->proto;
	pt.fixarr = bpf_map_lookup_elem(&fm_policy_fixarr_v2, &slot);
	if (!pt.fixarr)
		return 0;
	pt.fixed = pt.fixarr; // not read: every entry is in the array
	np = a->enforced ? a->lookups : 0;
	tm = a->tiers ? a->tm : 0;
	q.dport = a->dport;
	q.has_ports = a->has_ports;
	// Folded entries: the peer's (holding the any-peer one when
	// merged), else the any peer's, then the CIDR class's; each of the
	// packet's protocol when rules can name it, else of any protocol.
	// What the peer's probe found stays in scratch (a->found): the
	// frame shares the 512-byte stack.
	if (!is_port_proto(proto))
		proto = 0;
	a->found = 0;
	if (a->peer_id && ((np | tm) & (EPL_PEER_PROTO | EPL_PEER_ANY))) {
		tv = 0;
		a->found = policy_probe(&pt, KIND_IDENTITY, a->peer_id, &q, proto, np & EPL_IDENTITY,
					tm & EPL_IDENTITY, &a->rule, &tv, 1);
		tier_fold(tv, &a->admin, &a->base);
	}
	if (!(a->found & PF_ALL_MERGED) && (((a->rule ? 0 : np) | tm) & (EPL_ALL_PROTO | EPL_ALL_ANY))) {
		tv = 0;
		policy_probe(&pt, KIND_IDENTITY, 0, &q, proto, !a->rule && (np & EPL_IDENTITY), tm & EPL_IDENTITY,
			     &a->rule, &tv, 1);
		tier_fold(tv, &a->admin, &a->base);
	}
	if ((!a->rule && (np & EPL_CIDR)) || (tm & EPL_CIDR)) {
		cls = cidr_class_arr(a);
		if (cls) {
			tv = 0;
			policy_probe(&pt, KIND_CIDR, cls, &q, proto, !a->rule && (np & EPL_CIDR), tm & EPL_CIDR,
				     &a->rule, &tv, 1);
			tier_fold(tv, &a->admin, &a->base);
		}
	}
	a->tm = tm;
	return 0;
}

// frag_remember records an allowed first fragment, so that its later
// fragments (which carry no ports) pass. The key is built in scratch:
// fragments are rare.
static __always_inline void frag_remember(struct pkt *p, __u32 ifindex, __u8 dir, __u64 *now)
{
	__u32 zero = 0;
	struct frag_val fv = {.created = clock(now)};
	struct tier_args *fs = bpf_map_lookup_elem(&fm_tier_scratch, &zero);

	if (fs) {
		frag_fill(&fs->frag, ifindex, dir, p);
		bpf_map_update_elem(&fm_frag, &fs->frag, &fv, BPF_ANY);
	}
}

// decided finishes a packet the policy decided (reason REASON_ALLOW_OPEN,
// REASON_ALLOW_POLICY or REASON_DENY_POLICY; rule the deciding rule, 0 for
// none): rule and endpoint counters, the flow event, and for an allowed
// packet the conntrack entry that lets its flow's later packets and replies
// skip policy (and the first fragment's entry). handle() calls it for the
// directions no policy decides, decide() for the others.
static __always_inline int decided(struct __sk_buff *skb, struct pkt *p, __u32 slot, __u32 ifindex, __u8 dir,
				   __u32 ep_id, __u32 peer_id, __u32 stats, __u32 rule, __u8 reason)
{
	__u64 now = 0;
	void *rc;

	if (reason != REASON_ALLOW_OPEN && rule) {
		rc = bpf_map_lookup_elem(&fm_rule_stats, &slot);
		count_rule(rc, skb, rule);
	}
	if (reason == REASON_DENY_POLICY) {
		count_ep(skb, stats, ifindex, dir, REASON_DENY_POLICY);
		emit(p, ifindex, dir, ep_id, peer_id, rule, 1, REASON_DENY_POLICY);
		return TCX_DROP;
	}
	// A new flow of a direction no policy decides is reported too (no
	// rule), so flow logs show all traffic, policy recommendation
	// included, not only what a policy decided. Once per flow: later
	// packets hit conntrack.
	emit(p, ifindex, dir, ep_id, peer_id, rule, 0, reason);
	{
		struct ct_flow nf = {.last_seen = clock(&now), .rule = rule};
		if (p->t.proto == PROTO_TCP && (p->tcp_flags & 0x05))
			nf.flags = CT_CLOSING;
		if (p->v6) {
			struct ct6_key k6;
			int o = ct6_fill(&k6, ifindex, &p->t);
			ctf_set(ctf_hash6(&k6));
			ct_open(&fm_ct6, &k6, dir ^ o, &nf);
		} else {
			struct ct4_key k4;
			int o = ct4_fill(&k4, ifindex, &p->t);
			ctf_set(ctf_hash4(&k4));
			ct_open(&fm_ct4, &k4, dir ^ o, &nf);
		}
	}
	if (p->frag == 1)
		frag_remember(p, ifindex, dir, &now);
	count_ep(skb, stats, ifindex, dir, reason);
	return TCX_NEXT;
}

// decide is the program handle() tail calls (fm_decide_from_pod,
// fm_decide_to_pod) when policy decides a packet: with everything it needs
// in fm_tier_scratch (the stage's inputs, the parsed packet, the
// endpoint), it runs the policy stage and the name stage, decides and
// finishes the packet. A program of its own, not a global function: a tail
// call is a jump (~3 ns here) where a BPF-to-BPF call and its return cost
// ~9 ns on hosts that mitigate every return, and the folded stage inlined
// here costs no call at all. The verifier checks it apart from handle(), so
// neither nears its limit.
static __always_inline int decide(struct __sk_buff *skb, __u8 dir)
{
	__u32 zero = 0, rule = 0, admin, base;
	struct tier_args *ta = bpf_map_lookup_elem(&fm_tier_scratch, &zero);
	__u8 reason = REASON_ALLOW_POLICY;

	if (!ta)
		return TCX_DROP;
	if (ta->folded)
		policy_folded(ta);
	else
		fm_policy_stage(ta);
	// Name rules: the slots whose answer for this address is live.
	if (dir == DIR_EGRESS && ta->tiers && (ta->tm & (EPL_FQDN_PROTO | EPL_FQDN_ANY)))
		fqdn_stage(ta);
	admin = ta->admin;
	base = ta->base;
	if (admin && (admin & 3) != TIER_PASS) {
		// Admin Accept and Deny are final; Pass goes on.
		rule = admin >> 2;
		if ((admin & 3) != TIER_ACCEPT)
			reason = REASON_DENY_POLICY;
	} else if (!ta->enforced) {
		// No NetworkPolicy selects the endpoint: the Baseline tier, then
		// allow.
		if (!base) {
			reason = REASON_ALLOW_OPEN;
		} else {
			rule = base >> 2;
			if ((base & 3) == TIER_DENY)
				reason = REASON_DENY_POLICY;
		}
	} else {
		rule = ta->rule;
		if (!rule)
			reason = REASON_DENY_POLICY;
	}
	return decided(skb, &ta->p, ta->slot, ta->ifindex, dir, ta->ep_id, ta->peer_id, ta->stats, rule, reason);
}

// One decide program per direction: the kernel lets a program tail call
// only programs of its own attach type.
SEC("tcx/ingress")
int fm_decide_from_pod(struct __sk_buff *skb)
{
	return decide(skb, DIR_EGRESS);
}

SEC("tcx/egress")
int fm_decide_to_pod(struct __sk_buff *skb)
{
	return decide(skb, DIR_INGRESS);
}

// fm_tail_from_pod and fm_tail_to_pod hold the decide programs for
// handle()'s tail call; loading the collection fills them, before any
// program is attached. Not pinned by name: each loaded collection has its
// own, which the loader pins under a name of its own (pinTails in
// ebpf_linux.go), so that it outlives the agent's process.
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__array(values, int(struct __sk_buff *));
} fm_tail_from_pod SEC(".maps") = {
	.values = {[0] = (void *)&fm_decide_from_pod},
};
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__array(values, int(struct __sk_buff *));
} fm_tail_to_pod SEC(".maps") = {
	.values = {[0] = (void *)&fm_decide_to_pod},
};

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	__u32 zero = 0, ifindex = skb->ifindex, slot, peer_id = 0;
	struct pkt p = {};
	struct state *st;
	struct endpoint_val *ep = 0;
	struct endpoint_fast *ef = 0;
	void *eps, *ipc;
	__u8 *peer_ip;
	__u64 now = 0;
	int r;

	st = bpf_map_lookup_elem(&fm_state, &zero);
	if (!st)
		return TCX_DROP;
	slot = st->active;
	if (ifindex < EP_FAST_ENTRIES) {
		void *fast = bpf_map_lookup_elem(&fm_endpoints_fast, &slot);
		if (fast)
			ef = bpf_map_lookup_elem(fast, &ifindex);
		if (ef && (ef->flags & EPF_VALID))
			ep = &ef->ep;
		else
			ef = 0;
	}
	if (!ep) {
		eps = bpf_map_lookup_elem(&fm_endpoints_v2, &slot);
		if (!eps)
			return TCX_DROP;
		ep = bpf_map_lookup_elem(eps, &ifindex);
	}
	if (!ep) {
		count_ep(skb, 0, ifindex, dir, REASON_DENY_NO_ENDPOINT);
		return TCX_DROP;
	}
	__u8 enforced = dir == DIR_INGRESS ? ep->enforced[0] : ep->enforced[1];
	__u8 lookups = dir == DIR_INGRESS ? ep->lookups[0] : ep->lookups[1];
	// tiers: ClusterNetworkPolicy entries exist for this direction.
	__u8 tiers = (lookups & (EPL_VALID | EPL_TIER)) == (EPL_VALID | EPL_TIER);
	__u32 ep_id = ep->identity;
	__u32 stats = ep->stats;

	r = parse(skb, &p);
	if (r == PARSE_CONTROL) {
		count_ep(skb, stats, ifindex, dir, REASON_ALLOW_CONTROL);
		return TCX_NEXT;
	}
	if (r == PARSE_NOT_IP) {
		if (enforced) {
			count_ep(skb, stats, ifindex, dir, REASON_DENY_L3);
			return TCX_DROP;
		}
		count_ep(skb, stats, ifindex, dir, REASON_ALLOW_OPEN);
		return TCX_NEXT;
	}
	if (r == PARSE_MALFORMED) {
		count_ep(skb, stats, ifindex, dir, REASON_DENY_MALFORMED);
		emit(&p, ifindex, dir, ep_id, 0, 0, 1, REASON_DENY_MALFORMED);
		return TCX_DROP;
	}

	// The fragment key is built only for fragments: most packets are not.
	if (p.frag == 2) {
		if (!enforced && !tiers) {
			count_ep(skb, stats, ifindex, dir, REASON_ALLOW_OPEN);
			return TCX_NEXT;
		}
		struct tier_args *fs = bpf_map_lookup_elem(&fm_tier_scratch, &zero);
		if (!fs)
			return TCX_DROP;
		frag_fill(&fs->frag, ifindex, dir, &p);
		if (bpf_map_lookup_elem(&fm_frag, &fs->frag)) {
			count_ep(skb, stats, ifindex, dir, REASON_ALLOW_FRAG);
			return TCX_NEXT;
		}
		count_ep(skb, stats, ifindex, dir, REASON_DENY_FRAG);
		return TCX_DROP;
	}

	// Conntrack: one lookup in the family's table; the ICMP error path a
	// second one, with the quoted packet's key. Nothing of it stays live
	// into the policy lookups (a new flow builds its key again): keeping the
	// key, entry and orientation live multiplies the verifier's states past
	// its limit.
	struct ct_flow *cf;
	__u8 reason;

	cf = 0;
	if (p.v6) {
		struct ct6_key k6;
		int o = ct6_fill(&k6, ifindex, &p.t);
		if (!ctf_absent(ctf_hash6(&k6)))
			cf = ct_match(bpf_map_lookup_elem(&fm_ct6, &k6), dir, o, p.t.proto, &now);
	} else {
		struct ct4_key k4;
		int o = ct4_fill(&k4, ifindex, &p.t);
		if (!ctf_absent(ctf_hash4(&k4)))
			cf = ct_match(bpf_map_lookup_elem(&fm_ct4, &k4), dir, o, p.t.proto, &now);
	}
	if (cf) {
		ct_touch(cf, &p, now);
		reason = REASON_ALLOW_CT;
		goto allow_no_ct;
	}
	if (p.related) {
		// The quoted packet travelled the other way: the error belongs to
		// the flow the quote belongs to in the opposite direction.
		struct ct_val *iv;
		int io;
		if (p.v6) {
			struct ct6_key ik;
			io = ct6_fill(&ik, ifindex, &p.inner);
			iv = bpf_map_lookup_elem(&fm_ct6, &ik);
		} else {
			struct ct4_key ik;
			io = ct4_fill(&ik, ifindex, &p.inner);
			iv = bpf_map_lookup_elem(&fm_ct4, &ik);
		}
		if (ct_match(iv, dir ^ 1, io, p.inner.proto, &now)) {
			reason = REASON_ALLOW_RELATED;
			goto allow_no_ct;
		}
	}

	peer_ip = dir == DIR_INGRESS ? p.t.src : p.t.dst;
	ipc = 0;
	if (ef && (ef->flags & EPF_IPC_ARRAY))
		ipc = bpf_map_lookup_elem(&fm_ipcache_hostarr, &slot);
	if (ipc) {
		__u32 *id = ipc_find(ipc, peer_ip);
		if (id)
			peer_id = *id;
	} else {
		ipc = bpf_map_lookup_elem(&fm_ipcache_host, &slot);
		if (ipc) {
			struct ipcache_val *iv = bpf_map_lookup_elem(ipc, peer_ip);
			if (iv)
				peer_id = iv->identity;
		}
	}
	ipc = peer_id || (ef && (ef->flags & EPF_IPC_HOSTS_ONLY)) ? 0 : bpf_map_lookup_elem(&fm_ipcache, &slot);
	if (ipc) {
		struct ipcache_key ik = {.prefixlen = 128};
		struct ipcache_val *iv;
		__builtin_memcpy(ik.ip, peer_ip, 16);
		iv = bpf_map_lookup_elem(ipc, &ik);
		if (iv)
			peer_id = iv->identity;
	}
	if (!enforced && !tiers)
		return decided(skb, &p, slot, ifindex, dir, ep_id, peer_id, stats, 0, REASON_ALLOW_OPEN);

	// The policy stages run in decide(), tail called with their inputs in
	// per-CPU scratch: nothing of theirs lives in this frame, and the
	// verifier checks them apart. The scratch is found here, not for
	// every packet: conntrack hits (most packets) never read it.
	struct tier_args *ta = bpf_map_lookup_elem(&fm_tier_scratch, &zero);
	if (!ta)
		return TCX_DROP;
	ta->slot = slot;
	ta->ifindex = ifindex;
	ta->peer_id = peer_id;
	ta->dport = p.t.dport;
	ta->dir = dir;
	ta->proto = p.t.proto;
	ta->has_ports = p.has_ports;
	ta->lookups = lookups;
	ta->tiers = tiers;
	ta->enforced = enforced;
	ta->ep_id = ep_id;
	ta->stats = stats;
	__builtin_memcpy(&ta->p, &p, offsetof(struct pkt, inner));
	ta->use_arr = ef && (ef->flags & EPF_PF_PAIRS) && (lookups & EPL_VALID);
	ta->folded = ta->use_arr && (ef->flags & EPF_FOLDED);
	if (ef) {
		ta->tm_known = 1;
		ta->tm = ef->tier_mask[dir & 1];
		ta->fqdn_proto_slots = ef->fqdn_proto_slots[dir & 1];
		ta->fqdn_any_slots = ef->fqdn_any_slots[dir & 1];
	} else {
		ta->tm_known = 0;
		ta->tm = 0;
		ta->fqdn_proto_slots = 0;
		ta->fqdn_any_slots = 0;
	}
	if (dir == DIR_EGRESS)
		bpf_tail_call(skb, &fm_tail_from_pod, 0);
	else
		bpf_tail_call(skb, &fm_tail_to_pod, 0);
	// Only when the decide program is not in its array, which loading
	// fills before any program is attached: fail closed.
	count_ep(skb, stats, ifindex, dir, REASON_DENY_POLICY);
	return TCX_DROP;

allow_no_ct:
	if (p.frag == 1)
		frag_remember(&p, ifindex, dir, &now);
	count_ep(skb, stats, ifindex, dir, reason);
	return TCX_NEXT;
}

// Traffic leaving the pod: tcx ingress of the host-side veth.
SEC("tcx/ingress")
int fm_from_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

// Traffic entering the pod: tcx egress of the host-side veth.
SEC("tcx/egress")
int fm_to_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

char __license[] SEC("license") = "Dual BSD/GPL";
