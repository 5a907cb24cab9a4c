package model

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// FederatedNetworkPolicy is the manifest users write for a federated policy
// (apiVersion fedmesh.io/v1): a NetworkPolicy whose target and peers may
// also select clusters by label. fedctl reads it; the control plane stores
// it as a fedmeshv1.Policy of kind FEDERATED.
type FederatedNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              FederatedNetworkPolicySpec `json:"spec"`
}

// FederatedNetworkPolicySpec is networking/v1 NetworkPolicySpec plus
// clusterSelector on the policy and on each peer.
type FederatedNetworkPolicySpec struct {
	ClusterSelector *metav1.LabelSelector     `json:"clusterSelector,omitempty"`
	PodSelector     metav1.LabelSelector      `json:"podSelector"`
	Ingress         []FederatedRule           `json:"ingress,omitempty"`
	Egress          []FederatedRule           `json:"egress,omitempty"`
	PolicyTypes     []networkingv1.PolicyType `json:"policyTypes,omitempty"`
}

// FederatedRule is an ingress rule (from) or an egress rule (to).
type FederatedRule struct {
	Ports []networkingv1.NetworkPolicyPort `json:"ports,omitempty"`
	From  []FederatedPeer                  `json:"from,omitempty"`
	To    []FederatedPeer                  `json:"to,omitempty"`
}

// FederatedPeer is a NetworkPolicyPeer plus clusterSelector.
type FederatedPeer struct {
	PodSelector       *metav1.LabelSelector `json:"podSelector,omitempty"`
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	ClusterSelector   *metav1.LabelSelector `json:"clusterSelector,omitempty"`
	IPBlock           *networkingv1.IPBlock `json:"ipBlock,omitempty"`
}

// PolicyFromK8s converts a NetworkPolicy of a member cluster into the API
// type (kind KUBERNETES, owned by cluster), field for field.
func PolicyFromK8s(cluster string, np *networkingv1.NetworkPolicy) *fedmeshv1.Policy {
	spec := &fedmeshv1.NetworkPolicySpec{
		PodSelector: SelectorFromK8s(&np.Spec.PodSelector),
		PolicyTypes: policyTypesFromK8s(np.Spec.PolicyTypes),
	}
	for _, r := range np.Spec.Ingress {
		spec.Ingress = append(spec.Ingress, &fedmeshv1.NetworkPolicyIngressRule{Ports: portsFromK8s(r.Ports), From: peersFromK8s(r.From)})
	}
	for _, r := range np.Spec.Egress {
		spec.Egress = append(spec.Egress, &fedmeshv1.NetworkPolicyEgressRule{Ports: portsFromK8s(r.Ports), To: peersFromK8s(r.To)})
	}
	return &fedmeshv1.Policy{
		Kind:      fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES,
		Cluster:   cluster,
		Namespace: np.Namespace,
		Name:      np.Name,
		Spec:      spec,
	}
}

// PolicyFromFederated converts a FederatedNetworkPolicy manifest.
func PolicyFromFederated(f *FederatedNetworkPolicy) *fedmeshv1.Policy {
	spec := &fedmeshv1.NetworkPolicySpec{
		PodSelector: SelectorFromK8s(&f.Spec.PodSelector),
		PolicyTypes: policyTypesFromK8s(f.Spec.PolicyTypes),
	}
	for _, r := range f.Spec.Ingress {
		spec.Ingress = append(spec.Ingress, &fedmeshv1.NetworkPolicyIngressRule{Ports: portsFromK8s(r.Ports), From: fedPeers(r.From)})
	}
	for _, r := range f.Spec.Egress {
		spec.Egress = append(spec.Egress, &fedmeshv1.NetworkPolicyEgressRule{Ports: portsFromK8s(r.Ports), To: fedPeers(r.To)})
	}
	return &fedmeshv1.Policy{
		Kind:            fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED,
		Namespace:       f.Namespace,
		Name:            f.Name,
		ClusterSelector: SelectorFromK8s(f.Spec.ClusterSelector),
		Spec:            spec,
	}
}

