package syncer

import (
	"context"
	"fmt"
	stdmaps "maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
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
	if got := sis[0].Annotations[DerivedServiceAnnotation]; got != DerivedServiceName("shop", "cart") {
		t.Errorf("derived-service annotation %q", got)
	}
	var names []string
	port := map[string]int32{}
	for _, es := range ess {
		names = append(names, es.Name)
		port[es.Name] = *es.Ports[0].Port
		if es.Labels[mcsv1beta1.LabelServiceName] != "cart" || es.Labels[ManagedByLabel] != ManagedByValue ||
			es.Labels[discoveryv1.LabelServiceName] != DerivedServiceName("shop", "cart") {
			t.Errorf("slice %s labels %v: want the MCS service name and the derived Service's name", es.Name, es.Labels)
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

func TestDerivedServiceNameIsShortStableAndPerNamespace(t *testing.T) {
	a, b := DerivedServiceName("shop", "cart"), DerivedServiceName("shop", "cart")
	other := DerivedServiceName("shop2", "cart")
	if a != b || a == other || len(a) != len("derived-")+10 || !strings.HasPrefix(a, "derived-") || strings.ToLower(a) != a {
		t.Errorf("names %q %q %q: want derived-<10 lowercase chars>, stable, distinct per namespace", a, b, other)
	}
}

func TestDerivedServiceOnlyForClusterSetIPImportsWithPorts(t *testing.T) {
	port := []mcsv1beta1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, AppProtocol: ptr.To("h2c")}}
	for _, tc := range []struct {
		name  string
		typ   mcsv1beta1.ServiceImportType
		ports []mcsv1beta1.ServicePort
		want  bool
	}{
		{"ClusterSetIP gets a VIP", mcsv1beta1.ClusterSetIP, port, true},
		{"headless gets none", mcsv1beta1.Headless, port, false},
		{"no ports: a Service cannot express it", mcsv1beta1.ClusterSetIP, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			si := &mcsv1beta1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}, Spec: mcsv1beta1.ServiceImportSpec{Type: tc.typ, Ports: tc.ports}}
			svc := DerivedService(si)
			if (svc != nil) != tc.want {
				t.Fatalf("derived Service %v, want one: %v", svc, tc.want)
			}
			if svc == nil {
				return
			}
			if svc.Name != DerivedServiceName("shop", "cart") || svc.Namespace != "shop" || svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.Selector != nil {
				t.Errorf("derived Service %+v: want a selectorless ClusterIP Service", svc)
			}
			if svc.Labels[ManagedByLabel] != ManagedByValue || svc.Labels[mcsv1beta1.LabelServiceName] != "cart" {
				t.Errorf("labels %v", svc.Labels)
			}
			if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 80 || svc.Spec.Ports[0].Name != "http" || *svc.Spec.Ports[0].AppProtocol != "h2c" {
				t.Errorf("ports %+v", svc.Spec.Ports)
			}
		})
	}
}

