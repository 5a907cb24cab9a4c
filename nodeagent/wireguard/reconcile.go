package wireguard

import (
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Actual is what a device has now, as [Device.Actual] reads it: the wgctrl
// view of the device plus the routes through it and its link MTU.
type Actual struct {
	PrivateKey wgtypes.Key
	ListenPort int
	MTU        int
	Peers      []Peer
	// Routes are the destinations routed through the device (main table).
	Routes []netip.Prefix
}

// Plan is the minimal set of changes that turns an Actual into a Config.
// The zero Plan changes nothing.
type Plan struct {
	// PrivateKey is set when the device's key must change (rotation).
	PrivateKey *wgtypes.Key
	// ListenPort is set when the device must listen elsewhere.
	ListenPort *int
	// MTU is non-zero when the link MTU must change.
	MTU int
	// RemovePeers are peers to delete, by public key (sorted).
	RemovePeers []wgtypes.Key
	// AddPeers are peers the device does not have (sorted by key).
	AddPeers []Peer
	// UpdatePeers are peers whose endpoint, AllowedIPs or keepalive differ;
	// each is applied in full (AllowedIPs replaced).
	UpdatePeers []Peer
	// Kick lists added peers to handshake with at once rather than on the
	// first packet: those taking over AllowedIPs from a removed peer, i.e. a
	// remote node that rotated its key. That node already has this device as
	// a peer, so the handshake succeeds, and its own sends, stalled since it
	// changed key, resume after one handshake instead of its 5 s retry.
	// Brand-new peers are not kicked: both ends add each other at about the
	// same time, and two crossing initiations void each other until the
	// retry, which is worse than WireGuard's handshake on first packet.
	Kick []wgtypes.Key
	// AddRoutes and DelRoutes are destinations to route through the device
	// or to stop routing through it (sorted).
	AddRoutes, DelRoutes []netip.Prefix
}

// Empty reports whether the plan changes nothing.
func (p Plan) Empty() bool {
	return p.PrivateKey == nil && p.ListenPort == nil && p.MTU == 0 &&
		len(p.RemovePeers) == 0 && len(p.AddPeers) == 0 && len(p.UpdatePeers) == 0 &&
		len(p.AddRoutes) == 0 && len(p.DelRoutes) == 0
}

// kicked reports whether the plan kicks peer k.
func (p Plan) kicked(k wgtypes.Key) bool { return slices.Contains(p.Kick, k) }

// Reconcile compares the desired config with the device's actual state and
// returns the minimal plan. A peer whose public key changed (a rotation on
// the remote node) is a removal of the old key plus an addition of the new
// one; the routes to its pod CIDRs stay as they are, so only the tunnel
// session is renewed. Pure.
func Reconcile(want Config, have Actual) Plan {
	var p Plan
	if want.PrivateKey != have.PrivateKey {
		k := want.PrivateKey
		p.PrivateKey = &k
	}
	if want.ListenPort != have.ListenPort {
		port := want.ListenPort
		p.ListenPort = &port
	}
	if want.MTU != 0 && want.MTU != have.MTU {
		p.MTU = want.MTU
	}

	current := make(map[wgtypes.Key]Peer, len(have.Peers))
	for _, hp := range have.Peers {
		current[hp.PublicKey] = normalizePeer(hp)
	}
	wanted := make(map[wgtypes.Key]bool, len(want.Peers))
	var routes []netip.Prefix
	for _, wp := range want.Peers {
		wp = normalizePeer(wp)
		wanted[wp.PublicKey] = true
		routes = append(routes, wp.AllowedIPs...)
		hp, ok := current[wp.PublicKey]
		switch {
		case !ok:
			p.AddPeers = append(p.AddPeers, wp)
		case !hp.equalState(wp):
			p.UpdatePeers = append(p.UpdatePeers, wp)
		}
	}
	var removedIPs []netip.Prefix
	for _, hp := range have.Peers {
		if !wanted[hp.PublicKey] {
			p.RemovePeers = append(p.RemovePeers, hp.PublicKey)
			removedIPs = append(removedIPs, hp.AllowedIPs...)
		}
	}
	for _, np := range p.AddPeers {
		if overlapsAny(np.AllowedIPs, removedIPs) {
			p.Kick = append(p.Kick, np.PublicKey)
		}
	}
	sortPeers(p.AddPeers)
	sortPeers(p.UpdatePeers)
	slices.SortFunc(p.RemovePeers, func(a, b wgtypes.Key) int { return slices.Compare(a[:], b[:]) })
	slices.SortFunc(p.Kick, func(a, b wgtypes.Key) int { return slices.Compare(a[:], b[:]) })

	p.AddRoutes, p.DelRoutes = diffPrefixes(routes, have.Routes)
	return p
}

func overlapsAny(a, b []netip.Prefix) bool {
	for _, x := range a {
		for _, y := range b {
			if x.Overlaps(y) {
				return true
			}
		}
	}
	return false
}

// normalizePeer puts a peer's AllowedIPs in canonical form (masked, sorted,
// unique) and unmaps its endpoint, so equal states compare equal whatever
// order the kernel or wgctrl reported them in.
func normalizePeer(p Peer) Peer {
	ips := make([]netip.Prefix, 0, len(p.AllowedIPs))
	for _, a := range p.AllowedIPs {
		ips = append(ips, a.Masked())
	}
	sortPrefixes(ips)
	p.AllowedIPs = slices.Compact(ips)
	if p.Endpoint.IsValid() {
		p.Endpoint = netip.AddrPortFrom(p.Endpoint.Addr().Unmap(), p.Endpoint.Port())
	}
	return p
}

// diffPrefixes returns what is in want but not in have, and the reverse.
func diffPrefixes(want, have []netip.Prefix) (add, del []netip.Prefix) {
	w := canonicalPrefixes(want)
	h := canonicalPrefixes(have)
	inW := make(map[netip.Prefix]bool, len(w))
	for _, x := range w {
		inW[x] = true
	}
	inH := make(map[netip.Prefix]bool, len(h))
	for _, x := range h {
		inH[x] = true
	}
	for _, x := range w {
		if !inH[x] {
			add = append(add, x)
		}
	}
	for _, x := range h {
		if !inW[x] {
			del = append(del, x)
		}
	}
	return add, del
}

func canonicalPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Masked())
	}
	sortPrefixes(out)
	return slices.Compact(out)
}

