package syncer

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	stdmaps "maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/services"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Labels on what the syncer writes into the cluster.
const (
	// ManagedByLabel marks ServiceImports and EndpointSlices the syncer
	// owns; it deletes those it no longer wants and touches no others.
	ManagedByLabel = discoveryv1.LabelManagedBy
	// ManagedByValue is the syncer's value of ManagedByLabel.
	ManagedByValue = "fedmesh-syncer.fedmesh.io"
	// DerivedServiceAnnotation names, on a ClusterSetIP ServiceImport, the
	// derived Service that holds its VIP; the key is the one the mcs-api
	// reference controller and other MCS implementations use.
	DerivedServiceAnnotation = "multicluster.kubernetes.io/derived-service"
)

// DerivedServiceName is the name of the derived Service of the import
// namespace/name: "derived-" and 10 characters of a hash of the name, as the
// mcs-api reference controller names it, so the name fits any Service name
// limit and tools that know that scheme find the Service.
func DerivedServiceName(namespace, name string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	return "derived-" + strings.ToLower(base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:]))[:10]
}

// DerivedService is the Service that gives a ClusterSetIP import its VIP
// (KEP-1645): type ClusterIP, no selector (the syncer writes its
// EndpointSlices), the import's ports; the apiserver allocates its
// ClusterIPs. It returns nil for a headless import, and for one without
// ports, which a Service cannot express. The owner reference to the
// ServiceImport is added by the writer, which knows its UID. Pure.
func DerivedService(si *mcsv1beta1.ServiceImport) *corev1.Service {
	if si.Spec.Type != mcsv1beta1.ClusterSetIP || len(si.Spec.Ports) == 0 {
		return nil
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: si.Namespace,
			Name:      DerivedServiceName(si.Namespace, si.Name),
			Labels: map[string]string{
				ManagedByLabel:              ManagedByValue,
				mcsv1beta1.LabelServiceName: si.Name,
			},
		},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			// Both families where the cluster has both: backends of either
			// family are then reachable through a VIP of their own family.
			IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicyPreferDualStack),
		},
	}
	for _, p := range si.Spec.Ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, AppProtocol: p.AppProtocol, Port: p.Port})
	}
	return svc
}

type exportKey struct {
	cluster   string
	namespace string
	name      string
}

// ImportState is what the syncer knows of the federation's services: its
// own cluster's registration (import scope), every import and every export
// (exports carry each source cluster's target ports and, for this cluster's
// own exports, the Conflict condition). The import watcher owns it.
type ImportState struct {
	Self    *fedmeshv1.Cluster
	Imports map[services.Key]*fedmeshv1.ServiceImport
	Exports map[exportKey]*fedmeshv1.ServiceExport
}

// NewImportState returns an empty state.
func NewImportState() *ImportState {
	return &ImportState{Imports: map[services.Key]*fedmeshv1.ServiceImport{}, Exports: map[exportKey]*fedmeshv1.ServiceExport{}}
}

// Apply applies one watch event for cluster self. It ignores other kinds
// and other clusters' registrations.
func (st *ImportState) Apply(self string, ev *fedmeshv1.Event) {
	put := ev.GetType() == fedmeshv1.EventType_EVENT_TYPE_PUT
	switch o := ev.GetObject().(type) {
	case *fedmeshv1.Event_Cluster:
		if o.Cluster.GetName() == self {
			if put {
				st.Self = o.Cluster
			} else {
				st.Self = nil
			}
		}
	case *fedmeshv1.Event_ServiceImport:
		k := services.Key{Namespace: o.ServiceImport.GetNamespace(), Name: o.ServiceImport.GetName()}
		if put {
			st.Imports[k] = o.ServiceImport
		} else {
			delete(st.Imports, k)
		}
	case *fedmeshv1.Event_ServiceExport:
		x := o.ServiceExport
		k := exportKey{x.GetCluster(), x.GetNamespace(), x.GetName()}
		if put {
			st.Exports[k] = x
		} else {
			delete(st.Exports, k)
		}
	}
}

