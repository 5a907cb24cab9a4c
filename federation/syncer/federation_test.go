package syncer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/controlplane/server"
	"github.com/fedmesh/fedmesh/federation/services"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Scenarios of issue 9 end to end: pods written to a real kube-apiserver
// reach the real replicated control plane through the syncer.

func TestSyncerPublishesPodsWithIdentitiesAndFollowsChanges(t *testing.T) {
	t.Parallel() // most of its time is a kube-apiserver starting
	env := startFed(t)
	east := env.join("east", "10.1.0.0/16", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := east.kube.CreateNamespace(ctx, "shop", map[string]string{"team": "a"}); err != nil {
		t.Fatal(err)
	}
	withPort := func(p *corev1.Pod) {
		p.Spec.Containers = []corev1.Container{{Name: "c", Image: "x", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}
	}
	east.pod(ctx, "shop", "cart", map[string]string{"app": "cart", "pod-template-hash": "abc"}, withPort, "10.1.0.5")
	east.pod(ctx, "shop", "cart-2", map[string]string{"app": "cart", "pod-template-hash": "def"}, withPort, "10.1.0.6")
	east.pod(ctx, "shop", "db", map[string]string{"app": "db"}, nil, "10.1.0.7")
	// Bad input: each is skipped, none blocks the good pods.
	east.pod(ctx, "shop", "no-ip", map[string]string{"app": "x"}, nil)
	east.pod(ctx, "shop", "host", map[string]string{"app": "x"}, func(p *corev1.Pod) { p.Spec.HostNetwork = true }, "192.168.7.7")
	east.pod(ctx, "shop", "outside", map[string]string{"app": "x"}, nil, "172.16.0.9")

	east.startSyncer()
	eps := env.endpointsAre("east", "shop/cart", "shop/cart-2", "shop/db")
	cart, cart2, db := eps["shop/cart"], eps["shop/cart-2"], eps["shop/db"]
	if cart.GetIdentity() < 256 || cart.GetIdentity() != cart2.GetIdentity() || cart.GetIdentity() == db.GetIdentity() {
		t.Errorf("identities cart=%d cart-2=%d db=%d: want one identity (>= 256) for equal labels, another for db",
			cart.GetIdentity(), cart2.GetIdentity(), db.GetIdentity())
	}
	if got := cart.GetLabels(); len(got) != 2 || got["app"] != "cart" || got["pod-template-hash"] != "abc" {
		t.Errorf("labels %v: every pod label must reach the store (the identity ignores pod-template-hash)", got)
	}
	if cart.GetNamespaceLabels()["team"] != "a" || cart.GetNode() != "node-1" || len(cart.GetNamedPorts()) != 1 || !slices.Equal(cart.GetIps(), []string{"10.1.0.5"}) {
		t.Errorf("endpoint in the store %v", cart)
	}
	for name, reason := range map[string]string{"no-ip": "NoPodIP", "host": "HostNetwork", "outside": "Invalid"} {
		eventually(t, "event for "+name, func() error { return east.eventFor(ctx, "shop", name, "FedmeshSkipped"+reason) })
		if v := counterValue(t, east.reg, "fedmesh_syncer_skipped_total", "endpoint", reason); v != 1 {
			t.Errorf("skipped metric for %s = %v, want 1", reason, v)
		}
	}

	t.Run("label change changes the identity", func(t *testing.T) {
		p, err := east.cs.CoreV1().Pods("shop").Get(ctx, "cart", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Labels["app"] = "checkout"
		if _, err := east.cs.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "new labels and identity in the store", func() error {
			eps, err := env.endpoints("east")
			if err != nil {
				return err
			}
			c, c2 := eps["shop/cart"], eps["shop/cart-2"]
			if c.GetLabels()["app"] != "checkout" {
				return fmt.Errorf("cart in the store %v", c)
			}
			if c.GetIdentity() == cart.GetIdentity() || c.GetIdentity() == db.GetIdentity() || c.GetIdentity() < 256 {
				return fmt.Errorf("cart's identity %d, want a new one (was %d; db has %d)", c.GetIdentity(), cart.GetIdentity(), db.GetIdentity())
			}
			if c2.GetIdentity() != cart2.GetIdentity() {
				return fmt.Errorf("cart-2's identity moved from %d to %d", cart2.GetIdentity(), c2.GetIdentity())
			}
			return nil
		})
	})
	t.Run("namespace label change is published", func(t *testing.T) {
		ns, err := east.cs.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ns.Labels["team"] = "b"
		if _, err := east.cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "namespace labels in the store", func() error {
			eps, err := env.endpoints("east")
			if err != nil {
				return err
			}
			for _, k := range []string{"shop/cart", "shop/cart-2", "shop/db"} {
				if eps[k].GetNamespaceLabels()["team"] != "b" {
					return fmt.Errorf("%s in the store %v", k, eps[k])
				}
			}
			return nil
		})
	})
	t.Run("NetworkPolicy is stored as the cluster's policy", func(t *testing.T) {
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "deny-all"},
			Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
		}
		if _, err := east.cs.NetworkingV1().NetworkPolicies("shop").Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		key := &fedmeshv1.PolicyKey{Cluster: "east", Namespace: "shop", Name: "deny-all"}
		get := func() (*fedmeshv1.Policy, error) {
			r, err := fedmeshv1.NewPolicyServiceClient(env.conn()).GetPolicy(ctx, &fedmeshv1.GetPolicyRequest{Key: key})
			return r.GetPolicy(), err
		}
		eventually(t, "policy in the store", func() error {
			p, err := get()
			if err == nil && p.GetKind() != fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES {
				return fmt.Errorf("stored as %v", p.GetKind())
			}
			return err
		})
		if err := east.cs.NetworkingV1().NetworkPolicies("shop").Delete(ctx, "deny-all", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "policy gone from the store", func() error {
			if _, err := get(); status.Code(err) != codes.NotFound {
				return fmt.Errorf("get: %v, want NotFound", err)
			}
			return nil
		})
	})
	t.Run("ServiceExport is invalid until its Service exists, then stored", func(t *testing.T) {
		if err := EnsureCRDs(ctx, east.kube.Config); err != nil {
			t.Fatal(err)
		}
		se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "pay"}}
		if _, err := east.mcs.MulticlusterV1beta1().ServiceExports("shop").Create(ctx, se, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "Valid=False NoService", func() error {
			return exportCondition(ctx, east.mcs, "shop", "pay", services.CondValid, metav1.ConditionFalse, "NoService")
		})
		if err := east.mcs.MulticlusterV1beta1().ServiceExports("shop").Delete(ctx, "pay", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		east.exportService(ctx, "shop", "cart", 80, 8080, "10.1.0.5")
		eventually(t, "export in the store with backends", func() error {
			r, err := fedmeshv1.NewMultiClusterServiceClient(env.conn()).ListServiceExports(ctx, &fedmeshv1.ListServiceExportsRequest{Cluster: "east"})
			if err != nil {
				return err
			}
			for _, x := range r.GetExports() {
				if x.GetName() == "cart" && slices.Equal(x.GetBackends(), []string{"10.1.0.5"}) && x.GetPorts()[0].GetTargetPort() == 8080 {
					return nil
				}
			}
			return fmt.Errorf("exports %v", r.GetExports())
		})
		eventually(t, "Valid=True, Ready=True", func() error {
			return errors.Join(
				exportCondition(ctx, east.mcs, "shop", "cart", services.CondValid, metav1.ConditionTrue, "Valid"),
				exportCondition(ctx, east.mcs, "shop", "cart", services.CondReady, metav1.ConditionTrue, "Exported"))
		})
	})
	t.Run("pod delete removes the endpoint", func(t *testing.T) {
		east.deletePod(ctx, "shop", "cart")
		env.endpointsAre("east", "shop/cart-2", "shop/db")
	})
}

