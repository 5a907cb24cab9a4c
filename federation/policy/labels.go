package policy

import (
	"slices"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// PodLabelKeys returns, sorted and unique, every pod label key the policy's
// selectors read: the pod selector of the pods it applies to and every
// peer's pod selector, matchLabels keys and matchExpressions keys of every
// operator (Exists and DoesNotExist read a key as much as In does).
// Namespace and cluster selectors read namespace and cluster labels, which
// every identity already carries by name.
//
// The control plane counts these keys for identity (federation/identity's
// Relevance), so pods that some selector tells apart never share an
// identity, and a verdict on identities equals the verdict on the pods'
// full label sets. A selector over pod labels that a policy kind gains must
// be added here: TestPodLabelKeysKnowsEverySelectorOfAPolicy walks the
// Policy message and fails on a selector field it does not classify.
func PodLabelKeys(p *fedmeshv1.Policy) []string {
	var keys []string
	add := func(s *fedmeshv1.LabelSelector) {
		for k := range s.GetMatchLabels() {
			keys = append(keys, k)
		}
		for _, r := range s.GetMatchExpressions() {
			keys = append(keys, r.GetKey())
		}
	}
	spec := p.GetSpec()
	add(spec.GetPodSelector())
	for _, r := range spec.GetIngress() {
		for _, peer := range r.GetFrom() {
			add(peer.GetPodSelector())
		}
	}
	for _, r := range spec.GetEgress() {
		for _, peer := range r.GetTo() {
			add(peer.GetPodSelector())
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}
