package policy

import (
	"errors"
	"fmt"
	"math"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// PolicyKey names a policy: its owning cluster ("" for a federated policy),
// namespace ("" for a global federated policy) and name.
type PolicyKey struct {
	Cluster, Namespace, Name string
}

func (k PolicyKey) String() string {
	if k.Cluster == "" {
		if k.Namespace == "" {
			return "federated/" + k.Name
		}
		return "federated/" + k.Namespace + "/" + k.Name
	}
	return k.Cluster + "/" + k.Namespace + "/" + k.Name
}

// NetworkPolicy is a fedmesh policy in Kubernetes terms: the
// networking.k8s.io/v1 object, whose semantics the compiler implements, plus
// what only a federated policy has. The compiler works on this form only.
type NetworkPolicy struct {
	// Cluster owning a Kubernetes policy; "" for a federated one.
	Cluster string
	// Federated is true for a POLICY_KIND_FEDERATED policy.
	Federated bool
	// ClusterSelector picks the clusters a federated policy applies to; nil
	// means every cluster.
	ClusterSelector *metav1.LabelSelector
	// Policy carries namespace, name and spec. Namespace "" on a federated
	// policy makes it global.
	Policy networkingv1.NetworkPolicy
	// IngressPeerClusters[i][j] is the cluster selector of
	// Spec.Ingress[i].From[j] (federated only): nil means the selected pod's
	// own cluster, an empty selector every cluster. Missing entries are nil.
	IngressPeerClusters [][]*metav1.LabelSelector
	// EgressPeerClusters is the same for Spec.Egress[i].To[j].
	EgressPeerClusters [][]*metav1.LabelSelector
}

// Key returns the policy's key.
func (p *NetworkPolicy) Key() PolicyKey {
	return PolicyKey{Cluster: p.Cluster, Namespace: p.Policy.Namespace, Name: p.Policy.Name}
}

// ErrUnsupported marks a proto field value the Kubernetes form cannot carry
// (an unspecified kind, ICMP in a port). Validation at the API edge rejects
// these first; the compiler refuses them rather than guessing.
var ErrUnsupported = errors.New("unsupported policy field")

// FromProto converts an API policy into its Kubernetes form.
func FromProto(p *fedmeshv1.Policy) (*NetworkPolicy, error) {
	if p == nil {
		return nil, fmt.Errorf("convert policy: %w: nil policy", ErrUnsupported)
	}
	np := &NetworkPolicy{}
	switch p.GetKind() {
	case fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES:
		np.Cluster = p.GetCluster()
	case fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED:
		np.Federated = true
		np.ClusterSelector = selectorFromProto(p.GetClusterSelector())
	default:
		return nil, fmt.Errorf("convert policy %s/%s: %w: kind %v", p.GetNamespace(), p.GetName(), ErrUnsupported, p.GetKind())
	}
	np.Policy.TypeMeta = metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"}
	np.Policy.Namespace = p.GetNamespace()
	np.Policy.Name = p.GetName()
	spec := p.GetSpec()
	if s := selectorFromProto(spec.GetPodSelector()); s != nil {
		np.Policy.Spec.PodSelector = *s
	}
	wrap := func(err error) error {
		return fmt.Errorf("convert policy %s: %w", np.Key(), err)
	}
	for _, r := range spec.GetIngress() {
		ports, err := portsFromProto(r.GetPorts())
		if err != nil {
			return nil, wrap(err)
		}
		peers, clusters := peersFromProto(r.GetFrom())
		np.Policy.Spec.Ingress = append(np.Policy.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{Ports: ports, From: peers})
		np.IngressPeerClusters = append(np.IngressPeerClusters, clusters)
	}
	for _, r := range spec.GetEgress() {
		ports, err := portsFromProto(r.GetPorts())
		if err != nil {
			return nil, wrap(err)
		}
		peers, clusters := peersFromProto(r.GetTo())
		np.Policy.Spec.Egress = append(np.Policy.Spec.Egress, networkingv1.NetworkPolicyEgressRule{Ports: ports, To: peers})
		np.EgressPeerClusters = append(np.EgressPeerClusters, clusters)
	}
	for _, t := range spec.GetPolicyTypes() {
		switch t {
		case fedmeshv1.PolicyType_POLICY_TYPE_INGRESS:
			np.Policy.Spec.PolicyTypes = append(np.Policy.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
		case fedmeshv1.PolicyType_POLICY_TYPE_EGRESS:
			np.Policy.Spec.PolicyTypes = append(np.Policy.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		default:
			return nil, wrap(fmt.Errorf("%w: policy type %v", ErrUnsupported, t))
		}
	}
	if !np.Federated {
		// Kubernetes policies have no cluster selectors: peers stay local.
		np.IngressPeerClusters, np.EgressPeerClusters = nil, nil
	}
	return np, nil
}

// ToProto converts the Kubernetes form back into an API policy (meta not
// included).
func ToProto(np *NetworkPolicy) (*fedmeshv1.Policy, error) {
	p := &fedmeshv1.Policy{
		Namespace: np.Policy.Namespace,
		Name:      np.Policy.Name,
		Spec:      &fedmeshv1.NetworkPolicySpec{PodSelector: selectorToProto(&np.Policy.Spec.PodSelector)},
	}
	if np.Federated {
		p.Kind = fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED
		p.ClusterSelector = selectorToProto(np.ClusterSelector)
	} else {
		p.Kind = fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES
		p.Cluster = np.Cluster
	}
	wrap := func(err error) error { return fmt.Errorf("convert policy %s: %w", np.Key(), err) }
	for i, r := range np.Policy.Spec.Ingress {
		ports, err := portsToProto(r.Ports)
		if err != nil {
			return nil, wrap(err)
		}
		p.Spec.Ingress = append(p.Spec.Ingress, &fedmeshv1.NetworkPolicyIngressRule{Ports: ports, From: peersToProto(r.From, at(np.IngressPeerClusters, i), np.Federated)})
	}
	for i, r := range np.Policy.Spec.Egress {
		ports, err := portsToProto(r.Ports)
		if err != nil {
			return nil, wrap(err)
		}
		p.Spec.Egress = append(p.Spec.Egress, &fedmeshv1.NetworkPolicyEgressRule{Ports: ports, To: peersToProto(r.To, at(np.EgressPeerClusters, i), np.Federated)})
	}
	for _, t := range np.Policy.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, fedmeshv1.PolicyType_POLICY_TYPE_INGRESS)
		case networkingv1.PolicyTypeEgress:
			p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, fedmeshv1.PolicyType_POLICY_TYPE_EGRESS)
		default:
			return nil, wrap(fmt.Errorf("%w: policy type %q", ErrUnsupported, t))
		}
	}
	return p, nil
}

