package syncer

import (
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/services"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Inputs are the cluster objects the decision about one key reads, as the
// informer caches hold them; nil means absent. Only the fields of the
// key's kind are looked at.
type Inputs struct {
	// KindEndpoint: the pod and its namespace.
	Pod       *corev1.Pod
	Namespace *corev1.Namespace
	// KindPolicy.
	Policy *networkingv1.NetworkPolicy
	// KindExport: the ServiceExport, the Service of the same name and that
	// Service's EndpointSlices.
	Export  *mcsv1beta1.ServiceExport
	Service *corev1.Service
	Slices  []*discoveryv1.EndpointSlice
	// KindClusterPolicy.
	ClusterPolicy *cnpv1.ClusterNetworkPolicy
}

// Decision is what the syncer does about one key, as a value: what the
// control plane should hold and what to report in the cluster. The
// publisher loop acts on it; computing it writes nothing.
type Decision struct {
	Key Key
	// Value is what the control plane should hold for Key; nil when the
	// object is gone, out of the export scope, or skipped.
	Value proto.Message
	// Skip says why an object that exists is not published (Event and
	// metric); nil otherwise.
	Skip *SkipError
	// Object is the cluster object Skip is reported on.
	Object runtime.Object
	// ExportConditions are the MCS conditions the key's ServiceExport
	// should carry now: Valid, and Ready=False when it is not valid. Ready
	// becomes True only once the control plane committed the export, which
	// the publisher loop knows after the write.
	ExportConditions []metav1.Condition
	// Warn is a problem with a published object, reported as a Warning
	// Event on Object once per reason (an invalid affinity annotation).
	Warn *SkipError
}

// Decide computes the decision about key k of cluster from its objects. spec
// is the cluster's registration (export scope, pod CIDRs). Pure.
func Decide(cluster string, spec *fedmeshv1.Cluster, k Key, in Inputs) Decision {
	d := Decision{Key: k}
	// A ClusterNetworkPolicy is cluster-scoped: the namespace export scope
	// does not apply to it.
	if k.Kind != KindClusterPolicy && !model.InScope(spec.GetExports(), k.Namespace) {
		return d
	}
	var err error
	switch k.Kind {
	case KindEndpoint:
		if in.Pod == nil {
			return d
		}
		d.Object = in.Pod
		var ep *fedmeshv1.Endpoint
		if ep, err = EndpointFromPod(cluster, in.Pod, in.Namespace, spec); ep != nil {
			d.Value = ep
		}
	case KindPolicy:
		if in.Policy == nil {
			return d
		}
		d.Object = in.Policy
		var p *fedmeshv1.Policy
		if p, err = policyFromK8s(cluster, in.Policy); p != nil {
			d.Value = p
		}
	case KindExport:
		if in.Export == nil {
			return d
		}
		d.Object = in.Export
		var x *fedmeshv1.ServiceExport
		if x, err = ExportFromService(cluster, in.Export, in.Service, in.Slices); x != nil {
			d.Value = x
		}
		d.ExportConditions = validConditions(err)
		if x != nil {
			var c metav1.Condition
			x.Affinity, c, d.Warn = AffinityOf(in.Export)
			d.ExportConditions = append(d.ExportConditions, c)
		}
	case KindClusterPolicy:
		if in.ClusterPolicy == nil {
			return d
		}
		d.Object = in.ClusterPolicy
		var p *fedmeshv1.ClusterNetworkPolicy
		if p, err = clusterPolicyFromK8s(cluster, in.ClusterPolicy); p != nil {
			d.Value = p
		}
	}
	if err != nil {
		se, ok := IsSkip(err)
		if !ok {
			se = &SkipError{Reason: "Error", Message: err.Error()}
		}
		d.Skip = se
	}
	return d
}

func policyFromK8s(cluster string, np *networkingv1.NetworkPolicy) (*fedmeshv1.Policy, error) {
	p := model.PolicyFromK8s(cluster, np)
	if err := model.ValidatePolicy(p); err != nil {
		return nil, skip("Invalid", "the federation rejects NetworkPolicy %s/%s: %v", np.Namespace, np.Name, err)
	}
	return p, nil
}

// validConditions are the conditions of a ServiceExport whose mapping
// returned err: Valid=True, or Valid=False with the skip's reason and, as
// the export is no longer published, Ready=False.
func validConditions(err error) []metav1.Condition {
	if err == nil {
		return []metav1.Condition{{Type: services.CondValid, Status: metav1.ConditionTrue, Reason: string(mcsv1beta1.ServiceExportReasonValid), Message: "the Service is exported to the federation"}}
	}
	reason, msg := "Invalid", err.Error()
	if sk, ok := IsSkip(err); ok {
		reason, msg = sk.Reason, sk.Message
	}
	return []metav1.Condition{
		{Type: services.CondValid, Status: metav1.ConditionFalse, Reason: reason, Message: msg},
		{Type: services.CondReady, Status: metav1.ConditionFalse, Reason: string(mcsv1beta1.ServiceExportReasonFailed), Message: msg},
	}
}

// readyCondition is the Ready condition of an export the control plane has
// committed.
func readyCondition() metav1.Condition {
	return metav1.Condition{Type: services.CondReady, Status: metav1.ConditionTrue, Reason: string(mcsv1beta1.ServiceExportReasonExported), Message: "the federation has committed the export"}
}

// conflictCondition is the Kubernetes form of the federation's Conflict
// condition of one export.
func conflictCondition(c *fedmeshv1.ServiceCondition) metav1.Condition {
	mc := metav1.Condition{Type: services.CondConflict, Status: metav1.ConditionStatus(c.GetStatus()), Reason: c.GetReason(), Message: c.GetMessage()}
	if mc.Reason == "" {
		mc.Reason = services.ReasonNoConflicts
	}
	return mc
}
