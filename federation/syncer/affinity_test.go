package syncer

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/fedmesh/fedmesh/controlplane/server"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestAffinityOf(t *testing.T) {
	tests := []struct {
		name       string
		ann        map[string]string
		want       fedmeshv1.Affinity
		wantStatus metav1.ConditionStatus
		wantWarn   bool
	}{
		{"no annotation is none, valid", nil, fedmeshv1.Affinity_AFFINITY_UNSPECIFIED, metav1.ConditionTrue, false},
		{"local", map[string]string{AffinityAnnotation: "local"}, fedmeshv1.Affinity_AFFINITY_LOCAL, metav1.ConditionTrue, false},
		{"remote", map[string]string{AffinityAnnotation: "remote"}, fedmeshv1.Affinity_AFFINITY_REMOTE, metav1.ConditionTrue, false},
		{"none", map[string]string{AffinityAnnotation: "none"}, fedmeshv1.Affinity_AFFINITY_NONE, metav1.ConditionTrue, false},
		{"an unknown value is invalid and falls back to none", map[string]string{AffinityAnnotation: "nearest"}, fedmeshv1.Affinity_AFFINITY_UNSPECIFIED, metav1.ConditionFalse, true},
		{"an empty value is invalid", map[string]string{AffinityAnnotation: ""}, fedmeshv1.Affinity_AFFINITY_UNSPECIFIED, metav1.ConditionFalse, true},
		{"case matters, as for every Kubernetes enum", map[string]string{AffinityAnnotation: "Local"}, fedmeshv1.Affinity_AFFINITY_UNSPECIFIED, metav1.ConditionFalse, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "redis", Annotations: tt.ann}}
			a, c, warn := AffinityOf(se)
			if a != tt.want || c.Type != CondAffinityValid || c.Status != tt.wantStatus || c.Message == "" || (warn != nil) != tt.wantWarn {
				t.Errorf("AffinityOf = %v, %+v, %v; want %v, %s, warn %v", a, c, warn, tt.want, tt.wantStatus, tt.wantWarn)
			}
		})
	}
}

// Against a real kube-apiserver and control plane: the annotation reaches
// the federation's export and import; an invalid one gets AffinityValid=
// False and a Warning Event on the ServiceExport and is published as none;
// a syncer's heartbeats make its cluster reachable, its stop makes it
// unreachable after the timeout, and its restart re-admits it.
func TestAffinityAnnotationAndHeartbeatsReachTheFederation(t *testing.T) {
	t.Parallel() // most of its time is a kube-apiserver starting
	env := startFed(t)
	east := env.join("east", "10.1.0.0/16", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := east.kube.CreateNamespace(ctx, "demo", nil); err != nil {
		t.Fatal(err)
	}
	east.exportService(ctx, "demo", "redis", 6379, 6379, "10.1.0.5")
	annotate := func(v string) {
		t.Helper()
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, AffinityAnnotation, v)
		if _, err := east.mcs.MulticlusterV1beta1().ServiceExports("demo").Patch(ctx, "redis", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	imported := func(want fedmeshv1.Affinity) func() error {
		return func() error {
			r, err := fedmeshv1.NewMultiClusterServiceClient(env.conn()).ListServiceImports(ctx, &fedmeshv1.ListServiceImportsRequest{})
			if err != nil || len(r.GetImports()) != 1 {
				return fmt.Errorf("imports %v, %v", r.GetImports(), err)
			}
			imp := r.GetImports()[0]
			if imp.GetAffinity() != want {
				return fmt.Errorf("import affinity %v, want %v", imp.GetAffinity(), want)
			}
			if eps := imp.GetClusters()[0].GetEndpoints(); len(eps) != 1 || !eps[0].GetReady() {
				return fmt.Errorf("import endpoints %v, want the ready backend", eps)
			}
			return nil
		}
	}
	annotate("local")
	stop := east.startSyncer()
	eventually(t, "affinity local in the import", imported(fedmeshv1.Affinity_AFFINITY_LOCAL))
	eventually(t, "AffinityValid=True", func() error {
		return exportCondition(ctx, east.mcs, "demo", "redis", CondAffinityValid, metav1.ConditionTrue, ReasonAffinity)
	})

	annotate("closest")
	eventually(t, "invalid affinity published as none", imported(fedmeshv1.Affinity_AFFINITY_UNSPECIFIED))
	eventually(t, "AffinityValid=False and a Warning Event", func() error {
		if err := exportCondition(ctx, east.mcs, "demo", "redis", CondAffinityValid, metav1.ConditionFalse, ReasonInvalidAffinity); err != nil {
			return err
		}
		return east.eventFor(ctx, "demo", "redis", "Fedmesh"+ReasonInvalidAffinity)
	})

	reach := func(want fedmeshv1.Reachability) func() error {
		return func() error {
			c, err := env.cluster("east")
			if err != nil {
				return err
			}
			if got := c.GetStatus().GetReachability(); got != want {
				return fmt.Errorf("east is %v, want %v", got, want)
			}
			return nil
		}
	}
	eventually(t, "east reachable while its syncer heartbeats", reach(fedmeshv1.Reachability_REACHABILITY_REACHABLE))
	stop()
	stopped := time.Now()
	eventually(t, "east unreachable once its syncer is gone", reach(fedmeshv1.Reachability_REACHABILITY_UNREACHABLE))
	if d := time.Since(stopped); d > server.DefaultClusterTimeout+5*time.Second {
		t.Errorf("withdrawn %v after the syncer stopped; the timeout is %v", d, server.DefaultClusterTimeout)
	}
	east.startSyncer()
	eventually(t, "east re-admitted when its syncer is back", reach(fedmeshv1.Reachability_REACHABILITY_REACHABLE))
}
