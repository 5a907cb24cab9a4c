package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// DNSPort is the port whose UDP and TCP traffic to a cluster DNS address is
// redirected.
const DNSPort = 53

// DNSRedirect says which pod DNS the socket hooks send to the agent's
// resolver (issue #22's transparent DNS proxy; the mechanism and why it is
// the socket layer: socklb.go's doc). The zero value redirects nothing.
type DNSRedirect struct {
	// ClusterDNS are the addresses pods send DNS to (their resolv.conf
	// nameservers: kube-dns's ClusterIP, per family). UDP and TCP to
	// port 53 of each is redirected.
	ClusterDNS []netip.Addr
	// Resolvers is the agent's resolver, at most one per family; each
	// cluster DNS address goes to the resolver of its family (a socket
	// cannot be sent across families). It must be reachable from the pods'
	// network namespaces (the node-local link-local address of
	// --dns-listen is).
	Resolvers []netip.AddrPort
	// SkipMark is the socket mark (SO_MARK) of sockets never redirected:
	// the agent's own upstream queries (dns.UpstreamMark), which on a real
	// node come from inside the attached cgroup and often go to the very
	// cluster DNS address. 0 exempts nothing.
	SkipMark uint32
}

// DNSRedirector is implemented by the socket translations (SockLB and its
// twin SockLBMemory): the agent sets the redirect once at startup, and a
// later call replaces it whole (an empty DNSRedirect removes it).
type DNSRedirector interface {
	SetDNSRedirect(ctx context.Context, r DNSRedirect) error
}

// ErrInvalidDNSRedirect is wrapped by the errors of DNSRedirect.Validate.
var ErrInvalidDNSRedirect = errors.New("invalid DNS redirect")

// dnsTarget is one redirect entry's value.
type dnsTarget struct {
	To       netip.AddrPort
	SkipMark uint32
}

// entries renders r to the map's entries (frontend -> resolver), or says
// what is wrong with it.
func (r DNSRedirect) entries() (map[ServiceKey]dnsTarget, error) {
	var v4, v6 netip.AddrPort
	for _, a := range r.Resolvers {
		ip := a.Addr()
		switch {
		case !ip.IsValid() || ip.Is4In6() || ip.Zone() != "" || ip.IsUnspecified() || a.Port() == 0:
			return nil, fmt.Errorf("%w: resolver %s: want a unicast IP (no zone, not IPv4-mapped) and a port", ErrInvalidDNSRedirect, a)
		case ip.Is4() && v4.IsValid(), ip.Is6() && v6.IsValid():
			return nil, fmt.Errorf("%w: two resolvers of one family (%s and %s)", ErrInvalidDNSRedirect, a, cmpFamily(ip, v4, v6))
		case ip.Is4():
			v4 = a
		default:
			v6 = a
		}
	}
	out := make(map[ServiceKey]dnsTarget, 2*len(r.ClusterDNS))
	for _, c := range r.ClusterDNS {
		if !c.IsValid() || c.Is4In6() || c.Zone() != "" || c.IsUnspecified() {
			return nil, fmt.Errorf("%w: cluster DNS address %s: want a unicast IP (no zone, not IPv4-mapped)", ErrInvalidDNSRedirect, c)
		}
		to := v6
		if c.Is4() {
			to = v4
		}
		if !to.IsValid() {
			return nil, fmt.Errorf("%w: cluster DNS address %s has no resolver of its family (resolvers %v); "+
				"give the resolver an address of that family or leave the address out", ErrInvalidDNSRedirect, c, r.Resolvers)
		}
		if c == to.Addr() {
			return nil, fmt.Errorf("%w: cluster DNS address %s is the resolver's own address", ErrInvalidDNSRedirect, c)
		}
		for _, p := range []uint8{protoUDP, protoTCP} {
			out[ServiceKey{VIP: c, Port: DNSPort, Protocol: p}] = dnsTarget{To: to, SkipMark: r.SkipMark}
		}
	}
	return out, nil
}

func cmpFamily(ip netip.Addr, v4, v6 netip.AddrPort) netip.AddrPort {
	if ip.Is4() {
		return v4
	}
	return v6
}

// Validate reports what makes r unusable (an error wrapping
// ErrInvalidDNSRedirect naming the address), or nil.
func (r DNSRedirect) Validate() error {
	_, err := r.entries()
	return err
}

// dnsRedirectFor is the program's redirect_dns decision: where a call to
// dst from a socket with mark goes, and whether it is redirected.
func dnsRedirectFor(entries map[ServiceKey]dnsTarget, proto uint8, dst netip.AddrPort, mark uint32) (netip.AddrPort, bool) {
	k, mapped := frontendKey(proto, dst)
	e, ok := entries[k]
	if !ok || (e.SkipMark != 0 && mark == e.SkipMark) {
		return dst, false
	}
	return netip.AddrPortFrom(mapBack(e.To.Addr(), mapped), e.To.Port()), true
}

// SetDNSRedirect implements DNSRedirector.
func (m *SockLBMemory) SetDNSRedirect(ctx context.Context, r DNSRedirect) error {
	e, err := r.entries()
	if err != nil {
		return fmt.Errorf("set DNS redirect: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dns = e
	return nil
}

// SetMark is setsockopt(SO_MARK) on sock for the twin.
func (m *SockLBMemory) SetMark(sock SocketID, mark uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.marks[sock] = mark
}

// redirectDNS is translate's first step for the twin, as in the program: a
// call to a cluster DNS address is handled here (redirected, or left alone
// for a socket with the skip mark) and never reaches the service table. The
// caller holds mu.
func (m *SockLBMemory) redirectDNS(sock SocketID, proto uint8, dst netip.AddrPort) (to netip.AddrPort, handled bool) {
	k, _ := frontendKey(proto, dst)
	if _, ok := m.dns[k]; !ok {
		return dst, false
	}
	to, ok := dnsRedirectFor(m.dns, proto, dst, m.marks[sock])
	if !ok {
		m.stats.DNSExempt++
		return dst, true
	}
	tk, _ := frontendKey(proto, to)
	m.rev[sockAddrKey{sock: sock, proto: proto, addr: netip.AddrPortFrom(tk.VIP, tk.Port)}] = netip.AddrPortFrom(k.VIP, k.Port)
	m.stats.DNSRedirected++
	return to, true
}

// sortedDNSKeys orders a redirect's frontends (for deterministic writes).
func sortedDNSKeys(e map[ServiceKey]dnsTarget) []ServiceKey {
	ks := make([]ServiceKey, 0, len(e))
	for k := range e {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, CompareServiceKeys)
	return ks
}

func netipAddrPort(b lbBackend) netip.AddrPort { return netip.AddrPortFrom(b.Addr, b.Port) }
