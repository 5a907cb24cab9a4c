// Package recommend owns policy recommendation from observed flows: given
// the flows a namespace took part in, it writes the policies that allow
// exactly that traffic, by workload labels and ports, and isolate the
// namespace otherwise (Calico Enterprise's namespace isolation
// recommendation). It is pure: flows in, manifests out; fedctl feeds it
// from the flow API.
//
// # What "exactly" means
//
// Pods are told apart by their workload labels: every label identity
// counts by default (federation/identity DefaultFilter), so the pods of one
// Deployment are one workload and its rollouts do not matter. A flow is
// allowed on both of its sides, as the dataplane decides it: an egress rule
// on the source workload when the source is in the namespace, an ingress
// rule on the destination workload when the destination is. Peers are
// written as narrowly as fedmesh can select them:
//
//   - a pod of the same cluster and namespace: its workload labels;
//   - a pod of another namespace: that namespace by name
//     (kubernetes.io/metadata.name) and its workload labels;
//   - a pod of another cluster: that cluster by name (ClusterNameLabel),
//     namespace and workload labels;
//   - an address outside the federation: that address alone (/32, /128).
//
// Ports are the observed destination ports, per protocol. ICMP flows
// become rules without ports for ICMP's protocol-less match, which
// NetworkPolicy cannot express: they are listed in Result.Unexpressible
// rather than widened.
//
// Each workload of the namespace gets one policy selecting it for both
// directions (so it is isolated in both), and one more policy selects
// every pod of the namespace, so a workload that took part in no flow is
// isolated too.
package recommend

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/fedmesh/fedmesh/federation/identity"
	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/policy"
)

// Workload is one side of an observed flow: a pod (Cluster, Namespace,
// Name, Labels) or, with Cluster empty, an address outside the federation.
type Workload struct {
	Cluster, Namespace, Name string
	Labels                   map[string]string
	IP                       netip.Addr
}

// External reports whether the side is outside the federation.
func (w Workload) External() bool { return w.Cluster == "" }

// Flow is one observed connection (allowed or not: a recommendation makes
// what was observed allowed).
type Flow struct {
	Src, Dst Workload
	Proto    uint8
	Port     uint16
}

// Options scope a recommendation.
type Options struct {
	// Namespace to isolate; required.
	Namespace string
	// Cluster limits the recommendation to one cluster's pods of the
	// namespace; "" covers the namespace in every cluster seen.
	Cluster string
	// NamePrefix starts every policy's name; "recommended" when empty.
	NamePrefix string
	// Known are pods that exist besides those in the flows (fedctl passes
	// every endpoint of the federation). A selector of workload labels L
	// also matches pods whose labels are a superset of L; each workload and
	// peer selector excludes the known supersets (DoesNotExist on their
	// extra keys), so the policies allow exactly the observed workloads.
	Known []Workload
}

// Result is a recommendation.
type Result struct {
	// Policies allow the observed traffic and isolate the namespace, one
	// per (cluster, workload) plus one isolating each cluster's namespace.
	Policies []*model.FederatedNetworkPolicy
	// Unexpressible lists observed flows no NetworkPolicy rule can allow
	// exactly (ICMP); the recommendation does not widen rules for them.
	Unexpressible []Flow
}

// ClusterNameLabel is the label every cluster carries with its own name
// (the policy engine adds it, as Kubernetes adds kubernetes.io/metadata.name
// to namespaces), so a peer can name one cluster.
const ClusterNameLabel = policy.ClusterNameLabel

// NamespaceNameLabel is the label Kubernetes puts on every namespace.
const NamespaceNameLabel = corev1.LabelMetadataName

// workloadKey identifies a workload: cluster, namespace and the workload
// labels in canonical form.
type workloadKey struct {
	cluster, namespace, labels string
}

type portKey struct {
	proto uint8
	port  uint16
}

// peerRules collects, for one local workload and direction, the ports each
// peer was seen on.
type peerRules map[string]*peerEntry

type peerEntry struct {
	peer  model.FederatedPeer
	ports map[portKey]struct{}
}

type workloadPolicy struct {
	key     workloadKey
	labels  map[string]string
	ingress peerRules
	egress  peerRules
}

