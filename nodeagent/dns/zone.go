package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// DefaultZone is the MCS API's zone (KEP-1645).
const DefaultZone = "clusterset.local."

// Zone answers the questions inside one zone from a View. It is immutable
// and pure: Answer does no I/O and reads no clock.
type Zone struct {
	origin string // lower-case, fully qualified
	ttl    uint32
	negTTL uint32
	soa    *dns.SOA
}

// NewZone returns the zone origin (fully qualified or not) answering with
// ttl for records and negTTL for NXDOMAIN and NODATA. Both are whole
// seconds, at least one.
func NewZone(origin string, ttl, negTTL time.Duration) (*Zone, error) {
	origin = dns.Fqdn(strings.ToLower(origin))
	if _, ok := dns.IsDomainName(origin); !ok || origin == "." {
		return nil, fmt.Errorf("new zone %q: not a domain name; use e.g. %q", origin, DefaultZone)
	}
	if ttl < time.Second || negTTL < time.Second {
		return nil, errors.New("new zone: TTLs must be at least 1s")
	}
	z := &Zone{origin: origin, ttl: uint32(ttl / time.Second), negTTL: uint32(negTTL / time.Second)}
	z.soa = &dns.SOA{
		Hdr:     dns.RR_Header{Name: origin, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: z.negTTL},
		Ns:      "ns.dns." + origin,
		Mbox:    "hostmaster." + origin,
		Serial:  1, // nothing transfers this zone; caches only read Minttl
		Refresh: 7200, Retry: 1800, Expire: 86400,
		Minttl: z.negTTL,
	}
	return z, nil
}

// Origin is the zone's lower-case, fully qualified name.
func (z *Zone) Origin() string { return z.origin }

// Contains reports whether name is the zone's origin or below it.
func (z *Zone) Contains(name string) bool {
	return dns.IsSubDomain(z.origin, strings.ToLower(name))
}

// Answer returns the response to req, whose single question is in the zone.
// v may be nil (no services known yet): every service name is NXDOMAIN.
func (z *Zone) Answer(v View, req *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = true
	q := req.Question[0]
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		resp.Rcode = dns.RcodeRefused
		return resp
	}
	r := z.resolve(v, q)
	switch {
	case !r.exists:
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{z.soa}
	case len(r.answer) == 0:
		resp.Ns = []dns.RR{z.soa}
	default:
		resp.Answer = r.answer
		resp.Extra = r.extra
	}
	return resp
}

// result is what a name in the zone holds for one question: exists false
// is NXDOMAIN, exists with no answer NODATA.
type result struct {
	exists        bool
	answer, extra []dns.RR
}

func (z *Zone) resolve(v View, q dns.Question) result {
	name := strings.ToLower(q.Name)
	rel := strings.TrimSuffix(strings.TrimSuffix(name, z.origin), ".")
	var labels []string
	if rel != "" {
		labels = strings.Split(rel, ".")
	}
	n := len(labels)
	if n == 0 {
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			soa := *z.soa
			soa.Hdr.Name = q.Name
			return result{exists: true, answer: []dns.RR{&soa}}
		}
		return result{exists: true}
	}
	if labels[n-1] != "svc" || n > 5 {
		return result{}
	}
	if n <= 2 { // svc.<zone> and <ns>.svc.<zone> own the services below
		return result{exists: true}
	}
	if v == nil {
		return result{}
	}
	svc, ok := v.LookupService(labels[n-2], labels[n-3])
	if !ok {
		return result{}
	}
	base := labels[n-3] + "." + labels[n-2] + ".svc." + z.origin
	switch n {
	case 3:
		return result{exists: true, answer: z.serviceAddrs(q, &svc)}
	case 4:
		if proto, ok := srvProto(labels[0]); ok {
			for _, p := range svc.Ports {
				if p.Name != "" && p.Protocol == proto {
					return result{exists: true}
				}
			}
			return result{}
		}
		if !svc.Headless {
			return result{}
		}
		for i := range svc.Backends {
			if strings.EqualFold(svc.Backends[i].Cluster, labels[0]) {
				return result{exists: true}
			}
		}
		return result{}
	default: // 5
		if proto, ok := srvProto(labels[1]); ok && strings.HasPrefix(labels[0], "_") {
			return z.srv(q, &svc, strings.TrimPrefix(labels[0], "_"), proto, base)
		}
		if !svc.Headless {
			return result{}
		}
		r := result{}
		for i := range svc.Backends {
			b := &svc.Backends[i]
			if strings.EqualFold(b.Cluster, labels[1]) && b.label() == labels[0] {
				r.exists = true
				r.answer = z.addr(q.Name, q.Qtype, b.Addr, r.answer)
			}
		}
		return r
	}
}

