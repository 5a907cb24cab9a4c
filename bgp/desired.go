package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/fedmesh/fedmesh/bgp/peering"
)

// Default values the speaker uses when a Desired leaves a field zero.
const (
	DefaultPort          = 179
	DefaultHoldTime      = 90 * time.Second
	DefaultConnectRetry  = 5 * time.Second
	DefaultDeferralTime  = 30 * time.Second
	maxRestartTime       = peering.MaxRestartTime
	maxMD5KeyLen         = 80              // TCP_MD5SIG_MAXKEYLEN
	minHoldTime          = 3 * time.Second // RFC 4271 §4.2: zero or at least three seconds
	defaultIdleHoldAfter = 5 * time.Second // GoBGP's 30 s default keeps a flapped ToR down too long
)

// Desired is everything the speaker should be doing: one value, compared
// whole against what was applied. The zero Desired means "no speaker": the
// reconciler stops GoBGP and holds no session.
type Desired struct {
	// LocalASN is the node's ASN (1..4294967294, not 23456).
	LocalASN uint32 `json:"localASN"`
	// RouterID is the BGP identifier, an IPv4 address (usually the node's
	// underlay IPv4 address, also on IPv6-only nodes where it is just an ID).
	RouterID netip.Addr `json:"routerID"`
	// ListenPort is the TCP port the speaker accepts sessions on (0 = 179).
	ListenPort uint16 `json:"listenPort,omitempty"`
	// ListenAddresses restricts the listening sockets (empty = 0.0.0.0 and ::).
	ListenAddresses []netip.Addr `json:"listenAddresses,omitempty"`
	// GracefulRestart, when RestartTime is non-zero, makes the speaker a
	// restarting speaker (RFC 4724) with every peer.
	GracefulRestart GracefulRestart `json:"gracefulRestart"`
	// Peers are the routers to hold sessions with; addresses are unique.
	Peers []Peer `json:"peers,omitempty"`
	// PodCIDRs are the node's pod ranges: every advertised prefix must lie
	// inside one of them or one of Policy.ServiceRanges, so a bad config
	// cannot hijack someone else's range.
	PodCIDRs []netip.Prefix `json:"podCIDRs,omitempty"`
	// Prefixes are advertised to every peer of the prefix's address family.
	// All of them are health-coupled (see the package doc).
	Prefixes []Prefix `json:"prefixes,omitempty"`
	// UnhealthyCommunity, when set, is attached to every prefix while the
	// node is unhealthy instead of withdrawing the prefixes.
	UnhealthyCommunity *Community `json:"unhealthyCommunity,omitempty"`
	// Policy is the routing policy beyond the speaker's defaults (see
	// Policy); changing it resets no session.
	Policy Policy `json:"policy"`
}

// Policy is what the speaker's routing policy adds to its defaults. The
// defaults: the speaker advertises only the routes it originates (never
// one it learned: a node is no transit between its ToRs) and accepts
// every route (it installs none in the node's FIB: GoBGP runs without a
// FIB manager).
type Policy struct {
	// Peers are the per-peer policies, one per peer address at most.
	Peers []PeerPolicy `json:"peers,omitempty"`
	// ServiceRanges are where the node may originate service addresses,
	// per kind: a prefix inside one is of that kind, sent only to the
	// peers whose SERVICE advertisement lists the kind (see Resolve).
	ServiceRanges []ServiceRange `json:"serviceRanges,omitempty"`
}

// ServiceRange is a range of service addresses of one kind.
type ServiceRange struct {
	Kind peering.ServiceKind `json:"kind"`
	CIDR netip.Prefix        `json:"cidr"`
}

func compareServiceRange(a, b ServiceRange) int {
	if a.Kind != b.Kind {
		return int(a.Kind) - int(b.Kind)
	}
	return comparePrefix(a.CIDR, b.CIDR)
}

// serviceKindOf is the kind of the first service range holding p (ranges
// in Kind order), or 0.
func (p Policy) serviceKindOf(c netip.Prefix) peering.ServiceKind {
	var best peering.ServiceKind
	for _, r := range p.ServiceRanges {
		if r.CIDR.Bits() <= c.Bits() && r.CIDR.Contains(c.Addr()) && (best == 0 || r.Kind < best) {
			best = r.Kind
		}
	}
	return best
}