// Recommend writes the policies for opts.Namespace from flows. Flows that
// touch no pod of the namespace (in opts.Cluster, when set) are ignored.
func Recommend(flows []Flow, opts Options) (Result, error) {
	if opts.Namespace == "" {
		return Result{}, fmt.Errorf("recommend: a namespace is required")
	}
	if errs := validation.IsDNS1123Label(opts.Namespace); len(errs) > 0 {
		return Result{}, fmt.Errorf("recommend: namespace %q: %s", opts.Namespace, strings.Join(errs, "; "))
	}
	prefix := cmp.Or(opts.NamePrefix, "recommended")
	var res Result
	sel := newSelectors(opts.Known, flows)
	workloads := map[workloadKey]*workloadPolicy{}
	clusters := map[string]bool{}
	local := func(w Workload) bool {
		return !w.External() && w.Namespace == opts.Namespace && (opts.Cluster == "" || w.Cluster == opts.Cluster)
	}
	get := func(w Workload) *workloadPolicy {
		lbls := workloadLabels(w.Labels)
		k := workloadKey{w.Cluster, w.Namespace, canonical(lbls)}
		wp := workloads[k]
		if wp == nil {
			wp = &workloadPolicy{key: k, labels: lbls, ingress: peerRules{}, egress: peerRules{}}
			workloads[k] = wp
		}
		clusters[w.Cluster] = true
		return wp
	}
	for _, f := range flows {
		srcLocal, dstLocal := local(f.Src), local(f.Dst)
		if !srcLocal && !dstLocal {
			continue
		}
		if f.Proto == policy.ProtoICMP || f.Proto == policy.ProtoICMPv6 || protocolName(f.Proto) == "" {
			res.Unexpressible = append(res.Unexpressible, f)
			continue
		}
		if srcLocal {
			get(f.Src).egress.add(sel, f.Src, f.Dst, f)
		}
		if dstLocal {
			get(f.Dst).ingress.add(sel, f.Dst, f.Src, f)
		}
	}
	// Every cluster where the flows or the known pods show the namespace
	// gets its isolation policy; with a cluster given, that cluster even
	// when no flow was seen.
	if opts.Cluster != "" {
		clusters[opts.Cluster] = true
	}
	for _, w := range opts.Known {
		if local(w) {
			clusters[w.Cluster] = true
		}
	}
	for _, c := range slices.Sorted(maps.Keys(clusters)) {
		res.Policies = append(res.Policies, isolation(prefix, c, opts.Namespace))
	}
	keys := slices.SortedFunc(maps.Keys(workloads), func(a, b workloadKey) int {
		return cmp.Or(strings.Compare(a.cluster, b.cluster), strings.Compare(a.labels, b.labels))
	})
	names := map[string]int{}
	var perWorkload []*model.FederatedNetworkPolicy
	for _, k := range keys {
		wp := workloads[k]
		name := policyName(prefix, k.cluster, wp.labels)
		names[name]++
		if n := names[name]; n > 1 {
			name = fmt.Sprintf("%s-%d", name, n)
		}
		perWorkload = append(perWorkload, wp.manifest(sel, name, opts.Namespace))
	}
	slices.SortStableFunc(perWorkload, func(a, b *model.FederatedNetworkPolicy) int { return strings.Compare(a.Name, b.Name) })
	res.Policies = append(res.Policies, perWorkload...)
	return res, nil
}

func (r peerRules) add(sel *selectors, self, peer Workload, f Flow) {
	p, key := peerFor(sel, self, peer)
	e := r[key]
	if e == nil {
		e = &peerEntry{peer: p, ports: map[portKey]struct{}{}}
		r[key] = e
	}
	e.ports[portKey{f.Proto, f.Port}] = struct{}{}
}

// peerFor writes peer as narrowly as fedmesh selects it from self's side,
// and a key that is equal for equal peers.
func peerFor(sel *selectors, self, peer Workload) (model.FederatedPeer, string) {
	if peer.External() {
		ip := peer.IP.Unmap()
		pfx := netip.PrefixFrom(ip, ip.BitLen())
		return model.FederatedPeer{IPBlock: &networkingv1.IPBlock{CIDR: pfx.String()}}, "ip/" + pfx.String()
	}
	lbls := workloadLabels(peer.Labels)
	p := model.FederatedPeer{PodSelector: sel.of(peer.Cluster, peer.Namespace, lbls)}
	if peer.Namespace != self.Namespace || peer.Cluster != self.Cluster {
		p.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{NamespaceNameLabel: peer.Namespace}}
	}
	if peer.Cluster != self.Cluster {
		p.ClusterSelector = &metav1.LabelSelector{MatchLabels: map[string]string{ClusterNameLabel: peer.Cluster}}
	}
	return p, "pod/" + peer.Cluster + "/" + peer.Namespace + "/" + canonical(lbls)
}

func (wp *workloadPolicy) manifest(sel *selectors, name, namespace string) *model.FederatedNetworkPolicy {
	m := newManifest(name, namespace, wp.key.cluster)
	m.Spec.PodSelector = *sel.of(wp.key.cluster, namespace, wp.labels)
	for _, e := range sortedEntries(wp.ingress) {
		m.Spec.Ingress = append(m.Spec.Ingress, model.FederatedRule{Ports: e.npPorts(), From: []model.FederatedPeer{e.peer}})
	}
	for _, e := range sortedEntries(wp.egress) {
		m.Spec.Egress = append(m.Spec.Egress, model.FederatedRule{Ports: e.npPorts(), To: []model.FederatedPeer{e.peer}})
	}
	return m
}

