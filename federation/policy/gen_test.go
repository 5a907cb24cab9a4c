package policy

import (
	"fmt"
	"math/rand/v2"

	"github.com/fedmesh/fedmesh/federation/identity"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// world is a random federation for property tests: clusters, namespaces
// (labels fixed per cluster/namespace, as the engine assumes) and
// endpoints whose identities come from a real allocator.
type world struct {
	r        *rand.Rand
	alloc    *identity.Allocator
	clusters []*fedmeshv1.Cluster
	nsLabels map[[2]string]map[string]string
	eps      map[EndpointKey]*fedmeshv1.Endpoint
	seq      int
}

var genNamespaces = []string{"n0", "n1", "n2", "n3"}

func newWorld(seed uint64) *world {
	w := &world{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), alloc: identity.NewAllocator(),
		nsLabels: map[[2]string]map[string]string{}, eps: map[EndpointKey]*fedmeshv1.Endpoint{}}
	for i := range 3 {
		w.clusters = append(w.clusters, &fedmeshv1.Cluster{Name: fmt.Sprintf("c%d", i), Labels: w.clusterLabels()})
		for _, ns := range genNamespaces {
			w.nsLabels[[2]string{fmt.Sprintf("c%d", i), ns}] = map[string]string{
				"kubernetes.io/metadata.name": ns, "team": w.pick("t0", "t1", "t2"),
			}
		}
	}
	return w
}

func (w *world) pick(vs ...string) string { return vs[w.r.IntN(len(vs))] }

func (w *world) clusterLabels() map[string]string {
	m := map[string]string{"region": w.pick("eu", "us")}
	if w.r.IntN(2) == 0 {
		m["env"] = w.pick("prod", "dev")
	}
	return m
}

func (w *world) podLabels() map[string]string {
	m := map[string]string{"app": w.pick("a", "b", "c")}
	if t := w.pick("x", "y", ""); t != "" {
		m["tier"] = t
	}
	return m
}

// endpoint makes a new endpoint (or a relabelled one when key is given).
func (w *world) endpoint(key *EndpointKey) *fedmeshv1.Endpoint {
	var ci, ni int
	var name string
	if key != nil {
		old := w.eps[*key]
		w.alloc.Release(old.Identity)
		ci, ni, name = int(key.Cluster[1]-'0'), int(key.Namespace[1]-'0'), key.Name
	} else {
		ci, ni = w.r.IntN(len(w.clusters)), w.r.IntN(len(genNamespaces))
		w.seq++
		name = fmt.Sprintf("p%d", w.seq)
	}
	cl, ns := w.clusters[ci].Name, genNamespaces[ni]
	labels := w.podLabels()
	id, _, err := w.alloc.Acquire(identity.For(cl, ns, labels, nil))
	if err != nil {
		panic(err)
	}
	var n int
	fmt.Sscanf(name, "p%d", &n)
	ep := &fedmeshv1.Endpoint{
		Cluster: cl, Namespace: ns, Name: name, Labels: labels, NamespaceLabels: w.nsLabels[[2]string{cl, ns}],
		Identity: id, Node: "node0",
		Ips: []string{fmt.Sprintf("10.%d.%d.%d", ci, n/250, n%250+1), fmt.Sprintf("fd00:%d::%x", ci, n+1)},
	}
	ep.NamedPorts = w.namedPorts()
	w.eps[EndpointKey{cl, ns, name}] = ep
	return ep
}

func (w *world) namedPorts() []*fedmeshv1.NamedPort {
	var nps []*fedmeshv1.NamedPort
	if w.r.IntN(4) != 0 {
		nps = append(nps, &fedmeshv1.NamedPort{Name: "http", Port: uint32([]int{80, 8080}[w.r.IntN(2)])})
	}
	if w.r.IntN(2) == 0 {
		nps = append(nps, &fedmeshv1.NamedPort{Name: "dns", Port: 53, Protocol: fedmeshv1.Protocol_PROTOCOL_UDP})
	}
	if w.r.IntN(3) == 0 {
		nps = append(nps, &fedmeshv1.NamedPort{Name: "sig", Port: 9000, Protocol: fedmeshv1.Protocol_PROTOCOL_SCTP})
	}
	return nps
}