// DesiredImports returns the MCS objects cluster self should hold (KEP-1645):
// per import in its import scope, a ServiceImport, and per source cluster
// and address family an EndpointSlice labelled with the service name and the
// source cluster. A ClusterSetIP import's ServiceImport names its derived
// Service (DerivedService; the writer creates it and copies its ClusterIPs
// into spec.ips) and its slices also carry kubernetes.io/service-name of
// that Service, so kube-proxy programs the VIP to the remote backends;
// headless imports have neither. Namespaces the cluster lacks get nothing ("namespace
// sameness": an import lands only where the namespace exists). Pure.
func DesiredImports(self string, st *ImportState, nsExists func(string) bool) ([]*mcsv1beta1.ServiceImport, []*discoveryv1.EndpointSlice) {
	keys := make([]services.Key, 0, len(st.Imports))
	for k := range st.Imports {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b services.Key) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	var sis []*mcsv1beta1.ServiceImport
	var ess []*discoveryv1.EndpointSlice
	for _, k := range keys {
		imp := st.Imports[k]
		if !model.InScope(st.Self.GetImports(), k.Namespace) || !nsExists(k.Namespace) {
			continue
		}
		si := &mcsv1beta1.ServiceImport{
			ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name, Labels: map[string]string{ManagedByLabel: ManagedByValue}},
			Spec:       mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.ClusterSetIP, Ports: []mcsv1beta1.ServicePort{}},
		}
		derived := ""
		if imp.GetType() == fedmeshv1.ServiceType_SERVICE_TYPE_HEADLESS {
			si.Spec.Type = mcsv1beta1.Headless
		}
		for _, p := range imp.GetPorts() {
			sp := mcsv1beta1.ServicePort{Name: p.GetName(), Protocol: protocolToK8s(p.GetProtocol()), Port: int32(p.GetPort())}
			if p.GetAppProtocol() != "" {
				sp.AppProtocol = ptr.To(p.GetAppProtocol())
			}
			si.Spec.Ports = append(si.Spec.Ports, sp)
		}
		if svc := DerivedService(si); svc != nil {
			derived = svc.Name
			si.Annotations = map[string]string{DerivedServiceAnnotation: derived}
		}
		for _, c := range imp.GetClusters() {
			si.Status.Clusters = append(si.Status.Clusters, mcsv1beta1.ClusterStatus{Cluster: c.GetCluster()})
			ess = append(ess, importSlices(k, imp, c, st.Exports[exportKey{c.GetCluster(), k.Namespace, k.Name}], derived)...)
		}
		sis = append(sis, si)
	}
	return sis, ess
}

