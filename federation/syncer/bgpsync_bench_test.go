package syncer

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// BenchmarkEndpointReadyToAgentWatch times the control-plane half of a
// Service backend turning ready or unready: from the EndpointSlice update
// at the member's kube-apiserver, through BGPSync (informer, write to a
// follower, Raft commit on three replicas) to the node agent's
// WatchServiceAdvertisements stream (at another follower) delivering the
// new ready nodes. 20 flips per iteration; p50 and p99 in ms. The node's
// half (Resolve, speaker, ToR FIB) is bgp's
// BenchmarkServiceBackendReadyToToRFIB: the two add up to ready -> FIB.
func BenchmarkEndpointReadyToAgentWatch(b *testing.B) {
	const flips = 20
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cp := inproc.Start(b, inproc.Options{})
	kube := kubetest.Start(b, kubetest.Options{})
	cs := kube.Clientset()
	lead := cp.Leader()
	fs := cp.Followers(lead)
	if _, err := fedmeshv1.NewClusterServiceClient(lead.Conn()).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
		Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		b.Fatal(err)
	}
	if err := kube.CreateNamespace(ctx, "shop", nil); err != nil {
		b.Fatal(err)
	}
	if _, err := cs.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	node := "n1"
	ready := false
	es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.1"}, NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}}}
	es, err := cs.DiscoveryV1().EndpointSlices("shop").Create(ctx, es, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	var reps []fedmeshv1.BGPServiceClient
	for _, r := range cp.Replicas {
		reps = append(reps, fedmeshv1.NewBGPServiceClient(r.Conn()))
	}
	bs := &BGPSync{Cluster: "a", Kube: cs, Adverts: fedmeshv1.NewBGPServiceClient(fs[0].Conn()), Replicas: reps, Log: slog.New(slog.DiscardHandler)}
	go func() { _ = bs.Run(ctx) }()
	w, err := fedmeshv1.NewBGPServiceClient(fs[len(fs)-1].Conn()).WatchServiceAdvertisements(ctx, &fedmeshv1.WatchServiceAdvertisementsRequest{Cluster: "a"})
	if err != nil {
		b.Fatal(err)
	}
	await := func(want []string) {
		b.Helper()
		for {
			m, err := w.Recv()
			if err != nil {
				b.Fatal(err)
			}
			for _, a := range m.GetAdvertisements() {
				if a.GetName() == "web" && slices.Equal(a.GetReadyNodes(), want) {
					return
				}
			}
		}
	}
	await(nil)
	var up, down []time.Duration
	b.ResetTimer()
	for range b.N {
		for range flips {
			for _, r := range []bool{true, false} {
				ready = r
				es.Endpoints[0].Conditions.Ready = &ready
				start := time.Now()
				if es, err = cs.DiscoveryV1().EndpointSlices("shop").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
					b.Fatal(err)
				}
				if r {
					await([]string{"n1"})
					up = append(up, time.Since(start))
				} else {
					await(nil)
					down = append(down, time.Since(start))
				}
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(pct(up, 0.5), "ready-p50-ms")
	b.ReportMetric(pct(up, 0.99), "ready-p99-ms")
	b.ReportMetric(pct(down, 0.5), "unready-p50-ms")
	b.ReportMetric(pct(down, 0.99), "unready-p99-ms")
}
