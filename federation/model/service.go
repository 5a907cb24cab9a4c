package model

import (
	"fmt"
	"net/netip"

	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ValidateExportServices checks a batch of one cluster's service exports.
func ValidateExportServices(req *fedmeshv1.ExportServicesRequest) error {
	errs := ClusterName(field.NewPath("cluster"), req.GetCluster())
	p := field.NewPath("exports")
	errs = append(errs, tooMany(p, len(req.GetExports()), MaxBatch)...)
	keys := map[string]int{}
	for i, x := range req.GetExports() {
		xp := p.Index(i)
		errs = append(errs, validateExport(xp, x, req.GetCluster())...)
		k := x.GetNamespace() + "/" + x.GetName()
		if j, dup := keys[k]; dup {
			errs = append(errs, field.Duplicate(xp, fmt.Sprintf("%s (also %s)", k, p.Index(j))))
		}
		keys[k] = i
	}
	errs = append(errs, validateResync(field.NewPath("resync"), req.GetResync())...)
	return AsError(errs)
}

func validateExport(p *field.Path, x *fedmeshv1.ServiceExport, batchCluster string) field.ErrorList {
	if x == nil {
		return field.ErrorList{field.Required(p, "")}
	}
	var errs field.ErrorList
	if c := x.GetCluster(); c != "" && c != batchCluster {
		errs = append(errs, field.Invalid(p.Child("cluster"), c, fmt.Sprintf("must be empty or the batch's cluster %q", batchCluster)))
	}
	errs = append(errs, Namespace(p.Child("namespace"), x.GetNamespace())...)
	// Service names are DNS-1035 labels in Kubernetes (they become DNS names).
	errs = append(errs, dns1035(p.Child("name"), x.GetName())...)
	switch x.GetType() {
	case fedmeshv1.ServiceType_SERVICE_TYPE_UNSPECIFIED, fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP, fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS:
	default:
		errs = append(errs, field.NotSupported(p.Child("type"), int32(x.GetType()), []string{"ClusterSetIP", "Headless"}))
	}
	errs = append(errs, ValidateServicePorts(p.Child("ports"), x.GetPorts())...)
	bp := p.Child("backends")
	errs = append(errs, tooMany(bp, len(x.GetBackends()), MaxBackends)...)
	seen := map[netip.Addr]int{}
	for i, b := range x.GetBackends() {
		a, e := addr(bp.Index(i), b)
		errs = append(errs, e...)
		if !a.IsValid() {
			continue
		}
		if j, dup := seen[a]; dup {
			errs = append(errs, field.Duplicate(bp.Index(i), fmt.Sprintf("%s (also %s)", a, bp.Index(j))))
		}
		seen[a] = i
	}
	return errs
}

// ValidateServicePorts checks service ports as Kubernetes does: names
// required and unique when there is more than one, (port, protocol) unique.
func ValidateServicePorts(p *field.Path, ports []*fedmeshv1.ServicePort) field.ErrorList {
	var errs field.ErrorList
	names := map[string]int{}
	pp := map[string]int{}
	for i, sp := range ports {
		ip := p.Index(i)
		if sp.GetName() == "" {
			if len(ports) > 1 {
				errs = append(errs, field.Required(ip.Child("name"), "required when a service has more than one port"))
			}
		} else {
			errs = append(errs, dnsLabel(ip.Child("name"), sp.GetName())...)
			if j, dup := names[sp.GetName()]; dup {
				errs = append(errs, field.Duplicate(ip.Child("name"), fmt.Sprintf("%s (also %s)", sp.GetName(), p.Index(j))))
			}
			names[sp.GetName()] = i
		}
		errs = append(errs, l4Protocol(ip.Child("protocol"), sp.GetProtocol())...)
		errs = append(errs, portNum(ip.Child("port"), sp.GetPort())...)
		errs = append(errs, port(ip.Child("targetPort"), sp.GetTargetPort(), true)...)
		proto := sp.GetProtocol()
		if proto == fedmeshv1.Protocol_PROTOCOL_UNSPECIFIED {
			proto = fedmeshv1.Protocol_PROTOCOL_TCP
		}
		k := fmt.Sprintf("%d/%s", sp.GetPort(), proto)
		if j, dup := pp[k]; dup {
			errs = append(errs, field.Duplicate(ip.Child("port"), fmt.Sprintf("%s (also %s)", k, p.Index(j))))
		}
		pp[k] = i
	}
	return errs
}
