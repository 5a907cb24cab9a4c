// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// fedmesh ClusterSetIP translation at the socket layer (cgroup v2 sock_addr
// hooks), so no kube-proxy and no per-packet NAT: a connect() or an
// unconnected sendmsg() to a frontend (VIP, port, protocol) is rewritten to
// one of its backends before the kernel routes anything, and the packets of
// the flow carry the backend's address from their first byte. The tc policy
// program (fedmesh.c) therefore decides against the backend's identity, as
// Kubernetes does for Services. The Go twin of the choice is
// nodeagent/dataplane/socklb.go (chooseBackend, SockLBMemory); change both
// together.
//
// Maps (written by services_linux.go; see the package doc for the update
// protocol):
//   - fm_svc: frontend -> (backend set, count, total weight). A frontend with
//     count 0 has no usable backend: connect/sendmsg are rejected (EPERM).
//   - fm_svc_be: (set, index) -> backend and cumulative weight. A set is
//     written whole before a frontend points at it and deleted only after no
//     frontend does, so a lookup sees an old or a new list, never a mix.
//   - fm_sock_rev (LRU): (socket cookie, backend) -> frontend, so
//     getpeername() and recvmsg() on a translated socket show the VIP.
//   - fm_sock_aff (LRU): (socket cookie, frontend) -> chosen (set, index), so
//     an unconnected UDP socket keeps its backend while the frontend's set is
//     unchanged (per-socket translation) and chooses again once it changed.
//   - fm_dns_redir: cluster DNS frontend (address, 53, UDP or TCP) -> the
//     agent's resolver address and the socket mark that exempts a socket
//     (the agent's own upstream queries, dns.UpstreamMark). Looked up before
//     fm_svc; the reverse entry goes into fm_sock_rev like a service's, so
//     recvmsg/getpeername show the cluster DNS address (Go side:
//     dnsredirect.go; why a map of its own: socklb.go's doc).
//
// Keys are (address, port, protocol, family) only, never the netns: the
// hooks see every socket of the cgroup, whatever namespace it lives in.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define FAMILY4 4
#define FAMILY6 6

// MAX_SEARCH bounds the binary search over a set's cumulative weights:
// 2^MAX_SEARCH backends per frontend at most (the loader caps lower).
#define MAX_SEARCH 16

enum {
	STAT_TRANSLATED = 0,  // connect/sendmsg sent to a backend
	STAT_REJECTED = 1,    // frontend without backends: connect/sendmsg refused
	STAT_REVERSED = 2,    // getpeername/recvmsg address shown as the VIP
	STAT_SET_MISSING = 3, // a set vanished under a lookup (should never count)
	STAT_DNS_REDIRECTED = 4, // DNS to a cluster DNS address sent to the agent's resolver
	STAT_DNS_EXEMPT = 5,     // the same from a socket with the skip mark: left alone
	NSTATS = 6,
};

struct svc_key {
	__u32 addr[4]; // network order; IPv4 in addr[0], the rest zero
	__u16 port;    // network order
	__u8 proto;
	__u8 family;   // FAMILY4 or FAMILY6
};

struct svc_val {
	__u32 set;
	__u32 count; // backends in the set; 0 = reject
	__u32 total; // sum of weights
	__u32 pad;
};

struct be_key {
	__u32 set;
	__u32 idx;
};

struct be_val {
	__u32 addr[4];
	__u16 port; // network order
	__u16 pad;
	__u32 cum;  // weights of backends 0..idx
};

struct sock_key {
	__u64 cookie;
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
	__u32 pad;
};

struct rev_val {
	__u32 addr[4];
	__u16 port;
	__u16 pad;
};

struct aff_val {
	__u32 set;
	__u32 idx;
};

struct dns_val {
	__u32 addr[4];   // the resolver, network order; IPv4 in addr[0]
	__u16 port;      // network order
	__u16 pad;
	__u32 skip_mark; // sockets with exactly this mark are not redirected (0: none)
	__u32 pad2;
};

