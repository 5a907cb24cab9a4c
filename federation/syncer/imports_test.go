package syncer

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/fedmesh/fedmesh/federation/services"
	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func putEv(o any) *fedmeshv1.Event {
	ev := &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT}
	switch v := o.(type) {
	case *fedmeshv1.Cluster:
		ev.Object = &fedmeshv1.Event_Cluster{Cluster: v}
	case *fedmeshv1.ServiceImport:
		ev.Object = &fedmeshv1.Event_ServiceImport{ServiceImport: v}
	case *fedmeshv1.ServiceExport:
		ev.Object = &fedmeshv1.Event_ServiceExport{ServiceExport: v}
	}
	return ev
}

func delEv(o any) *fedmeshv1.Event {
	ev := putEv(o)
	ev.Type = fedmeshv1.EventType_EVENT_TYPE_DELETE
	return ev
}

// importState builds the state a watch of two exporting clusters gives.
func importState(exports ...*fedmeshv1.ServiceExport) *ImportState {
	st := NewImportState()
	for _, a := range services.AggregateAll(exports) {
		st.Apply("third", putEv(a.Import))
	}
	for _, x := range exports {
		st.Apply("third", putEv(x))
	}
	return st
}

func svcExport(cluster, ns string, port, target uint32, backends ...string) *fedmeshv1.ServiceExport {
	return &fedmeshv1.ServiceExport{
		Cluster: cluster, Namespace: ns, Name: "cart", Type: fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP,
		Ports:    []*fedmeshv1.ServicePort{{Name: "http", Port: port, TargetPort: target, Protocol: fedmeshv1.Protocol_PROTOCOL_TCP}},
		Backends: backends,
		Meta:     &fedmeshv1.ObjectMeta{CreateRevision: uint64(len(cluster))},
	}
}

func TestImportStateFollowsWatchEvents(t *testing.T) {
	st := NewImportState()
	self := &fedmeshv1.Cluster{Name: "third", Imports: &fedmeshv1.NamespaceScope{ExcludeNames: []string{"secret"}}}
	st.Apply("third", putEv(self))
	st.Apply("third", putEv(&fedmeshv1.Cluster{Name: "other"}))
	x := svcExport("east", "shop", 80, 8080, "10.1.0.1")
	st.Apply("third", putEv(x))
	st.Apply("third", putEv(services.Aggregate([]*fedmeshv1.ServiceExport{x}).Import))
	if st.Self != self || len(st.Imports) != 1 || len(st.Exports) != 1 {
		t.Fatalf("state %+v", st)
	}
	st.Apply("third", delEv(x))
	st.Apply("third", delEv(&fedmeshv1.ServiceImport{Namespace: "shop", Name: "cart"}))
	if len(st.Imports) != 0 || len(st.Exports) != 0 {
		t.Fatalf("deletes not applied: %+v", st)
	}
}

func TestDesiredImportsScopeAndNamespaceSameness(t *testing.T) {
	st := importState(
		svcExport("east", "shop", 80, 8080, "10.1.0.1", "fd00:1::1"),
		svcExport("west", "shop", 80, 9090, "10.2.0.1"),
		svcExport("east", "secret", 80, 80, "10.1.0.9"),
		svcExport("east", "absent", 80, 80, "10.1.0.8"),
	)
	st.Self = &fedmeshv1.Cluster{Name: "third", Imports: &fedmeshv1.NamespaceScope{ExcludeNames: []string{"secret"}}}
	exists := func(ns string) bool { return ns != "absent" }
	sis, ess := DesiredImports("third", st, exists)
	if len(sis) != 1 || sis[0].Namespace != "shop" {
		t.Fatalf("imports %v: want only shop/cart (secret is out of scope, absent has no namespace)", sis)
	}
	var names []string
	port := map[string]int32{}
	for _, es := range ess {
		names = append(names, es.Name)
		port[es.Name] = *es.Ports[0].Port
		if es.Labels[mcsv1beta1.LabelServiceName] != "cart" || es.Labels[ManagedByLabel] != ManagedByValue {
			t.Errorf("slice %s labels %v", es.Name, es.Labels)
		}
	}
	slices.Sort(names)
	if want := []string{"cart-east-v4", "cart-east-v6", "cart-west-v4"}; !slices.Equal(names, want) {
		t.Fatalf("slices %v, want %v", names, want)
	}
	if port["cart-east-v4"] != 8080 || port["cart-west-v4"] != 9090 {
		t.Errorf("each source cluster's slice carries its own target port: %v", port)
	}
}

