package bgp

import (
	"fmt"
	"net/netip"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// This file converts the package's types to GoBGP's API types: protobuf
// messages for global and peer configuration, native paths for routes. Pure.

var (
	familyV4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	familyV6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

func familyOf(a netip.Addr) *api.Family {
	if a.Is4() {
		return familyV4
	}
	return familyV6
}

func apiGlobal(g Global) *api.Global {
	port := int32(g.ListenPort)
	if port == 0 {
		port = DefaultPort
	}
	out := &api.Global{Asn: g.ASN, RouterId: g.RouterID.String(), ListenPort: port}
	for _, a := range g.ListenAddresses {
		out.ListenAddresses = append(out.ListenAddresses, a.String())
	}
	return out
}

func seconds(d time.Duration) uint64 { return uint64(d / time.Second) }

// apiPeer builds the GoBGP neighbor. restarting sets the Restart State bit
// (RFC 4724 §4.1): the speaker just (re)started and peers may hold our
// routes as stale, so GoBGP defers its UPDATEs until the peers' End-of-RIB.
func apiPeer(p Peer, gr GracefulRestart, restarting bool) *api.Peer {
	hold := p.HoldTime
	if hold == 0 {
		hold = DefaultHoldTime
	}
	keep := p.Keepalive
	if keep == 0 {
		keep = hold / 3
	}
	port := uint32(p.Port)
	if port == 0 {
		port = DefaultPort
	}
	af := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: familyOf(p.Address), Enabled: true}}
	out := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			AuthPassword:    p.Password,
		},
		Transport: &api.Transport{RemotePort: port},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:               seconds(hold),
			KeepaliveInterval:      seconds(keep),
			ConnectRetry:           seconds(DefaultConnectRetry),
			IdleHoldTimeAfterReset: seconds(defaultIdleHoldAfter),
		}},
		AfiSafis: []*api.AfiSafi{af},
	}
	if gr.Enabled() {
		deferral := gr.DeferralTime
		if deferral == 0 {
			deferral = DefaultDeferralTime
		}
		out.GracefulRestart = &api.GracefulRestart{
			Enabled:         true,
			RestartTime:     uint32(seconds(gr.RestartTime)),
			DeferralTime:    uint32(seconds(deferral)),
			LocalRestarting: restarting,
		}
		af.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	return out
}

// apiPath builds the locally originated route as GoBGP's native path (no
// protobuf on the way in). The next hop is left unspecified so GoBGP fills
// in the session's local address, per peer. age is the path's timestamp.
func apiPath(p Prefix, age int64) (*apiutil.Path, error) {
	nlri, err := bgp.NewIPAddrPrefix(p.CIDR)
	if err != nil {
		return nil, fmt.Errorf("encode prefix %s: %w", p.CIDR, err)
	}
	attrs := make([]bgp.PathAttributeInterface, 0, 4)
	attrs = append(attrs, bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP))
	family := bgp.RF_IPv4_UC
	if p.CIDR.Addr().Is4() {
		nh, err := bgp.NewPathAttributeNextHop(netip.IPv4Unspecified())
		if err != nil {
			return nil, fmt.Errorf("encode next hop of %s: %w", p.CIDR, err)
		}
		attrs = append(attrs, nh)
	} else {
		family = bgp.RF_IPv6_UC
		mp, err := bgp.NewPathAttributeMpReachNLRI(family, []bgp.PathNLRI{{NLRI: nlri}}, netip.IPv6Unspecified())
		if err != nil {
			return nil, fmt.Errorf("encode next hop of %s: %w", p.CIDR, err)
		}
		attrs = append(attrs, mp)
	}
	if len(p.Communities) > 0 {
		c := make([]uint32, len(p.Communities))
		for i, v := range p.Communities {
			c[i] = uint32(v)
		}
		attrs = append(attrs, bgp.NewPathAttributeCommunities(c))
	}
	if len(p.LargeCommunities) > 0 {
		l := make([]*bgp.LargeCommunity, len(p.LargeCommunities))
		for i, v := range p.LargeCommunities {
			l[i] = bgp.NewLargeCommunity(v.Global, v.Local1, v.Local2)
		}
		attrs = append(attrs, bgp.NewPathAttributeLargeCommunities(l))
	}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs, Age: age}, nil
}
