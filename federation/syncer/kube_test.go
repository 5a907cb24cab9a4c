package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/fedmesh/fedmesh/federation/services"
	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// batchRecorder is the control-plane side of these tests of the syncer's
// Kubernetes side: it records each write the syncer sends and answers
// nothing else (no watch). It does not model the control plane; tests
// assert on what the syncer sent. End-to-end behaviour against the real
// replicated control plane is tested once controlplane/server lands.
type batchRecorder struct {
	spec *fedmeshv1.Cluster

	mu       sync.Mutex
	rev      uint64
	reqs     []sent
	failNext int
}

// sent is one recorded request.
type sent struct {
	upsert   *fedmeshv1.UpsertEndpointsRequest
	del      *fedmeshv1.DeleteEndpointsRequest
	policies *fedmeshv1.ApplyPoliciesRequest
	polDel   *fedmeshv1.PolicyKey
	exports  *fedmeshv1.ExportServicesRequest
	unexport *fedmeshv1.UnexportServiceRequest
}

var errInjected = status.Error(codes.Unavailable, "injected failure")

func (r *batchRecorder) record(p sent) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failNext > 0 {
		r.failNext--
		return 0, errInjected
	}
	r.rev++
	r.reqs = append(r.reqs, p)
	return r.rev, nil
}

func (r *batchRecorder) snapshot() []sent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

func (r *batchRecorder) GetCluster(context.Context, string) (*fedmeshv1.Cluster, error) {
	return r.spec, nil
}
func (r *batchRecorder) UpsertEndpoints(_ context.Context, q *fedmeshv1.UpsertEndpointsRequest) (uint64, error) {
	return r.record(sent{upsert: q})
}
func (r *batchRecorder) DeleteEndpoints(_ context.Context, q *fedmeshv1.DeleteEndpointsRequest) (uint64, error) {
	return r.record(sent{del: q})
}
func (r *batchRecorder) ApplyPolicies(_ context.Context, q *fedmeshv1.ApplyPoliciesRequest) (uint64, error) {
	return r.record(sent{policies: q})
}
func (r *batchRecorder) DeletePolicy(_ context.Context, k *fedmeshv1.PolicyKey) (uint64, error) {
	return r.record(sent{polDel: k})
}
func (r *batchRecorder) ExportServices(_ context.Context, q *fedmeshv1.ExportServicesRequest) (uint64, error) {
	return r.record(sent{exports: q})
}
func (r *batchRecorder) UnexportService(_ context.Context, q *fedmeshv1.UnexportServiceRequest) (uint64, error) {
	return r.record(sent{unexport: q})
}
func (r *batchRecorder) Watch(context.Context, *fedmeshv1.WatchRequest) (grpc.ServerStreamingClient[fedmeshv1.WatchResponse], error) {
	return nil, status.Error(codes.Unimplemented, "this test has no control plane to watch")
}

// lastResync returns the endpoints of the latest completed endpoint resync
// and its generation.
func (r *batchRecorder) lastResync() (gen uint64, eps map[string]*fedmeshv1.Endpoint) {
	var cur map[string]*fedmeshv1.Endpoint
	for _, p := range r.snapshot() {
		if p.upsert == nil || p.upsert.GetResync().GetGeneration() == 0 {
			continue
		}
		g := p.upsert.GetResync().GetGeneration()
		if cur == nil || g != gen {
			cur, gen = map[string]*fedmeshv1.Endpoint{}, g
		}
		for _, e := range p.upsert.GetEndpoints() {
			cur[e.GetNamespace()+"/"+e.GetName()] = e
		}
		if p.upsert.GetResync().GetFinal() {
			eps = cur
		}
	}
	if eps == nil {
		gen = 0
	}
	return gen, eps
}

// lastEndpoint returns the last value sent for ns/name, or nil when the
// last word was a delete.
func (r *batchRecorder) lastEndpoint(ns, name string) (ep *fedmeshv1.Endpoint, deleted bool) {
	for _, p := range r.snapshot() {
		for _, e := range p.upsert.GetEndpoints() {
			if e.GetNamespace() == ns && e.GetName() == name {
				ep, deleted = e, false
			}
		}
		for _, k := range p.del.GetKeys() {
			if k.GetNamespace() == ns && k.GetName() == name {
				ep, deleted = nil, true
			}
		}
	}
	return ep, deleted
}

