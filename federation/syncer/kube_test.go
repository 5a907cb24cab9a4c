package syncer

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

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

// The syncer's tests run against real components only: a real etcd and
// kube-apiserver per member cluster (kubetest) and three real control-plane
// replicas in the test process (controlplane/inproc). The benchmarks run the
// replicas as processes (cptest), whose binary Main removes.
func TestMain(m *testing.M) { os.Exit(cptest.Main(m)) }

// fedEnv is the federation: the control-plane replicas and a client the
// tests read the store with.
type fedEnv struct {
	t  *testing.T
	cp *inproc.Cluster
}

func startFed(t *testing.T) *fedEnv {
	t.Helper()
	return &fedEnv{t: t, cp: inproc.Start(t, inproc.Options{})}
}

// conn is a connection to the agreed leader (reads there see every
// acknowledged write).
func (e *fedEnv) conn() *grpc.ClientConn { return e.cp.Leader().Conn() }

func (e *fedEnv) register(c *fedmeshv1.Cluster) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := fedmeshv1.NewClusterServiceClient(e.conn()).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: c}); err != nil {
		e.t.Fatalf("register cluster %s: %v", c.GetName(), err)
	}
}

// endpoints returns the store's endpoints of cluster by namespace/name.
func (e *fedEnv) endpoints(cluster string) (map[string]*fedmeshv1.Endpoint, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := fedmeshv1.NewEndpointServiceClient(e.conn()).ListEndpoints(ctx, &fedmeshv1.ListEndpointsRequest{Cluster: cluster})
	if err != nil {
		return nil, err
	}
	out := map[string]*fedmeshv1.Endpoint{}
	for _, ep := range r.GetEndpoints() {
		out[ep.GetNamespace()+"/"+ep.GetName()] = ep
	}
	return out, nil
}

// endpointsAre waits until the store holds exactly want for cluster.
func (e *fedEnv) endpointsAre(cluster string, want ...string) map[string]*fedmeshv1.Endpoint {
	e.t.Helper()
	slices.Sort(want)
	var got map[string]*fedmeshv1.Endpoint
	eventually(e.t, fmt.Sprintf("store endpoints of %s = %v", cluster, want), func() error {
		var err error
		if got, err = e.endpoints(cluster); err != nil {
			return err
		}
		if k := keysOf(got); !slices.Equal(k, want) {
			return fmt.Errorf("store has %v", k)
		}
		return nil
	})
	return got
}

func (e *fedEnv) cluster(name string) (*fedmeshv1.Cluster, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := fedmeshv1.NewClusterServiceClient(e.conn()).GetCluster(ctx, &fedmeshv1.GetClusterRequest{Name: name})
	return r.GetCluster(), err
}

// member is one member cluster: its own kube-apiserver and its syncer,
// which talks to one control-plane replica (a follower when there is one,
// so writes take the forwarding path).
type member struct {
	t    *testing.T
	name string
	env  *fedEnv
	kube *kubetest.Server
	cs   kubernetes.Interface
	mcs  mcsclient.Interface
	rep  *inproc.Replica
	reg  *prometheus.Registry
	// faults fail, delay or break the syncer's calls to the control plane.
	faults *inproc.Faults
}

// join starts a kube-apiserver for cluster name and registers the cluster.
func (e *fedEnv) join(name, podCIDR string, tweak func(*fedmeshv1.Cluster)) *member {
	e.t.Helper()
	kube := kubetest.Start(e.t, kubetest.Options{})
	c := &fedmeshv1.Cluster{Name: name, PodCidrs: []string{podCIDR}}
	if tweak != nil {
		tweak(c)
	}
	e.register(c)
	lead := e.cp.Leader()
	rep := lead
	if fs := e.cp.Followers(lead); len(fs) > 0 {
		rep = fs[0]
	}
	return &member{t: e.t, name: name, env: e, kube: kube, cs: kube.Clientset(), mcs: mcsclient.NewForConfigOrDie(kube.Config), rep: rep,
		faults: inproc.NewFaults()}
}

// startSyncer runs the member's syncer until the returned stop is called
// (or the test ends).
func (m *member) startSyncer() (stop func()) {
	m.t.Helper()
	_, stop = m.startSyncerWith(nil)
	return stop
}

// startSyncerWith is startSyncer with the configuration changed by mut
// first (which may wrap the ControlPlane); it also returns the syncer.
func (m *member) startSyncerWith(mut func(*Config)) (s *Syncer, stop func()) {
	m.t.Helper()
	cc, err := grpc.NewClient(m.rep.GRPCAddr, append(m.faults.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		m.t.Fatal(err)
	}
	m.reg = prometheus.NewRegistry()
	cfg := Config{
		Cluster: m.name, REST: m.kube.Config, ControlPlane: NewControlPlane(cc),
		Logger:     slog.New(slog.NewTextHandler(m.t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})).With("member", m.name),
		Registerer: m.reg,
	}
	if mut != nil {
		mut(&cfg)
	}
	s, err = New(cfg)
	if err != nil {
		m.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				m.t.Errorf("syncer %s Run: %v", m.name, err)
			}
			cc.Close()
		})
	}
	m.t.Cleanup(stop)
	return s, stop
}

func (m *member) pod(ctx context.Context, ns, name string, lbls map[string]string, mut func(*corev1.Pod), ips ...string) {
	m.t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls}, Spec: corev1.PodSpec{NodeName: "node-1"}}
	if mut != nil {
		mut(p)
	}
	if _, err := m.kube.CreatePod(ctx, p, ips...); err != nil {
		m.t.Fatal(err)
	}
}

func (m *member) deletePod(ctx context.Context, ns, name string) {
	m.t.Helper()
	if err := m.cs.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		m.t.Fatal(err)
	}
}

func (m *member) eventFor(ctx context.Context, ns, name, reason string) error {
	evs, err := m.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("involvedObject.name", name).String()})
	if err != nil {
		return err
	}
	for _, e := range evs.Items {
		if e.Reason == reason {
			return nil
		}
	}
	var have []string
	for _, e := range evs.Items {
		have = append(have, e.Reason+": "+e.Message)
	}
	return fmt.Errorf("no event %s on %s/%s (have %q)", reason, ns, name, have)
}

// exportService creates a Service, the EndpointSlice its controller would
// write (no controller-manager runs) and a ServiceExport.
func (m *member) exportService(ctx context.Context, ns, name string, port, target int32, backends ...string) {
	m.t.Helper()
	m.exportServiceWith(ctx, ns, name, port, target, nil, backends...)
}

// exportServiceWith is exportService with the Service changed by mut first.
func (m *member) exportServiceWith(ctx context.Context, ns, name string, port, target int32, mut func(*corev1.Service), backends ...string) {
	m.t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: port, TargetPort: intstr.FromInt32(target)}},
	}}
	if mut != nil {
		mut(svc)
	}
	if _, err := m.cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		m.t.Fatal(err)
	}
	var eps []discoveryv1.Endpoint
	for _, b := range backends {
		eps = append(eps, discoveryv1.Endpoint{Addresses: []string{b}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-x1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(target)}},
		Endpoints:   eps,
	}
	if _, err := m.cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		m.t.Fatal(err)
	}
	if err := EnsureCRDs(ctx, m.kube.Config); err != nil {
		m.t.Fatal(err)
	}
	se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if _, err := m.mcs.MulticlusterV1beta1().ServiceExports(ns).Create(ctx, se, metav1.CreateOptions{}); err != nil {
		m.t.Fatal(err)
	}
}
