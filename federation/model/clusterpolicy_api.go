package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The API carries a ClusterNetworkPolicy's spec as the upstream Go type's
// JSON (fedmeshv1.ClusterNetworkPolicy.spec_json), so the upstream types
// stay the one definition of the spec. This file is that seam: the one
// codec, the edge's check of the API object, and the converters from the
// two sources (a member cluster's object, fedctl's manifest).

// FederatedClusterNetworkPolicyKind is the kind of the manifest users
// write for a federated ClusterNetworkPolicy (apiVersion fedmesh.io/v1).
const FederatedClusterNetworkPolicyKind = "FederatedClusterNetworkPolicy"

// FederatedClusterNetworkPolicy is a ClusterNetworkPolicy spec plus
// clusterSelector on the policy and on each peer, as FederatedNetworkPolicy
// is for NetworkPolicy. fedctl reads it; the control plane stores it as a
// federated fedmeshv1.ClusterNetworkPolicy.
type FederatedClusterNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              FederatedClusterNetworkPolicySpec `json:"spec"`
}

// FederatedClusterNetworkPolicySpec is the upstream spec with its rule
// lists replaced by ones whose peers also carry a clusterSelector. The
// upstream fields are inlined: encoding/json lets the shallower ingress
// and egress fields here win over the embedded ones.
type FederatedClusterNetworkPolicySpec struct {
	cnpv1.ClusterNetworkPolicySpec `json:",inline"`
	// ClusterSelector picks the clusters the policy applies to; absent
	// means every cluster.
	ClusterSelector *metav1.LabelSelector     `json:"clusterSelector,omitempty"`
	Ingress         []FederatedCNPIngressRule `json:"ingress,omitempty"`
	Egress          []FederatedCNPEgressRule  `json:"egress,omitempty"`
}

// FederatedCNPIngressRule is an upstream ingress rule whose peers select
// clusters too.
type FederatedCNPIngressRule struct {
	cnpv1.ClusterNetworkPolicyIngressRule `json:",inline"`
	From                                  []FederatedCNPIngressPeer `json:"from"`
}

// FederatedCNPEgressRule is an upstream egress rule whose peers select
// clusters too.
type FederatedCNPEgressRule struct {
	cnpv1.ClusterNetworkPolicyEgressRule `json:",inline"`
	To                                   []FederatedCNPEgressPeer `json:"to"`
}

// FederatedCNPIngressPeer is an upstream ingress peer plus clusterSelector:
// absent means the subject pod's own cluster, empty every cluster.
type FederatedCNPIngressPeer struct {
	cnpv1.ClusterNetworkPolicyIngressPeer `json:",inline"`
	ClusterSelector                       *metav1.LabelSelector `json:"clusterSelector,omitempty"`
}

// FederatedCNPEgressPeer is an upstream egress peer plus clusterSelector
// (meaningful for namespaces and pods peers only).
type FederatedCNPEgressPeer struct {
	cnpv1.ClusterNetworkPolicyEgressPeer `json:",inline"`
	ClusterSelector                      *metav1.LabelSelector `json:"clusterSelector,omitempty"`
}

// EncodeClusterPolicySpec is the canonical encoding of a spec: the
// upstream type through encoding/json (fields in declaration order, no
// unknown fields), so equal specs have equal bytes.
func EncodeClusterPolicySpec(s *cnpv1.ClusterNetworkPolicySpec) ([]byte, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode ClusterNetworkPolicy spec: %w", err)
	}
	return b, nil
}