// importSlices builds the EndpointSlices of one source cluster's backends.
// Ports are the source cluster's target ports when its export is known
// (clusters may map a service port to different container ports), else the
// import's. derived, when set, is the derived Service the slices back.
func importSlices(k services.Key, imp *fedmeshv1.ServiceImport, c *fedmeshv1.ClusterBackends, x *fedmeshv1.ServiceExport, derived string) []*discoveryv1.EndpointSlice {
	target := map[string]uint32{}
	for _, p := range x.GetPorts() {
		target[p.GetName()] = p.GetTargetPort()
	}
	var ports []discoveryv1.EndpointPort
	for _, p := range imp.GetPorts() {
		n := p.GetTargetPort()
		if t, ok := target[p.GetName()]; ok && x != nil {
			n = t
		}
		if n == 0 {
			n = p.GetPort()
		}
		ep := discoveryv1.EndpointPort{Name: ptr.To(p.GetName()), Protocol: ptr.To(protocolToK8s(p.GetProtocol())), Port: ptr.To(int32(n))}
		if p.GetAppProtocol() != "" {
			ep.AppProtocol = ptr.To(p.GetAppProtocol())
		}
		ports = append(ports, ep)
	}
	byFam := map[discoveryv1.AddressType][]discoveryv1.Endpoint{}
	for _, a := range c.GetAddresses() {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			continue
		}
		fam := discoveryv1.AddressTypeIPv4
		if ip.Is6() {
			fam = discoveryv1.AddressTypeIPv6
		}
		byFam[fam] = append(byFam[fam], discoveryv1.Endpoint{Addresses: []string{ip.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	var out []*discoveryv1.EndpointSlice
	for _, fam := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
		eps := byFam[fam]
		if len(eps) == 0 {
			continue
		}
		suffix := "v4"
		if fam == discoveryv1.AddressTypeIPv6 {
			suffix = "v6"
		}
		labels := map[string]string{
			mcsv1beta1.LabelServiceName:   k.Name,
			mcsv1beta1.LabelSourceCluster: c.GetCluster(),
			ManagedByLabel:                ManagedByValue,
		}
		if derived != "" {
			labels[discoveryv1.LabelServiceName] = derived
		}
		out = append(out, &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: k.Namespace,
				Name:      fmt.Sprintf("%s-%s-%s", k.Name, c.GetCluster(), suffix),
				Labels:    labels,
			},
			AddressType: fam,
			Endpoints:   eps,
			Ports:       ports,
		})
	}
	return out
}

// ExportConflicts returns the Conflict condition of each of self's exports:
// the control plane's when it set one, else computed with the same rules
// (federation/services) from every export the syncer sees.
func ExportConflicts(self string, st *ImportState) map[services.Key]*fedmeshv1.ServiceCondition {
	byKey := map[services.Key][]*fedmeshv1.ServiceExport{}
	for k, x := range st.Exports {
		sk := services.Key{Namespace: k.namespace, Name: k.name}
		byKey[sk] = append(byKey[sk], x)
	}
	out := map[services.Key]*fedmeshv1.ServiceCondition{}
	for sk, xs := range byKey {
		mine := st.Exports[exportKey{self, sk.Namespace, sk.Name}]
		if mine == nil {
			continue
		}
		for _, c := range mine.GetConditions() {
			if c.GetType() == services.CondConflict {
				out[sk] = c
			}
		}
		if out[sk] == nil {
			out[sk] = services.Aggregate(xs).Conflicts[self]
		}
	}
	return out
}

func protocolToK8s(p fedmeshv1.Protocol) corev1.Protocol {
	switch p {
	case fedmeshv1.Protocol_PROTOCOL_UDP:
		return corev1.ProtocolUDP
	case fedmeshv1.Protocol_PROTOCOL_SCTP:
		return corev1.ProtocolSCTP
	}
	return corev1.ProtocolTCP
}

// ImportWriter applies desired MCS objects to a cluster. It is used by one
// goroutine (the import watcher); every method blocks on API calls.
type ImportWriter struct {
	Kube kubernetes.Interface
	MCS  mcsclient.Interface
}

