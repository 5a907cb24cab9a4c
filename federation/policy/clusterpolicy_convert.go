package policy

import (
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ClusterPolicyFromProto converts the API's ClusterNetworkPolicy into the
// form the tiers take: the upstream spec decoded from its JSON (model's
// one codec), the source, and, for a federated policy, the cluster
// selectors of the policy and of each peer. A synced policy's cluster
// scopes are dropped: its peers are in its own cluster, whatever it
// carries. It is the one proto→ClusterPolicy adapter: UpdateFromEvent
// (agents and Reach) and every other reader call it.
func ClusterPolicyFromProto(p *fedmeshv1.ClusterNetworkPolicy) (*ClusterPolicy, error) {
	spec, err := model.DecodeClusterPolicySpec(p.GetSpecJson())
	if err != nil {
		return nil, fmt.Errorf("convert cluster network policy %s: %w", ClusterPolicyKey{Cluster: p.GetCluster(), Name: p.GetName()}, err)
	}
	cp := &ClusterPolicy{Cluster: p.GetCluster(), Name: p.GetName(), Spec: *spec}
	if cp.Cluster != "" {
		return cp, nil
	}
	cp.ClusterSelector = model.SelectorToK8s(p.GetClusterSelector())
	cp.IngressPeerClusters = peerScopesFromProto(p.GetIngressPeerClusters(), len(spec.Ingress))
	cp.EgressPeerClusters = peerScopesFromProto(p.GetEgressPeerClusters(), len(spec.Egress))
	return cp, nil
}

// peerScopesFromProto keeps at most one entry per rule; nil when no rule
// has a scope (every peer in the subject's own cluster).
func peerScopesFromProto(in []*fedmeshv1.ClusterPolicyRulePeers, rules int) [][]*metav1.LabelSelector {
	var out [][]*metav1.LabelSelector
	for i, r := range in {
		if i >= rules {
			break
		}
		var sels []*metav1.LabelSelector
		for _, s := range r.GetPeers() {
			sels = append(sels, model.SelectorToK8s(s.GetClusterSelector()))
		}
		out = append(out, sels)
	}
	return out
}

// ClusterPolicyToProto is ClusterPolicyFromProto's inverse.
func ClusterPolicyToProto(cp *ClusterPolicy) (*fedmeshv1.ClusterNetworkPolicy, error) {
	b, err := model.EncodeClusterPolicySpec(&cp.Spec)
	if err != nil {
		return nil, err
	}
	p := &fedmeshv1.ClusterNetworkPolicy{Cluster: cp.Cluster, Name: cp.Name, SpecJson: b}
	if cp.Cluster != "" {
		return p, nil
	}
	p.ClusterSelector = model.SelectorFromK8s(cp.ClusterSelector)
	p.IngressPeerClusters = peerScopesToProto(cp.IngressPeerClusters)
	p.EgressPeerClusters = peerScopesToProto(cp.EgressPeerClusters)
	return p, nil
}

func peerScopesToProto(in [][]*metav1.LabelSelector) []*fedmeshv1.ClusterPolicyRulePeers {
	var out []*fedmeshv1.ClusterPolicyRulePeers
	for _, r := range in {
		rp := &fedmeshv1.ClusterPolicyRulePeers{}
		for _, s := range r {
			rp.Peers = append(rp.Peers, &fedmeshv1.ClusterPolicyPeerScope{ClusterSelector: model.SelectorFromK8s(s)})
		}
		out = append(out, rp)
	}
	return out
}

// ClusterPolicyPodLabelKeys is PodLabelKeys for a ClusterNetworkPolicy:
// sorted and unique, every pod label key its subject's and its peers' pod
// selectors read, so the control plane counts them for identity and pods
// a tier rule tells apart never share an identity. A spec that does not
// decode reads no key (the edge refuses such a spec; a replica must still
// apply the entry the same way as every other).
func ClusterPolicyPodLabelKeys(p *fedmeshv1.ClusterNetworkPolicy) []string {
	spec, err := model.DecodeClusterPolicySpec(p.GetSpecJson())
	if err != nil {
		return nil
	}
	var keys []string
	add := func(s *metav1.LabelSelector) {
		for k := range s.MatchLabels {
			keys = append(keys, k)
		}
		for _, r := range s.MatchExpressions {
			keys = append(keys, r.Key)
		}
	}
	if pods := spec.Subject.Pods; pods != nil {
		add(&pods.PodSelector)
	}
	for _, r := range spec.Ingress {
		for _, peer := range r.From {
			if peer.Pods != nil {
				add(&peer.Pods.PodSelector)
			}
		}
	}
	for _, r := range spec.Egress {
		for _, peer := range r.To {
			if peer.Pods != nil {
				add(&peer.Pods.PodSelector)
			}
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}