func at(s [][]*metav1.LabelSelector, i int) []*metav1.LabelSelector {
	if i < len(s) {
		return s[i]
	}
	return nil
}

// The selector conversions are federation/model's, shared with the syncer
// and fedctl, so every binary reads selectors the same way.
func selectorFromProto(s *fedmeshv1.LabelSelector) *metav1.LabelSelector {
	return model.SelectorToK8s(s)
}

func selectorToProto(s *metav1.LabelSelector) *fedmeshv1.LabelSelector {
	return model.SelectorFromK8s(s)
}

func protocolFromProto(p fedmeshv1.Protocol) (*corev1.Protocol, error) {
	var v corev1.Protocol
	switch p {
	case fedmeshv1.Protocol_PROTOCOL_UNSPECIFIED:
		return nil, nil // Kubernetes defaults a nil protocol to TCP
	case fedmeshv1.Protocol_PROTOCOL_TCP:
		v = corev1.ProtocolTCP
	case fedmeshv1.Protocol_PROTOCOL_UDP:
		v = corev1.ProtocolUDP
	case fedmeshv1.Protocol_PROTOCOL_SCTP:
		v = corev1.ProtocolSCTP
	default:
		return nil, fmt.Errorf("%w: port protocol %v (NetworkPolicy allows TCP, UDP, SCTP)", ErrUnsupported, p)
	}
	return &v, nil
}