// PeerPolicy is the routing policy of the session with one peer.
type PeerPolicy struct {
	// Address of the peer (one of Desired.Peers).
	Address netip.Addr `json:"address"`
	// Export rules decide what is advertised to the peer: the first rule
	// that matches a route decides, a route no rule matches is sent
	// (Calico BGPFilter semantics).
	Export []peering.Rule `json:"export,omitempty"`
	// Import rules decide what is accepted from the peer, likewise.
	Import []peering.Rule `json:"import,omitempty"`
	// Attributes are added to every route sent to the peer (local
	// preference only on iBGP, where the attribute exists).
	Attributes peering.Attributes `json:"attributes"`
	// Advertise lists the prefix classes sent to the peer, each with the
	// attributes added to its routes; nil sends every class with none.
	Advertise []peering.Advertisement `json:"advertise,omitempty"`
}

func (p PeerPolicy) empty() bool {
	return len(p.Export) == 0 && len(p.Import) == 0 && p.Attributes.Empty() && p.Advertise == nil
}

// Enabled reports whether d asks for a running speaker.
func (d *Desired) Enabled() bool { return d != nil && d.LocalASN != 0 }

// GracefulRestart configures RFC 4724 as the restarting speaker.
type GracefulRestart struct {
	// RestartTime is advertised to peers: how long they keep our routes
	// after the session drops (0 = graceful restart off; at most 4095 s).
	RestartTime time.Duration `json:"restartTime,omitempty"`
	// DeferralTime bounds how long a restarted speaker waits for the
	// peers' End-of-RIB before it sends its own routes (0 = 30 s).
	DeferralTime time.Duration `json:"deferralTime,omitempty"`
}

// Enabled reports whether graceful restart is on.
func (g GracefulRestart) Enabled() bool { return g.RestartTime > 0 }

// Peer is one BGP neighbor. Families follow the peer's address: an IPv4
// peer carries IPv4 unicast, an IPv6 peer carries IPv6 unicast (MP-BGP), so
// next hops are always of the session's own family.
type Peer struct {
	// Address of the peer; its family picks the session's AFI.
	Address netip.Addr `json:"address"`
	// ASN of the peer; equal to the local ASN means iBGP.
	ASN uint32 `json:"asn"`
	// Port is the peer's TCP port (0 = 179).
	Port uint16 `json:"port,omitempty"`
	// Password turns on TCP-MD5 (RFC 2385); at most 80 bytes.
	Password string `json:"password,omitempty"`
	// HoldTime proposed in OPEN (0 = 90 s; else at least 3 s).
	HoldTime time.Duration `json:"holdTime,omitempty"`
	// Keepalive interval (0 = HoldTime/3); must be below HoldTime.
	Keepalive time.Duration `json:"keepalive,omitempty"`
	// Name is the BGPPeerConfig the session comes from, for status; empty
	// for a peer of the cluster's BGPSettings.
	Name string `json:"name,omitempty"`
	// LocalASN is the ASN the node uses on this session (0 = the
	// speaker's, Desired.LocalASN).
	LocalASN uint32 `json:"localASN,omitempty"`
	// MultihopTTL lets an eBGP peer be that many hops away (0 = directly
	// connected).
	MultihopTTL uint8 `json:"multihopTTL,omitempty"`
	// RouteReflectorClient makes the (iBGP) peer a route-reflector client
	// of the node.
	RouteReflectorClient bool `json:"routeReflectorClient,omitempty"`
	// GracefulRestart, when set, replaces Desired.GracefulRestart on this
	// session (a zero RestartTime turns it off here).
	GracefulRestart *GracefulRestart `json:"gracefulRestart,omitempty"`
}

// localASN is the ASN the node uses on the session given the speaker's.
func (p Peer) localASN(global uint32) uint32 {
	if p.LocalASN != 0 {
		return p.LocalASN
	}
	return global
}

// gracefulRestart is the session's graceful-restart configuration given
// the speaker's.
func (p Peer) gracefulRestart(global GracefulRestart) GracefulRestart {
	if p.GracefulRestart != nil {
		return *p.GracefulRestart
	}
	return global
}

// sameSession reports whether a and b configure the session alike (the
// name, only shown in status, aside).
func (p Peer) sameSession(o Peer) bool {
	a, b := p, o
	a.Name, b.Name = "", ""
	ga, gb := a.GracefulRestart, b.GracefulRestart
	a.GracefulRestart, b.GracefulRestart = nil, nil
	return a == b && (ga == nil) == (gb == nil) && (ga == nil || *ga == *gb)
}