// Apply makes the cluster's syncer-owned ServiceImports, derived Services
// and EndpointSlices equal to the desired ones: creates, updates, and
// deletes what is no longer wanted. A ClusterSetIP import gets its derived
// Service (owned by the ServiceImport, so the garbage collector removes it
// with the import too) and the Service's ClusterIPs as spec.ips. It carries
// on past a failed object and returns every error joined.
func (w *ImportWriter) Apply(ctx context.Context, sis []*mcsv1beta1.ServiceImport, ess []*discoveryv1.EndpointSlice) error {
	sel := metav1.ListOptions{LabelSelector: ManagedByLabel + "=" + ManagedByValue}
	var errs []error
	haveSI, err := w.MCS.MulticlusterV1beta1().ServiceImports(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return fmt.Errorf("list ServiceImports: %w", err)
	}
	haveSvc, err := w.Kube.CoreV1().Services(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return fmt.Errorf("list derived Services: %w", err)
	}
	haveES, err := w.Kube.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return fmt.Errorf("list EndpointSlices: %w", err)
	}
	wantSI := map[string]bool{}
	cur := map[string]*mcsv1beta1.ServiceImport{}
	for i := range haveSI.Items {
		x := &haveSI.Items[i]
		cur[x.Namespace+"/"+x.Name] = x
	}
	wantSvc := map[string]bool{}
	curSvc := map[string]*corev1.Service{}
	for i := range haveSvc.Items {
		x := &haveSvc.Items[i]
		curSvc[x.Namespace+"/"+x.Name] = x
	}
	for _, si := range sis {
		key := si.Namespace + "/" + si.Name
		wantSI[key] = true
		if svc := DerivedService(si); svc != nil {
			wantSvc[svc.Namespace+"/"+svc.Name] = true
		}
		errs = append(errs, w.applyImport(ctx, cur[key], si, curSvc))
	}
	for key, x := range cur {
		if !wantSI[key] {
			err := w.MCS.MulticlusterV1beta1().ServiceImports(x.Namespace).Delete(ctx, x.Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete ServiceImport %s: %w", key, err))
			}
		}
	}
	// The owner reference would have the garbage collector remove these
	// too, but only where kube-controller-manager runs and only later:
	// delete them now so no VIP outlives its import.
	for key, x := range curSvc {
		if !wantSvc[key] {
			err := w.Kube.CoreV1().Services(x.Namespace).Delete(ctx, x.Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete derived Service %s: %w", key, err))
			}
		}
	}
	wantES := map[string]bool{}
	curES := map[string]*discoveryv1.EndpointSlice{}
	for i := range haveES.Items {
		x := &haveES.Items[i]
		curES[x.Namespace+"/"+x.Name] = x
	}
	for _, es := range ess {
		key := es.Namespace + "/" + es.Name
		wantES[key] = true
		have := curES[key]
		switch {
		case have == nil:
			_, err = w.Kube.DiscoveryV1().EndpointSlices(es.Namespace).Create(ctx, es, metav1.CreateOptions{})
		case have.AddressType != es.AddressType:
			// addressType is immutable: replace the slice.
			err = w.Kube.DiscoveryV1().EndpointSlices(es.Namespace).Delete(ctx, es.Name, metav1.DeleteOptions{})
			if err == nil {
				_, err = w.Kube.DiscoveryV1().EndpointSlices(es.Namespace).Create(ctx, es, metav1.CreateOptions{})
			}
		case !equality.Semantic.DeepEqual(have.Endpoints, es.Endpoints) || !equality.Semantic.DeepEqual(have.Ports, es.Ports) || !equality.Semantic.DeepEqual(have.Labels, es.Labels):
			up := have.DeepCopy()
			up.Endpoints, up.Ports, up.Labels = es.Endpoints, es.Ports, es.Labels
			_, err = w.Kube.DiscoveryV1().EndpointSlices(es.Namespace).Update(ctx, up, metav1.UpdateOptions{})
		default:
			err = nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("write EndpointSlice %s: %w", key, err))
		}
	}
	for key, x := range curES {
		if !wantES[key] {
			err := w.Kube.DiscoveryV1().EndpointSlices(x.Namespace).Delete(ctx, x.Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete EndpointSlice %s: %w", key, err))
			}
		}
	}
	return errors.Join(errs...)
}