func TestImportsAreWrittenIntoTheCluster(t *testing.T) {
	t.Parallel() // most of its time is a kube-apiserver starting
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
	if err := hasVIP(ctx, h.cs, h.mcs, "shop", "cart", nil); err != nil {
		t.Fatal(err)
	}
	// Applying the same state again changes nothing.
	si, _ = h.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "cart", metav1.GetOptions{})
	svc, _ := h.cs.CoreV1().Services("shop").Get(ctx, DerivedServiceName("shop", "cart"), metav1.GetOptions{})
	before, _ := h.cs.DiscoveryV1().EndpointSlices("shop").Get(ctx, "cart-west-v4", metav1.GetOptions{})
	apply(st)
	after, _ := h.cs.DiscoveryV1().EndpointSlices("shop").Get(ctx, "cart-west-v4", metav1.GetOptions{})
	if before.ResourceVersion != after.ResourceVersion {
		t.Error("an unchanged slice was rewritten")
	}
	si2, _ := h.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "cart", metav1.GetOptions{})
	svc2, _ := h.cs.CoreV1().Services("shop").Get(ctx, DerivedServiceName("shop", "cart"), metav1.GetOptions{})
	if si2.ResourceVersion != si.ResourceVersion || svc2.ResourceVersion != svc.ResourceVersion {
		t.Errorf("an unchanged ServiceImport or derived Service was rewritten (rv %s -> %s, %s -> %s)", si.ResourceVersion, si2.ResourceVersion, svc.ResourceVersion, svc2.ResourceVersion)
	}

	// The exporters turn the service headless: the VIP and the derived
	// Service go, the slices stay without kubernetes.io/service-name.
	headless := func(xs ...*fedmeshv1.ServiceExport) []*fedmeshv1.ServiceExport {
		for _, x := range xs {
			x.Type = fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS
		}
		return xs
	}
	apply(importState(headless(svcExport("east", "shop", 80, 8080, "10.1.0.1"), svcExport("west", "shop", 80, 8080, "10.2.0.1", "10.2.0.2"))...))
	if err := isHeadless(ctx, h.cs, h.mcs, "shop", "cart"); err != nil {
		t.Fatal(err)
	}
	// And back: a new VIP.
	apply(st)
	if err := hasVIP(ctx, h.cs, h.mcs, "shop", "cart", nil); err != nil {
		t.Fatal(err)
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
	if _, err := h.cs.CoreV1().Services("shop").Get(ctx, DerivedServiceName("shop", "cart"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("derived Service left behind: %v", err)
	}
}

// hasVIP checks the ClusterSetIP import ns/name: its derived Service exists,
// selectorless ClusterIP with an allocated IP and owned by the import; the
// import's spec.ips is that IP; its slices name the Service.
// With clusterset CIDRs, spec.ips must be the federation's ClusterSetIPs
// (one inside each CIDR) instead of the derived Service's ClusterIPs.
func hasVIP(ctx context.Context, cs kubernetes.Interface, mcs mcsclient.Interface, ns, name string, clusterset []netip.Prefix) error {
	si, err := mcs.MulticlusterV1beta1().ServiceImports(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	dn := DerivedServiceName(ns, name)
	svc, err := cs.CoreV1().Services(ns).Get(ctx, dn, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("derived Service: %w", err)
	}
	if svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.Selector != nil || len(svc.Spec.ClusterIPs) == 0 || net.ParseIP(svc.Spec.ClusterIPs[0]) == nil {
		return fmt.Errorf("derived Service spec %+v: want a selectorless ClusterIP Service with an IP", svc.Spec)
	}
	if len(svc.OwnerReferences) != 1 || svc.OwnerReferences[0].UID != si.UID || svc.OwnerReferences[0].Kind != "ServiceImport" {
		return fmt.Errorf("derived Service owners %+v, want the ServiceImport (uid %s)", svc.OwnerReferences, si.UID)
	}
	if clusterset != nil {
		if len(si.Spec.IPs) != len(clusterset) {
			return fmt.Errorf("ServiceImport ips %v, want one ClusterSetIP in each of %v", si.Spec.IPs, clusterset)
		}
		for i, p := range clusterset {
			if a, err := netip.ParseAddr(si.Spec.IPs[i]); err != nil || !p.Contains(a) {
				return fmt.Errorf("ServiceImport ip %q, want one inside the clusterset CIDR %s", si.Spec.IPs[i], p)
			}
		}
	} else if !slices.Equal(si.Spec.IPs, svc.Spec.ClusterIPs) {
		return fmt.Errorf("ServiceImport ips %v, want the derived Service's %v", si.Spec.IPs, svc.Spec.ClusterIPs)
	}
	if si.Annotations[DerivedServiceAnnotation] != dn {
		return fmt.Errorf("ServiceImport ips %v annotations %v, want the derived Service's %v and name %s", si.Spec.IPs, si.Annotations, svc.Spec.ClusterIPs, dn)
	}
	l, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + dn + "," + mcsv1beta1.LabelServiceName + "=" + name})
	if err != nil || len(l.Items) == 0 {
		return fmt.Errorf("slices with both service-name labels: %d (%v)", len(l.Items), err)
	}
	return nil
}

// isHeadless checks the headless import ns/name: no VIP, no derived
// Service, slices only with the MCS label.
func isHeadless(ctx context.Context, cs kubernetes.Interface, mcs mcsclient.Interface, ns, name string) error {
	si, err := mcs.MulticlusterV1beta1().ServiceImports(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if si.Spec.Type != mcsv1beta1.Headless || len(si.Spec.IPs) != 0 || si.Annotations[DerivedServiceAnnotation] != "" {
		return fmt.Errorf("ServiceImport type %s ips %v annotations %v: want headless without VIP", si.Spec.Type, si.Spec.IPs, si.Annotations)
	}
	if _, err := cs.CoreV1().Services(ns).Get(ctx, DerivedServiceName(ns, name), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		return fmt.Errorf("derived Service of a headless import: %v", err)
	}
	l, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: mcsv1beta1.LabelServiceName + "=" + name})
	if err != nil || len(l.Items) == 0 {
		return fmt.Errorf("slices: %d (%v)", len(l.Items), err)
	}
	for _, es := range l.Items {
		if v, ok := es.Labels[discoveryv1.LabelServiceName]; ok {
			return fmt.Errorf("slice %s of a headless import names Service %q", es.Name, v)
		}
	}
	return nil
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

