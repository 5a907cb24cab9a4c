package syncer

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// SkipError says why an object of the cluster is not published. It is not a
// failure of the syncer: the object is reported (Event, metric) and left out
// of the batch, so one bad pod never blocks the others.
type SkipError struct {
	// Reason is a CamelCase reason for the Kubernetes Event and the metric
	// label ("NoPodIP", "HostNetwork", "Invalid", "NoService", ...).
	Reason string
	// Message says what is wrong and what to do.
	Message string
}

func (e *SkipError) Error() string { return e.Reason + ": " + e.Message }

func skip(reason, format string, args ...any) *SkipError {
	return &SkipError{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// EndpointFromPod maps a pod to the endpoint the federation stores. ns is the
// pod's namespace (its labels become the endpoint's namespace labels; nil
// when the namespace is not in the informer yet). spec is this cluster's
// registration, whose pod CIDRs the IPs must lie in (nil skips that check).
// A pod the federation cannot carry returns a *SkipError.
func EndpointFromPod(cluster string, pod *corev1.Pod, ns *corev1.Namespace, spec *fedmeshv1.Cluster) (*fedmeshv1.Endpoint, error) {
	switch {
	case pod.Spec.HostNetwork:
		return nil, skip("HostNetwork", "pod %s/%s uses the node's network namespace; its traffic has the node's identity, not a pod identity", pod.Namespace, pod.Name)
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return nil, skip("Terminated", "pod %s/%s has finished (%s)", pod.Namespace, pod.Name, pod.Status.Phase)
	case pod.DeletionTimestamp != nil:
		return nil, skip("Terminating", "pod %s/%s is being deleted", pod.Namespace, pod.Name)
	}
	var ips []string
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = []string{pod.Status.PodIP}
	}
	if len(ips) == 0 {
		return nil, skip("NoPodIP", "pod %s/%s has no IP yet", pod.Namespace, pod.Name)
	}
	ep := &fedmeshv1.Endpoint{
		Cluster:   cluster,
		Namespace: pod.Namespace,
		Name:      pod.Name,
		Ips:       ips,
		// Every label, as Kubernetes selectors see them: the control plane
		// derives the identity from them (federation/identity), so a policy
		// on pod-template-hash or statefulset.kubernetes.io/pod-name selects
		// what it says.
		Labels: maps(pod.Labels),
		Node:   pod.Spec.NodeName,
	}
	if ns != nil {
		ep.NamespaceLabels = maps(ns.Labels)
	} else {
		// The namespace informer lags the pod informer at most briefly; the
		// metadata.name label is what a namespaceSelector most often matches.
		ep.NamespaceLabels = map[string]string{corev1.LabelMetadataName: pod.Namespace}
	}
	if ep.Node == "" {
		return nil, skip("NoNode", "pod %s/%s is not scheduled to a node", pod.Namespace, pod.Name)
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == "" {
				continue
			}
			ep.NamedPorts = append(ep.NamedPorts, &fedmeshv1.NamedPort{Name: p.Name, Port: uint32(p.ContainerPort), Protocol: model.ProtocolFromK8s(p.Protocol)})
		}
	}
	slices.SortFunc(ep.NamedPorts, func(a, b *fedmeshv1.NamedPort) int { return strings.Compare(a.GetName(), b.GetName()) })
	if err := model.ValidateEndpoint(ep, spec); err != nil {
		return nil, skip("Invalid", "the federation rejects pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return ep, nil
}

func maps(in map[string]string) map[string]string {
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// ExportFromService maps a ServiceExport of the cluster, with the Service of
// the same name (nil when absent) and that Service's EndpointSlices, to the
// export the federation stores. A ServiceExport that cannot be exported
// returns a *SkipError whose reason is the MCS Valid=False reason.
func ExportFromService(cluster string, se *mcsv1beta1.ServiceExport, svc *corev1.Service, eps []*discoveryv1.EndpointSlice) (*fedmeshv1.ServiceExport, error) {
	if svc == nil {
		return nil, skip(string(mcsv1beta1.ServiceExportReasonNoService), "no Service %s/%s to export; create it or delete the ServiceExport", se.Namespace, se.Name)
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, skip(string(mcsv1beta1.ServiceExportReasonInvalidServiceType), "Service %s/%s is of type ExternalName, which the MCS API cannot export", svc.Namespace, svc.Name)
	}
	x := &fedmeshv1.ServiceExport{
		Cluster:   cluster,
		Namespace: svc.Namespace,
		Name:      svc.Name,
		Type:      fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP,
	}
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		x.Type = fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS
	}
	// A named targetPort resolves per backend; the EndpointSlice controller
	// has resolved it into the slices' ports, by the service port's name.
	slicePort := map[string]uint32{}
	for _, s := range eps {
		for _, p := range s.Ports {
			if p.Name != nil && p.Port != nil {
				slicePort[*p.Name] = uint32(*p.Port)
			}
		}
	}
	for _, p := range svc.Spec.Ports {
		sp := &fedmeshv1.ServicePort{Name: p.Name, Protocol: model.ProtocolFromK8s(p.Protocol), Port: uint32(p.Port)}
		if p.AppProtocol != nil {
			sp.AppProtocol = *p.AppProtocol
		}
		switch {
		case p.TargetPort.IntValue() > 0:
			sp.TargetPort = uint32(p.TargetPort.IntValue())
		case slicePort[p.Name] > 0:
			sp.TargetPort = slicePort[p.Name]
		}
		x.Ports = append(x.Ports, sp)
	}
	// Every backend goes into endpoints with its node and readiness (the
	// federation withdraws backends of stale nodes and tells DNS their
	// hostnames); the ready ones also into backends, as before.
	seen := map[netip.Addr]bool{}
	for _, s := range eps {
		for _, e := range s.Endpoints {
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			for _, a := range e.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil || seen[ip] {
					continue
				}
				seen[ip] = true
				b := &fedmeshv1.ServiceBackend{Address: ip.String(), Ready: ready}
				if e.NodeName != nil {
					b.Node = *e.NodeName
				}
				if e.Hostname != nil {
					b.Hostname = *e.Hostname
				}
				x.Endpoints = append(x.Endpoints, b)
				if ready {
					x.Backends = append(x.Backends, ip.String())
				}
			}
		}
	}
	slices.Sort(x.Backends)
	slices.SortFunc(x.Endpoints, func(a, b *fedmeshv1.ServiceBackend) int { return strings.Compare(a.GetAddress(), b.GetAddress()) })
	if len(x.Endpoints) > model.MaxBackends {
		// The federation takes at most MaxBackends endpoint details: the
		// not-ready ones give way first (the ready ones are also bounded,
		// as backends, just below).
		x.Endpoints = slices.DeleteFunc(x.Endpoints, func(b *fedmeshv1.ServiceBackend) bool { return !b.GetReady() })
	}
	if err := model.ValidateExportServices(&fedmeshv1.ExportServicesRequest{Cluster: cluster, Exports: []*fedmeshv1.ServiceExport{x}}); err != nil {
		return nil, skip("Invalid", "the federation rejects the export of %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	return x, nil
}

// IsSkip reports whether err is a *SkipError and returns it.
func IsSkip(err error) (*SkipError, bool) {
	var s *SkipError
	ok := errors.As(err, &s)
	return s, ok
}
