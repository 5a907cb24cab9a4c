package kubetest_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
)

func TestServerRunsPodsWithTestSetIPsAndStopsClean(t *testing.T) {
	s := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := s.CreateNamespace(ctx, "web", map[string]string{"team": "a"}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "web", Name: "p1", Labels: map[string]string{"app": "web"}}}
	if _, err := s.CreatePod(ctx, pod, "10.1.0.5"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Clientset().CoreV1().Pods("web").Get(ctx, "p1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.PodIP != "10.1.0.5" || got.Status.Phase != corev1.PodRunning {
		t.Fatalf("pod status not persisted: ip %q phase %q", got.Status.PodIP, got.Status.Phase)
	}
	kc, err := s.WriteKubeconfig()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kc); err != nil {
		t.Fatal(err)
	}

	dir := s.Dir
	pids := s.PIDs()
	s.Stop()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("process %d still running after Stop", pid)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temp dir %s left behind", dir)
	}
}

// The embedded CRD is the one the module at go.mod's version ships, byte
// for byte (its provenance), and the apiserver serves it.
func TestEmbeddedCRDIsTheModulesAndIsServed(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		t.Fatalf("find the module (go list -m): %v", err)
	}
	want, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "experimental", "policy.networking.k8s.io_clusternetworkpolicies.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kubetest.ClusterNetworkPolicyCRD, want) {
		t.Fatal("crds/policy.networking.k8s.io_clusternetworkpolicies.yaml differs from the module's experimental-channel CRD; copy it from the module at the version go.mod requires")
	}
	s := kubetest.Start(t, kubetest.Options{})
	rl, err := s.Clientset().Discovery().ServerResourcesForGroupVersion("policy.networking.k8s.io/v1alpha2")
	if err != nil || len(rl.APIResources) == 0 || rl.APIResources[0].Name != "clusternetworkpolicies" {
		t.Fatalf("the apiserver does not serve ClusterNetworkPolicy: %v %v", rl, err)
	}
}
