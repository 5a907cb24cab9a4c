package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
)

// These run inside the management namespace (`fedlab kube-export` and
// `fedlab kube-imports`, re-executed there), where each cluster's
// kube-apiserver listens on loopback: what a user would do with kubectl.

func kubeClients(dir, cluster string) (kubernetes.Interface, mcsclient.Interface, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kube-"+cluster, "kubeconfig.path"))
	if err != nil {
		return nil, nil, fmt.Errorf("cluster %s has no kube-apiserver in this lab: %w", cluster, err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", strings.TrimSpace(string(b)))
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	mcs, err := mcsclient.NewForConfig(cfg)
	return cs, mcs, err
}

// ExportService creates, in one cluster, a Service selecting app=<app> on
// the pods' "http" port, the EndpointSlice its controller would write (no
// controller-manager runs), and a ServiceExport.
func ExportService(ctx context.Context, st *State, cluster, app string) error {
	topo, err := Plan(st.Config)
	if err != nil {
		return err
	}
	cs, mcs, err := kubeClients(StateDir(topo.Name), cluster)
	if err != nil {
		return err
	}
	if err := applyServiceExport(ctx, cs, mcs, topo, cluster, app); err != nil {
		return err
	}
	return os.WriteFile(exportMarker(StateDir(topo.Name), cluster, app), nil, 0o600)
}

func applyServiceExport(ctx context.Context, cs kubernetes.Interface, mcs mcsclient.Interface, topo *Topology, cluster, app string) error {
	ns := "demo"
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": app},
		Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
	}}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service: %w", err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: app + "-lab", Labels: map[string]string{discoveryv1.LabelServiceName: app}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(AppPort))}},
	}
	for _, c := range topo.Clusters {
		if c.Name != cluster {
			continue
		}
		for _, n := range c.Nodes {
			for _, p := range n.Pods {
				if p.Labels["app"] == app {
					slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.IP.String()},
						NodeName: ptr.To(n.Name), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
				}
			}
		}
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create endpoint slice: %w", err)
	}
	se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app}}
	if _, err := mcs.MulticlusterV1beta1().ServiceExports(ns).Create(ctx, se, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service export: %w", err)
	}
	return nil
}

// PrintImports writes the ServiceImports and their EndpointSlices that the
// syncer wrote into a cluster.
func PrintImports(ctx context.Context, w io.Writer, st *State, cluster string) error {
	cs, mcs, err := kubeClients(StateDir(st.Config.Name), cluster)
	if err != nil {
		return err
	}
	imps, err := mcs.MulticlusterV1beta1().ServiceImports("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list service imports: %w", err)
	}
	if len(imps.Items) == 0 {
		return fmt.Errorf("no ServiceImport in %s yet", cluster)
	}
	for _, im := range imps.Items {
		fmt.Fprintf(w, "ServiceImport %s/%s in %s: type %s, clusterset IP %v, ports", im.Namespace, im.Name, cluster, im.Spec.Type, im.Spec.IPs)
		for _, p := range im.Spec.Ports {
			fmt.Fprintf(w, " %s:%d/%s", p.Name, p.Port, p.Protocol)
		}
		fmt.Fprintln(w)
		slices, err := cs.DiscoveryV1().EndpointSlices(im.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "multicluster.kubernetes.io/service-name=" + im.Name})
		if err != nil {
			return err
		}
		for _, s := range slices.Items {
			var addrs []string
			for _, e := range s.Endpoints {
				addrs = append(addrs, e.Addresses...)
			}
			sort.Strings(addrs)
			fmt.Fprintf(w, "  EndpointSlice %s (from %s): %s\n", s.Name, s.Labels["multicluster.kubernetes.io/source-cluster"], strings.Join(addrs, ", "))
		}
	}
	return nil
}