// Prefix is one route the node originates.
type Prefix struct {
	// CIDR is the advertised prefix, in canonical (masked) form.
	CIDR netip.Prefix `json:"cidr"`
	// Communities attached (RFC 1997).
	Communities []Community `json:"communities,omitempty"`
	// LargeCommunities attached (RFC 8092).
	LargeCommunities []LargeCommunity `json:"largeCommunities,omitempty"`
}

// Community is a standard community (RFC 1997), high 16 bits the ASN.
// The API objects' parser owns the type (bgp/peering).
type Community = peering.Community

// ParseCommunity parses "ASN:VALUE" with both halves in 0..65535.
func ParseCommunity(s string) (Community, error) { return peering.ParseCommunity(s) }

// LargeCommunity is GLOBAL:LOCAL1:LOCAL2 (RFC 8092).
type LargeCommunity = peering.LargeCommunity

// ParseLargeCommunity parses "GLOBAL:LOCAL1:LOCAL2", each 32 bits.
func ParseLargeCommunity(s string) (LargeCommunity, error) { return peering.ParseLargeCommunity(s) }

// FieldError says which field of a Desired is wrong and why. Validate joins
// one per problem; find them with errors.As.
type FieldError struct {
	Field  string // path of the field, e.g. "peers[1].address"
	Value  string
	Reason string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("invalid %s %q: %s", e.Field, e.Value, e.Reason)
}

// ErrInvalid is matched (errors.Is) by every error Validate returns.
var ErrInvalid = errors.New("invalid BGP desired state")

