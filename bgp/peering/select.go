package peering

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Selects reports whether peer p selects the node with nodeLabels of the
// cluster with clusterLabels: an absent selector selects everything, a
// present one what it matches (an empty one everything, as in
// Kubernetes). A selector that does not parse (the edge refuses those)
// selects nothing.
func Selects(p *fedmeshv1.BGPPeerConfig, clusterLabels, nodeLabels map[string]string) bool {
	return matches(p.GetClusterSelector(), clusterLabels) && matches(p.GetNodeSelector(), nodeLabels)
}

func matches(s *fedmeshv1.LabelSelector, l map[string]string) bool {
	if s == nil {
		return true
	}
	sel, err := metav1.LabelSelectorAsSelector(model.SelectorToK8s(s))
	if err != nil {
		return false
	}
	return sel.Matches(labels.Set(l))
}

func selector(p *field.Path, s *fedmeshv1.LabelSelector) field.ErrorList {
	if s == nil {
		return nil
	}
	return metav1validation.ValidateLabelSelector(model.SelectorToK8s(s), metav1validation.LabelSelectorValidationOptions{}, p)
}

func dnsLabel(p *field.Path, v string) field.ErrorList {
	if v == "" {
		return field.ErrorList{field.Required(p, "")}
	}
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Label(v) {
		errs = append(errs, field.Invalid(p, v, msg))
	}
	return errs
}

func asError(errs field.ErrorList) error { return model.AsError(errs) }
