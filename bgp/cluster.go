package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// FromCluster builds the node's Desired from its cluster's BGP settings,
// its router ID (usually its underlay IPv4 address) and its pod CIDRs (the
// Node's pod_cidrs), which become the advertised prefixes. Disabled or nil
// settings give the zero Desired (speaker off). Errors name the field,
// e.g. "bgp.peers[0].address"; the result is validated.
func FromCluster(s *fedmeshv1.BGPSettings, routerID netip.Addr, podCIDRs []string) (Desired, error) {
	if !s.GetEnabled() {
		return Desired{}, nil
	}
	var errs []error
	d := Desired{
		LocalASN: s.GetLocalAsn(),
		RouterID: routerID,
		GracefulRestart: GracefulRestart{
			RestartTime: time.Duration(s.GetGracefulRestartSeconds()) * time.Second,
		},
	}
	if c := s.GetUnhealthyCommunity(); c != "" {
		v, err := ParseCommunity(c)
		if err != nil {
			errs = append(errs, &FieldError{Field: "bgp.unhealthyCommunity", Value: c, Reason: "want ASN:VALUE, both 0..65535"})
		}
		d.UnhealthyCommunity = &v
	}
	for i, p := range s.GetPeers() {
		addr, err := netip.ParseAddr(p.GetAddress())
		if err != nil {
			errs = append(errs, &FieldError{Field: fmt.Sprintf("bgp.peers[%d].address", i), Value: p.GetAddress(), Reason: "not an IPv4 or IPv6 address"})
		}
		if p.GetPort() > 65535 {
			errs = append(errs, &FieldError{Field: fmt.Sprintf("bgp.peers[%d].port", i), Value: fmt.Sprint(p.GetPort()), Reason: "must be 0..65535"})
		}
		d.Peers = append(d.Peers, Peer{
			Address:   addr,
			ASN:       p.GetAsn(),
			Port:      uint16(p.GetPort()),
			Password:  p.GetPassword(),
			HoldTime:  time.Duration(p.GetHoldTimeSeconds()) * time.Second,
			Keepalive: time.Duration(p.GetKeepaliveSeconds()) * time.Second,
		})
	}
	for i, c := range podCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			errs = append(errs, &FieldError{Field: fmt.Sprintf("node.podCIDRs[%d]", i), Value: c, Reason: "not a CIDR prefix"})
			continue
		}
		d.PodCIDRs = append(d.PodCIDRs, p)
		d.Prefixes = append(d.Prefixes, Prefix{CIDR: p})
	}
	if len(errs) > 0 {
		return Desired{}, errors.Join(errs...)
	}
	if err := d.Validate(); err != nil {
		return Desired{}, err
	}
	return d, nil
}
