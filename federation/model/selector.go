package model

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// SelectorToK8s converts an API label selector to the Kubernetes type,
// keeping nil as nil (Kubernetes gives absent and empty selectors different
// meanings).
func SelectorToK8s(s *fedmeshv1.LabelSelector) *metav1.LabelSelector {
	if s == nil {
		return nil
	}
	out := &metav1.LabelSelector{}
	if len(s.GetMatchLabels()) > 0 {
		out.MatchLabels = make(map[string]string, len(s.GetMatchLabels()))
		for k, v := range s.GetMatchLabels() {
			out.MatchLabels[k] = v
		}
	}
	for _, r := range s.GetMatchExpressions() {
		out.MatchExpressions = append(out.MatchExpressions, metav1.LabelSelectorRequirement{
			Key:      r.GetKey(),
			Operator: metav1.LabelSelectorOperator(r.GetOperator()),
			Values:   append([]string(nil), r.GetValues()...),
		})
	}
	return out
}

// SelectorFromK8s converts a Kubernetes label selector to the API type.
func SelectorFromK8s(s *metav1.LabelSelector) *fedmeshv1.LabelSelector {
	if s == nil {
		return nil
	}
	out := &fedmeshv1.LabelSelector{}
	if len(s.MatchLabels) > 0 {
		out.MatchLabels = make(map[string]string, len(s.MatchLabels))
		for k, v := range s.MatchLabels {
			out.MatchLabels[k] = v
		}
	}
	for _, r := range s.MatchExpressions {
		out.MatchExpressions = append(out.MatchExpressions, &fedmeshv1.LabelSelectorRequirement{
			Key:      r.Key,
			Operator: string(r.Operator),
			Values:   append([]string(nil), r.Values...),
		})
	}
	return out
}

// validateSelector checks a selector with Kubernetes' own rules (label keys
// and values, operators, values present exactly for In/NotIn), plus duplicate
// values, which Kubernetes tolerates but which always hide a mistake.
func validateSelector(p *field.Path, s *fedmeshv1.LabelSelector) field.ErrorList {
	if s == nil {
		return nil
	}
	errs := metav1validation.ValidateLabelSelector(SelectorToK8s(s), metav1validation.LabelSelectorValidationOptions{}, p)
	for i, r := range s.GetMatchExpressions() {
		seen := map[string]bool{}
		for j, v := range r.GetValues() {
			if seen[v] {
				errs = append(errs, field.Duplicate(p.Child("matchExpressions").Index(i).Child("values").Index(j), v))
			}
			seen[v] = true
		}
	}
	return errs
}
