package dns

import (
	"net/netip"
	"strings"
)

// View answers which imported services exist, as the agent sees them.
//
// Contract: the resolver calls LookupService from many goroutines at once,
// once or twice per query in the zone, so it must be safe for concurrent
// use, must not block and must not do I/O. Names arrive lower-cased. The
// record it returns, and everything it points to, is never modified
// afterwards (the agent hands over a new View instead); the resolver keeps
// no reference beyond the query.
type View interface {
	LookupService(namespace, name string) (ServiceRecord, bool)
}

// ServiceRecord is what DNS needs of one ServiceImport.
type ServiceRecord struct {
	Namespace, Name string
	// Headless services have no ClusterSetIPs; their names resolve to the
	// backends' addresses.
	Headless bool
	// ClusterSetIPs are the import's virtual IPs (at most one per family in
	// practice; all are answered).
	ClusterSetIPs []netip.Addr
	// Ports are the import's ports; the named ones get SRV records.
	Ports []Port
	// Backends are the ready backends of every exporting cluster (as the
	// agent chose them for this cluster). Only headless services'
	// backends are answered.
	Backends []Backend
}

// Port is a service port.
type Port struct {
	Name string
	// Protocol is the IP protocol number (6 TCP, 17 UDP, 132 SCTP), as the
	// dataplane and the agent's service catalog carry it.
	Protocol uint8
	Number   uint16
	// TargetPorts are the backends' port numbers per exporting cluster,
	// where they differ from Number: a headless service's SRV records
	// carry them, since clients connect to the backends directly.
	TargetPorts map[string]uint16
}

// IP protocol numbers of the protocols SRV names (_tcp, _udp, _sctp).
const (
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// Backend is one address of a ready backend of a headless service; a
// dual-stack backend is two, with the same cluster and hostname.
type Backend struct {
	// Cluster exporting it: a DNS label (cluster names are).
	Cluster string
	// Hostname of the backend (a StatefulSet pod's name); empty names it
	// by its address with dashes.
	Hostname string
	Addr     netip.Addr
}

// label is the backend's first label under <cluster>.<svc>.<ns>.
func (b *Backend) label() string {
	if b.Hostname != "" {
		return strings.ToLower(b.Hostname)
	}
	a := b.Addr.Unmap()
	switch {
	case a.Is4():
		return strings.ReplaceAll(a.String(), ".", "-")
	case a.Is6():
		return strings.ReplaceAll(a.StringExpanded(), ":", "-")
	}
	return ""
}

// Services is an immutable View over a list of records: what the agent
// builds per revision and hands to Server.SetView.
type Services struct {
	m map[string]ServiceRecord
}

var _ View = (*Services)(nil)

// NewServices indexes recs by namespace and name (case-insensitively; a
// later duplicate wins). It keeps recs' slices: do not modify them later.
func NewServices(recs []ServiceRecord) *Services {
	s := &Services{m: make(map[string]ServiceRecord, len(recs))}
	for _, r := range recs {
		s.m[key(strings.ToLower(r.Namespace), strings.ToLower(r.Name))] = r
	}
	return s
}

func key(ns, name string) string { return ns + "/" + name }

// LookupService implements View.
func (s *Services) LookupService(namespace, name string) (ServiceRecord, bool) {
	if s == nil {
		return ServiceRecord{}, false
	}
	r, ok := s.m[key(namespace, name)]
	return r, ok
}