func TestRestartedSyncerLeavesNoGhostInTheStore(t *testing.T) {
	t.Parallel() // most of its time is a kube-apiserver starting
	env := startFed(t)
	east := env.join("east", "10.1.0.0/16", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := east.kube.CreateNamespace(ctx, "web", nil); err != nil {
		t.Fatal(err)
	}
	east.pod(ctx, "web", "a", map[string]string{"app": "a"}, nil, "10.1.0.1")
	east.pod(ctx, "web", "b", map[string]string{"app": "b"}, nil, "10.1.0.2")
	stop := east.startSyncer()
	env.endpointsAre("east", "web/a", "web/b")
	c, err := env.cluster("east")
	if err != nil {
		t.Fatal(err)
	}
	gen1 := c.GetStatus().GetResyncGeneration()
	stop()

	// While the syncer is down, b goes away and c comes; b's address is
	// reused by c, as Kubernetes may do.
	east.deletePod(ctx, "web", "b")
	east.pod(ctx, "web", "c", map[string]string{"app": "c"}, nil, "10.1.0.2")
	if eps, _ := env.endpoints("east"); len(eps) != 2 {
		t.Fatalf("store changed while the syncer was down: %v", keysOf(eps))
	}
	east.startSyncer()
	eps := env.endpointsAre("east", "web/a", "web/c")
	if got := eps["web/c"].GetIps(); !slices.Equal(got, []string{"10.1.0.2"}) {
		t.Errorf("web/c has %v, want the reused address", got)
	}
	c, err = env.cluster("east")
	if err != nil {
		t.Fatal(err)
	}
	if g := c.GetStatus().GetResyncGeneration(); g <= gen1 {
		t.Errorf("resync generation %d after the restart, want above %d", g, gen1)
	}
}

// A write that fails — refused, or committed with its answer lost — is
// followed by a full resync: the pod created meanwhile reaches the store
// and the cluster's resync generation moves on.
func TestFailedWriteIsFollowedByFullResync(t *testing.T) {
	t.Parallel() // most of its time is a kube-apiserver starting
	env := startFed(t)
	east := env.join("east", "10.1.0.0/16", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := east.kube.CreateNamespace(ctx, "web", nil); err != nil {
		t.Fatal(err)
	}
	east.pod(ctx, "web", "a", map[string]string{"app": "a"}, nil, "10.1.0.1")
	east.startSyncer()
	want := []string{"web/a"}
	env.endpointsAre("east", want...)

	upsert := fedmeshv1.EndpointService_UpsertEndpoints_FullMethodName
	for i, c := range []struct {
		name string
		rule inproc.Rule
	}{
		{"every write refused until the control plane answers again", inproc.Rule{Method: upsert, Code: codes.Unavailable}},
		{"a write committed, its answer lost", inproc.Rule{Method: upsert, Code: codes.DeadlineExceeded, LoseAnswer: true, Times: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl, err := env.cluster("east")
			if err != nil {
				t.Fatal(err)
			}
			gen := cl.GetStatus().GetResyncGeneration()
			errs := counterValue(t, east.reg, "fedmesh_syncer_send_errors_total")
			heal := east.faults.Inject(c.rule)
			pod := fmt.Sprintf("p%d", i)
			east.pod(ctx, "web", pod, map[string]string{"app": pod}, nil, fmt.Sprintf("10.1.0.%d", 10+i))
			eventually(t, "a failed write", func() error {
				if v := counterValue(t, east.reg, "fedmesh_syncer_send_errors_total"); v <= errs {
					return fmt.Errorf("send errors %v", v)
				}
				return nil
			})
			heal()
			want = append(want, "web/"+pod)
			env.endpointsAre("east", want...)
			eventually(t, "a new resync generation", func() error {
				cl, err := env.cluster("east")
				if err != nil {
					return err
				}
				if g := cl.GetStatus().GetResyncGeneration(); g <= gen {
					return fmt.Errorf("generation %d, was %d before the failure", g, gen)
				}
				return nil
			})
		})
	}
}

func TestExportScopeKeepsExcludedNamespacesOut(t *testing.T) {
	t.Parallel() // most of its time is a kube-apiserver starting
	env := startFed(t)
	east := env.join("east", "10.1.0.0/16", func(c *fedmeshv1.Cluster) {
		c.Exports = &fedmeshv1.NamespaceScope{ExcludeNames: []string{"private"}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for _, ns := range []string{"private", "public"} {
		if err := east.kube.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	east.pod(ctx, "private", "a", map[string]string{"app": "a"}, nil, "10.1.0.1")
	east.pod(ctx, "public", "b", map[string]string{"app": "b"}, nil, "10.1.0.2")
	east.startSyncer()
	env.endpointsAre("east", "public/b")
	// A later change in the excluded namespace is not sent either.
	east.pod(ctx, "private", "c", map[string]string{"app": "c"}, nil, "10.1.0.3")
	east.pod(ctx, "public", "d", map[string]string{"app": "d"}, nil, "10.1.0.4")
	env.endpointsAre("east", "public/b", "public/d")
}

// Two clusters export shop/cart; a third cluster's syncer writes one
// ServiceImport with both clusters' backends. When one exporter's ports
// stop matching, its ServiceExport says Conflict.
func TestThirdClusterImportsOneServiceFromTwoExporters(t *testing.T) {
	t.Parallel() // most of its time is a kube-apiserver starting
	env := startFed(t)
	east := env.join("east", "10.1.0.0/16", nil)
	west := env.join("west", "10.2.0.0/16", nil)
	third := env.join("third", "10.3.0.0/16", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	for _, m := range []*member{east, west, third} {
		if err := m.kube.CreateNamespace(ctx, "shop", nil); err != nil {
			t.Fatal(err)
		}
	}
	east.exportService(ctx, "shop", "cart", 80, 8080, "10.1.0.5")
	for _, m := range []*member{east, west, third} {
		m.startSyncer()
	}
	// West exports once east's export is stored: east is the older one.
	eventually(t, "east's export stored", func() error {
		r, err := fedmeshv1.NewMultiClusterServiceClient(env.conn()).ListServiceExports(ctx, &fedmeshv1.ListServiceExportsRequest{Cluster: "east"})
		if err != nil || len(r.GetExports()) != 1 {
			return fmt.Errorf("exports %v, %v", r.GetExports(), err)
		}
		return nil
	})
	west.exportService(ctx, "shop", "cart", 80, 9090, "10.2.0.7", "10.2.0.8")

	eventually(t, "one ServiceImport in the third cluster with both backends", func() error {
		si, err := third.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "cart", metav1.GetOptions{})
		if err != nil {
			return err
		}
		var clusters []string
		for _, c := range si.Status.Clusters {
			clusters = append(clusters, c.Cluster)
		}
		slices.Sort(clusters)
		if !slices.Equal(clusters, []string{"east", "west"}) || len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Port != 80 {
			return fmt.Errorf("ServiceImport spec %+v, clusters %v", si.Spec, clusters)
		}
		if apimeta.FindStatusCondition(si.Status.Conditions, "Ready") == nil {
			return errors.New("no Ready condition")
		}
		return slicesAre(ctx, third.cs, map[string][]string{"cart-east-v4": {"10.1.0.5"}, "cart-west-v4": {"10.2.0.7", "10.2.0.8"}})
	})
	if l, err := third.mcs.MulticlusterV1beta1().ServiceImports(metav1.NamespaceAll).List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) != 1 {
		t.Errorf("ServiceImports in the third cluster: %v (%v), want exactly one", l, err)
	}
	// Each slice carries its source cluster's target port.
	for name, want := range map[string]int32{"cart-east-v4": 8080, "cart-west-v4": 9090} {
		es, err := third.cs.DiscoveryV1().EndpointSlices("shop").Get(ctx, name, metav1.GetOptions{})
		if err != nil || len(es.Ports) != 1 || *es.Ports[0].Port != want {
			t.Errorf("slice %s ports %v (%v), want target port %d", name, es.Ports, err, want)
		}
	}
	// The ClusterSetIP import has the federation's ClusterSetIPs in
	// spec.ips (one per family, the same in every cluster), and a derived
	// Service with slices naming it for kube-proxy.
	eventually(t, "the third cluster's import has a VIP", func() error {
		return hasVIP(ctx, third.cs, third.mcs, "shop", "cart", server.DefaultClustersetCIDRs)
	})

	t.Run("headless export: the import has no VIP", func(t *testing.T) {
		east.exportServiceWith(ctx, "shop", "db", 5432, 5432, func(s *corev1.Service) { s.Spec.ClusterIP = corev1.ClusterIPNone }, "10.1.0.9")
		eventually(t, "headless import in the third cluster", func() error { return isHeadless(ctx, third.cs, third.mcs, "shop", "db") })
	})

	t.Run("mismatched ports: Conflict on the exports, the oldest export's ports win", func(t *testing.T) {
		svc, err := west.cs.CoreV1().Services("shop").Get(ctx, "cart", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Spec.Ports[0].Port = 8443
		if _, err := west.cs.CoreV1().Services("shop").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// KEP-1645: the conflict is reported on every export of the
		// service, in each exporting cluster.
		for _, m := range []*member{west, east} {
			eventually(t, m.name+": Conflict=True PortConflict", func() error {
				if err := exportCondition(ctx, m.mcs, "shop", "cart", services.CondConflict, metav1.ConditionTrue, services.ReasonPortConflict); err != nil {
					return err
				}
				got, _ := m.mcs.MulticlusterV1beta1().ServiceExports("shop").Get(ctx, "cart", metav1.GetOptions{})
				if apimeta.FindStatusCondition(got.Status.Conditions, services.CondConflict).Message == "" {
					return errors.New("no message")
				}
				return nil
			})
		}
		eventually(t, "the third cluster's import keeps port 80", func() error {
			si, err := third.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "cart", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Port != 80 {
				return fmt.Errorf("ports %v", si.Spec.Ports)
			}
			return nil
		})
	})

	t.Run("last export removed: import, derived Service and slices go", func(t *testing.T) {
		for _, m := range []*member{east, west} {
			if err := m.mcs.MulticlusterV1beta1().ServiceExports("shop").Delete(ctx, "cart", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "nothing of shop/cart left in the third cluster", func() error {
			if _, err := third.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "cart", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("ServiceImport: %v", err)
			}
			if _, err := third.cs.CoreV1().Services("shop").Get(ctx, DerivedServiceName("shop", "cart"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("derived Service: %v", err)
			}
			return slicesAre(ctx, third.cs, map[string][]string{})
		})
	})
}