// applyImport writes one ServiceImport and, for a ClusterSetIP import, its
// derived Service, then puts the Service's ClusterIPs into spec.ips. The
// ServiceImport is created first: the Service's owner reference needs its
// UID.
func (w *ImportWriter) applyImport(ctx context.Context, have, want *mcsv1beta1.ServiceImport, curSvc map[string]*corev1.Service) error {
	c := w.MCS.MulticlusterV1beta1().ServiceImports(want.Namespace)
	key := want.Namespace + "/" + want.Name
	want = want.DeepCopy()
	var err error
	if have == nil {
		have, err = c.Create(ctx, want, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create ServiceImport %s: %w", key, err)
		}
	}
	var svcErr error
	if svc := DerivedService(want); svc != nil {
		want.Spec.IPs, svcErr = w.applyDerived(ctx, have, svc, curSvc[svc.Namespace+"/"+svc.Name])
		if svcErr != nil {
			// Keep the VIP the import had: the Service is still there.
			want.Spec.IPs = have.Spec.IPs
		}
	}
	ann := stdmaps.Clone(have.Annotations)
	if v, ok := want.Annotations[DerivedServiceAnnotation]; ok {
		if ann == nil {
			ann = map[string]string{}
		}
		ann[DerivedServiceAnnotation] = v
	} else {
		delete(ann, DerivedServiceAnnotation)
	}
	if !equality.Semantic.DeepEqual(have.Spec, want.Spec) || !equality.Semantic.DeepEqual(have.Labels, want.Labels) || !stdmaps.Equal(have.Annotations, ann) {
		up := have.DeepCopy()
		up.Spec, up.Labels, up.Annotations = want.Spec, want.Labels, ann
		if have, err = c.Update(ctx, up, metav1.UpdateOptions{}); err != nil {
			return errors.Join(svcErr, fmt.Errorf("update ServiceImport %s: %w", key, err))
		}
	}
	if svcErr != nil {
		return svcErr
	}
	ready := metav1.Condition{Type: string(mcsv1beta1.ServiceImportConditionReady), Status: metav1.ConditionTrue, Reason: string(mcsv1beta1.ServiceImportReasonReady), Message: "backends written as EndpointSlices"}
	if equality.Semantic.DeepEqual(have.Status.Clusters, want.Status.Clusters) && conditionIs(have.Status.Conditions, ready) {
		return nil
	}
	up := have.DeepCopy()
	up.Status.Clusters = want.Status.Clusters
	up.Status.EndpointSliceObjects = mcsv1beta1.EndpointSliceObjectsPresent
	ready.ObservedGeneration = up.Generation
	apimeta.SetStatusCondition(&up.Status.Conditions, ready)
	if _, err := c.UpdateStatus(ctx, up, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update ServiceImport %s status: %w", key, err)
	}
	return nil
}

// applyDerived creates or updates the derived Service want, owned by si,
// and returns its ClusterIPs. have is the syncer's Service of that name,
// if any; a Service of that name the syncer does not manage is left alone.
func (w *ImportWriter) applyDerived(ctx context.Context, si *mcsv1beta1.ServiceImport, want, have *corev1.Service) ([]string, error) {
	c := w.Kube.CoreV1().Services(want.Namespace)
	key := want.Namespace + "/" + want.Name
	want.OwnerReferences = []metav1.OwnerReference{{
		APIVersion: mcsv1beta1.GroupVersion.String(),
		Kind:       mcsv1beta1.ServiceImportKindName,
		Name:       si.Name,
		UID:        si.UID,
		Controller: ptr.To(true),
	}}
	var err error
	switch {
	case have == nil:
		have, err = c.Create(ctx, want, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create derived Service %s of ServiceImport %s: a Service of that name exists that the syncer does not manage (no label %s=%s); delete it so the import gets its VIP", key, si.Name, ManagedByLabel, ManagedByValue)
		}
		if err != nil {
			return nil, fmt.Errorf("create derived Service %s of ServiceImport %s: %w", key, si.Name, err)
		}
	case !servicePortsEqual(have.Spec.Ports, want.Spec.Ports) || !equality.Semantic.DeepEqual(have.Labels, want.Labels) || !equality.Semantic.DeepEqual(have.OwnerReferences, want.OwnerReferences):
		up := have.DeepCopy()
		up.Spec.Ports, up.Labels, up.OwnerReferences = want.Spec.Ports, want.Labels, want.OwnerReferences
		if have, err = c.Update(ctx, up, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("update derived Service %s of ServiceImport %s: %w", key, si.Name, err)
		}
	}
	if len(have.Spec.ClusterIPs) > 0 {
		return have.Spec.ClusterIPs, nil
	}
	if have.Spec.ClusterIP != "" && have.Spec.ClusterIP != corev1.ClusterIPNone {
		return []string{have.Spec.ClusterIP}, nil
	}
	return nil, nil
}