func (w *world) selector(keys ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	switch w.r.IntN(6) {
	case 0: // empty: everything
	case 1, 2:
		k := keys[w.r.IntN(len(keys))]
		s.MatchLabels = map[string]string{k: w.value(k)}
	case 3:
		k := keys[w.r.IntN(len(keys))]
		s.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: k, Operator: metav1.LabelSelectorOpIn, Values: []string{w.value(k), w.value(k)}}}
	case 4:
		k := keys[w.r.IntN(len(keys))]
		s.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: k, Operator: metav1.LabelSelectorOpNotIn, Values: []string{w.value(k)}}}
	case 5:
		op := []metav1.LabelSelectorOperator{metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}[w.r.IntN(2)]
		s.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: keys[w.r.IntN(len(keys))], Operator: op}}
	}
	return s
}

func (w *world) value(k string) string {
	switch k {
	case "app":
		return w.pick("a", "b", "c")
	case "tier":
		return w.pick("x", "y")
	case "team":
		return w.pick("t0", "t1", "t2")
	case "kubernetes.io/metadata.name":
		return w.pick(genNamespaces...)
	case "region":
		return w.pick("eu", "us")
	default:
		return w.pick("prod", "dev")
	}
}

func (w *world) ports() []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for range w.r.IntN(3) {
		var p networkingv1.NetworkPolicyPort
		if w.r.IntN(3) != 0 {
			pr := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}[w.r.IntN(3)]
			p.Protocol = &pr
		}
		switch w.r.IntN(5) {
		case 0: // every port of the protocol
		case 1, 2:
			v := intstr.FromInt32([]int32{53, 80, 443, 8080, 9000}[w.r.IntN(5)])
			p.Port = &v
			if w.r.IntN(3) == 0 {
				end := v.IntVal + int32(w.r.IntN(100))
				p.EndPort = &end
			}
		default:
			v := intstr.FromString(w.pick("http", "dns", "sig", "nope"))
			p.Port = &v
		}
		out = append(out, p)
	}
	return out
}

func (w *world) peers(federated bool) ([]networkingv1.NetworkPolicyPeer, []*metav1.LabelSelector) {
	var out []networkingv1.NetworkPolicyPeer
	var cls []*metav1.LabelSelector
	for range w.r.IntN(3) {
		var p networkingv1.NetworkPolicyPeer
		switch w.r.IntN(5) {
		case 0:
			blocks := []networkingv1.IPBlock{
				{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16"}},
				{CIDR: "10.2.0.0/24"},
				{CIDR: "0.0.0.0/0", Except: []string{"10.0.0.0/8"}},
				{CIDR: "fd00::/16", Except: []string{"fd00:1::/32"}},
				{CIDR: "198.51.100.0/24"},
			}
			b := blocks[w.r.IntN(len(blocks))]
			p.IPBlock = &b
		case 1:
			p.PodSelector = w.selector("app", "tier")
		case 2:
			p.NamespaceSelector = w.selector("team", "kubernetes.io/metadata.name")
		default:
			p.PodSelector = w.selector("app", "tier")
			p.NamespaceSelector = w.selector("team", "kubernetes.io/metadata.name")
		}
		var cs *metav1.LabelSelector
		if federated && p.IPBlock == nil && w.r.IntN(2) == 0 {
			cs = w.selector("region", "env")
		}
		out = append(out, p)
		cls = append(cls, cs)
	}
	return out, cls
}

func (w *world) policy(i int) *NetworkPolicy {
	np := &NetworkPolicy{}
	if w.r.IntN(3) == 0 {
		np.Federated = true
		if w.r.IntN(2) == 0 {
			np.ClusterSelector = w.selector("region", "env")
		}
		if w.r.IntN(3) != 0 {
			np.Policy.Namespace = w.pick(genNamespaces...)
		}
	} else {
		np.Cluster = w.clusters[w.r.IntN(len(w.clusters))].Name
		np.Policy.Namespace = w.pick(genNamespaces...)
	}
	np.Policy.Name = fmt.Sprintf("pol%d", i)
	np.Policy.Spec.PodSelector = *w.selector("app", "tier")
	switch w.r.IntN(4) {
	case 1:
		np.Policy.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 2:
		np.Policy.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	case 3:
		np.Policy.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	for range w.r.IntN(3) {
		peers, cls := w.peers(np.Federated)
		np.Policy.Spec.Ingress = append(np.Policy.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{Ports: w.ports(), From: peers})
		np.IngressPeerClusters = append(np.IngressPeerClusters, cls)
	}
	for range w.r.IntN(3) {
		peers, cls := w.peers(np.Federated)
		np.Policy.Spec.Egress = append(np.Policy.Spec.Egress, networkingv1.NetworkPolicyEgressRule{Ports: w.ports(), To: peers})
		np.EgressPeerClusters = append(np.EgressPeerClusters, cls)
	}
	return np
}
