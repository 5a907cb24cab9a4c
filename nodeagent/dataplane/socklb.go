package dataplane

// ClusterSetIP translation at the socket layer.
//
// Choice: the node agent translates in cgroup v2 sock_addr hooks (connect4/6,
// sendmsg4/6, recvmsg4/6, getpeername4/6; bpf/sock_lb.c), as Cilium's socket
// LB does, rather than by DNAT in the tc program with reverse NAT from
// conntrack. Trade-offs:
//   - Cost: the backend is chosen once per connect() (or per sendmsg() of an
//     unconnected UDP socket); established TCP and connected UDP packets
//     carry the backend address from the first byte and cost nothing more
//     than an untranslated flow. tc DNAT would rewrite and checksum every
//     packet both ways and keep a NAT entry per flow.
//   - Policy: the tc policy program (bpf/fedmesh.c) sees the backend's
//     address, so policy is decided against the chosen backend's identity
//     (Kubernetes semantics for Services) with no change to it and no
//     translation state in its conntrack.
//   - Scope: only sockets of processes in the attached cgroup are
//     translated. Traffic that enters the node without a local socket
//     (forwarded packets, a pod whose processes are outside the cgroup, host
//     network namespaces of other nodes) is not: a ClusterSetIP is reachable
//     from the node's own pods, which is what the MCS API promises. tc DNAT
//     would also catch forwarded traffic, at the per-packet cost above.
//   - The application sees the VIP: getpeername() and recvmsg() are mapped
//     back through a per-socket reverse entry (fm_sock_rev, an LRU keyed by
//     socket cookie), so a UDP client checking the reply's source works. A
//     reverse entry evicted under pressure (more live translated sockets than
//     its size) shows the backend address instead.
//   - Unconnected UDP: per-socket translation; the socket keeps its backend
//     (fm_sock_aff) while the frontend's backend set is unchanged, and
//     chooses again when any update replaced the set, so a withdrawn backend
//     gets no new datagram once the update is applied.
//
// Where to attach: on a real node, at the root of the cgroup v2 hierarchy
// (or the kubelet's kubepods cgroup), so every pod's processes are
// translated, whatever network namespace they open sockets in (the hooks
// are keyed by VIP:port:protocol only, never by netns). In the lab, pods are
// network namespaces on one host shared by several simulated nodes, so each
// lab node needs its own cgroup (for example
// /sys/fs/cgroup/fedlab-<lab>/<node>, under the cgroup v2 mount) holding that
// node's pod processes, and its agent attaches there (ServiceConfig.Cgroup).
//
// Updates: a frontend points at a backend set (set id, count, total weight);
// a changed list is written whole under a fresh set id, then the frontend's
// entry is switched in one map update, and old sets are deleted only after
// every frontend switched and a grace period passed, so a program never sees
// a half-written list nor a withdrawn backend after the switch. This needs
// room for two sets per frontend: half of fm_svc_be is the load budget.
//
// DNS redirect (issue #22's transparent DNS proxy; dnsredirect.go): the same
// hooks send a pod's UDP and TCP port-53 traffic for a cluster DNS address
// (kube-dns's ClusterIP, what the pod's resolv.conf names) to the agent's
// resolver (--dns-listen), so the pod's resolver configuration stays as it
// is. connect4/6 and sendmsg4/6 look the destination up in fm_dns_redir
// before fm_svc and rewrite it to the resolver of its family; the reverse
// entry goes into fm_sock_rev, so recvmsg and getpeername show the cluster
// DNS address and stub resolvers that check the answer's source accept it.
// The socket keeps its own source address: the resolver sees the pod's IP,
// which is how it knows the pod.
//   - Why a map of its own and not a service frontend with the resolver as
//     its one backend: the service table is the control plane's ClusterSet
//     IPs, replaced whole by the agent's sync goroutine at every revision
//     (one writer, one contract); the redirect comes from a flag and is set
//     once at start. The redirect must skip sockets carrying
//     dns.UpstreamMark (below), which service translation must not: the
//     agent's connections to ClusterSetIPs are translated like anyone's.
//     And it needs no backend set, weight or affinity: one hash lookup, a
//     rewrite and a reverse entry (looked up before it is written, so a
//     stub resolver's socket sending many queries costs no map update).
//     The redirect wins over a service frontend on the same address and
//     port; other ports of the address are translated as before.
//   - The agent's own queries: on a real node the agent runs inside the
//     attached cgroup and forwards to the cluster DNS address itself. Its
//     forwarder marks its sockets (SO_MARK = dns.UpstreamMark, set before
//     connect in the dialer's Control); the programs read the mark from
//     ctx->sk (struct bpf_sock's mark is readable in sock_addr programs,
//     verified on 6.18 by TestDNSRedirectLeavesSocketsWithTheUpstreamMarkAlone)
//     and leave such sockets alone. The whole mark is compared.
//   - Against tc DNAT on the pod's veth: that rewrites and checksums every
//     DNS packet both ways and needs NAT state for the reply (with
//     conntrack in the policy program, fedmesh.c, whose owner it is not),
//     where the socket hook costs one lookup per connect or sendmsg and
//     keeps no per-flow state beyond the LRU reverse entry. tc would also
//     catch pods whose processes are outside the cgroup; here such a pod's
//     DNS goes to the cluster DNS unseen, which widens nothing: name policy
//     allows an address only after the agent saw that pod receive it, so
//     an unseen answer opens no connection (the same holds for a pod that
//     asks another resolver directly or on another port).
//   - Against Cilium: its datapath (bpf_lxc) gives egress DNS matching an
//     L7 DNS rule a proxy-redirect verdict and marks the packet; a TPROXY
//     rule (iptables, or bpf_sk_assign in its BPF tproxy mode) delivers it
//     to the agent's DNS proxy, a transparent socket that sees the original
//     source and destination and answers from the destination; the proxy's
//     upstream sockets carry a Cilium magic mark so the datapath does not
//     redirect them again (the same idea as dns.UpstreamMark). That is per
//     packet, per endpoint with DNS rules, and needs IP_TRANSPARENT sockets
//     and policy routing; here every pod in the cgroup is redirected (DNS
//     visibility covers pods without name rules too) with no routing rule
//     and no transparent socket: the resolver is an ordinary listener.
//   - Policy: as for services, the tc policy program sees the rewritten
//     destination, the resolver's address, not the cluster DNS address. A
//     pod whose egress rules allow DNS only to kube-dns's pods needs the
//     policy program to accept its traffic to the node-local resolver
//     (the same holds, without the redirect, for a pod pointed at
//     --dns-listen by its dnsConfig); that decision belongs to fedmesh.c.
//   - Restart and upgrade: fm_dns_redir is pinned with the service maps, so
//     the redirect outlives the agent's process; the agent sets it again at
//     start (idempotent) and removes it when started without
//     --dns-redirect. A version whose layout of the map differs starts it
//     empty (soft state) until the agent sets it moments later.
//   - While the agent is down, redirected queries fail: nothing listens on
//     the resolver's address, so UDP gets port unreachable (connected
//     sockets see ECONNREFUSED, others time out) and TCP a reset; no query
//     falls through to the cluster DNS. Fail closed, as Cilium (its proxy
//     down, DNS times out): an answer the agent did not see could not allow
//     a connection for a pod with name rules anyway (its addresses are
//     learned only from answers the agent released), and falling through
//     would lose the per-query records and need the programs to know the
//     agent's liveness. Names resolved before keep working for their TTL
//     (the learned addresses are enforced in the datapath), established
//     connections are untouched, and a pod's resolver retries until the
//     restarted agent (a DaemonSet restart: seconds) listens again.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
)