func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

type harness struct {
	t    *testing.T
	kube *kubetest.Server
	cs   kubernetes.Interface
	mcs  mcsclient.Interface
	cp   *batchRecorder
	reg  *prometheus.Registry
}

func newHarness(t *testing.T) *harness {
	kube := kubetest.Start(t, kubetest.Options{})
	return &harness{
		t: t, kube: kube, cs: kube.Clientset(),
		mcs: mcsclient.NewForConfigOrDie(kube.Config),
		cp:  &batchRecorder{spec: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.1.0.0/16"}}},
	}
}

// startSyncer runs a syncer until the returned stop is called (or the test
// ends).
func (h *harness) startSyncer() (stop func()) {
	h.t.Helper()
	h.reg = prometheus.NewRegistry()
	s, err := New(Config{
		Cluster: "east", REST: h.kube.Config, ControlPlane: h.cp,
		Logger:     slog.New(slog.NewTextHandler(h.t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
		Registerer: h.reg,
		Debounce:   20 * time.Millisecond,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				h.t.Errorf("syncer Run: %v", err)
			}
		})
	}
	h.t.Cleanup(stop)
	return stop
}

func (h *harness) pod(ctx context.Context, ns, name string, lbls map[string]string, mut func(*corev1.Pod), ips ...string) {
	h.t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls}, Spec: corev1.PodSpec{NodeName: "node-1"}}
	if mut != nil {
		mut(p)
	}
	if _, err := h.kube.CreatePod(ctx, p, ips...); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) eventFor(ctx context.Context, ns, name, reason string) error {
	evs, err := h.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("involvedObject.name", name).String()})
	if err != nil {
		return err
	}
	for _, e := range evs.Items {
		if e.Reason == reason {
			return nil
		}
	}
	return fmt.Errorf("no event %s on %s/%s (have %d events)", reason, ns, name, len(evs.Items))
}

