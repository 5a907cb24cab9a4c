package syncer

// Affinity: a ServiceExport says which clusters' backends importers
// prefer with the annotation fedmesh.io/affinity (local, remote or none;
// federation/services.Choose applies it). An invalid value is not a reason
// to withdraw the export: the syncer publishes it with the default (none),
// sets the AffinityValid condition to False on the ServiceExport and
// records a Warning Event, once per value.

import (
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

const (
	// AffinityAnnotation on a ServiceExport selects its affinity.
	AffinityAnnotation = "fedmesh.io/affinity"
	// CondAffinityValid is the ServiceExport condition saying whether the
	// annotation's value is understood.
	CondAffinityValid = "AffinityValid"
	// ReasonInvalidAffinity is the reason of an invalid value (condition
	// and Event).
	ReasonInvalidAffinity = "InvalidAffinity"
	// ReasonAffinity is the reason of a valid (or absent) value.
	ReasonAffinity = "AffinityInForce"
)

// AffinityOf reads the affinity of a ServiceExport. It returns the
// affinity in force, the AffinityValid condition and, for an invalid
// value, the problem to report as an Event (nil otherwise). Pure.
func AffinityOf(se *mcsv1beta1.ServiceExport) (fedmeshv1.Affinity, metav1.Condition, *SkipError) {
	v, set := se.Annotations[AffinityAnnotation]
	var a fedmeshv1.Affinity
	switch strings.TrimSpace(v) {
	case "local":
		a = fedmeshv1.Affinity_AFFINITY_LOCAL
	case "remote":
		a = fedmeshv1.Affinity_AFFINITY_REMOTE
	case "none":
		a = fedmeshv1.Affinity_AFFINITY_NONE
	case "":
		if !set {
			return fedmeshv1.Affinity_AFFINITY_UNSPECIFIED, metav1.Condition{Type: CondAffinityValid, Status: metav1.ConditionTrue, Reason: ReasonAffinity,
				Message: "no " + AffinityAnnotation + " annotation: affinity none (every ready backend of every cluster)"}, nil
		}
	}
	if a == fedmeshv1.Affinity_AFFINITY_UNSPECIFIED {
		msg := fmt.Sprintf("annotation %s=%q is not one of local, remote, none; using none (every ready backend of every cluster) until it is fixed", AffinityAnnotation, v)
		return fedmeshv1.Affinity_AFFINITY_UNSPECIFIED, metav1.Condition{Type: CondAffinityValid, Status: metav1.ConditionFalse, Reason: ReasonInvalidAffinity, Message: msg},
			&SkipError{Reason: ReasonInvalidAffinity, Message: msg}
	}
	return a, metav1.Condition{Type: CondAffinityValid, Status: metav1.ConditionTrue, Reason: ReasonAffinity,
		Message: fmt.Sprintf("affinity %s", strings.TrimSpace(v))}, nil
}