// ServiceLimits bound what the translation maps hold.
type ServiceLimits struct {
	// Frontends is the size of the frontend map.
	Frontends int
	// Backends is the size of the backend map; half of it can be loaded at
	// once (the other half is room for replacing every set in one update).
	Backends int
	// BackendsPerFrontend caps one frontend (at most 1<<16, the program's
	// search bound).
	BackendsPerFrontend int
}

// DefaultServiceLimits are the sizes bpf/sock_lb.c declares.
var DefaultServiceLimits = ServiceLimits{Frontends: 16384, Backends: 65536, BackendsPerFrontend: 4096}

func (l ServiceLimits) withDefaults() ServiceLimits {
	if l.Frontends <= 0 {
		l.Frontends = DefaultServiceLimits.Frontends
	}
	if l.Backends <= 0 {
		l.Backends = DefaultServiceLimits.Backends
	}
	if l.BackendsPerFrontend <= 0 {
		l.BackendsPerFrontend = DefaultServiceLimits.BackendsPerFrontend
	}
	l.BackendsPerFrontend = min(l.BackendsPerFrontend, 1<<16)
	return l
}

// ErrServiceCapacity is wrapped by ServiceCapacityError.
var ErrServiceCapacity = errors.New("service translation capacity exceeded")

// ErrServiceRejected is what a connection to a frontend without usable
// backends gets (EPERM from connect/sendmsg in the kernel).
var ErrServiceRejected = errors.New("service has no usable backend")