func TestSyncerPublishesPodsAndFollowsChanges(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := h.kube.CreateNamespace(ctx, "shop", map[string]string{"team": "a"}); err != nil {
		t.Fatal(err)
	}
	h.pod(ctx, "shop", "cart", map[string]string{"app": "cart", "pod-template-hash": "abc"}, func(p *corev1.Pod) {
		p.Spec.Containers = []corev1.Container{{Name: "c", Image: "x", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}
	}, "10.1.0.5")
	// Bad input: each is skipped, none blocks the good pod's batch.
	h.pod(ctx, "shop", "no-ip", map[string]string{"app": "x"}, nil)
	h.pod(ctx, "shop", "host", map[string]string{"app": "x"}, func(p *corev1.Pod) { p.Spec.HostNetwork = true }, "192.168.7.7")
	h.pod(ctx, "shop", "outside", map[string]string{"app": "x"}, nil, "172.16.0.9")

	h.startSyncer()
	eventually(t, "first full resync", func() error {
		gen, eps := h.cp.lastResync()
		if gen == 0 {
			return errors.New("no complete resync yet")
		}
		if len(eps) != 1 || eps["shop/cart"] == nil {
			return fmt.Errorf("resync carried %v, want only shop/cart", keysOf(eps))
		}
		return nil
	})
	_, eps := h.cp.lastResync()
	cart := eps["shop/cart"]
	if got := cart.GetLabels(); len(got) != 1 || got["app"] != "cart" {
		t.Errorf("labels %v: pod-template-hash must be filtered", got)
	}
	if cart.GetNamespaceLabels()["team"] != "a" || cart.GetNode() != "node-1" || len(cart.GetNamedPorts()) != 1 {
		t.Errorf("endpoint %v", cart)
	}
	for name, reason := range map[string]string{"no-ip": "NoPodIP", "host": "HostNetwork", "outside": "Invalid"} {
		eventually(t, "event for "+name, func() error { return h.eventFor(ctx, "shop", name, "FedmeshSkipped"+reason) })
		if v := counterValue(t, h.reg, "fedmesh_syncer_skipped_total", "endpoint", reason); v != 1 {
			t.Errorf("skipped metric for %s = %v, want 1", reason, v)
		}
	}

	t.Run("label change is published", func(t *testing.T) {
		p, err := h.cs.CoreV1().Pods("shop").Get(ctx, "cart", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Labels["app"] = "checkout"
		if _, err := h.cs.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "label change", func() error {
			if e, _ := h.cp.lastEndpoint("shop", "cart"); e.GetLabels()["app"] != "checkout" {
				return fmt.Errorf("last sent %v", e)
			}
			return nil
		})
	})
	t.Run("namespace label change is published", func(t *testing.T) {
		ns, err := h.cs.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ns.Labels["team"] = "b"
		if _, err := h.cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "namespace label change", func() error {
			if e, _ := h.cp.lastEndpoint("shop", "cart"); e.GetNamespaceLabels()["team"] != "b" {
				return fmt.Errorf("last sent %v", e)
			}
			return nil
		})
	})
	t.Run("NetworkPolicy is published as the cluster's policy", func(t *testing.T) {
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "deny-all"},
			Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
		}
		if _, err := h.cs.NetworkingV1().NetworkPolicies("shop").Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "policy published", func() error {
			for _, p := range h.cp.snapshot() {
				for _, pol := range p.policies.GetPolicies() {
					if pol.GetName() == "deny-all" && pol.GetCluster() == "east" && pol.GetKind() == fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES && p.policies.GetCluster() == "east" {
						return nil
					}
				}
			}
			return errors.New("not sent")
		})
		if err := h.cs.NetworkingV1().NetworkPolicies("shop").Delete(ctx, "deny-all", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "policy deleted", func() error {
			for _, p := range h.cp.snapshot() {
				if p.polDel.GetName() == "deny-all" && p.polDel.GetCluster() == "east" {
					return nil
				}
			}
			return errors.New("no delete sent")
		})
	})
	t.Run("ServiceExport of a missing Service is invalid until the Service exists", func(t *testing.T) {
		se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}}
		if _, err := h.mcs.MulticlusterV1beta1().ServiceExports("shop").Create(ctx, se, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "Valid=False NoService", func() error {
			return exportCondition(ctx, h.mcs, "shop", "cart", services.CondValid, metav1.ConditionFalse, "NoService")
		})
		eventually(t, "event", func() error { return h.eventFor(ctx, "shop", "cart", "FedmeshSkippedNoService") })

		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}, Spec: corev1.ServiceSpec{
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("web")}},
		}}
		if _, err := h.cs.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// No controller-manager runs: write the slice its controller would.
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "cart-x1", Labels: map[string]string{discoveryv1.LabelServiceName: "cart"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080))}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		}
		if _, err := h.cs.DiscoveryV1().EndpointSlices("shop").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "export published with backends", func() error {
			for _, p := range h.cp.snapshot() {
				for _, x := range p.exports.GetExports() {
					if x.GetName() == "cart" && slices.Equal(x.GetBackends(), []string{"10.1.0.5"}) && x.GetPorts()[0].GetTargetPort() == 8080 {
						return nil
					}
				}
			}
			return errors.New("not sent")
		})
		eventually(t, "Valid=True, Ready=True", func() error {
			return errors.Join(
				exportCondition(ctx, h.mcs, "shop", "cart", services.CondValid, metav1.ConditionTrue, "Valid"),
				exportCondition(ctx, h.mcs, "shop", "cart", services.CondReady, metav1.ConditionTrue, "Exported"))
		})
	})
	t.Run("pod delete is published", func(t *testing.T) {
		if err := h.cs.CoreV1().Pods("shop").Delete(ctx, "cart", metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "delete sent", func() error {
			if _, deleted := h.cp.lastEndpoint("shop", "cart"); !deleted {
				return errors.New("no delete sent")
			}
			return nil
		})
	})
}