struct svc_state {
	__u64 revision;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct be_key);
	__type(value, struct be_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_svc_be SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, struct rev_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_sock_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, struct aff_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_sock_aff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NSTATS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_svc_stats SEC(".maps");

// fm_svc_state holds the revision of the loaded table (read back by a
// restarted agent; the programs do not read it).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct svc_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_svc_state SEC(".maps");

// fm_dns_redir is tiny (a cluster has one or two DNS addresses per family,
// times two protocols).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct svc_key);
	__type(value, struct dns_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fm_dns_redir SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *c = bpf_map_lookup_elem(&fm_svc_stats, &stat);
	if (c)
		*c += 1;
}

// choose picks the backend whose cumulative-weight interval holds r (the
// first index with cum > r): weighted random when r is uniform in [0, total).
static __always_inline struct be_val *choose(const struct svc_val *sv, __u32 r, __u32 *out_idx)
{
	struct be_key k = {.set = sv->set};
	__u32 lo = 0, hi = sv->count - 1;
	for (int i = 0; i < MAX_SEARCH + 1; i++) {
		if (lo >= hi)
			break;
		__u32 mid = lo + (hi - lo) / 2;
		k.idx = mid;
		struct be_val *b = bpf_map_lookup_elem(&fm_svc_be, &k);
		if (!b)
			return 0;
		if (b->cum > r)
			hi = mid;
		else
			lo = mid + 1;
	}
	k.idx = lo;
	*out_idx = lo;
	return bpf_map_lookup_elem(&fm_svc_be, &k);
}

// frontend reads the hook's destination into a key: IPv4 hooks and IPv6
// hooks (an IPv4-mapped IPv6 address is looked up as IPv4, so dual-stack
// sockets are translated too). Returns 0 for a socket type not translated.
static __always_inline int frontend(struct bpf_sock_addr *ctx, int v6, struct svc_key *k, int *mapped)
{
	__u32 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return 0;
	k->proto = proto;
	k->port = (__u16)ctx->user_port;
	*mapped = 0;
	if (!v6) {
		k->family = FAMILY4;
		k->addr[0] = ctx->user_ip4;
		return 1;
	}
	__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
	if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff)) {
		k->family = FAMILY4;
		k->addr[0] = a3;
		*mapped = 1;
		return 1;
	}
	k->family = FAMILY6;
	k->addr[0] = a0;
	k->addr[1] = a1;
	k->addr[2] = a2;
	k->addr[3] = a3;
	return 1;
}

// rewrite sets the hook's destination (or, for recvmsg/getpeername, the
// peer address shown) to addr:port, in the family the hook was called with.
static __always_inline void rewrite(struct bpf_sock_addr *ctx, int v6, int mapped, const __u32 *addr, __u16 port)
{
	ctx->user_port = port;
	if (!v6) {
		ctx->user_ip4 = addr[0];
		return;
	}
	if (mapped) {
		ctx->user_ip6[3] = addr[0];
		return;
	}
	ctx->user_ip6[0] = addr[0];
	ctx->user_ip6[1] = addr[1];
	ctx->user_ip6[2] = addr[2];
	ctx->user_ip6[3] = addr[3];
}

// remember_reverse records the frontend a socket's backend stands for. A
// socket that kept its backend (sticky) has its entry already unless the
// LRU evicted it: a lookup is much cheaper than an LRU update per datagram.
static __always_inline void remember_reverse(__u64 cookie, const struct svc_key *fe, const struct be_val *b, int kept)
{
	struct sock_key rk = {.cookie = cookie, .port = b->port, .proto = fe->proto, .family = fe->family};
	__builtin_memcpy(rk.addr, b->addr, sizeof(rk.addr));
	if (kept && bpf_map_lookup_elem(&fm_sock_rev, &rk))
		return;
	struct rev_val rv = {.port = fe->port};
	__builtin_memcpy(rv.addr, fe->addr, sizeof(rv.addr));
	bpf_map_update_elem(&fm_sock_rev, &rk, &rv, BPF_ANY);
}

// redirect_dns sends a socket's DNS for a cluster DNS address to the agent's
// resolver, and remembers the cluster DNS address as what the socket's peer
// is shown as. A socket carrying the skip mark (the agent's forwarder) goes
// where it asked: its upstream is often that very address. The pod's socket
// keeps its own source address, which is how the resolver knows the pod.
static __always_inline int redirect_dns(struct bpf_sock_addr *ctx, int v6, int mapped, const struct svc_key *k,
					const struct dns_val *dv)
{
	struct bpf_sock *sk = ctx->sk;
	if (sk && dv->skip_mark != 0 && sk->mark == dv->skip_mark) {
		count(STAT_DNS_EXEMPT);
		return 1;
	}
	struct be_val b = {.port = dv->port};
	__builtin_memcpy(b.addr, dv->addr, sizeof(b.addr));
	// kept = 1: a stub resolver's socket sends many queries; look the
	// reverse entry up before writing it.
	remember_reverse(bpf_get_socket_cookie(ctx), k, &b, 1);
	rewrite(ctx, v6, mapped, dv->addr, dv->port);
	count(STAT_DNS_REDIRECTED);
	return 1;
}

