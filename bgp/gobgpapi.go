package bgp

import (
	"fmt"
	"net/netip"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// This file converts the package's types to GoBGP API messages. Pure.

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

// apiPath builds the locally originated route. The next hop is left
// unspecified so GoBGP fills in the session's local address, per peer.
func apiPath(p Prefix) (*api.Path, error) {
	nlri, err := anypb.New(&api.IPAddressPrefix{Prefix: p.CIDR.Addr().String(), PrefixLen: uint32(p.CIDR.Bits())})
	if err != nil {
		return nil, fmt.Errorf("encode prefix %s: %w", p.CIDR, err)
	}
	attrs := []proto.Message{&api.OriginAttribute{Origin: 0}} // IGP
	family := familyOf(p.CIDR.Addr())
	if p.CIDR.Addr().Is4() {
		attrs = append(attrs, &api.NextHopAttribute{NextHop: "0.0.0.0"})
	} else {
		attrs = append(attrs, &api.MpReachNLRIAttribute{Family: family, NextHops: []string{"::"}, Nlris: []*anypb.Any{nlri}})
	}
	if len(p.Communities) > 0 {
		c := make([]uint32, len(p.Communities))
		for i, v := range p.Communities {
			c[i] = uint32(v)
		}
		attrs = append(attrs, &api.CommunitiesAttribute{Communities: c})
	}
	if len(p.LargeCommunities) > 0 {
		l := make([]*api.LargeCommunity, len(p.LargeCommunities))
		for i, v := range p.LargeCommunities {
			l[i] = &api.LargeCommunity{GlobalAdmin: v.Global, LocalData1: v.Local1, LocalData2: v.Local2}
		}
		attrs = append(attrs, &api.LargeCommunitiesAttribute{Communities: l})
	}
	pattrs := make([]*anypb.Any, len(attrs))
	for i, a := range attrs {
		if pattrs[i], err = anypb.New(a); err != nil {
			return nil, fmt.Errorf("encode attributes of %s: %w", p.CIDR, err)
		}
	}
	return &api.Path{Family: family, Nlri: nlri, Pattrs: pattrs}, nil
}
