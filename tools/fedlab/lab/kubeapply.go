package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// KubeApply applies (server-side apply, field manager "fedlab") or, with
// del, deletes every object of a multi-document YAML manifest in one
// cluster's kube-apiserver: `kubectl apply -f` / `kubectl delete -f` for
// the lab (NetworkPolicies, ClusterNetworkPolicies, anything its API
// serves). It runs inside the management namespace (`fedlab kube-apply`).
func KubeApply(ctx context.Context, w io.Writer, st *State, cluster string, manifest []byte, del bool) error {
	topo, err := Plan(st.Config)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(StateDir(topo.Name), "kube-"+cluster, "kubeconfig.path"))
	if err != nil {
		return fmt.Errorf("cluster %s has no kube-apiserver in this lab: %w", cluster, err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read manifest: %w", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("%s %s: %w (is its CRD installed in %s?)", gvk.Kind, u.GetName(), err, cluster)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		what := strings.ToLower(gvk.Kind) + "/" + u.GetName()
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			if u.GetNamespace() == "" {
				u.SetNamespace("default")
			}
			ri = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
			what = u.GetNamespace() + "/" + what
		}
		if del {
			err := ri.Delete(ctx, u.GetName(), metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete %s in %s: %w", what, cluster, err)
			}
			fmt.Fprintf(w, "%s deleted from %s\n", what, cluster)
			continue
		}
		data, err := u.MarshalJSON()
		if err != nil {
			return err
		}
		if _, err := ri.Patch(ctx, u.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: "fedlab", Force: ptr.To(true)}); err != nil {
			return fmt.Errorf("apply %s in %s: %w", what, cluster, err)
		}
		fmt.Fprintf(w, "%s applied in %s\n", what, cluster)
	}
}

// KubeApplyFile runs `fedlab kube-apply` for a manifest file inside the
// lab's management namespace, where the clusters' kube-apiservers listen.
func (l *Lab) KubeApplyFile(ctx context.Context, cluster, path string, del bool) (string, error) {
	argv := []string{"--net=/var/run/netns/" + l.Topo.Mgmt.NS, "--", l.bin("fedlab"), "--name", l.Topo.Name,
		"kube-apply", "--cluster", cluster, "-f", path}
	if del {
		argv = append(argv, "--delete")
	}
	out, err := exec.CommandContext(ctx, "nsenter", argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kube-apply %s in %s: %w: %s", path, cluster, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