// wgConfig is the wgctrl transaction for the peer and key parts of the plan.
// Removals come first so that an AllowedIP moving between peers ends on the
// new owner. Peers in p.Kick get keepalive kick (when they want none), which
// makes the device send a keepalive, and so a handshake, at once; ok is false
// when the plan has nothing for wgctrl.
func (p Plan) wgConfig(kick time.Duration) (cfg wgtypes.Config, ok bool) {
	cfg.PrivateKey = p.PrivateKey
	cfg.ListenPort = p.ListenPort
	for _, k := range p.RemovePeers {
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: k, Remove: true})
	}
	for _, np := range p.AddPeers {
		pc := peerConfig(np)
		if kick > 0 && np.PersistentKeepalive == 0 && p.kicked(np.PublicKey) {
			pc.PersistentKeepaliveInterval = &kick
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	for _, up := range p.UpdatePeers {
		pc := peerConfig(up)
		pc.UpdateOnly = true
		cfg.Peers = append(cfg.Peers, pc)
	}
	return cfg, cfg.PrivateKey != nil || cfg.ListenPort != nil || len(cfg.Peers) > 0
}

func peerConfig(p Peer) wgtypes.PeerConfig {
	ka := p.PersistentKeepalive
	pc := wgtypes.PeerConfig{
		PublicKey:                   p.PublicKey,
		ReplaceAllowedIPs:           true,
		PersistentKeepaliveInterval: &ka,
	}
	if p.Endpoint.IsValid() {
		pc.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
	}
	for _, a := range p.AllowedIPs {
		pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())})
	}
	return pc
}