// servicePortsEqual compares the fields of ports the syncer sets; the
// apiserver defaults targetPort, which a selectorless Service ignores.
func servicePortsEqual(a, b []corev1.ServicePort) bool {
	return slices.EqualFunc(a, b, func(x, y corev1.ServicePort) bool {
		return x.Name == y.Name && x.Protocol == y.Protocol && x.Port == y.Port && ptr.Equal(x.AppProtocol, y.AppProtocol)
	})
}

// runImports watches the federation's services and writes this cluster's
// imports, until ctx ends. It reconnects with backoff, resuming from the
// last revision it applied (the control plane sends a snapshot when that
// revision is gone).
func (s *Syncer) runImports(ctx context.Context) {
	w := &ImportWriter{Kube: s.kube, MCS: s.mcs}
	st := NewImportState()
	var rev uint64
	var exportScope *fedmeshv1.NamespaceScope
	bo := newBackoff(200*time.Millisecond, 10*time.Second)
	for ctx.Err() == nil {
		stream, err := s.cfg.ControlPlane.Watch(ctx, &fedmeshv1.WatchRequest{
			FromRevision: rev,
			Kinds: []fedmeshv1.ResourceKind{
				fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER,
				fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_EXPORT,
				fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT,
			},
		})
		if err != nil {
			d := bo.next()
			s.log.Warn("watch services; retrying", "err", err, "in", d)
			sleepCtx(ctx, d)
			continue
		}
		var snap *ImportState
		for {
			resp, err := stream.Recv()
			if err != nil {
				if ctx.Err() == nil {
					d := bo.next()
					s.log.Warn("services watch ended; reconnecting", "err", err, "in", d)
					sleepCtx(ctx, d)
				}
				break
			}
			bo.reset()
			switch resp.GetType() {
			case fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT:
				if snap == nil {
					snap = NewImportState()
				}
				for _, ev := range resp.GetEvents() {
					snap.Apply(s.cfg.Cluster, ev)
				}
				if resp.GetMore() {
					continue
				}
				st, snap = snap, nil
			case fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS:
				for _, ev := range resp.GetEvents() {
					st.Apply(s.cfg.Cluster, ev)
				}
			default:
				rev = resp.GetRevision()
				continue
			}
			rev = resp.GetRevision()
			if !proto.Equal(st.Self.GetExports(), exportScope) {
				exportScope = st.Self.GetExports()
				if st.Self != nil && s.cfg.ClusterSpec == nil {
					select {
					case s.respec <- struct{}{}:
					default:
					}
				}
			}
			s.reconcileImports(ctx, w, st)
		}
	}
}

func (s *Syncer) reconcileImports(ctx context.Context, w *ImportWriter, st *ImportState) {
	nsExists := func(ns string) bool { _, err := s.nss.Get(ns); return err == nil }
	sis, ess := DesiredImports(s.cfg.Cluster, st, nsExists)
	if err := w.Apply(ctx, sis, ess); err != nil {
		s.log.Warn("write imported services", "err", err)
	}
	s.metrics.imports.Set(float64(len(sis)))
	for k, c := range ExportConflicts(s.cfg.Cluster, st) {
		se, err := s.exports.ServiceExports(k.Namespace).Get(k.Name)
		if err != nil {
			continue
		}
		mc := metav1.Condition{Type: services.CondConflict, Status: metav1.ConditionStatus(c.GetStatus()), Reason: c.GetReason(), Message: c.GetMessage()}
		if mc.Reason == "" {
			mc.Reason = services.ReasonNoConflicts
		}
		if !conditionIs(se.Status.Conditions, mc) {
			s.writeExportConditions(ctx, se, mc)
		}
	}
}