// Truncation reasons.
const (
	TruncPerFrontend  = "per-frontend backend limit"
	TruncBackendMap   = "backend map full"
	TruncFrontendMap  = "frontend map full"
	TruncInvalid      = "invalid backend (family, port or weight)"
	TruncInvalidKey   = "invalid frontend (address, port or protocol)"
	TruncWeightTotals = "total weight above 2^32-1"
)

// ServiceTruncation is a frontend served with fewer backends than its table
// lists (Loaded 0 with Reason TruncFrontendMap or TruncInvalidKey: not
// translated at all).
type ServiceTruncation struct {
	Key             ServiceKey
	Namespace, Name string
	Listed, Loaded  int
	Reason          string
}

// ServiceCapacityError lists the truncated frontends of an applied table.
// The table was applied with what fits; the agent surfaces it (condition,
// metric) and keeps going.
type ServiceCapacityError struct {
	Revision  uint64
	Truncated []ServiceTruncation
}

func (e *ServiceCapacityError) Error() string {
	t := e.Truncated[0]
	return fmt.Sprintf("apply services revision %d: %d frontends truncated (first %s/%s %s:%d/%d: %d of %d backends loaded: %s); "+
		"raise the translation map sizes or reduce backends", e.Revision, len(e.Truncated), t.Namespace, t.Name,
		t.Key.VIP, t.Key.Port, t.Key.Protocol, t.Loaded, t.Listed, t.Reason)
}

func (e *ServiceCapacityError) Unwrap() error { return ErrServiceCapacity }

// ServiceStatus is what a translator reports about its loaded table.
type ServiceStatus struct {
	Revision  uint64
	Frontends int // loaded frontends
	Backends  int // loaded backends over all frontends
	// Truncated is nil when everything fit; Err makes it an error.
	Truncated []ServiceTruncation
	// Translated counts connect/sendmsg calls sent to a backend, Rejected
	// those refused for want of a backend, Reversed the peer addresses
	// shown as the VIP (or as the cluster DNS address).
	Translated, Rejected, Reversed uint64
	// DNSRedirected counts connect/sendmsg calls to a cluster DNS address
	// sent to the agent's resolver, DNSExempt those left alone because the
	// socket carried the skip mark (the agent's own upstream queries).
	DNSRedirected, DNSExempt uint64
}

// Err is a *ServiceCapacityError when frontends were truncated, else nil.
func (s ServiceStatus) Err() error {
	if len(s.Truncated) == 0 {
		return nil
	}
	return &ServiceCapacityError{Revision: s.Revision, Truncated: s.Truncated}
}

