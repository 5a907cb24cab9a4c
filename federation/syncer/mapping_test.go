package syncer

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

var testSpec = &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.1.0.0/16", "fd00:1::/64"}}

func testPod(mut func(p *corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart-7d9f", Labels: map[string]string{"app": "cart", "pod-template-hash": "7d9f"}},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{
			Name:  "c",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {ContainerPort: 9090}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}},
		}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.1.0.5"}, {IP: "fd00:1::5"}}},
	}
	if mut != nil {
		mut(p)
	}
	return p
}

func TestEndpointFromPod(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "a", corev1.LabelMetadataName: "shop"}}}
	tests := []struct {
		name       string
		pod        *corev1.Pod
		ns         *corev1.Namespace
		spec       *fedmeshv1.Cluster // nil: testSpec
		wantReason string
		wantMsg    string // substring of the skip message, "" to skip
		want       *fedmeshv1.Endpoint
	}{
		{
			name: "running pod maps with every label (churn labels too) and named ports kept",
			pod:  testPod(nil),
			ns:   ns,
			want: &fedmeshv1.Endpoint{
				Cluster: "east", Namespace: "shop", Name: "cart-7d9f", Node: "node-1",
				Ips:             []string{"10.1.0.5", "fd00:1::5"},
				Labels:          map[string]string{"app": "cart", "pod-template-hash": "7d9f"},
				NamespaceLabels: map[string]string{"team": "a", corev1.LabelMetadataName: "shop"},
				NamedPorts: []*fedmeshv1.NamedPort{
					{Name: "dns", Port: 53, Protocol: fedmeshv1.Protocol_PROTOCOL_UDP},
					{Name: "http", Port: 8080, Protocol: fedmeshv1.Protocol_PROTOCOL_TCP},
				},
			},
		},
		{
			name: "namespace not yet seen gets its name label",
			pod:  testPod(func(p *corev1.Pod) { p.Spec.Containers = nil; p.Labels = nil }),
			want: &fedmeshv1.Endpoint{
				Cluster: "east", Namespace: "shop", Name: "cart-7d9f", Node: "node-1",
				Ips: []string{"10.1.0.5", "fd00:1::5"}, Labels: map[string]string{},
				NamespaceLabels: map[string]string{corev1.LabelMetadataName: "shop"},
			},
		},
		{
			name: "StatefulSet and reserved-prefix labels are published as they are",
			pod: testPod(func(p *corev1.Pod) {
				p.Spec.Containers = nil
				p.Labels = map[string]string{"app": "db", "statefulset.kubernetes.io/pod-name": "db-0", "apps.kubernetes.io/pod-index": "0", "fedmesh.io/cluster": "west"}
			}),
			ns: ns,
			want: &fedmeshv1.Endpoint{
				Cluster: "east", Namespace: "shop", Name: "cart-7d9f", Node: "node-1",
				Ips:             []string{"10.1.0.5", "fd00:1::5"},
				Labels:          map[string]string{"app": "db", "statefulset.kubernetes.io/pod-name": "db-0", "apps.kubernetes.io/pod-index": "0", "fedmesh.io/cluster": "west"},
				NamespaceLabels: map[string]string{"team": "a", corev1.LabelMetadataName: "shop"},
			},
		},
		{name: "pod without IP is skipped", pod: testPod(func(p *corev1.Pod) { p.Status.PodIPs = nil }), wantReason: "NoPodIP"},
		{name: "hostNetwork pod is skipped", pod: testPod(func(p *corev1.Pod) { p.Spec.HostNetwork = true }), wantReason: "HostNetwork"},
		{name: "finished pod is skipped", pod: testPod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), wantReason: "Terminated"},
		{name: "unscheduled pod is skipped", pod: testPod(func(p *corev1.Pod) { p.Spec.NodeName = "" }), wantReason: "NoNode"},
		{name: "IP outside the cluster's pod CIDRs is skipped", pod: testPod(func(p *corev1.Pod) { p.Status.PodIPs = []corev1.PodIP{{IP: "192.168.0.1"}} }), wantReason: "Invalid"},
		{name: "v6 address outside the cluster's v6 pod CIDR is skipped like a v4 one", pod: testPod(func(p *corev1.Pod) {
			p.Status.PodIPs = []corev1.PodIP{{IP: "10.1.0.5"}, {IP: "fd00:2::5"}}
		}), wantReason: "Invalid", wantMsg: "ips[1]: Invalid value: \"fd00:2::5\": is not inside the IPv6 pod CIDR fd00:1::/64"},
		{name: "v6 address of a cluster registered IPv4-only is skipped", pod: testPod(func(p *corev1.Pod) {
			p.Status.PodIPs = []corev1.PodIP{{IP: "fd00:1::5"}}
		}), spec: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.1.0.0/16"}}, wantReason: "Invalid", wantMsg: "has no IPv6 pod CIDR"},
		{name: "two v4 addresses are skipped", pod: testPod(func(p *corev1.Pod) {
			p.Status.PodIPs = []corev1.PodIP{{IP: "10.1.0.5"}, {IP: "10.1.0.6"}}
		}), wantReason: "Invalid", wantMsg: "at most one IPv4"},
		{
			name: "v6-only pod maps with its one address",
			pod: testPod(func(p *corev1.Pod) {
				p.Spec.Containers = nil
				p.Status.PodIPs = []corev1.PodIP{{IP: "fd00:1::7"}}
			}),
			ns: ns,
			want: &fedmeshv1.Endpoint{
				Cluster: "east", Namespace: "shop", Name: "cart-7d9f", Node: "node-1",
				Ips:             []string{"fd00:1::7"},
				Labels:          map[string]string{"app": "cart", "pod-template-hash": "7d9f"},
				NamespaceLabels: map[string]string{"team": "a", corev1.LabelMetadataName: "shop"},
			},
		},
		{name: "label value the federation rejects is skipped", pod: testPod(func(p *corev1.Pod) { p.Labels["bad key!"] = "x" }), wantReason: "Invalid"},
		{name: "too long port name is skipped", pod: testPod(func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].Name = "much-too-long-port-name" }), wantReason: "Invalid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := testSpec
			if tc.spec != nil {
				spec = tc.spec
			}
			got, err := EndpointFromPod("east", tc.pod, tc.ns, spec)
			if tc.wantReason != "" {
				s, ok := IsSkip(err)
				if !ok || s.Reason != tc.wantReason {
					t.Fatalf("got %v, %v; want skip %s", got, err, tc.wantReason)
				}
				if !strings.Contains(s.Message, tc.wantMsg) {
					t.Fatalf("skip message %q does not say %q", s.Message, tc.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tc.want) {
				t.Fatalf("got %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestExportFromService(t *testing.T) {
	se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("web")},
			{Name: "grpc", Port: 9000, TargetPort: intstr.FromInt32(9001), AppProtocol: ptr.To("grpc")},
		}},
	}
	slice := &discoveryv1.EndpointSlice{
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080))}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.1.0.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"10.1.0.8"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
			{Addresses: []string{"10.1.0.6"}},
		},
	}
	tests := []struct {
		name       string
		svc        *corev1.Service
		wantReason string
		want       *fedmeshv1.ServiceExport
	}{
		{
			name: "ClusterIP service exports ports with resolved target ports and ready backends",
			svc:  svc,
			want: &fedmeshv1.ServiceExport{
				Cluster: "east", Namespace: "shop", Name: "cart", Type: fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP,
				Ports: []*fedmeshv1.ServicePort{
					{Name: "http", Port: 80, Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, TargetPort: 8080},
					{Name: "grpc", Port: 9000, Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, TargetPort: 9001, AppProtocol: "grpc"},
				},
				Backends:  []string{"10.1.0.6", "10.1.0.7"},
				Endpoints: []*fedmeshv1.ServiceBackend{{Address: "10.1.0.6", Ready: true}, {Address: "10.1.0.7", Ready: true}, {Address: "10.1.0.8"}},
			},
		},
		{
			name: "headless service exports as Headless",
			svc: func() *corev1.Service {
				s := svc.DeepCopy()
				s.Spec.ClusterIP = corev1.ClusterIPNone
				s.Spec.Ports = s.Spec.Ports[1:]
				return s
			}(),
			want: &fedmeshv1.ServiceExport{
				Cluster: "east", Namespace: "shop", Name: "cart", Type: fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS,
				Ports:     []*fedmeshv1.ServicePort{{Name: "grpc", Port: 9000, Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, TargetPort: 9001, AppProtocol: "grpc"}},
				Backends:  []string{"10.1.0.6", "10.1.0.7"},
				Endpoints: []*fedmeshv1.ServiceBackend{{Address: "10.1.0.6", Ready: true}, {Address: "10.1.0.7", Ready: true}, {Address: "10.1.0.8"}},
			},
		},
		{name: "missing service is NoService", svc: nil, wantReason: "NoService"},
		{
			name: "ExternalName service is InvalidServiceType",
			svc: func() *corev1.Service {
				s := svc.DeepCopy()
				s.Spec.Type = corev1.ServiceTypeExternalName
				return s
			}(),
			wantReason: "InvalidServiceType",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ExportFromService("east", se, tc.svc, []*discoveryv1.EndpointSlice{slice})
			if tc.wantReason != "" {
				if s, ok := IsSkip(err); !ok || s.Reason != tc.wantReason {
					t.Fatalf("got %v, %v; want skip %s", got, err, tc.wantReason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tc.want) {
				t.Fatalf("got %v\nwant %v", got, tc.want)
			}
		})
	}
}

// Endpoint details beyond the federation's bound drop the not-ready ones,
// so a service with many unready pods is still exported.
func TestExportFromServiceBoundsEndpointDetails(t *testing.T) {
	se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	slice := &discoveryv1.EndpointSlice{}
	for i := range model.MaxBackends + 10 {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(i < 5)},
		})
	}
	x, err := ExportFromService("east", se, svc, []*discoveryv1.EndpointSlice{slice})
	if err != nil {
		t.Fatal(err)
	}
	if len(x.GetEndpoints()) != 5 || len(x.GetBackends()) != 5 {
		t.Errorf("%d endpoints, %d backends; want the 5 ready ones of each", len(x.GetEndpoints()), len(x.GetBackends()))
	}
}
