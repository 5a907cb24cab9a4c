package services

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Catalog is the importing cluster's view of the clusterset's services at
// one revision: what a node-local DNS resolver answers
// (<svc>.<ns>.svc.clusterset.local, headless backends by hostname and
// cluster, SRV for named ports) and what the service translation loads. It
// is an immutable value: the agent builds a new one per revision and
// readers may keep it.
type Catalog struct {
	Revision uint64
	Services map[Key]*CatalogService
}

// CatalogService is one imported service.
type CatalogService struct {
	Key      Key
	Headless bool
	// IPs are the ClusterSetIPs (none for headless imports, or before the
	// control plane allocated them).
	IPs []netip.Addr
	// Ports of the import (service ports, not target ports).
	Ports []CatalogPort
	// Choice is the backend choice for the importing cluster (affinity,
	// readiness and liveness applied); for a headless service these are
	// the addresses DNS answers with.
	Choice Choice
	// Import is the import as the control plane stored it.
	Import *fedmeshv1.ServiceImport
}

// CatalogPort is a service port.
type CatalogPort struct {
	Name string
	// Protocol is the IP protocol number (6, 17, 132).
	Protocol uint8
	Port     uint16
	// AppProtocol is the application protocol hint. Target ports are per
	// exporting cluster: TargetPort resolves them from Import.
	AppProtocol string
}

// BuildCatalog computes the catalog of importer from the imports it sees
// and the liveness the control plane committed.
func BuildCatalog(rev uint64, imports []*fedmeshv1.ServiceImport, importer string, live Liveness) *Catalog {
	c := &Catalog{Revision: rev, Services: make(map[Key]*CatalogService, len(imports))}
	for _, imp := range imports {
		k := Key{Namespace: imp.GetNamespace(), Name: imp.GetName()}
		s := &CatalogService{
			Key:      k,
			Headless: EffectiveType(imp.GetType()) == fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS,
			Choice:   Choose(imp, importer, live),
			Import:   imp,
		}
		if !s.Headless {
			for _, v := range imp.GetIps() {
				if a, err := netip.ParseAddr(v); err == nil {
					s.IPs = append(s.IPs, a.Unmap())
				}
			}
			slices.SortFunc(s.IPs, func(a, b netip.Addr) int { return a.Compare(b) })
		}
		for _, p := range imp.GetPorts() {
			if p.GetPort() == 0 || p.GetPort() > 65535 {
				continue
			}
			s.Ports = append(s.Ports, CatalogPort{Name: p.GetName(), Protocol: protoNumber(p.GetProtocol()), Port: uint16(p.GetPort()), AppProtocol: p.GetAppProtocol()})
		}
		slices.SortFunc(s.Ports, func(a, b CatalogPort) int {
			return cmp.Or(cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
		})
		c.Services[k] = s
	}
	return c
}

// Lookup returns the service namespace/name.
func (c *Catalog) Lookup(namespace, name string) (*CatalogService, bool) {
	if c == nil {
		return nil, false
	}
	s, ok := c.Services[Key{Namespace: namespace, Name: name}]
	return s, ok
}

func protoNumber(p fedmeshv1.Protocol) uint8 {
	return policy.ProtoFromAPI(p)
}