// applied returns what the cluster holds once the desired imports of st are
// written: the ServiceImports with a UID, spec.ips and a Ready status, the
// derived Services with a VIP and their owner, and the slices.
func applied(st *ImportState) ClusterImports {
	sis, ess := DesiredImports("third", st, func(string) bool { return true })
	var have ClusterImports
	for i, si := range sis {
		si = si.DeepCopy()
		si.UID = types.UID(fmt.Sprintf("uid-%d", i))
		si.Status.Conditions = []metav1.Condition{importReady()}
		if svc := DerivedService(si); svc != nil {
			svc = withOwner(svc, si)
			svc.Spec.ClusterIPs = []string{fmt.Sprintf("10.96.0.%d", i+1)}
			si.Spec.IPs = svc.Spec.ClusterIPs
			have.Services = append(have.Services, svc)
		}
		have.Imports = append(have.Imports, si)
	}
	for _, es := range ess {
		have.Slices = append(have.Slices, es.DeepCopy())
	}
	return have
}

func TestPlanImportWritesTouchesOnlyWhatDiffers(t *testing.T) {
	two := func() *ImportState {
		return importState(svcExport("east", "shop", 80, 8080, "10.1.0.1"), svcExport("west", "shop", 80, 8080, "10.2.0.1"))
	}
	tests := []struct {
		name string
		have func() ClusterImports
		want *ImportState
		// counts of each kind of write
		imports, delImports, delServices, delSlices int
		slices                                      map[string]SliceOp
	}{
		{name: "an empty cluster gets the import and every slice", have: func() ClusterImports { return ClusterImports{} }, want: two(),
			imports: 1, slices: map[string]SliceOp{"cart-east-v4": SliceCreate, "cart-west-v4": SliceCreate}},
		{name: "a cluster that holds the desired state gets no write", have: func() ClusterImports { return applied(two()) }, want: two()},
		{name: "a changed backend updates its slice only", have: func() ClusterImports { return applied(two()) },
			want:   importState(svcExport("east", "shop", 80, 8080, "10.1.0.1"), svcExport("west", "shop", 80, 8080, "10.2.0.9")),
			slices: map[string]SliceOp{"cart-west-v4": SliceUpdate}},
		{name: "a slice of another address family is replaced", have: func() ClusterImports {
			h := applied(two())
			h.Slices[0].AddressType = discoveryv1.AddressTypeIPv6
			return h
		}, want: two(), slices: map[string]SliceOp{"cart-east-v4": SliceReplace}},
		{name: "a VIP missing from spec.ips rewrites the import", have: func() ClusterImports {
			h := applied(two())
			h.Imports[0].Spec.IPs = nil
			return h
		}, want: two(), imports: 1},
		{name: "a derived Service without its owner rewrites the import", have: func() ClusterImports {
			h := applied(two())
			h.Services[0].OwnerReferences = nil
			return h
		}, want: two(), imports: 1},
		{name: "a lost Ready condition rewrites the import", have: func() ClusterImports {
			h := applied(two())
			h.Imports[0].Status.Conditions = nil
			return h
		}, want: two(), imports: 1},
		{name: "an import no longer wanted goes with its Service and slices", have: func() ClusterImports { return applied(two()) }, want: NewImportState(),
			delImports: 1, delServices: 1, delSlices: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sis, ess := DesiredImports("third", tc.want, func(string) bool { return true })
			p := PlanImportWrites(tc.have(), sis, ess)
			if len(p.Imports) != tc.imports || len(p.DeleteImports) != tc.delImports || len(p.DeleteServices) != tc.delServices || len(p.DeleteSlices) != tc.delSlices {
				t.Errorf("imports %d, deleted imports %d, services %d, slices %d; want %d, %d, %d, %d",
					len(p.Imports), len(p.DeleteImports), len(p.DeleteServices), len(p.DeleteSlices), tc.imports, tc.delImports, tc.delServices, tc.delSlices)
			}
			got := map[string]SliceOp{}
			for _, sw := range p.Slices {
				got[sw.Want.Name] = sw.Op
			}
			if !stdmaps.Equal(got, tc.slices) {
				t.Errorf("slice writes %v, want %v", got, tc.slices)
			}
			if p.Empty() != (tc.imports+tc.delImports+tc.delServices+tc.delSlices+len(tc.slices) == 0) {
				t.Errorf("Empty() = %v", p.Empty())
			}
		})
	}
}