func TestRestartedSyncerLeavesNoGhost(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := h.kube.CreateNamespace(ctx, "web", nil); err != nil {
		t.Fatal(err)
	}
	h.pod(ctx, "web", "a", map[string]string{"app": "a"}, nil, "10.1.0.1")
	h.pod(ctx, "web", "b", map[string]string{"app": "b"}, nil, "10.1.0.2")
	stop := h.startSyncer()
	eventually(t, "first resync", func() error {
		if _, eps := h.cp.lastResync(); len(eps) != 2 {
			return fmt.Errorf("resync has %v", keysOf(eps))
		}
		return nil
	})
	gen1, _ := h.cp.lastResync()
	stop()

	// While the syncer is down, b goes away.
	if err := h.cs.CoreV1().Pods("web").Delete(ctx, "b", metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatal(err)
	}
	h.startSyncer()
	eventually(t, "second resync without b", func() error {
		gen2, eps := h.cp.lastResync()
		if gen2 <= gen1 {
			return fmt.Errorf("generation %d not above %d", gen2, gen1)
		}
		if len(eps) != 1 || eps["web/a"] == nil {
			return fmt.Errorf("resync has %v, want only web/a", keysOf(eps))
		}
		return nil
	})
}

func TestFailedWriteIsFollowedByFullResync(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := h.kube.CreateNamespace(ctx, "web", nil); err != nil {
		t.Fatal(err)
	}
	h.startSyncer()
	eventually(t, "first resync", func() error {
		if g, _ := h.cp.lastResync(); g == 0 {
			return errors.New("none")
		}
		return nil
	})
	gen1, _ := h.cp.lastResync()
	h.cp.mu.Lock()
	h.cp.failNext = 1
	h.cp.mu.Unlock()
	h.pod(ctx, "web", "a", map[string]string{"app": "a"}, nil, "10.1.0.1")
	eventually(t, "resync after the failed write", func() error {
		g, eps := h.cp.lastResync()
		if g <= gen1 || eps["web/a"] == nil {
			return fmt.Errorf("generation %d (first %d), endpoints %v", g, gen1, keysOf(eps))
		}
		return nil
	})
	if v := counterValue(t, h.reg, "fedmesh_syncer_send_errors_total"); v < 1 {
		t.Errorf("send errors metric %v", v)
	}
}

func exportCondition(ctx context.Context, mcs mcsclient.Interface, ns, name, typ string, st metav1.ConditionStatus, reason string) error {
	se, err := mcs.MulticlusterV1beta1().ServiceExports(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	c := apimeta.FindStatusCondition(se.Status.Conditions, typ)
	if c == nil || c.Status != st || c.Reason != reason {
		return fmt.Errorf("condition %s = %+v, want %s/%s", typ, c, st, reason)
	}
	return nil
}

func keysOf[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// counterValue finds a counter by name and label values in a registry.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, lvs ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var got []string
			for _, l := range m.GetLabel() {
				got = append(got, l.GetValue())
			}
			if slices.Equal(got, lvs) {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("metric %s%v not found", name, lvs)
	return 0
}

func TestExportScopeKeepsExcludedNamespacesOut(t *testing.T) {
	h := newHarness(t)
	h.cp.spec.Exports = &fedmeshv1.NamespaceScope{ExcludeNames: []string{"private"}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, ns := range []string{"private", "public"} {
		if err := h.kube.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	h.pod(ctx, "private", "a", map[string]string{"app": "a"}, nil, "10.1.0.1")
	h.pod(ctx, "public", "b", map[string]string{"app": "b"}, nil, "10.1.0.2")
	h.startSyncer()
	eventually(t, "resync of the exported namespace only", func() error {
		if _, eps := h.cp.lastResync(); len(eps) != 1 || eps["public/b"] == nil {
			return fmt.Errorf("resync has %v, want only public/b", keysOf(eps))
		}
		return nil
	})
	// A later change in the excluded namespace is not sent either.
	h.pod(ctx, "private", "c", map[string]string{"app": "c"}, nil, "10.1.0.3")
	h.pod(ctx, "public", "d", map[string]string{"app": "d"}, nil, "10.1.0.4")
	eventually(t, "public/d sent", func() error {
		if e, _ := h.cp.lastEndpoint("public", "d"); e == nil {
			return errors.New("not yet")
		}
		return nil
	})
	if e, _ := h.cp.lastEndpoint("private", "c"); e != nil {
		t.Fatalf("endpoint of an excluded namespace sent: %v", e)
	}
}