// Is makes every FieldError match ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// Validate checks d and returns every problem found, each a *FieldError
// naming the field. The zero Desired (speaker off) is valid.
func (d *Desired) Validate() error {
	if d.LocalASN == 0 && d.isEmptyOtherwise() {
		return nil
	}
	var errs []error
	bad := func(field string, value any, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Value: fmt.Sprint(value), Reason: fmt.Sprintf(format, args...)})
	}
	if r := asnProblem(d.LocalASN); r != "" {
		bad("localASN", d.LocalASN, "%s", r)
	}
	switch {
	case !d.RouterID.IsValid():
		bad("routerID", "", "an IPv4 address is required")
	case !d.RouterID.Is4():
		bad("routerID", d.RouterID, "must be an IPv4 address (the 32-bit BGP identifier)")
	case d.RouterID.IsUnspecified() || d.RouterID.IsMulticast() || d.RouterID == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		bad("routerID", d.RouterID, "must be a unicast address")
	}
	for i, a := range d.ListenAddresses {
		if !a.IsValid() || a.Zone() != "" {
			bad(fmt.Sprintf("listenAddresses[%d]", i), a, "must be an IP address without zone")
		}
	}
	if rt := d.GracefulRestart.RestartTime; rt < 0 || rt > maxRestartTime || rt%time.Second != 0 {
		bad("gracefulRestart.restartTime", rt, "must be whole seconds in 0..4095s")
	}
	if dt := d.GracefulRestart.DeferralTime; dt < 0 || dt > time.Hour || dt%time.Second != 0 {
		bad("gracefulRestart.deferralTime", dt, "must be whole seconds in 0..1h")
	}

	seenPeer := map[netip.Addr]int{}
	for i, p := range d.Peers {
		f := func(name string) string { return fmt.Sprintf("peers[%d].%s", i, name) }
		switch {
		case !p.Address.IsValid():
			bad(f("address"), "", "an IPv4 or IPv6 address is required")
		case p.Address.Zone() != "":
			bad(f("address"), p.Address, "link-local peers with a zone are not supported; use a global address")
		case p.Address.IsUnspecified() || p.Address.IsMulticast() || p.Address.Is4In6():
			bad(f("address"), p.Address, "must be a unicast IPv4 or IPv6 address")
		default:
			if j, dup := seenPeer[p.Address]; dup {
				bad(f("address"), p.Address, "duplicate of peers[%d]", j)
			}
			seenPeer[p.Address] = i
		}
		if r := asnProblem(p.ASN); r != "" {
			bad(f("asn"), p.ASN, "%s", r)
		}
		if len(p.Password) > maxMD5KeyLen {
			bad(f("password"), "<redacted>", "TCP-MD5 keys are at most %d bytes", maxMD5KeyLen)
		}
		if h := p.HoldTime; h != 0 && (h < minHoldTime || h > 65535*time.Second || h%time.Second != 0) {
			bad(f("holdTime"), h, "must be 0 (default 90s) or whole seconds in 3..65535s")
		}
		hold := p.HoldTime
		if hold == 0 {
			hold = DefaultHoldTime
		}
		if k := p.Keepalive; k < 0 || k%time.Second != 0 || (k != 0 && k >= hold) {
			bad(f("keepalive"), k, "must be whole seconds below the hold time (%s)", hold)
		}
		if p.LocalASN != 0 {
			if r := asnProblem(p.LocalASN); r != "" {
				bad(f("localASN"), p.LocalASN, "%s", r)
			}
		}
		ibgp := p.ASN == p.localASN(d.LocalASN)
		if p.MultihopTTL > 0 && ibgp {
			bad(f("multihopTTL"), p.MultihopTTL, "eBGP multihop on an iBGP session")
		}
		if p.RouteReflectorClient && !ibgp {
			bad(f("routeReflectorClient"), true, "a route-reflector client is an iBGP peer (ASN %d, local ASN %d)", p.ASN, p.localASN(d.LocalASN))
		}
		if gr := p.GracefulRestart; gr != nil && (gr.RestartTime < 0 || gr.RestartTime > maxRestartTime || gr.RestartTime%time.Second != 0) {
			bad(f("gracefulRestart.restartTime"), gr.RestartTime, "must be whole seconds in 0..4095s")
		}
	}
	seenPolicy := map[netip.Addr]int{}
	for i, pp := range d.Policy.Peers {
		field := fmt.Sprintf("policy.peers[%d].address", i)
		if _, ok := seenPeer[pp.Address]; !ok {
			bad(field, pp.Address, "not the address of a peer")
		}
		if j, dup := seenPolicy[pp.Address]; dup {
			bad(field, pp.Address, "duplicate of policy.peers[%d]", j)
		}
		seenPolicy[pp.Address] = i
	}

	for i, r := range d.Policy.ServiceRanges {
		if !r.CIDR.IsValid() || r.CIDR != r.CIDR.Masked() || r.Kind == 0 || int(r.Kind) > len(peering.ServiceKinds) {
			bad(fmt.Sprintf("policy.serviceRanges[%d]", i), r.CIDR, "must be a canonical prefix of a service kind")
		}
	}
	for i, c := range d.PodCIDRs {
		if !c.IsValid() || c != c.Masked() {
			bad(fmt.Sprintf("podCIDRs[%d]", i), c, "must be a canonical prefix (host bits zero)")
		}
	}
	seenPrefix := make(map[netip.Prefix]int, len(d.Prefixes))
	for i, p := range d.Prefixes {
		// The field name is built only on error: 10,000 Sprintfs per Apply add up.
		field := func() string { return fmt.Sprintf("prefixes[%d].cidr", i) }
		switch {
		case !p.CIDR.IsValid():
			bad(field(), "", "a prefix is required")
		case p.CIDR != p.CIDR.Masked():
			bad(field(), p.CIDR, "host bits must be zero (did you mean %s?)", p.CIDR.Masked())
		case p.CIDR.Addr().Is4In6() || p.CIDR.Addr().Zone() != "":
			bad(field(), p.CIDR, "must be a plain IPv4 or IPv6 prefix")
		case !insideAny(p.CIDR, d.PodCIDRs) && d.Policy.serviceKindOf(p.CIDR) == 0:
			bad(field(), p.CIDR, "not inside the node's pod CIDRs %v nor a service range", d.PodCIDRs)
		default:
			if j, dup := seenPrefix[p.CIDR]; dup {
				bad(field(), p.CIDR, "duplicate of prefixes[%d]", j)
			}
			seenPrefix[p.CIDR] = i
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}

func (d *Desired) isEmptyOtherwise() bool {
	return !d.RouterID.IsValid() && len(d.Peers) == 0 && len(d.Prefixes) == 0 && len(d.Policy.Peers) == 0 && len(d.Policy.ServiceRanges) == 0
}

func asnProblem(asn uint32) string { return peering.ASNProblem(asn) }

func insideAny(p netip.Prefix, cidrs []netip.Prefix) bool {
	for _, c := range cidrs {
		if c.IsValid() && c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			return true
		}
	}
	return false
}