func fedPeers(in []FederatedPeer) []*fedmeshv1.NetworkPolicyPeer {
	var out []*fedmeshv1.NetworkPolicyPeer
	for _, p := range in {
		peer := peerFromK8s(networkingv1.NetworkPolicyPeer{PodSelector: p.PodSelector, NamespaceSelector: p.NamespaceSelector, IPBlock: p.IPBlock})
		peer.ClusterSelector = SelectorFromK8s(p.ClusterSelector)
		out = append(out, peer)
	}
	return out
}

func policyTypesFromK8s(in []networkingv1.PolicyType) []fedmeshv1.PolicyType {
	var out []fedmeshv1.PolicyType
	for _, t := range in {
		switch t {
		case networkingv1.PolicyTypeIngress:
			out = append(out, fedmeshv1.PolicyType_POLICY_TYPE_INGRESS)
		case networkingv1.PolicyTypeEgress:
			out = append(out, fedmeshv1.PolicyType_POLICY_TYPE_EGRESS)
		default:
			out = append(out, fedmeshv1.PolicyType_POLICY_TYPE_UNSPECIFIED) // rejected by validation
		}
	}
	return out
}

// ProtocolFromK8s maps a Kubernetes protocol ("" is TCP). ICMP, which
// Kubernetes ports cannot name, maps to the API's ICMP so validation rejects
// it by name; other unknown names map to a value validation rejects.
func ProtocolFromK8s(p corev1.Protocol) fedmeshv1.Protocol {
	switch p {
	case "", corev1.ProtocolTCP:
		return fedmeshv1.Protocol_PROTOCOL_TCP
	case corev1.ProtocolUDP:
		return fedmeshv1.Protocol_PROTOCOL_UDP
	case corev1.ProtocolSCTP:
		return fedmeshv1.Protocol_PROTOCOL_SCTP
	case "ICMP":
		return fedmeshv1.Protocol_PROTOCOL_ICMP
	}
	return fedmeshv1.Protocol(-1)
}

func portsFromK8s(in []networkingv1.NetworkPolicyPort) []*fedmeshv1.NetworkPolicyPort {
	var out []*fedmeshv1.NetworkPolicyPort
	for _, p := range in {
		np := &fedmeshv1.NetworkPolicyPort{}
		if p.Protocol != nil {
			np.Protocol = ProtocolFromK8s(*p.Protocol)
		}
		if p.Port != nil {
			if p.Port.Type == intstr.String {
				np.Port = &fedmeshv1.NetworkPolicyPort_Name{Name: p.Port.StrVal}
			} else {
				np.Port = &fedmeshv1.NetworkPolicyPort_Number{Number: uint32(p.Port.IntVal)}
			}
		}
		if p.EndPort != nil {
			np.EndPort = uint32(*p.EndPort)
		}
		out = append(out, np)
	}
	return out
}

func peersFromK8s(in []networkingv1.NetworkPolicyPeer) []*fedmeshv1.NetworkPolicyPeer {
	var out []*fedmeshv1.NetworkPolicyPeer
	for _, p := range in {
		out = append(out, peerFromK8s(p))
	}
	return out
}

func peerFromK8s(p networkingv1.NetworkPolicyPeer) *fedmeshv1.NetworkPolicyPeer {
	peer := &fedmeshv1.NetworkPolicyPeer{
		PodSelector:       SelectorFromK8s(p.PodSelector),
		NamespaceSelector: SelectorFromK8s(p.NamespaceSelector),
	}
	if p.IPBlock != nil {
		peer.IpBlock = &fedmeshv1.IPBlock{Cidr: p.IPBlock.CIDR, Except: append([]string(nil), p.IPBlock.Except...)}
	}
	return peer
}
