package model

import (
	"fmt"
	"net/netip"

	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ValidateUpsertEndpoints checks a batch: every endpoint valid and of the
// batch's cluster, no key or IP twice. When cluster is not nil, IPs must lie
// inside its pod CIDRs. The whole batch is rejected on any error, so a batch
// is never half-applied.
func ValidateUpsertEndpoints(req *fedmeshv1.UpsertEndpointsRequest, cluster *fedmeshv1.Cluster) error {
	errs := ClusterName(field.NewPath("cluster"), req.GetCluster())
	p := field.NewPath("endpoints")
	errs = append(errs, tooMany(p, len(req.GetEndpoints()), MaxBatch)...)
	keys := map[string]int{}
	ips := map[netip.Addr]int{}
	lc := newLabelChecker()
	for i, e := range req.GetEndpoints() {
		ep := p.Index(i)
		errs = append(errs, validateEndpoint(ep, e, req.GetCluster(), cluster, lc)...)
		k := e.GetNamespace() + "/" + e.GetName()
		if j, dup := keys[k]; dup {
			errs = append(errs, field.Duplicate(ep, fmt.Sprintf("%s (also %s)", k, p.Index(j))))
		}
		keys[k] = i
		for ii, s := range e.GetIps() {
			a, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			if j, dup := ips[a]; dup && j != i {
				errs = append(errs, field.Duplicate(ep.Child("ips").Index(ii), fmt.Sprintf("%s (also %s)", a, p.Index(j))))
			}
			ips[a] = i
		}
	}
	errs = append(errs, validateResync(field.NewPath("resync"), req.GetResync())...)
	return AsError(errs)
}

func validateResync(p *field.Path, r *fedmeshv1.ResyncMarker) field.ErrorList {
	if r.GetFinal() && r.GetGeneration() == 0 {
		return field.ErrorList{field.Invalid(p.Child("generation"), 0, "a final resync batch needs a generation above 0")}
	}
	return nil
}

// ValidateEndpoint checks one endpoint on its own (path "endpoint").
func ValidateEndpoint(e *fedmeshv1.Endpoint, cluster *fedmeshv1.Cluster) error {
	return AsError(validateEndpoint(field.NewPath("endpoint"), e, e.GetCluster(), cluster, nil))
}

// validateEndpoint checks e; lc (nil: none) carries label checks across a
// batch.
func validateEndpoint(p *field.Path, e *fedmeshv1.Endpoint, batchCluster string, cluster *fedmeshv1.Cluster, lc *labelChecker) field.ErrorList {
	if e == nil {
		return field.ErrorList{field.Required(p, "")}
	}
	var errs field.ErrorList
	if c := e.GetCluster(); c != "" && c != batchCluster {
		errs = append(errs, field.Invalid(p.Child("cluster"), c, fmt.Sprintf("must be empty or the batch's cluster %q", batchCluster)))
	}
	errs = append(errs, Namespace(p.Child("namespace"), e.GetNamespace())...)
	errs = append(errs, dnsSubdomain(p.Child("name"), e.GetName())...)
	errs = append(errs, dnsSubdomain(p.Child("node"), e.GetNode())...)
	ipsPath := p.Child("ips")
	if len(e.GetIps()) == 0 {
		errs = append(errs, field.Required(ipsPath, "an endpoint needs at least one IP"))
	}
	fams := map[string]int{}
	for i, s := range e.GetIps() {
		a, ae := addr(ipsPath.Index(i), s)
		if len(ae) > 0 {
			errs = append(errs, ae...)
			continue
		}
		if j, dup := fams[family(a)]; dup {
			errs = append(errs, field.Invalid(ipsPath.Index(i), s, fmt.Sprintf("a pod has at most one %s address (also %s)", family(a), ipsPath.Index(j))))
		}
		fams[family(a)] = i
		if cluster != nil && !addrInsideAny(a, cluster.GetPodCidrs()) {
			errs = append(errs, field.Invalid(ipsPath.Index(i), s, OutsidePodCIDRs(cluster, a)))
		}
	}
	errs = append(errs, lc.check(p.Child("labels"), e.GetLabels())...)
	errs = append(errs, lc.check(p.Child("namespaceLabels"), e.GetNamespaceLabels())...)
	np := p.Child("namedPorts")
	errs = append(errs, tooMany(np, len(e.GetNamedPorts()), MaxNamedPorts)...)
	names := map[string]int{}
	for i, port := range e.GetNamedPorts() {
		pp := np.Index(i)
		errs = append(errs, portName(pp.Child("name"), port.GetName())...)
		if j, dup := names[port.GetName()]; dup {
			errs = append(errs, field.Duplicate(pp.Child("name"), fmt.Sprintf("%s (also %s)", port.GetName(), np.Index(j))))
		}
		names[port.GetName()] = i
		errs = append(errs, portNum(pp.Child("port"), port.GetPort())...)
		errs = append(errs, l4Protocol(pp.Child("protocol"), port.GetProtocol())...)
	}
	return errs
}

func portNum(p *field.Path, v uint32) field.ErrorList { return port(p, v, false) }

// ValidateDeleteEndpoints checks a batch of deletes.
func ValidateDeleteEndpoints(req *fedmeshv1.DeleteEndpointsRequest) error {
	errs := ClusterName(field.NewPath("cluster"), req.GetCluster())
	p := field.NewPath("keys")
	errs = append(errs, tooMany(p, len(req.GetKeys()), MaxBatch)...)
	for i, k := range req.GetKeys() {
		errs = append(errs, Namespace(p.Index(i).Child("namespace"), k.GetNamespace())...)
		errs = append(errs, dnsSubdomain(p.Index(i).Child("name"), k.GetName())...)
	}
	return AsError(errs)
}
