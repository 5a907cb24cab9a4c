package agent

// Service translation: per revision the agent turns the imports of its
// cluster and the liveness the control plane committed into a
// services.Catalog (for the node-local DNS) and a dataplane.ServiceTable
// (for the translation), and hands the table to the Services port before
// it reports the revision enforced.

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/fedmesh/fedmesh/federation/services"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/dns"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ServiceTableOf renders the catalog into the dataplane's table: one
// frontend per ClusterSetIP and port, translating to the chosen backends of
// the VIP's family at the backend cluster's target port. Headless services
// and services without a ClusterSetIP have no frontend. Pure.
func ServiceTableOf(cat *services.Catalog) *dataplane.ServiceTable {
	t := &dataplane.ServiceTable{Revision: cat.Revision}
	for _, k := range slices.SortedFunc(maps.Keys(cat.Services), compareServiceKeys) {
		s := cat.Services[k]
		if s.Headless {
			continue
		}
		for _, vip := range s.IPs {
			for _, p := range s.Ports {
				ip := s.Import.GetPorts()[importPortIndex(s.Import, p)]
				fe := dataplane.ServiceFrontend{
					Key:       dataplane.ServiceKey{VIP: vip, Port: p.Port, Protocol: p.Protocol},
					Namespace: k.Namespace, Name: k.Name,
				}
				for _, b := range s.Choice.Backends {
					if b.Addr.Is4() != vip.Is4() {
						continue
					}
					tp := services.TargetPort(s.Import, b.Cluster, ip)
					if tp == 0 || tp > 65535 {
						continue
					}
					fe.Backends = append(fe.Backends, dataplane.ServiceBackend{
						Addr: b.Addr, Port: uint16(tp), Weight: b.Weight, Cluster: b.Cluster, Node: b.Node,
					})
				}
				t.Frontends = append(t.Frontends, fe)
			}
		}
	}
	dataplane.SortFrontends(t.Frontends)
	return t
}

func importPortIndex(imp *fedmeshv1.ServiceImport, p services.CatalogPort) int {
	return slices.IndexFunc(imp.GetPorts(), func(ip *fedmeshv1.ServicePort) bool {
		return ip.GetName() == p.Name && ip.GetPort() == uint32(p.Port)
	})
}

func compareServiceKeys(a, b services.Key) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// DNSView renders the catalog as the resolver's view: per service its
// ClusterSetIPs, ports (with each exporting cluster's target port where it
// differs, for headless SRV records) and the chosen backends with hostname
// and cluster. Pure; the result is immutable.
func DNSView(cat *services.Catalog) *dns.Services {
	recs := make([]dns.ServiceRecord, 0, len(cat.Services))
	for _, k := range slices.SortedFunc(maps.Keys(cat.Services), compareServiceKeys) {
		s := cat.Services[k]
		r := dns.ServiceRecord{Namespace: k.Namespace, Name: k.Name, Headless: s.Headless, ClusterSetIPs: answerableVIPs(s.IPs, s.Import)}
		for _, p := range s.Ports {
			dp := dns.Port{Name: p.Name, Protocol: p.Protocol, Number: p.Port}
			if i := importPortIndex(s.Import, p); i >= 0 {
				for _, cb := range s.Import.GetClusters() {
					if tp := services.TargetPort(s.Import, cb.GetCluster(), s.Import.GetPorts()[i]); tp != uint32(p.Port) && tp > 0 && tp <= 65535 {
						if dp.TargetPorts == nil {
							dp.TargetPorts = map[string]uint16{}
						}
						dp.TargetPorts[cb.GetCluster()] = uint16(tp)
					}
				}
			}
			r.Ports = append(r.Ports, dp)
		}
		for _, b := range s.Choice.Backends {
			r.Backends = append(r.Backends, dns.Backend{Cluster: b.Cluster, Hostname: b.Hostname, Addr: b.Addr})
		}
		recs = append(recs, r)
	}
	return dns.NewServices(recs)
}

// answerableVIPs are the ClusterSetIPs DNS answers: those of a family some
// exporting cluster has a backend address of, ready or not. The control
// plane gives an import a VIP per family; a single-stack IPv4 service's
// IPv6 VIP has no backend to translate to, and a client that tries AAAA
// first would get a refused connection instead of the working IPv4 one.
// A family whose backends are all down keeps its answer: failover is the
// translation's business, not DNS's.
func answerableVIPs(vips []netip.Addr, imp *fedmeshv1.ServiceImport) []netip.Addr {
	var has4, has6 bool
	note := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil {
			has4, has6 = has4 || a.Unmap().Is4(), has6 || !a.Unmap().Is4()
		}
	}
	for _, cb := range imp.GetClusters() {
		for _, a := range cb.GetAddresses() {
			note(a)
		}
		for _, b := range cb.GetEndpoints() {
			note(b.GetAddress())
		}
	}
	out := make([]netip.Addr, 0, len(vips))
	for _, v := range vips {
		if (v.Unmap().Is4() && has4) || (!v.Unmap().Is4() && has6) {
			out = append(out, v)
		}
	}
	return out
}

