// Package services owns the Multi-Cluster Services (MCS API, KEP-1645)
// logic of the federation, all of it pure (no clock, no I/O, deterministic
// output for the same input in any order), so every control-plane replica,
// syncer, agent and fedctl computes the same answers:
//   - aggregation (this file): the exports of one namespace/name by several
//     clusters become one ServiceImport, under the KEP's conflict rules, and
//     every export gets its Conflict condition; the import carries each
//     cluster's backends with node and readiness, its own target ports
//     where they differ, and the oldest export's affinity (the conflict
//     winner's, like the type);
//   - ClusterSetIP allocation (vip.go): one VIP per family from the
//     clusterset CIDRs, valid in every member cluster;
//   - backend choice (choice.go): what a node of an importing cluster
//     translates a ClusterSetIP to, under affinity, readiness and liveness;
//   - liveness judgement (liveness.go): which clusters went silent and which
//     nodes stopped reporting, from what the leader observed;
//   - the catalog (catalog.go): an importing cluster's view of every
//     service, for the node-local DNS and the translation table.
//
// Conflict rules (KEP-1645 "Constraints and Conflict Resolution"):
//   - Precedence is by age: the export with the lowest create revision (the
//     federation's creation order) wins; ties break by cluster name.
//   - Type: the import takes the oldest export's type. An export of another
//     type is in conflict (TypeConflict) and contributes no backends: a
//     headless import cannot route to a ClusterSetIP backend set or back.
//   - Ports: the import's ports are the union of the exports' ports, keyed by
//     name. A port whose name the oldest exporter already uses with another
//     number or protocol, or whose (number, protocol) an older port already
//     uses under another name, is in conflict (PortConflict) and left out;
//     that export's backends still count for the ports that agree.
//   - A conflict is reported on every export of the service, as the KEP asks,
//     with a message naming the field, the clusters and the winner.
package services

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Condition types and reasons, as the MCS API (sigs.k8s.io/mcs-api
// v1beta1) names them.
const (
	CondValid    = "Valid"
	CondConflict = "Conflict"
	CondReady    = "Ready"

	ReasonNoConflicts  = "NoConflicts"
	ReasonPortConflict = "PortConflict"
	ReasonTypeConflict = "TypeConflict"
)

// Key names a service in the clusterset.
type Key struct{ Namespace, Name string }

func (k Key) String() string { return k.Namespace + "/" + k.Name }

// KeyOf returns the key of an export.
func KeyOf(x *fedmeshv1.ServiceExport) Key {
	return Key{Namespace: x.GetNamespace(), Name: x.GetName()}
}

// Aggregated is the import of one service and the Conflict condition of each
// exporting cluster's export.
type Aggregated struct {
	Import *fedmeshv1.ServiceImport
	// Conflicts maps each exporting cluster to its export's Conflict
	// condition (status "True" or "False").
	Conflicts map[string]*fedmeshv1.ServiceCondition
}

// Aggregate computes the import of exports, which must all have the same
// namespace and name and come from distinct clusters. It returns a zero
// Aggregated (nil Import) for no exports. The input is not modified.
func Aggregate(exports []*fedmeshv1.ServiceExport) Aggregated {
	if len(exports) == 0 {
		return Aggregated{}
	}
	xs := slices.Clone(exports)
	slices.SortFunc(xs, byAge)
	oldest := xs[0]

	imp := &fedmeshv1.ServiceImport{
		Namespace: oldest.GetNamespace(),
		Name:      oldest.GetName(),
		Type:      EffectiveType(oldest.GetType()),
	}
	var typeLosers, portLosers []string
	var portDetails []string
	type portID struct {
		num   uint32
		proto fedmeshv1.Protocol
	}
	byName := map[string]*fedmeshv1.ServicePort{}
	byNum := map[portID]*fedmeshv1.ServicePort{}
	owner := map[*fedmeshv1.ServicePort]string{}

	for _, x := range xs {
		if EffectiveType(x.GetType()) != imp.Type {
			typeLosers = append(typeLosers, x.GetCluster())
			continue
		}
		lost := false
		for _, p := range x.GetPorts() {
			id := portID{p.GetPort(), effectiveProto(p.GetProtocol())}
			if prev, ok := byName[p.GetName()]; ok {
				if prev.GetPort() != p.GetPort() || effectiveProto(prev.GetProtocol()) != id.proto {
					lost = true
					portDetails = append(portDetails, fmt.Sprintf("port %q is %s in cluster %q but %s in %q", p.GetName(), portString(p), x.GetCluster(), portString(prev), owner[prev]))
				}
				continue
			}
			if prev, ok := byNum[id]; ok {
				lost = true
				portDetails = append(portDetails, fmt.Sprintf("%s is named %q in cluster %q but %q in %q", portString(p), p.GetName(), x.GetCluster(), prev.GetName(), owner[prev]))
				continue
			}
			np := &fedmeshv1.ServicePort{
				Name:        p.GetName(),
				Protocol:    id.proto,
				Port:        p.GetPort(),
				AppProtocol: p.GetAppProtocol(),
				TargetPort:  p.GetTargetPort(),
			}
			byName[p.GetName()] = np
			byNum[id] = np
			owner[np] = x.GetCluster()
			imp.Ports = append(imp.Ports, np)
		}
		if lost {
			portLosers = append(portLosers, x.GetCluster())
		}
		imp.Clusters = append(imp.Clusters, &fedmeshv1.ClusterBackends{
			Cluster:   x.GetCluster(),
			Addresses: sortedAddrs(x.GetBackends()),
			Endpoints: sortedEndpoints(x.GetEndpoints()),
			Affinity:  x.GetAffinity(),
		})
	}
	imp.Affinity = oldest.GetAffinity()
	// A cluster's target ports may differ from the oldest export's: the
	// import lists the cluster's own port where its target differs.
	for _, x := range xs {
		if EffectiveType(x.GetType()) != imp.Type {
			continue
		}
		cb := imp.Clusters[slices.IndexFunc(imp.Clusters, func(c *fedmeshv1.ClusterBackends) bool { return c.GetCluster() == x.GetCluster() })]
		for _, p := range x.GetPorts() {
			ip := byName[p.GetName()]
			if ip == nil || ip.GetPort() != p.GetPort() || effectiveProto(p.GetProtocol()) != ip.GetProtocol() {
				continue
			}
			if targetOf(p) != targetOf(ip) {
				cb.Ports = append(cb.Ports, &fedmeshv1.ServicePort{Name: p.GetName(), Protocol: ip.GetProtocol(), Port: p.GetPort(), TargetPort: targetOf(p)})
			}
		}
	}
	slices.SortFunc(imp.Ports, func(a, b *fedmeshv1.ServicePort) int {
		return cmp.Or(cmp.Compare(a.GetName(), b.GetName()), cmp.Compare(a.GetPort(), b.GetPort()), cmp.Compare(a.GetProtocol(), b.GetProtocol()))
	})
	slices.SortFunc(imp.Clusters, func(a, b *fedmeshv1.ClusterBackends) int { return cmp.Compare(a.GetCluster(), b.GetCluster()) })

	cond := &fedmeshv1.ServiceCondition{Type: CondConflict, Status: "False", Reason: ReasonNoConflicts, Message: "no conflicts with other clusters' exports"}
	switch {
	case len(typeLosers) > 0:
		cond = &fedmeshv1.ServiceCondition{
			Type: CondConflict, Status: "True", Reason: ReasonTypeConflict,
			Message: fmt.Sprintf("type %s of the oldest export (cluster %q) wins; clusters %s export another type and are not imported",
				typeName(imp.Type), oldest.GetCluster(), quoteAll(typeLosers)),
		}
		if len(portLosers) > 0 {
			cond.Message += "; also " + strings.Join(portDetails, "; ")
		}
	case len(portLosers) > 0:
		cond = &fedmeshv1.ServiceCondition{
			Type: CondConflict, Status: "True", Reason: ReasonPortConflict,
			Message: strings.Join(portDetails, "; ") + "; the oldest export's port wins",
		}
	}
	imp.Conditions = []*fedmeshv1.ServiceCondition{cond}
	out := Aggregated{Import: imp, Conflicts: make(map[string]*fedmeshv1.ServiceCondition, len(xs))}
	for _, x := range xs {
		// Each export gets its own copy: stored protos are not shared.
		out.Conflicts[x.GetCluster()] = &fedmeshv1.ServiceCondition{Type: cond.Type, Status: cond.Status, Reason: cond.Reason, Message: cond.Message}
	}
	return out
}

// AggregateAll groups exports by namespace/name and aggregates each group.
// The result is sorted by key.
func AggregateAll(exports []*fedmeshv1.ServiceExport) []Aggregated {
	groups := map[Key][]*fedmeshv1.ServiceExport{}
	for _, x := range exports {
		groups[KeyOf(x)] = append(groups[KeyOf(x)], x)
	}
	keys := make([]Key, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b Key) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	out := make([]Aggregated, 0, len(keys))
	for _, k := range keys {
		out = append(out, Aggregate(groups[k]))
	}
	return out
}

// EffectiveType resolves UNSPECIFIED to ClusterSetIP, the MCS default.
func EffectiveType(t fedmeshv1.ServiceType) fedmeshv1.ServiceType {
	if t == fedmeshv1.ServiceType_SERVICE_TYPE_UNSPECIFIED {
		return fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP
	}
	return t
}

func effectiveProto(p fedmeshv1.Protocol) fedmeshv1.Protocol {
	if p == fedmeshv1.Protocol_PROTOCOL_UNSPECIFIED {
		return fedmeshv1.Protocol_PROTOCOL_TCP
	}
	return p
}

// byAge orders exports oldest first: create revision, then cluster name. An
// export not yet stored (create revision 0) is the newest.
func byAge(a, b *fedmeshv1.ServiceExport) int {
	ra, rb := a.GetMeta().GetCreateRevision(), b.GetMeta().GetCreateRevision()
	if (ra == 0) != (rb == 0) {
		if ra == 0 {
			return 1
		}
		return -1
	}
	return cmp.Or(cmp.Compare(ra, rb), cmp.Compare(a.GetCluster(), b.GetCluster()))
}

func sortedAddrs(in []string) []string {
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b string) int {
		pa, ea := netip.ParseAddr(a)
		pb, eb := netip.ParseAddr(b)
		if ea == nil && eb == nil {
			return pa.Compare(pb)
		}
		return cmp.Compare(a, b)
	})
	return slices.Compact(out)
}

