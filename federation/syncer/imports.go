package syncer

// The pure half of imports: from the watched view of the federation's
// services, the MCS objects this cluster should hold, and the writes that
// get it there from what it has. The I/O half is importwriter.go.

import (
	"cmp"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	stdmaps "maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

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
// source cluster. A ClusterSetIP import's spec.ips are the federation's
// ClusterSetIPs when the control plane allocated them (control-plane flag
// --clusterset-cidrs; one per family, the same in every member cluster,
// translated by the node agents without kube-proxy). Its ServiceImport also
// names its derived Service (DerivedService; the writer creates it and,
// without federation ClusterSetIPs, copies its ClusterIPs into spec.ips) and
// its slices also carry kubernetes.io/service-name of
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
		if si.Spec.Type == mcsv1beta1.ClusterSetIP && len(imp.GetIps()) > 0 {
			// The federation's ClusterSetIPs (the same in every cluster,
			// translated by the node agents) win over the derived
			// Service's cluster-local ClusterIPs.
			si.Spec.IPs = slices.Clone(imp.GetIps())
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

// ClusterImports is what the syncer owns in the cluster now: the objects
// carrying its managed-by label.
type ClusterImports struct {
	Imports  []*mcsv1beta1.ServiceImport
	Services []*corev1.Service // derived Services
	Slices   []*discoveryv1.EndpointSlice
}

// ImportWrites are the writes that bring the cluster from what it has to
// the desired imports, as a plan: imports first (an import's derived Service
// needs the import's UID, and the import's spec.ips the Service's
// ClusterIPs, so each ImportWrite is one short sequence), then deletes,
// then slices.
type ImportWrites struct {
	Imports        []ImportWrite
	DeleteImports  []*mcsv1beta1.ServiceImport
	DeleteServices []*corev1.Service
	Slices         []SliceWrite
	DeleteSlices   []*discoveryv1.EndpointSlice
}

// Empty reports whether the cluster already holds the desired imports.
func (w *ImportWrites) Empty() bool {
	return len(w.Imports)+len(w.DeleteImports)+len(w.DeleteServices)+len(w.Slices)+len(w.DeleteSlices) == 0
}

// ImportWrite brings one ServiceImport and its derived Service up to date.
type ImportWrite struct {
	// Have is the cluster's ServiceImport; nil: create Want.
	Have, Want *mcsv1beta1.ServiceImport
	// Derived is the derived Service Want needs (nil: none, headless or
	// no ports); HaveDerived the syncer's Service of that name, if any.
	Derived, HaveDerived *corev1.Service
}

// SliceOp is how one EndpointSlice is written.
type SliceOp uint8

// Slice writes.
const (
	SliceCreate SliceOp = iota + 1
	// SliceReplace deletes and creates: addressType is immutable.
	SliceReplace
	SliceUpdate
)

// SliceWrite is one EndpointSlice write; Have is nil for a create.
type SliceWrite struct {
	Op         SliceOp
	Have, Want *discoveryv1.EndpointSlice
}

// PlanImportWrites compares what the syncer owns in the cluster with the
// desired ServiceImports and EndpointSlices (DesiredImports) and returns
// the writes; an import, Service or slice that already matches gets none.
// Pure.
func PlanImportWrites(have ClusterImports, sis []*mcsv1beta1.ServiceImport, ess []*discoveryv1.EndpointSlice) ImportWrites {
	var w ImportWrites
	curSI := map[string]*mcsv1beta1.ServiceImport{}
	for _, x := range have.Imports {
		curSI[x.Namespace+"/"+x.Name] = x
	}
	curSvc := map[string]*corev1.Service{}
	for _, x := range have.Services {
		curSvc[x.Namespace+"/"+x.Name] = x
	}
	wantSI, wantSvc := map[string]bool{}, map[string]bool{}
	for _, si := range sis {
		key := si.Namespace + "/" + si.Name
		wantSI[key] = true
		iw := ImportWrite{Have: curSI[key], Want: si, Derived: DerivedService(si)}
		if iw.Derived != nil {
			wantSvc[iw.Derived.Namespace+"/"+iw.Derived.Name] = true
			iw.HaveDerived = curSvc[iw.Derived.Namespace+"/"+iw.Derived.Name]
		}
		if !importCurrent(iw) {
			w.Imports = append(w.Imports, iw)
		}
	}
	for _, x := range have.Imports {
		if !wantSI[x.Namespace+"/"+x.Name] {
			w.DeleteImports = append(w.DeleteImports, x)
		}
	}
	// The owner reference would have the garbage collector remove these
	// too, but only where kube-controller-manager runs and only later:
	// delete them now so no VIP outlives its import.
	for _, x := range have.Services {
		if !wantSvc[x.Namespace+"/"+x.Name] {
			w.DeleteServices = append(w.DeleteServices, x)
		}
	}
	curES := map[string]*discoveryv1.EndpointSlice{}
	for _, x := range have.Slices {
		curES[x.Namespace+"/"+x.Name] = x
	}
	wantES := map[string]bool{}
	for _, es := range ess {
		key := es.Namespace + "/" + es.Name
		wantES[key] = true
		h := curES[key]
		switch {
		case h == nil:
			w.Slices = append(w.Slices, SliceWrite{Op: SliceCreate, Want: es})
		case h.AddressType != es.AddressType:
			w.Slices = append(w.Slices, SliceWrite{Op: SliceReplace, Have: h, Want: es})
		case !equality.Semantic.DeepEqual(h.Endpoints, es.Endpoints) || !equality.Semantic.DeepEqual(h.Ports, es.Ports) || !equality.Semantic.DeepEqual(h.Labels, es.Labels):
			w.Slices = append(w.Slices, SliceWrite{Op: SliceUpdate, Have: h, Want: es})
		}
	}
	for _, x := range have.Slices {
		if !wantES[x.Namespace+"/"+x.Name] {
			w.DeleteSlices = append(w.DeleteSlices, x)
		}
	}
	return w
}

// importCurrent reports whether the cluster already holds w.Want: the
// import, its derived Service (owned by the import), spec.ips equal to the
// Service's ClusterIPs, and the status.
func importCurrent(w ImportWrite) bool {
	if w.Have == nil {
		return false
	}
	want := w.Want
	if w.Derived != nil {
		if w.HaveDerived == nil || !derivedCurrent(w.HaveDerived, withOwner(w.Derived, w.Have)) {
			return false
		}
		want = want.DeepCopy()
		want.Spec.IPs = clusterIPs(w.HaveDerived)
	}
	return importSpecCurrent(w.Have, want) && importStatusCurrent(w.Have, want)
}

// withOwner returns the derived Service svc owned by the ServiceImport si
// (whose UID the cluster assigned).
func withOwner(svc *corev1.Service, si *mcsv1beta1.ServiceImport) *corev1.Service {
	svc = svc.DeepCopy()
	svc.OwnerReferences = []metav1.OwnerReference{{
		APIVersion: mcsv1beta1.GroupVersion.String(),
		Kind:       mcsv1beta1.ServiceImportKindName,
		Name:       si.Name,
		UID:        si.UID,
		Controller: ptr.To(true),
	}}
	return svc
}

// derivedCurrent compares the fields of a derived Service the syncer sets.
func derivedCurrent(have, want *corev1.Service) bool {
	return servicePortsEqual(have.Spec.Ports, want.Spec.Ports) && equality.Semantic.DeepEqual(have.Labels, want.Labels) && equality.Semantic.DeepEqual(have.OwnerReferences, want.OwnerReferences)
}

// clusterIPs are a Service's allocated VIPs.
func clusterIPs(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	if svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		return []string{svc.Spec.ClusterIP}
	}
	return nil
}

// importAnnotations are have's annotations with the syncer's
// derived-service annotation set as want has it; others are kept.
func importAnnotations(have, want *mcsv1beta1.ServiceImport) map[string]string {
	ann := stdmaps.Clone(have.Annotations)
	if v, ok := want.Annotations[DerivedServiceAnnotation]; ok {
		if ann == nil {
			ann = map[string]string{}
		}
		ann[DerivedServiceAnnotation] = v
	} else {
		delete(ann, DerivedServiceAnnotation)
	}
	return ann
}

// importSpecCurrent compares what the syncer sets outside the status.
func importSpecCurrent(have, want *mcsv1beta1.ServiceImport) bool {
	return equality.Semantic.DeepEqual(have.Spec, want.Spec) && equality.Semantic.DeepEqual(have.Labels, want.Labels) && stdmaps.Equal(have.Annotations, importAnnotations(have, want))
}

// importReady is the Ready condition of an import whose slices are written.
func importReady() metav1.Condition {
	return metav1.Condition{Type: string(mcsv1beta1.ServiceImportConditionReady), Status: metav1.ConditionTrue, Reason: string(mcsv1beta1.ServiceImportReasonReady), Message: "backends written as EndpointSlices"}
}

// importStatusCurrent compares the status the syncer sets.
func importStatusCurrent(have, want *mcsv1beta1.ServiceImport) bool {
	return equality.Semantic.DeepEqual(have.Status.Clusters, want.Status.Clusters) && conditionIs(have.Status.Conditions, importReady())
}

// servicePortsEqual compares the fields of ports the syncer sets; the
// apiserver defaults targetPort, which a selectorless Service ignores.
func servicePortsEqual(a, b []corev1.ServicePort) bool {
	return slices.EqualFunc(a, b, func(x, y corev1.ServicePort) bool {
		return x.Name == y.Name && x.Protocol == y.Protocol && x.Port == y.Port && ptr.Equal(x.AppProtocol, y.AppProtocol)
	})
}