// srvProto maps an SRV protocol label to the port protocol.
func srvProto(label string) (uint8, bool) {
	switch label {
	case "_tcp":
		return ProtoTCP, true
	case "_udp":
		return ProtoUDP, true
	case "_sctp":
		return ProtoSCTP, true
	}
	return 0, false
}

// serviceAddrs are the addresses of the service name: its ClusterSetIPs,
// or every backend's address of a headless service.
func (z *Zone) serviceAddrs(q dns.Question, svc *ServiceRecord) []dns.RR {
	var out []dns.RR
	if !svc.Headless {
		for _, ip := range svc.ClusterSetIPs {
			out = z.addr(q.Name, q.Qtype, ip, out)
		}
		return out
	}
	for i := range svc.Backends {
		out = z.addr(q.Name, q.Qtype, svc.Backends[i].Addr, out)
	}
	return out
}

// addr appends the A or AAAA record of name for ip if the question asks
// for its family (both for ANY).
func (z *Zone) addr(name string, qtype uint16, ip netip.Addr, out []dns.RR) []dns.RR {
	ip = ip.Unmap()
	switch {
	case ip.Is4() && (qtype == dns.TypeA || qtype == dns.TypeANY):
		out = append(out, &dns.A{Hdr: z.hdr(name, dns.TypeA), A: ip.AsSlice()})
	case ip.Is6() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
		out = append(out, &dns.AAAA{Hdr: z.hdr(name, dns.TypeAAAA), AAAA: ip.AsSlice()})
	}
	return out
}

func (z *Zone) hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: z.ttl}
}

// srv answers _<port>._<proto>.<svc>.<ns>.svc.<zone>: one record pointing
// at the service name (ClusterSetIP) or one per backend (headless), with
// the targets' addresses as additional records.
func (z *Zone) srv(q dns.Question, svc *ServiceRecord, port string, proto uint8, base string) result {
	var p *Port
	for i := range svc.Ports {
		if svc.Ports[i].Name != "" && strings.EqualFold(svc.Ports[i].Name, port) && svc.Ports[i].Protocol == proto {
			p = &svc.Ports[i]
			break
		}
	}
	if p == nil {
		return result{}
	}
	if q.Qtype != dns.TypeSRV && q.Qtype != dns.TypeANY {
		return result{exists: true}
	}
	r := result{exists: true}
	srv := func(target string, number uint16) {
		r.answer = append(r.answer, &dns.SRV{Hdr: z.hdr(q.Name, dns.TypeSRV),
			Priority: 0, Weight: 10, Port: number, Target: target})
	}
	if !svc.Headless {
		srv(base, p.Number)
		for _, ip := range svc.ClusterSetIPs {
			r.extra = z.addr(base, dns.TypeANY, ip, r.extra)
		}
		return r
	}
	// One record per backend name: a dual-stack backend with a hostname
	// is one target with two addresses.
	seen := make(map[string]bool, len(svc.Backends))
	for i := range svc.Backends {
		b := &svc.Backends[i]
		l := b.label()
		if l == "" {
			continue
		}
		target := l + "." + strings.ToLower(b.Cluster) + "." + base
		if !seen[target] {
			seen[target] = true
			number := p.Number
			if tp, ok := p.TargetPorts[b.Cluster]; ok {
				number = tp
			}
			srv(target, number)
		}
		r.extra = z.addr(target, dns.TypeANY, b.Addr, r.extra)
	}
	return r
}
