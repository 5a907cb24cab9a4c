package syncer

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/fedmesh/fedmesh/federation/services"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The decision is a value: what to publish, what to report and which
// export conditions to set, with no cluster or control plane involved.
func TestDecideReturnsValueSkipAndConditions(t *testing.T) {
	se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	// A policy the federation rejects: a port range with its end below its
	// start.
	badPort := intstr.FromInt32(90)
	badPolicy := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "bad"}, Spec: networkingv1.NetworkPolicySpec{
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &badPort, EndPort: new(int32(80))}}}},
	}}
	scoped := &fedmeshv1.Cluster{Name: "east", PodCidrs: testSpec.PodCidrs, Exports: &fedmeshv1.NamespaceScope{ExcludeNames: []string{"private"}}}
	type cond struct {
		typ    string
		status metav1.ConditionStatus
		reason string
	}
	tests := []struct {
		name      string
		spec      *fedmeshv1.Cluster
		key       Key
		in        Inputs
		wantValue bool
		wantSkip  string // reason; "" for none
		wantObj   bool
		wantConds []cond
	}{
		{name: "a pod with an IP is published", key: Key{KindEndpoint, "shop", "cart-7d9f"}, in: Inputs{Pod: testPod(nil)}, wantValue: true, wantObj: true},
		{name: "a pod without an IP is skipped, on the pod", key: Key{KindEndpoint, "shop", "cart-7d9f"},
			in: Inputs{Pod: testPod(func(p *corev1.Pod) { p.Status.PodIPs = nil })}, wantSkip: "NoPodIP", wantObj: true},
		{name: "a gone pod is neither published nor reported", key: Key{KindEndpoint, "shop", "gone"}},
		{name: "a namespace outside the export scope gives nothing", spec: scoped, key: Key{KindEndpoint, "private", "cart-7d9f"},
			in: Inputs{Pod: testPod(func(p *corev1.Pod) { p.Namespace = "private" })}},
		{name: "a policy the federation rejects is skipped as Invalid", key: Key{KindPolicy, "shop", "bad"}, in: Inputs{Policy: badPolicy}, wantSkip: "Invalid", wantObj: true},
		{name: "an export without its Service is Valid=False NoService and not Ready", key: Key{KindExport, "shop", "cart"}, in: Inputs{Export: se},
			wantSkip: "NoService", wantObj: true, wantConds: []cond{
				{services.CondValid, metav1.ConditionFalse, "NoService"},
				{services.CondReady, metav1.ConditionFalse, string(mcsv1beta1.ServiceExportReasonFailed)},
			}},
		{name: "an export with its Service is Valid; Ready waits for the commit", key: Key{KindExport, "shop", "cart"}, in: Inputs{Export: se, Service: svc},
			wantValue: true, wantObj: true, wantConds: []cond{{services.CondValid, metav1.ConditionTrue, "Valid"}, {CondAffinityValid, metav1.ConditionTrue, ReasonAffinity}}},
		{name: "a gone export sets no condition", key: Key{KindExport, "shop", "cart"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec
			if spec == nil {
				spec = testSpec
			}
			d := Decide("east", spec, tc.key, tc.in)
			if d.Key != tc.key {
				t.Errorf("key %v, want %v", d.Key, tc.key)
			}
			if (d.Value != nil) != tc.wantValue {
				t.Errorf("value %v, want one: %v", d.Value, tc.wantValue)
			}
			switch {
			case tc.wantSkip == "" && d.Skip != nil:
				t.Errorf("skip %v, want none", d.Skip)
			case tc.wantSkip != "" && (d.Skip == nil || d.Skip.Reason != tc.wantSkip || d.Skip.Message == ""):
				t.Errorf("skip %v, want reason %s with a message", d.Skip, tc.wantSkip)
			}
			if (d.Object != nil) != tc.wantObj {
				t.Errorf("object %v, want one: %v", d.Object, tc.wantObj)
			}
			if len(d.ExportConditions) != len(tc.wantConds) {
				t.Fatalf("conditions %+v, want %+v", d.ExportConditions, tc.wantConds)
			}
			for i, w := range tc.wantConds {
				c := d.ExportConditions[i]
				if c.Type != w.typ || c.Status != w.status || c.Reason != w.reason || c.Message == "" {
					t.Errorf("condition %d = %+v, want %+v with a message", i, c, w)
				}
			}
		})
	}
}