func sortedEndpoints(in []*fedmeshv1.ServiceBackend) []*fedmeshv1.ServiceBackend {
	if len(in) == 0 {
		return nil
	}
	out := slices.Clone(in)
	slices.SortStableFunc(out, func(a, b *fedmeshv1.ServiceBackend) int {
		pa, ea := netip.ParseAddr(a.GetAddress())
		pb, eb := netip.ParseAddr(b.GetAddress())
		if ea == nil && eb == nil {
			return pa.Compare(pb)
		}
		return cmp.Compare(a.GetAddress(), b.GetAddress())
	})
	return slices.CompactFunc(out, func(a, b *fedmeshv1.ServiceBackend) bool { return a.GetAddress() == b.GetAddress() })
}

// targetOf is the port number the backends listen on.
func targetOf(p *fedmeshv1.ServicePort) uint32 {
	if p.GetTargetPort() != 0 {
		return p.GetTargetPort()
	}
	return p.GetPort()
}

func portString(p *fedmeshv1.ServicePort) string {
	return fmt.Sprintf("%d/%s", p.GetPort(), strings.TrimPrefix(effectiveProto(p.GetProtocol()).String(), "PROTOCOL_"))
}

func typeName(t fedmeshv1.ServiceType) string {
	if t == fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS {
		return "Headless"
	}
	return "ClusterSetIP"
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
