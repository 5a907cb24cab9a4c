package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ErrInvalidListen is wrapped by the errors of ParseListen.
var ErrInvalidListen = errors.New("invalid listen address")

// ParseListen reads a listen list (Config.Listen, the agent's --dns-listen):
// one "IP:port", or two comma separated, one per IP family (a dual-stack
// node serves pods of both families; a pod socket can only be sent to a
// resolver of its own family). The ports may differ; port 0 picks a free
// one. Each address must be one the resolver's pods can name as their
// nameserver: an IP literal, not a wildcard (a UDP socket bound to 0.0.0.0
// or :: may answer from another address than the one asked, which clients
// drop, and [::] takes the IPv4 traffic of the other entry too), not
// IPv4-mapped (its family is ambiguous) and without a zone.
func ParseListen(s string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for a := range strings.SplitSeq(s, ",") {
		a = strings.TrimSpace(a)
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return nil, fmt.Errorf("%w %q: want IP:port, or one per family comma separated, e.g. "+
				"169.254.20.10:53,[fd00:169:254::10]:53: %w", ErrInvalidListen, a, err)
		}
		ip := ap.Addr()
		switch {
		case ip.IsUnspecified():
			return nil, fmt.Errorf("%w %s: a wildcard address would answer from whichever address the route picks; "+
				"name the resolver's own address (what pods use as their nameserver)", ErrInvalidListen, ap)
		case ip.Is4In6():
			return nil, fmt.Errorf("%w %s: an IPv4-mapped address; write the IPv4 address as such (%s)",
				ErrInvalidListen, ap, netip.AddrPortFrom(ip.Unmap(), ap.Port()))
		case ip.Zone() != "":
			return nil, fmt.Errorf("%w %s: an address with a zone; the resolver's address must be reachable from the pods, "+
				"name one without a zone", ErrInvalidListen, ap)
		}
		for _, prev := range out {
			if prev.Addr().Is4() == ip.Is4() {
				return nil, fmt.Errorf("%w: %s and %s are of one IP family; give at most one address per family",
					ErrInvalidListen, prev, ap)
			}
		}
		out = append(out, ap)
	}
	return out, nil
}
