package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetlinkResolver finds a local endpoint's host-side interface from the
// kernel's host route to the endpoint's IP in the node's network
// namespace. It works with every CNI that routes each pod's /32 (or /128)
// to the pod's own veth, as Calico does: the device of that route, when it
// is a veth reached without a gateway, is the interface to guard. Anything
// else (no host route, only a subnet or default route, a bridge) is "not
// found", never a wrong interface.
type NetlinkResolver struct {
	h *netlink.Handle
}

// NewNetlinkResolver opens a netlink handle in the network namespace at
// nsPath (/proc/PID/ns/net, /run/netns/NAME), or in the caller's when
// nsPath is empty.
func NewNetlinkResolver(nsPath string) (*NetlinkResolver, error) {
	if nsPath == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("open netlink handle: %w", err)
		}
		return &NetlinkResolver{h: h}, nil
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle in %s: %w", nsPath, err)
	}
	return &NetlinkResolver{h: h}, nil
}

// Close releases the handle.
func (r *NetlinkResolver) Close() { r.h.Close() }

// Lookup implements InterfaceResolver: the device of the host route
// (/32 or /128) to ip in the main table, when that route has no gateway.
func (r *NetlinkResolver) Lookup(_ context.Context, ip netip.Addr) (string, bool, error) {
	family := netlink.FAMILY_V4
	if ip.Is6() {
		family = netlink.FAMILY_V6
	}
	dst := &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}
	routes, err := r.h.RouteListFiltered(family, &netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return "", false, fmt.Errorf("list routes to %s: %w", ip, err)
	}
	for _, rt := range routes {
		if rt.Gw != nil || rt.LinkIndex == 0 || len(rt.MultiPath) > 0 {
			continue
		}
		link, err := r.h.LinkByIndex(rt.LinkIndex)
		if err != nil {
			if errors.As(err, new(netlink.LinkNotFoundError)) {
				continue // the pod is going away
			}
			return "", false, fmt.Errorf("get link %d of the route to %s: %w", rt.LinkIndex, ip, err)
		}
		if link.Type() != "veth" {
			continue
		}
		return link.Attrs().Name, true, nil
	}
	return "", false, nil
}
