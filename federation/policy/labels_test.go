package policy

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestPodLabelKeysReadsTargetAndPeerPodSelectorsOnly(t *testing.T) {
	sel := func(labels map[string]string, exprKeys ...string) *fedmeshv1.LabelSelector {
		s := &fedmeshv1.LabelSelector{MatchLabels: labels}
		for _, k := range exprKeys {
			s.MatchExpressions = append(s.MatchExpressions, &fedmeshv1.LabelSelectorRequirement{Key: k, Operator: "Exists"})
		}
		return s
	}
	p := &fedmeshv1.Policy{
		Kind:            fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED,
		ClusterSelector: sel(map[string]string{"region": "eu"}),
		Spec: &fedmeshv1.NetworkPolicySpec{
			PodSelector: sel(map[string]string{"statefulset.kubernetes.io/pod-name": "db-0"}, "app"),
			Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{From: []*fedmeshv1.NetworkPolicyPeer{
				{PodSelector: sel(nil, "pod-template-hash", "app"), NamespaceSelector: sel(map[string]string{"team": "a"}), ClusterSelector: sel(map[string]string{"env": "prod"})},
				{IpBlock: &fedmeshv1.IPBlock{Cidr: "10.0.0.0/8"}},
			}}},
			Egress: []*fedmeshv1.NetworkPolicyEgressRule{{To: []*fedmeshv1.NetworkPolicyPeer{
				{PodSelector: sel(map[string]string{"fedmesh.io/role": "primary"})},
				{NamespaceSelector: sel(nil, "kubernetes.io/metadata.name")},
			}}},
		},
	}
	want := []string{"app", "fedmesh.io/role", "pod-template-hash", "statefulset.kubernetes.io/pod-name"}
	if got := PodLabelKeys(p); !slices.Equal(got, want) {
		t.Fatalf("PodLabelKeys = %q, want %q", got, want)
	}
	if got := PodLabelKeys(&fedmeshv1.Policy{}); len(got) != 0 {
		t.Fatalf("empty policy reads %q", got)
	}
}

// TestPodLabelKeysKnowsEverySelectorOfAPolicy walks the Policy message for
// LabelSelector fields. A new one (a ClusterNetworkPolicy subject, say)
// fails here until it is classified: a pod selector must then be read by
// PodLabelKeys, or identities would merge pods the new selector tells apart.
func TestPodLabelKeysKnowsEverySelectorOfAPolicy(t *testing.T) {
	podSelectors := map[string]bool{
		"spec.pod_selector":              true,
		"spec.ingress.from.pod_selector": true,
		"spec.egress.to.pod_selector":    true,
	}
	otherSelectors := map[string]bool{
		"cluster_selector":                     true,
		"spec.ingress.from.namespace_selector": true,
		"spec.ingress.from.cluster_selector":   true,
		"spec.egress.to.namespace_selector":    true,
		"spec.egress.to.cluster_selector":      true,
	}
	selector := (&fedmeshv1.LabelSelector{}).ProtoReflect().Descriptor().FullName()
	var walk func(prefix string, md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool)
	found := map[string]bool{}
	walk = func(prefix string, md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) {
		if seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		defer delete(seen, md.FullName())
		fs := md.Fields()
		for i := range fs.Len() {
			f := fs.Get(i)
			if f.Message() == nil || f.IsMap() {
				continue
			}
			path := prefix + string(f.Name())
			if f.Message().FullName() == selector {
				found[path] = true
				if !podSelectors[path] && !otherSelectors[path] {
					t.Errorf("selector field %s is not classified: if it selects pods, PodLabelKeys must read it", path)
				}
				continue
			}
			walk(path+".", f.Message(), seen)
		}
	}
	walk("", (&fedmeshv1.Policy{}).ProtoReflect().Descriptor(), map[protoreflect.FullName]bool{})
	for p := range podSelectors {
		if !found[p] {
			t.Errorf("pod selector %s listed here no longer exists", p)
		}
	}
}