// catalogOf builds the catalog of the view for cluster importer.
func catalogOf(v *View, importer string) *services.Catalog {
	imps := make([]*fedmeshv1.ServiceImport, 0, len(v.Imports))
	for _, k := range slices.SortedFunc(maps.Keys(v.Imports), compareServiceKeys) {
		imps = append(imps, v.Imports[k])
	}
	return services.BuildCatalog(v.Revision(), imps, importer, livenessOf(v))
}

// livenessOf is the clusters' liveness (sets: the clusters' order does
// not matter).
func livenessOf(v *View) services.Liveness {
	return services.LivenessOf(slices.Collect(maps.Values(v.Clusters)))
}

// catalogUpdate is prev (the catalog of an earlier revision, which stays
// as it is) with the services of the imports in changed built again from
// the view, the others shared: a service's entry depends only on its
// import, the importer and the clusters' liveness, so when liveness did
// not change since prev (the caller's to know) this is catalogOf(v,
// importer) at the cost of the changed imports. Rebuilding every import
// on every service change was ~270 KB of garbage per change with
// fedload's 10 imports of 200 clusters (test/scale BenchmarkAgentSync).
func catalogUpdate(prev *services.Catalog, v *View, importer string, changed map[services.Key]struct{}) *services.Catalog {
	cat := &services.Catalog{Revision: v.Revision(), Services: maps.Clone(prev.Services)}
	if cat.Services == nil {
		cat.Services = map[services.Key]*services.CatalogService{}
	}
	live := livenessOf(v)
	for k := range changed {
		imp := v.Imports[k]
		if imp == nil {
			delete(cat.Services, k)
			continue
		}
		cat.Services[k] = services.BuildCatalog(cat.Revision, []*fedmeshv1.ServiceImport{imp}, importer, live).Services[k]
	}
	return cat
}

// ServiceCatalog returns the services of the revision the agent last
// computed (nil before the first synced revision): what the node-local DNS
// answers from. Safe from any goroutine; the value is immutable.
func (a *Agent) ServiceCatalog() *services.Catalog { return a.catalog.Load() }

// syncServices computes the catalog and, with a Services port, hands the
// translation table to the dataplane. It reports false when the port
// failed: the previous table stays in force and the revision must not be
// reported as enforced.
func (a *Agent) syncServices(ctx context.Context) bool {
	if !a.svcDirty {
		return true
	}
	var cat *services.Catalog
	if prev := a.catalog.Load(); prev != nil && !a.svcAll {
		cat = catalogUpdate(prev, a.view, a.cfg.Cluster, a.svcChanged)
	} else {
		cat = catalogOf(a.view, a.cfg.Cluster)
	}
	failovers, withdrawn := 0, map[string]bool{}
	for _, s := range cat.Services {
		if s.Choice.FailedOver {
			failovers++
		}
		for _, c := range s.Choice.Withdrawn {
			withdrawn[c] = true
		}
	}
	if a.deps.Services != nil {
		t := ServiceTableOf(cat)
		if err := a.deps.Services.ApplyServices(ctx, t); err != nil {
			a.m.portErrors.WithLabelValues("services").Inc()
			a.log.Error("apply service translation table; the previous table stays in force, retrying",
				"revision", cat.Revision, "err", err)
			return false
		}
		a.m.serviceFrontends.Set(float64(len(t.Frontends)))
	}
	prev := a.catalog.Load()
	for k, s := range cat.Services {
		if s.Choice.FailedOver {
			if old, ok := prev.Lookup(k.Namespace, k.Name); !ok || !old.Choice.FailedOver {
				a.m.failovers.Inc()
				a.log.Info("service failed over from its preferred clusters", "service", k.String(),
					"affinity", s.Choice.Affinity.String(), "backends", len(s.Choice.Backends))
			}
		}
	}
	if a.deps.DNS != nil {
		a.deps.DNS.SetView(DNSView(cat))
	}
	a.m.failedOver.Set(float64(failovers))
	a.m.withdrawnClusters.Set(float64(len(withdrawn)))
	a.catalog.Store(cat)
	a.svcDirty, a.svcAll = false, false
	clear(a.svcChanged)
	return true
}

// serviceProblems renders the frontends the translation serves with fewer
// backends than listed, one line each, for the node status: which service
// and frontend, how many backends fit, and why (the fix is in the reason:
// larger maps, or a valid backend).
func serviceProblems(trunc []dataplane.ServiceTruncation) []string {
	if len(trunc) == 0 {
		return nil
	}
	out := make([]string, 0, len(trunc))
	for _, t := range trunc {
		proto := map[uint8]string{6: "TCP", 17: "UDP", 132: "SCTP"}[t.Key.Protocol]
		if proto == "" {
			proto = fmt.Sprintf("proto-%d", t.Key.Protocol)
		}
		out = append(out, fmt.Sprintf("service %s/%s %s/%s truncated: %d of %d backends loaded (%s)",
			t.Namespace, t.Name, netip.AddrPortFrom(t.Key.VIP, t.Key.Port), proto, t.Loaded, t.Listed, t.Reason))
	}
	return out
}
