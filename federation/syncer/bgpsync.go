package syncer

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ServiceAdvertisementOf is what the cluster's nodes need to advertise
// svc's addresses over BGP (bgp package): its cluster IPs, external IPs,
// LoadBalancer ingress IPs, externalTrafficPolicy, and the nodes that have
// a ready backend, from the EndpointSlices of the Service (those labelled
// kubernetes.io/service-name with its name, in its namespace). nil for a
// Service with no address to advertise (headless, ExternalName). Pure.
func ServiceAdvertisementOf(svc *corev1.Service, slices_ []*discoveryv1.EndpointSlice) *fedmeshv1.ServiceAdvertisement {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	a := &fedmeshv1.ServiceAdvertisement{Namespace: svc.Namespace, Name: svc.Name,
		ExternalIps:           slices.Clone(svc.Spec.ExternalIPs),
		ExternalTrafficPolicy: fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_CLUSTER}
	for _, ip := range svc.Spec.ClusterIPs {
		if ip != "" && ip != corev1.ClusterIPNone {
			a.ClusterIps = append(a.ClusterIps, ip)
		}
	}
	if len(a.ClusterIps) == 0 && svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		a.ClusterIps = []string{svc.Spec.ClusterIP}
	}
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if in.IP != "" {
			a.LoadBalancerIps = append(a.LoadBalancerIps, in.IP)
		}
	}
	if svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
		a.ExternalTrafficPolicy = fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL
	}
	if len(a.ClusterIps)+len(a.ExternalIps)+len(a.LoadBalancerIps) == 0 {
		return nil
	}
	for _, es := range slices_ {
		if es.Namespace != svc.Namespace || es.Labels[discoveryv1.LabelServiceName] != svc.Name {
			continue
		}
		for _, ep := range es.Endpoints {
			// Ready unset means ready (EndpointSlice API); a terminating
			// endpoint is not ready.
			if ep.NodeName == nil || *ep.NodeName == "" || (ep.Conditions.Ready != nil && !*ep.Conditions.Ready) {
				continue
			}
			a.ReadyNodes = append(a.ReadyNodes, *ep.NodeName)
		}
	}
	slices.Sort(a.ReadyNodes)
	a.ReadyNodes = slices.Compact(a.ReadyNodes)
	return a
}