// isolation selects every pod of the namespace in cluster for both
// directions and allows nothing: pods no flow showed are isolated too.
func isolation(prefix, cluster, namespace string) *model.FederatedNetworkPolicy {
	m := newManifest(truncateName(prefix+"-isolate-"+cluster), namespace, cluster)
	m.Spec.PodSelector = metav1.LabelSelector{}
	return m
}

func newManifest(name, namespace, cluster string) *model.FederatedNetworkPolicy {
	return &model.FederatedNetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "fedmesh.io/v1", Kind: "FederatedNetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: model.FederatedNetworkPolicySpec{
			ClusterSelector: &metav1.LabelSelector{MatchLabels: map[string]string{ClusterNameLabel: cluster}},
			PolicyTypes:     []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		},
	}
}

func sortedEntries(r peerRules) []*peerEntry {
	out := make([]*peerEntry, 0, len(r))
	for _, k := range slices.Sorted(maps.Keys(r)) {
		out = append(out, r[k])
	}
	return out
}

func (e *peerEntry) npPorts() []networkingv1.NetworkPolicyPort {
	ks := slices.SortedFunc(maps.Keys(e.ports), func(a, b portKey) int {
		return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.port, b.port))
	})
	out := make([]networkingv1.NetworkPolicyPort, 0, len(ks))
	for _, k := range ks {
		proto := corev1.Protocol(protocolName(k.proto))
		port := intstr.FromInt32(int32(k.port))
		out = append(out, networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &port})
	}
	return out
}

func protocolName(p uint8) string {
	switch p {
	case policy.ProtoTCP:
		return string(corev1.ProtocolTCP)
	case policy.ProtoUDP:
		return string(corev1.ProtocolUDP)
	case policy.ProtoSCTP:
		return string(corev1.ProtocolSCTP)
	}
	return ""
}

// workloadLabels are the labels that tell workloads apart: those identity
// counts by default (no controller bookkeeping, nothing under fedmesh.io/).
func workloadLabels(in map[string]string) map[string]string {
	f := identity.DefaultFilter()
	out := map[string]string{}
	for k, v := range in {
		if f.Keep(k) {
			out[k] = v
		}
	}
	return out
}

// SameWorkload reports whether two pods' labels make them one workload
// (equal labels once controller bookkeeping is dropped).
func SameWorkload(a, b map[string]string) bool {
	return canonical(workloadLabels(a)) == canonical(workloadLabels(b))
}

func canonical(m map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(m[k])
		b.WriteByte(',')
	}
	return b.String()
}

// policyName is prefix-cluster-<values of the workload labels>, a DNS
// subdomain of at most 253 characters.
func policyName(prefix, cluster string, lbls map[string]string) string {
	parts := []string{prefix, cluster}
	for _, k := range slices.Sorted(maps.Keys(lbls)) {
		parts = append(parts, lbls[k])
	}
	if len(lbls) == 0 {
		parts = append(parts, "unlabelled")
	}
	return truncateName(sanitize(strings.Join(parts, "-")))
}

func sanitize(s string) string {
	s = strings.ToLower(s)
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	return strings.Trim(b.String(), "-.")
}

func truncateName(s string) string {
	const max = 253
	if len(s) > max {
		s = strings.TrimRight(s[:max], "-.")
	}
	return s
}

// selectors knows the workloads of every (cluster, namespace) seen, to
// write a selector that matches one workload and none of its supersets.
type selectors struct {
	byNS map[[2]string]map[string]map[string]string // canonical -> labels
}

func newSelectors(known []Workload, flows []Flow) *selectors {
	s := &selectors{byNS: map[[2]string]map[string]map[string]string{}}
	add := func(w Workload) {
		if w.External() {
			return
		}
		k := [2]string{w.Cluster, w.Namespace}
		if s.byNS[k] == nil {
			s.byNS[k] = map[string]map[string]string{}
		}
		l := workloadLabels(w.Labels)
		s.byNS[k][canonical(l)] = l
	}
	for _, w := range known {
		add(w)
	}
	for _, f := range flows {
		add(f.Src)
		add(f.Dst)
	}
	return s
}

// of is matchLabels lbls plus DoesNotExist for every key a known strict
// superset of lbls in (cluster, namespace) has beyond lbls.
func (s *selectors) of(cluster, namespace string, lbls map[string]string) *metav1.LabelSelector {
	extra := map[string]bool{}
	for _, other := range s.byNS[[2]string{cluster, namespace}] {
		if len(other) <= len(lbls) || !superset(other, lbls) {
			continue
		}
		for k := range other {
			if _, ok := lbls[k]; !ok {
				extra[k] = true
			}
		}
	}
	sel := &metav1.LabelSelector{MatchLabels: lbls}
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		sel.MatchExpressions = append(sel.MatchExpressions, metav1.LabelSelectorRequirement{Key: k, Operator: metav1.LabelSelectorOpDoesNotExist})
	}
	return sel
}

func superset(big, small map[string]string) bool {
	for k, v := range small {
		if bv, ok := big[k]; !ok || bv != v {
			return false
		}
	}
	return true
}
