package kubetest

import (
	"context"
	_ "embed"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

// ClusterNetworkPolicyCRD is the upstream ClusterNetworkPolicy CRD
// (policy.networking.k8s.io/v1alpha2), experimental channel, as the module
// sigs.k8s.io/network-policy-api v0.3.0 ships it: a byte-for-byte copy of
// config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml
// from the module cache (`go list -m -f '{{.Dir}}' sigs.k8s.io/network-policy-api`),
// which TestEmbeddedCRDIsTheModules holds it to. The module's Go package
// does not embed its CRDs, hence the copy. The experimental channel is the
// standard one plus the nodes and domainNames peers: with it the apiserver
// accepts every policy the upstream API defines and fedmesh's own edge
// check decides what fedmesh can enforce (a nodes peer, not yet). The
// Helm chart's crds/ holds the same file.
//
//go:embed crds/policy.networking.k8s.io_clusternetworkpolicies.yaml
var ClusterNetworkPolicyCRD []byte

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallClusterNetworkPolicyCRD creates the ClusterNetworkPolicy CRD (an
// existing one is left as it is) and waits until the apiserver serves it.
func InstallClusterNetworkPolicyCRD(ctx context.Context, cfg *rest.Config) error {
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(ClusterNetworkPolicyCRD, &obj.Object); err != nil {
		return fmt.Errorf("decode the embedded ClusterNetworkPolicy CRD: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("install the ClusterNetworkPolicy CRD: %w", err)
	}
	if _, err := dyn.Resource(crdGVR).Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("install the ClusterNetworkPolicy CRD: %w", err)
	}
	d, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return fmt.Errorf("install the ClusterNetworkPolicy CRD: %w", err)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if rl, err := d.ServerResourcesForGroupVersion("policy.networking.k8s.io/v1alpha2"); err == nil {
			for _, r := range rl.APIResources {
				if r.Name == "clusternetworkpolicies" {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the ClusterNetworkPolicy CRD to be served: %w", ctx.Err())
		case <-tick.C:
		}
	}
}