// ServiceTranslator translates ClusterSetIPs on a node. Contract as for
// ServiceTable: ApplyServices is called only by the agent's sync goroutine,
// may block on kernel I/O, is all or nothing on error; a table that does not
// fit is applied with what fits (nil error) and reported by ServiceStatus.
// ServiceStatus may be called from any goroutine.
type ServiceTranslator interface {
	ApplyServices(ctx context.Context, t *ServiceTable) error
	ServiceStatus(ctx context.Context) (ServiceStatus, error)
}

// lbBackend is one backend as the maps hold it; Cum is the sum of the
// weights of the set's backends up to and including it.
type lbBackend struct {
	Addr netip.Addr
	Port uint16
	Cum  uint32
}

// lbFrontend is a frontend's loaded backend set.
type lbFrontend struct {
	Backends []lbBackend
}

func (f lbFrontend) total() uint32 {
	if len(f.Backends) == 0 {
		return 0
	}
	return f.Backends[len(f.Backends)-1].Cum
}

// lbTables is what the translation maps hold: the rendered ServiceTable.
type lbTables struct {
	Revision  uint64
	Frontends map[ServiceKey]lbFrontend
}

func validServiceKey(k ServiceKey) bool {
	return k.VIP.IsValid() && !k.VIP.Is4In6() && k.VIP.Zone() == "" && k.Port != 0 &&
		(k.Protocol == protoTCP || k.Protocol == protoUDP || k.Protocol == protoSCTP)
}

// renderServices is the pure step of an update: the table as the maps will
// hold it within lim, and the frontends that did not fit whole. Invalid
// backends are left out; when the backend budget is short, every frontend
// gets an equal share (what a smaller one leaves goes to the larger ones),
// each keeping its first backends in table order.
func renderServices(t *ServiceTable, lim ServiceLimits) (*lbTables, []ServiceTruncation) {
	lim = lim.withDefaults()
	out := &lbTables{Revision: t.Revision, Frontends: make(map[ServiceKey]lbFrontend, len(t.Frontends))}
	var trunc []ServiceTruncation
	type want struct {
		fe    *ServiceFrontend
		valid []ServiceBackend
		cut   string
	}
	var wants []want
	for i := range t.Frontends {
		fe := &t.Frontends[i]
		if !validServiceKey(fe.Key) {
			trunc = append(trunc, ServiceTruncation{Key: fe.Key, Namespace: fe.Namespace, Name: fe.Name,
				Listed: len(fe.Backends), Reason: TruncInvalidKey})
			continue
		}
		if _, dup := out.Frontends[fe.Key]; dup {
			continue
		}
		if len(out.Frontends) >= lim.Frontends {
			trunc = append(trunc, ServiceTruncation{Key: fe.Key, Namespace: fe.Namespace, Name: fe.Name,
				Listed: len(fe.Backends), Reason: TruncFrontendMap})
			continue
		}
		w := want{fe: fe}
		var sum uint64
		for _, b := range fe.Backends {
			if !b.Addr.IsValid() || b.Addr.Is4() != fe.Key.VIP.Is4() || b.Addr.Is4In6() || b.Port == 0 || b.Weight == 0 {
				w.cut = TruncInvalid
				continue
			}
			if sum+uint64(b.Weight) > math.MaxUint32 {
				w.cut = TruncWeightTotals
				break
			}
			sum += uint64(b.Weight)
			w.valid = append(w.valid, b)
		}
		if len(w.valid) > lim.BackendsPerFrontend {
			w.valid, w.cut = w.valid[:lim.BackendsPerFrontend], TruncPerFrontend
		}
		out.Frontends[fe.Key] = lbFrontend{}
		wants = append(wants, w)
	}
	// Water-fill the backend budget: ascending demand, each takes at most
	// an equal share of what is left.
	budget := lim.Backends / 2
	order := make([]int, len(wants))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(len(wants[a].valid), len(wants[b].valid)) })
	for n, i := range order {
		share := budget / (len(order) - n)
		if len(wants[i].valid) > share {
			wants[i].valid, wants[i].cut = wants[i].valid[:share], TruncBackendMap
		}
		budget -= len(wants[i].valid)
	}
	for _, w := range wants {
		f := lbFrontend{Backends: make([]lbBackend, len(w.valid))}
		var cum uint32
		for i, b := range w.valid {
			cum += b.Weight
			f.Backends[i] = lbBackend{Addr: b.Addr, Port: b.Port, Cum: cum}
		}
		out.Frontends[w.fe.Key] = f
		if w.cut != "" {
			trunc = append(trunc, ServiceTruncation{Key: w.fe.Key, Namespace: w.fe.Namespace, Name: w.fe.Name,
				Listed: len(w.fe.Backends), Loaded: len(w.valid), Reason: w.cut})
		}
	}
	slices.SortStableFunc(trunc, func(a, b ServiceTruncation) int { return CompareServiceKeys(a.Key, b.Key) })
	return out, trunc
}