func TestImportsAreWrittenIntoTheCluster(t *testing.T) {
	// The writer alone against a real kube-apiserver; the import path from
	// the control plane is TestThirdClusterImportsOneServiceFromTwoExporters.
	kube := kubetest.Start(t, kubetest.Options{})
	h := struct {
		kube *kubetest.Server
		cs   kubernetes.Interface
		mcs  mcsclient.Interface
	}{kube, kube.Clientset(), mcsclient.NewForConfigOrDie(kube.Config)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := EnsureCRDs(ctx, h.kube.Config); err != nil {
		t.Fatal(err)
	}
	if err := h.kube.CreateNamespace(ctx, "shop", nil); err != nil {
		t.Fatal(err)
	}
	w := &ImportWriter{Kube: h.cs, MCS: h.mcs}
	exists := func(string) bool { return true }
	st := importState(svcExport("east", "shop", 80, 8080, "10.1.0.1"), svcExport("west", "shop", 80, 8080, "10.2.0.1", "10.2.0.2"))

	apply := func(st *ImportState) {
		t.Helper()
		sis, ess := DesiredImports("third", st, exists)
		if err := w.Apply(ctx, sis, ess); err != nil {
			t.Fatal(err)
		}
	}
	apply(st)
	si, err := h.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "cart", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if si.Spec.Type != mcsv1beta1.ClusterSetIP || len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Port != 80 {
		t.Errorf("ServiceImport spec %+v", si.Spec)
	}
	if len(si.Status.Clusters) != 2 || apimeta.FindStatusCondition(si.Status.Conditions, "Ready") == nil {
		t.Errorf("ServiceImport status %+v", si.Status)
	}
	if err := slicesAre(ctx, h.cs, map[string][]string{"cart-east-v4": {"10.1.0.1"}, "cart-west-v4": {"10.2.0.1", "10.2.0.2"}}); err != nil {
		t.Fatal(err)
	}
	// Applying the same state again changes nothing.
	before, _ := h.cs.DiscoveryV1().EndpointSlices("shop").Get(ctx, "cart-west-v4", metav1.GetOptions{})
	apply(st)
	after, _ := h.cs.DiscoveryV1().EndpointSlices("shop").Get(ctx, "cart-west-v4", metav1.GetOptions{})
	if before.ResourceVersion != after.ResourceVersion {
		t.Error("an unchanged slice was rewritten")
	}

	// West stops exporting: its slice goes, the import stays.
	st = importState(svcExport("east", "shop", 80, 8080, "10.1.0.1"))
	apply(st)
	if err := slicesAre(ctx, h.cs, map[string][]string{"cart-east-v4": {"10.1.0.1"}}); err != nil {
		t.Fatal(err)
	}
	// Nobody exports: everything the syncer wrote goes; nothing else does.
	other := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "not-ours"}, AddressType: discoveryv1.AddressTypeIPv4}
	if _, err := h.cs.DiscoveryV1().EndpointSlices("shop").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	apply(NewImportState())
	if _, err := h.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "cart", metav1.GetOptions{}); err == nil {
		t.Error("ServiceImport left behind")
	}
	all, _ := h.cs.DiscoveryV1().EndpointSlices("shop").List(ctx, metav1.ListOptions{})
	if len(all.Items) != 1 || all.Items[0].Name != "not-ours" {
		t.Errorf("slices left: %d", len(all.Items))
	}
}

func slicesAre(ctx context.Context, cs kubernetes.Interface, want map[string][]string) error {
	l, err := cs.DiscoveryV1().EndpointSlices("shop").List(ctx, metav1.ListOptions{LabelSelector: mcsv1beta1.LabelServiceName + "=cart"})
	if err != nil {
		return err
	}
	got := map[string][]string{}
	for _, es := range l.Items {
		for _, e := range es.Endpoints {
			got[es.Name] = append(got[es.Name], e.Addresses...)
		}
	}
	if len(got) != len(want) {
		return fmt.Errorf("slices %v, want %v", got, want)
	}
	for n, w := range want {
		if !slices.Equal(got[n], w) {
			return fmt.Errorf("slice %s has %v, want %v", n, got[n], w)
		}
	}
	return nil
}