func portsFromProto(ports []*fedmeshv1.NetworkPolicyPort) ([]networkingv1.NetworkPolicyPort, error) {
	var out []networkingv1.NetworkPolicyPort
	for _, pp := range ports {
		proto, err := protocolFromProto(pp.GetProtocol())
		if err != nil {
			return nil, err
		}
		np := networkingv1.NetworkPolicyPort{Protocol: proto}
		switch v := pp.GetPort().(type) {
		case *fedmeshv1.NetworkPolicyPort_Number:
			if v.Number > math.MaxInt32 {
				return nil, fmt.Errorf("%w: port %d out of range", ErrUnsupported, v.Number)
			}
			p := intstr.FromInt32(int32(v.Number))
			np.Port = &p
		case *fedmeshv1.NetworkPolicyPort_Name:
			p := intstr.FromString(v.Name)
			np.Port = &p
		}
		if pp.GetEndPort() != 0 {
			if pp.GetEndPort() > math.MaxInt32 {
				return nil, fmt.Errorf("%w: end port %d out of range", ErrUnsupported, pp.GetEndPort())
			}
			e := int32(pp.GetEndPort())
			np.EndPort = &e
		}
		out = append(out, np)
	}
	return out, nil
}

func portsToProto(ports []networkingv1.NetworkPolicyPort) ([]*fedmeshv1.NetworkPolicyPort, error) {
	var out []*fedmeshv1.NetworkPolicyPort
	for _, np := range ports {
		pp := &fedmeshv1.NetworkPolicyPort{}
		if np.Protocol != nil {
			switch *np.Protocol {
			case corev1.ProtocolTCP:
				pp.Protocol = fedmeshv1.Protocol_PROTOCOL_TCP
			case corev1.ProtocolUDP:
				pp.Protocol = fedmeshv1.Protocol_PROTOCOL_UDP
			case corev1.ProtocolSCTP:
				pp.Protocol = fedmeshv1.Protocol_PROTOCOL_SCTP
			default:
				return nil, fmt.Errorf("%w: port protocol %q", ErrUnsupported, *np.Protocol)
			}
		}
		if np.Port != nil {
			if np.Port.Type == intstr.String {
				pp.Port = &fedmeshv1.NetworkPolicyPort_Name{Name: np.Port.StrVal}
			} else {
				if np.Port.IntVal < 0 {
					return nil, fmt.Errorf("%w: port %d out of range", ErrUnsupported, np.Port.IntVal)
				}
				pp.Port = &fedmeshv1.NetworkPolicyPort_Number{Number: uint32(np.Port.IntVal)}
			}
		}
		if np.EndPort != nil {
			if *np.EndPort < 0 {
				return nil, fmt.Errorf("%w: end port %d out of range", ErrUnsupported, *np.EndPort)
			}
			pp.EndPort = uint32(*np.EndPort)
		}
		out = append(out, pp)
	}
	return out, nil
}

func peersFromProto(peers []*fedmeshv1.NetworkPolicyPeer) ([]networkingv1.NetworkPolicyPeer, []*metav1.LabelSelector) {
	var out []networkingv1.NetworkPolicyPeer
	var clusters []*metav1.LabelSelector
	for _, p := range peers {
		np := networkingv1.NetworkPolicyPeer{
			PodSelector:       selectorFromProto(p.GetPodSelector()),
			NamespaceSelector: selectorFromProto(p.GetNamespaceSelector()),
		}
		if b := p.GetIpBlock(); b != nil {
			np.IPBlock = &networkingv1.IPBlock{CIDR: b.GetCidr(), Except: append([]string(nil), b.GetExcept()...)}
		}
		out = append(out, np)
		clusters = append(clusters, selectorFromProto(p.GetClusterSelector()))
	}
	return out, clusters
}

func peersToProto(peers []networkingv1.NetworkPolicyPeer, clusters []*metav1.LabelSelector, federated bool) []*fedmeshv1.NetworkPolicyPeer {
	var out []*fedmeshv1.NetworkPolicyPeer
	for j, p := range peers {
		pp := &fedmeshv1.NetworkPolicyPeer{
			PodSelector:       selectorToProto(p.PodSelector),
			NamespaceSelector: selectorToProto(p.NamespaceSelector),
		}
		if p.IPBlock != nil {
			pp.IpBlock = &fedmeshv1.IPBlock{Cidr: p.IPBlock.CIDR, Except: append([]string(nil), p.IPBlock.Except...)}
		}
		if federated && j < len(clusters) {
			pp.ClusterSelector = selectorToProto(clusters[j])
		}
		out = append(out, pp)
	}
	return out
}
