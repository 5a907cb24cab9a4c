package syncer

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestServiceAdvertisementCarriesAddressesPolicyAndNodesWithReadyBackends(t *testing.T) {
	yes, no := true, false
	node := func(n string) *string { return &n }
	lb := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10", "fd00:96::10"},
			ExternalIPs: []string{"192.0.2.7"}, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "203.0.113.10"}, {Hostname: "lb.example"}}}}}
	slice := func(ns, svc string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}}, Endpoints: eps}
	}
	slices_ := []*discoveryv1.EndpointSlice{
		slice("shop", "web",
			discoveryv1.Endpoint{NodeName: node("n2"), Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
			discoveryv1.Endpoint{NodeName: node("n1")}, // ready unset: ready
			discoveryv1.Endpoint{NodeName: node("n3"), Conditions: discoveryv1.EndpointConditions{Ready: &no}},
			discoveryv1.Endpoint{NodeName: node("n2"), Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
			discoveryv1.Endpoint{}), // no node
		slice("shop", "other", discoveryv1.Endpoint{NodeName: node("n9")}),
		slice("blog", "web", discoveryv1.Endpoint{NodeName: node("n8")}),
	}
	got := ServiceAdvertisementOf(lb, slices_)
	if !slices.Equal(got.GetReadyNodes(), []string{"n1", "n2"}) ||
		!slices.Equal(got.GetClusterIps(), []string{"10.96.0.10", "fd00:96::10"}) ||
		!slices.Equal(got.GetLoadBalancerIps(), []string{"203.0.113.10"}) ||
		!slices.Equal(got.GetExternalIps(), []string{"192.0.2.7"}) ||
		got.GetExternalTrafficPolicy() != fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL {
		t.Fatalf("got %v", got)
	}
	for name, svc := range map[string]*corev1.Service{
		"headless":     {Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, ClusterIPs: []string{corev1.ClusterIPNone}}},
		"externalName": {Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "x.example"}},
	} {
		if a := ServiceAdvertisementOf(svc, nil); a != nil {
			t.Errorf("%s: %v, want none", name, a)
		}
	}
}