// translate is connect (sticky = 0) and sendmsg (sticky = 1: reuse the
// socket's choice while the frontend's set is unchanged). Returns the hook's
// verdict: 1 lets the call go on, 0 refuses it with EPERM.
static __always_inline int translate(struct bpf_sock_addr *ctx, int v6, int sticky)
{
	struct svc_key k = {};
	int mapped;
	if (!frontend(ctx, v6, &k, &mapped))
		return 1;
	struct dns_val *dv = bpf_map_lookup_elem(&fm_dns_redir, &k);
	if (dv)
		return redirect_dns(ctx, v6, mapped, &k, dv);
	struct svc_val *sv = bpf_map_lookup_elem(&fm_svc, &k);
	if (!sv)
		return 1;
	if (sv->count == 0 || sv->total == 0) {
		count(STAT_REJECTED);
		return 0;
	}
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sock_key ak = {};
	struct be_val *b = 0;
	__u32 idx = 0;
	if (sticky) {
		ak.cookie = cookie;
		__builtin_memcpy(ak.addr, k.addr, sizeof(ak.addr));
		ak.port = k.port;
		ak.proto = k.proto;
		ak.family = k.family;
		struct aff_val *av = bpf_map_lookup_elem(&fm_sock_aff, &ak);
		if (av && av->set == sv->set && av->idx < sv->count) {
			struct be_key bk = {.set = av->set, .idx = av->idx};
			b = bpf_map_lookup_elem(&fm_svc_be, &bk);
			idx = av->idx;
		}
	}
	int kept = b != 0;
	if (!b) {
		b = choose(sv, bpf_get_prandom_u32() % sv->total, &idx);
		if (!b) {
			// The set was replaced and deleted between the two lookups
			// (the loader waits a grace period, so this should not happen):
			// refuse rather than send to the VIP untranslated.
			count(STAT_SET_MISSING);
			return 0;
		}
		if (sticky) {
			struct aff_val av = {.set = sv->set, .idx = idx};
			bpf_map_update_elem(&fm_sock_aff, &ak, &av, BPF_ANY);
		}
	}
	remember_reverse(cookie, &k, b, kept);
	rewrite(ctx, v6, mapped, b->addr, b->port);
	count(STAT_TRANSLATED);
	return 1;
}

// reverse shows the frontend instead of the backend as the peer of a
// translated socket (recvmsg source, getpeername).
static __always_inline int reverse(struct bpf_sock_addr *ctx, int v6)
{
	struct svc_key k = {};
	int mapped;
	if (!frontend(ctx, v6, &k, &mapped))
		return 1;
	struct sock_key rk = {.cookie = bpf_get_socket_cookie(ctx), .port = k.port, .proto = k.proto, .family = k.family};
	__builtin_memcpy(rk.addr, k.addr, sizeof(rk.addr));
	struct rev_val *rv = bpf_map_lookup_elem(&fm_sock_rev, &rk);
	if (!rv)
		return 1;
	rewrite(ctx, v6, mapped, rv->addr, rv->port);
	count(STAT_REVERSED);
	return 1;
}

SEC("cgroup/connect4")
int fm_connect4(struct bpf_sock_addr *ctx) { return translate(ctx, 0, 0); }

SEC("cgroup/connect6")
int fm_connect6(struct bpf_sock_addr *ctx) { return translate(ctx, 1, 0); }

SEC("cgroup/sendmsg4")
int fm_sendmsg4(struct bpf_sock_addr *ctx) { return translate(ctx, 0, 1); }

SEC("cgroup/sendmsg6")
int fm_sendmsg6(struct bpf_sock_addr *ctx) { return translate(ctx, 1, 1); }

SEC("cgroup/recvmsg4")
int fm_recvmsg4(struct bpf_sock_addr *ctx) { return reverse(ctx, 0); }

SEC("cgroup/recvmsg6")
int fm_recvmsg6(struct bpf_sock_addr *ctx) { return reverse(ctx, 1); }

SEC("cgroup/getpeername4")
int fm_getpeername4(struct bpf_sock_addr *ctx) { return reverse(ctx, 0); }

SEC("cgroup/getpeername6")
int fm_getpeername6(struct bpf_sock_addr *ctx) { return reverse(ctx, 1); }

char __license[] SEC("license") = "Dual BSD/GPL";