// DecodeClusterPolicySpec decodes spec_json strictly: a field the upstream
// type does not have, or anything after the object, is an error (a spec
// written for a newer API version must not lose rules silently).
func DecodeClusterPolicySpec(b []byte) (*cnpv1.ClusterNetworkPolicySpec, error) {
	if len(b) == 0 {
		return nil, errors.New("decode ClusterNetworkPolicy spec: empty")
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	s := &cnpv1.ClusterNetworkPolicySpec{}
	if err := d.Decode(s); err != nil {
		return nil, fmt.Errorf("decode ClusterNetworkPolicy spec: %w", err)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("decode ClusterNetworkPolicy spec: data after the JSON object")
	}
	return s, nil
}

// CanonicalClusterPolicySpec re-encodes spec_json canonically; the edge
// stores that, so replicas, watchers and diffs see one form.
func CanonicalClusterPolicySpec(b []byte) ([]byte, error) {
	s, err := DecodeClusterPolicySpec(b)
	if err != nil {
		return nil, err
	}
	return EncodeClusterPolicySpec(s)
}

// ValidateApplyClusterPolicies checks a batch of ClusterNetworkPolicies of
// one owner (a cluster, or the federation when cluster is empty): every
// policy's source fields, its name and spec as the upstream CRD checks
// them (ValidateClusterNetworkPolicy), duplicates and the batch size. One
// invalid policy refuses the whole batch.
func ValidateApplyClusterPolicies(req *fedmeshv1.ApplyClusterPoliciesRequest) error {
	var errs field.ErrorList
	if c := req.GetCluster(); c != "" {
		errs = append(errs, ClusterName(field.NewPath("cluster"), c)...)
	}
	p := field.NewPath("policies")
	errs = append(errs, tooMany(p, len(req.GetPolicies()), MaxBatch)...)
	seen := map[string]int{}
	for i, pol := range req.GetPolicies() {
		pp := p.Index(i)
		if pol == nil {
			errs = append(errs, field.Required(pp, ""))
			continue
		}
		if pol.GetCluster() != req.GetCluster() {
			errs = append(errs, field.Invalid(pp.Child("cluster"), pol.GetCluster(), fmt.Sprintf("must equal the batch's owner %q", req.GetCluster())))
		}
		errs = append(errs, validateClusterPolicy(pp, pol)...)
		if j, dup := seen[pol.GetName()]; dup {
			errs = append(errs, field.Duplicate(pp.Child("name"), fmt.Sprintf("%s (also %s)", pol.GetName(), p.Index(j))))
		}
		seen[pol.GetName()] = i
	}
	errs = append(errs, validateResync(field.NewPath("resync"), req.GetResync())...)
	return AsError(errs)
}

// ValidateClusterPolicy checks one API object at path p.
func ValidateClusterPolicy(p *field.Path, pol *fedmeshv1.ClusterNetworkPolicy) field.ErrorList {
	return validateClusterPolicy(p, pol)
}

func validateClusterPolicy(p *field.Path, pol *fedmeshv1.ClusterNetworkPolicy) field.ErrorList {
	var errs field.ErrorList
	federated := pol.GetCluster() == ""
	if federated {
		errs = append(errs, validateSelector(p.Child("clusterSelector"), pol.GetClusterSelector())...)
	} else {
		errs = append(errs, ClusterName(p.Child("cluster"), pol.GetCluster())...)
		if pol.GetClusterSelector() != nil {
			errs = append(errs, field.Forbidden(p.Child("clusterSelector"), "only a federated policy selects clusters; a synced ClusterNetworkPolicy applies to its own cluster"))
		}
		if len(pol.GetIngressPeerClusters()) > 0 || len(pol.GetEgressPeerClusters()) > 0 {
			errs = append(errs, field.Forbidden(p.Child("ingressPeerClusters"), "only a federated policy's peers select clusters; a synced policy's peers are in its own cluster"))
		}
	}
	spec, err := DecodeClusterPolicySpec(pol.GetSpecJson())
	if err != nil {
		errs = append(errs, field.Invalid(p.Child("specJson"), "", fmt.Sprintf("%v; it must be a policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicySpec", err)))
		return append(errs, dnsSubdomain(p.Child("metadata", "name"), pol.GetName())...)
	}
	errs = append(errs, ValidateClusterNetworkPolicy(p, pol.GetName(), spec)...)
	errs = append(errs, validatePeerScopes(p.Child("ingressPeerClusters"), pol.GetIngressPeerClusters(), func(i int) (int, bool) {
		if i < len(spec.Ingress) {
			return len(spec.Ingress[i].From), true
		}
		return 0, false
	})...)
	errs = append(errs, validatePeerScopes(p.Child("egressPeerClusters"), pol.GetEgressPeerClusters(), func(i int) (int, bool) {
		if i < len(spec.Egress) {
			return len(spec.Egress[i].To), true
		}
		return 0, false
	})...)
	return errs
}

// validatePeerScopes checks per-peer cluster selectors against the rules
// they belong to: no scope for a rule or a peer that does not exist.
func validatePeerScopes(p *field.Path, rules []*fedmeshv1.ClusterPolicyRulePeers, peers func(i int) (int, bool)) field.ErrorList {
	var errs field.ErrorList
	for i, r := range rules {
		n, ok := peers(i)
		if !ok {
			errs = append(errs, field.Invalid(p.Index(i), len(rules), "more peer scopes than rules"))
			continue
		}
		if len(r.GetPeers()) > n {
			errs = append(errs, field.Invalid(p.Index(i).Child("peers"), len(r.GetPeers()), fmt.Sprintf("the rule has %d peers", n)))
		}
		for j, s := range r.GetPeers() {
			if s.GetClusterSelector() != nil {
				errs = append(errs, validateSelector(p.Index(i).Child("peers").Index(j).Child("clusterSelector"), s.GetClusterSelector())...)
			}
		}
	}
	return errs
}

// ValidateClusterPolicyKey checks a key as DeleteClusterPolicy and
// GetClusterPolicy take it.
func ValidateClusterPolicyKey(p *field.Path, k *fedmeshv1.ClusterPolicyKey) error {
	if k == nil {
		return AsError(field.ErrorList{field.Required(p, "")})
	}
	var errs field.ErrorList
	if k.GetCluster() != "" {
		errs = append(errs, ClusterName(p.Child("cluster"), k.GetCluster())...)
	}
	errs = append(errs, dnsSubdomain(p.Child("name"), k.GetName())...)
	return AsError(errs)
}

// ClusterPolicyFromK8s converts a member cluster's ClusterNetworkPolicy
// into the API object synced from cluster.
func ClusterPolicyFromK8s(cluster string, cnp *cnpv1.ClusterNetworkPolicy) (*fedmeshv1.ClusterNetworkPolicy, error) {
	b, err := EncodeClusterPolicySpec(&cnp.Spec)
	if err != nil {
		return nil, err
	}
	return &fedmeshv1.ClusterNetworkPolicy{Cluster: cluster, Name: cnp.Name, SpecJson: b}, nil
}

// ClusterPolicyFromFederated converts a FederatedClusterNetworkPolicy
// manifest into the federated API object.
func ClusterPolicyFromFederated(f *FederatedClusterNetworkPolicy) (*fedmeshv1.ClusterNetworkPolicy, error) {
	spec := f.Spec.ClusterNetworkPolicySpec
	spec.Ingress, spec.Egress = nil, nil
	out := &fedmeshv1.ClusterNetworkPolicy{Name: f.Name, ClusterSelector: SelectorFromK8s(f.Spec.ClusterSelector)}
	scoped := false
	for _, r := range f.Spec.Ingress {
		rule := r.ClusterNetworkPolicyIngressRule
		rule.From = nil
		scopes := &fedmeshv1.ClusterPolicyRulePeers{}
		for _, peer := range r.From {
			rule.From = append(rule.From, peer.ClusterNetworkPolicyIngressPeer)
			scopes.Peers = append(scopes.Peers, &fedmeshv1.ClusterPolicyPeerScope{ClusterSelector: SelectorFromK8s(peer.ClusterSelector)})
			scoped = scoped || peer.ClusterSelector != nil
		}
		spec.Ingress = append(spec.Ingress, rule)
		out.IngressPeerClusters = append(out.IngressPeerClusters, scopes)
	}
	if !scoped {
		out.IngressPeerClusters = nil
	}
	scoped = false
	for _, r := range f.Spec.Egress {
		rule := r.ClusterNetworkPolicyEgressRule
		rule.To = nil
		scopes := &fedmeshv1.ClusterPolicyRulePeers{}
		for _, peer := range r.To {
			rule.To = append(rule.To, peer.ClusterNetworkPolicyEgressPeer)
			scopes.Peers = append(scopes.Peers, &fedmeshv1.ClusterPolicyPeerScope{ClusterSelector: SelectorFromK8s(peer.ClusterSelector)})
			scoped = scoped || peer.ClusterSelector != nil
		}
		spec.Egress = append(spec.Egress, rule)
		out.EgressPeerClusters = append(out.EgressPeerClusters, scopes)
	}
	if !scoped {
		out.EgressPeerClusters = nil
	}
	b, err := EncodeClusterPolicySpec(&spec)
	if err != nil {
		return nil, err
	}
	out.SpecJson = b
	return out, nil
}

// FederatedFromClusterPolicy is ClusterPolicyFromFederated's inverse, for
// showing a stored federated policy as the manifest that makes it.
func FederatedFromClusterPolicy(p *fedmeshv1.ClusterNetworkPolicy) (*FederatedClusterNetworkPolicy, error) {
	spec, err := DecodeClusterPolicySpec(p.GetSpecJson())
	if err != nil {
		return nil, err
	}
	f := &FederatedClusterNetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "fedmesh.io/v1", Kind: FederatedClusterNetworkPolicyKind},
		ObjectMeta: metav1.ObjectMeta{Name: p.GetName()},
	}
	f.Spec.ClusterSelector = SelectorToK8s(p.GetClusterSelector())
	scope := func(rules []*fedmeshv1.ClusterPolicyRulePeers, i, j int) *metav1.LabelSelector {
		if i < len(rules) && j < len(rules[i].GetPeers()) {
			return SelectorToK8s(rules[i].GetPeers()[j].GetClusterSelector())
		}
		return nil
	}
	for i, r := range spec.Ingress {
		fr := FederatedCNPIngressRule{ClusterNetworkPolicyIngressRule: r}
		for j, peer := range r.From {
			fr.From = append(fr.From, FederatedCNPIngressPeer{ClusterNetworkPolicyIngressPeer: peer, ClusterSelector: scope(p.GetIngressPeerClusters(), i, j)})
		}
		fr.ClusterNetworkPolicyIngressRule.From = nil
		f.Spec.Ingress = append(f.Spec.Ingress, fr)
	}
	for i, r := range spec.Egress {
		fr := FederatedCNPEgressRule{ClusterNetworkPolicyEgressRule: r}
		for j, peer := range r.To {
			fr.To = append(fr.To, FederatedCNPEgressPeer{ClusterNetworkPolicyEgressPeer: peer, ClusterSelector: scope(p.GetEgressPeerClusters(), i, j)})
		}
		fr.ClusterNetworkPolicyEgressRule.To = nil
		f.Spec.Egress = append(f.Spec.Egress, fr)
	}
	spec.Ingress, spec.Egress = nil, nil
	f.Spec.ClusterNetworkPolicySpec = *spec
	return f, nil
}
