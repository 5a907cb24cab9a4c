package syncer

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/mcs-api/config/crd"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	"sigs.k8s.io/yaml"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// EnsureCRDs installs the MCS API CRDs (ServiceExport, ServiceImport, from
// sigs.k8s.io/mcs-api) when the cluster lacks them, and waits until the
// cluster serves them. CRDs already present are left as they are: another
// MCS implementation may own them.
func EnsureCRDs(ctx context.Context, cfg *rest.Config) error {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("install MCS CRDs: %w", err)
	}
	if servesMCS(kube.Discovery()) {
		return nil
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("install MCS CRDs: %w", err)
	}
	for _, doc := range [][]byte{crd.ServiceExportCRD, crd.ServiceImportCRD} {
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
			return fmt.Errorf("decode embedded MCS CRD: %w", err)
		}
		_, err := dyn.Resource(crdGVR).Create(ctx, obj, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("install CRD %s (the syncer needs rights to create CustomResourceDefinitions, or install it yourself): %w", obj.GetName(), err)
		}
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !servesMCS(kube.Discovery()) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the MCS CRDs to be served: %w", ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

func servesMCS(d discovery.DiscoveryInterface) bool {
	rl, err := d.ServerResourcesForGroupVersion(mcsv1beta1.GroupVersion.String())
	if err != nil {
		return false
	}
	have := map[string]bool{}
	for _, r := range rl.APIResources {
		have[r.Name] = true
	}
	return have[mcsv1beta1.ServiceExportPluralName] && have[mcsv1beta1.ServiceImportPluralName]
}
