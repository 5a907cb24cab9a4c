package dns

import (
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// MaxChain bounds the CNAME hops ChainAddrs follows from the queried name.
// Recursive resolvers give up well before (BIND follows 16, Unbound 11), so
// a longer chain in an answer is a loop or garbage, never a real name.
const MaxChain = 16

// ChainAddr is an address an answer gives the queried name.
type ChainAddr struct {
	Addr netip.Addr
	// TTL is the smallest TTL on the way from the queried name to the
	// address: every CNAME of the chain and the A or AAAA record itself.
	TTL uint32
}

// ChainAddrs returns the A and AAAA addresses the answer section gives
// qname: those owned by qname or by a name its CNAME chain reaches (at most
// MaxChain hops; a loop ends the chain where it closes), each once with the
// smallest TTL on its way. Records for names off the chain count for
// nothing: an upstream cannot grant an address for one name by putting it
// under another. Names compare case-insensitively. Pure; it costs one pass
// over answer whatever the answer holds.
func ChainAddrs(qname string, answer []dns.RR) []ChainAddr {
	if len(answer) == 0 {
		return nil
	}
	// The first CNAME of each owner: a name has at most one (RFC 2181
	// 10.1), so a second is garbage and ignored.
	var cnames map[string]*dns.CNAME
	for _, rr := range answer {
		if c, ok := rr.(*dns.CNAME); ok {
			if cnames == nil {
				cnames = map[string]*dns.CNAME{}
			}
			owner := strings.ToLower(c.Hdr.Name)
			if _, dup := cnames[owner]; !dup {
				cnames[owner] = c
			}
		}
	}
	// chain: owner name -> the smallest CNAME TTL on the way to it.
	name := strings.ToLower(qname)
	chain := map[string]uint32{name: ^uint32(0)}
	ttl := ^uint32(0)
	for range MaxChain {
		c, ok := cnames[name]
		if !ok {
			break
		}
		ttl = min(ttl, c.Hdr.Ttl)
		name = strings.ToLower(c.Target)
		if _, loop := chain[name]; loop {
			break
		}
		chain[name] = ttl
	}
	var (
		out   []ChainAddr
		index map[netip.Addr]int
	)
	for _, rr := range answer {
		var (
			addr netip.Addr
			ok   bool
		)
		switch v := rr.(type) {
		case *dns.A:
			addr, ok = netip.AddrFromSlice(v.A.To4())
		case *dns.AAAA:
			if len(v.AAAA) == 16 {
				// An IPv4-mapped AAAA reaches the IPv4 address on the
				// wire (a dual-stack socket), so it is learned as that.
				addr, ok = netip.AddrFrom16([16]byte(v.AAAA)).Unmap(), true
			}
		default:
			continue
		}
		if !ok {
			continue
		}
		h := rr.Header()
		path, on := chain[strings.ToLower(h.Name)]
		if !on {
			continue
		}
		t := min(path, h.Ttl)
		if i, seen := index[addr]; seen {
			out[i].TTL = min(out[i].TTL, t)
			continue
		}
		if index == nil {
			index = map[netip.Addr]int{}
		}
		index[addr] = len(out)
		out = append(out, ChainAddr{Addr: addr, TTL: t})
	}
	return out
}