// chooseBackend is the program's choose(): the first backend whose
// cumulative weight exceeds r, r uniform in [0, total) making the choice
// weighted random.
func chooseBackend(bs []lbBackend, r uint32) int {
	lo, hi := 0, len(bs)-1
	for lo < hi {
		mid := lo + (hi-lo)/2
		if bs[mid].Cum > r {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// frontendKey is the program's frontend(): the key a destination is looked
// up under (an IPv4-mapped IPv6 address as IPv4) and whether it was mapped.
func frontendKey(proto uint8, dst netip.AddrPort) (ServiceKey, bool) {
	a := dst.Addr()
	return ServiceKey{VIP: a.Unmap(), Port: dst.Port(), Protocol: proto}, a.Is4In6()
}

func mapBack(a netip.Addr, mapped bool) netip.Addr {
	if mapped {
		return netip.AddrFrom16(a.As16())
	}
	return a
}

// SocketID identifies a socket for SockLBMemory (the kernel's socket cookie).
type SocketID uint64

type sockAddrKey struct {
	sock  SocketID
	proto uint8
	addr  netip.AddrPort
}

type affinity struct {
	gen uint64
	idx int
}

// SockLBMemory is the in-memory twin of the socket-level translation: the
// same rendering, the same weighted choice and per-socket state, with the
// socket calls as methods. It implements ServiceTranslator for agent tests
// and simulations.
type SockLBMemory struct {
	lim  ServiceLimits
	rand func() uint32

	mu     sync.Mutex
	tables *lbTables
	gen    map[ServiceKey]uint64 // the set id: changes when a frontend's list does
	next   uint64
	trunc  []ServiceTruncation
	rev    map[sockAddrKey]netip.AddrPort
	aff    map[sockAddrKey]affinity
	stats  ServiceStatus
	dns    map[ServiceKey]dnsTarget // the DNS redirect (dnsredirect.go)
	marks  map[SocketID]uint32      // SO_MARK per socket
}

var _ ServiceTranslator = (*SockLBMemory)(nil)

// NewSockLBMemory returns an empty twin with limits lim (zero fields take
// DefaultServiceLimits) drawing choices from rnd (uniform uint32s, like
// bpf_get_prandom_u32).
func NewSockLBMemory(lim ServiceLimits, rnd func() uint32) *SockLBMemory {
	return &SockLBMemory{lim: lim.withDefaults(), rand: rnd, tables: &lbTables{Frontends: map[ServiceKey]lbFrontend{}},
		gen: map[ServiceKey]uint64{}, rev: map[sockAddrKey]netip.AddrPort{}, aff: map[sockAddrKey]affinity{},
		dns: map[ServiceKey]dnsTarget{}, marks: map[SocketID]uint32{}}
}

// ApplyServices implements ServiceTranslator.
func (m *SockLBMemory) ApplyServices(ctx context.Context, t *ServiceTable) error {
	nt, trunc := renderServices(t, m.lim)
	m.mu.Lock()
	defer m.mu.Unlock()
	gen := make(map[ServiceKey]uint64, len(nt.Frontends))
	for k, f := range nt.Frontends {
		if old, ok := m.tables.Frontends[k]; ok && slices.Equal(old.Backends, f.Backends) {
			gen[k] = m.gen[k]
			continue
		}
		m.next++
		gen[k] = m.next
	}
	m.tables, m.gen, m.trunc = nt, gen, trunc
	return nil
}

// ServiceStatus implements ServiceTranslator.
func (m *SockLBMemory) ServiceStatus(ctx context.Context) (ServiceStatus, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.stats
	s.Revision, s.Frontends, s.Truncated = m.tables.Revision, len(m.tables.Frontends), slices.Clone(m.trunc)
	s.Backends = 0
	for _, f := range m.tables.Frontends {
		s.Backends += len(f.Backends)
	}
	return s, nil
}

// Connect is connect() on sock to dst: the address the socket connects to.
func (m *SockLBMemory) Connect(sock SocketID, proto uint8, dst netip.AddrPort) (netip.AddrPort, error) {
	return m.translate(sock, proto, dst, false)
}

// SendMsg is sendmsg() with destination dst on an unconnected socket.
func (m *SockLBMemory) SendMsg(sock SocketID, proto uint8, dst netip.AddrPort) (netip.AddrPort, error) {
	return m.translate(sock, proto, dst, true)
}

// RecvMsg is the source address recvmsg() shows for a datagram from src.
func (m *SockLBMemory) RecvMsg(sock SocketID, proto uint8, src netip.AddrPort) netip.AddrPort {
	return m.reverse(sock, proto, src)
}

// PeerName is what getpeername() shows for a socket connected to peer.
func (m *SockLBMemory) PeerName(sock SocketID, proto uint8, peer netip.AddrPort) netip.AddrPort {
	return m.reverse(sock, proto, peer)
}

func (m *SockLBMemory) translate(sock SocketID, proto uint8, dst netip.AddrPort, sticky bool) (netip.AddrPort, error) {
	k, mapped := frontendKey(proto, dst)
	m.mu.Lock()
	defer m.mu.Unlock()
	if to, handled := m.redirectDNS(sock, proto, dst); handled {
		return to, nil
	}
	f, ok := m.tables.Frontends[k]
	if !ok || !validServiceKey(k) {
		return dst, nil
	}
	if len(f.Backends) == 0 {
		m.stats.Rejected++
		return dst, fmt.Errorf("connect %s: %w", dst, ErrServiceRejected)
	}
	ak := sockAddrKey{sock: sock, proto: proto, addr: netip.AddrPortFrom(k.VIP, k.Port)}
	idx := -1
	if a, ok := m.aff[ak]; sticky && ok && a.gen == m.gen[k] && a.idx < len(f.Backends) {
		idx = a.idx
	}
	if idx < 0 {
		idx = chooseBackend(f.Backends, m.rand()%f.total())
		if sticky {
			m.aff[ak] = affinity{gen: m.gen[k], idx: idx}
		}
	}
	b := f.Backends[idx]
	m.rev[sockAddrKey{sock: sock, proto: proto, addr: netip.AddrPortFrom(b.Addr, b.Port)}] = netip.AddrPortFrom(k.VIP, k.Port)
	m.stats.Translated++
	return netip.AddrPortFrom(mapBack(b.Addr, mapped), b.Port), nil
}

func (m *SockLBMemory) reverse(sock SocketID, proto uint8, peer netip.AddrPort) netip.AddrPort {
	k, mapped := frontendKey(proto, peer)
	m.mu.Lock()
	defer m.mu.Unlock()
	vip, ok := m.rev[sockAddrKey{sock: sock, proto: proto, addr: netip.AddrPortFrom(k.VIP, k.Port)}]
	if !ok {
		return peer
	}
	m.stats.Reversed++
	return netip.AddrPortFrom(mapBack(vip.Addr(), mapped), vip.Port())
}
