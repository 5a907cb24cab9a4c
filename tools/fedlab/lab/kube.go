package lab

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
)

// Every cluster of the lab has a real Kubernetes API (etcd + kube-apiserver,
// built by `make deps`) and the real fedmesh-syncer publishing its pods. No
// kubelet runs: the lab creates the pods with the node and IPs the topology
// gave them, as a kubelet and CNI would report them.

// startKube runs one supervisor per cluster in the management namespace:
// `fedlab kube-cluster` re-executed there, which owns the cluster's etcd,
// kube-apiserver and syncer and stops them when it is stopped.
func (l *Lab) startKube(ctx context.Context) error {
	self := l.bin("fedlab")
	for _, c := range l.Topo.Clusters {
		dir := filepath.Join(l.Dir, "kube-"+c.Name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		p, err := start(l.Dir, l.Topo.Mgmt.NS, "kube-"+c.Name, []string{self, "kube-cluster",
			"--name", l.Topo.Name, "--cluster", c.Name, "--dir", dir})
		if err != nil {
			return err
		}
		if err := l.record(p); err != nil {
			return err
		}
	}
	for _, c := range l.Topo.Clusters {
		ready := filepath.Join(l.Dir, "kube-"+c.Name, "ready")
		wctx, cancel := context.WithTimeout(ctx, 120*time.Second)
		err := waitFor(wctx, "kube-apiserver and syncer of "+c.Name, func() error { _, err := os.Stat(ready); return err })
		cancel()
		if err != nil {
			return fmt.Errorf("%w (see %s)", err, filepath.Join(l.Dir, "kube-"+c.Name+".log"))
		}
	}
	return nil
}

// RunKubeCluster is the supervisor `fedlab kube-cluster` runs inside the
// management namespace: the cluster's API with its pods, and its syncer. It
// returns when ctx ends, after stopping all of them.
func RunKubeCluster(ctx context.Context, st *State, cluster, dir string, log *slog.Logger) error {
	topo, err := Plan(st.Config)
	if err != nil {
		return err
	}
	var cl *Cluster
	for i := range topo.Clusters {
		if topo.Clusters[i].Name == cluster {
			cl = &topo.Clusters[i]
		}
	}
	if cl == nil {
		return fmt.Errorf("no cluster %q in lab %s", cluster, topo.Name)
	}
	bins, err := kubetest.FindBinaries()
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	// A supervisor killed with its cluster leaves etcd's data behind; the
	// cluster's API comes back empty and is filled again from the plan
	// (pods, and the redis export when the lab made one).
	if err := os.RemoveAll(filepath.Join(dir, "k8s")); err != nil {
		return fmt.Errorf("remove the previous API data of %s: %w", cluster, err)
	}
	kube, err := kubetest.StartServer(sctx, bins, kubetest.Options{Dir: filepath.Join(dir, "k8s")})
	if err != nil {
		return err
	}
	defer kube.Stop()
	log.Info("kube-apiserver ready", "cluster", cluster, "dir", kube.Dir)
	if err := createPods(sctx, kube, cl); err != nil {
		return err
	}

	kubeconfig, err := kube.WriteKubeconfig()
	if err != nil {
		return err
	}
	labDir := StateDir(topo.Name)
	tok, err := os.ReadFile(syncerTokenFile(labDir, cluster))
	if err != nil {
		return fmt.Errorf("read the syncer's join token: %w", err)
	}
	syncer := exec.Command(filepath.Join(st.Config.BinDir, "fedmesh-syncer"),
		"--cluster", cluster,
		"--kubeconfig", kubeconfig,
		"--controlplane", strings.Join(topo.ControlPlaneAddrs(), ","),
		"--metrics-addr", "127.0.0.1:0",
		// Exchanged once for the syncer's certificate, kept in its state
		// dir: a restart of the supervisor uses the stored one.
		"--ca-file", caFile(labDir),
		"--join-token", strings.TrimSpace(string(tok)),
		"--state-dir", filepath.Join(dir, "syncer"))
	syncer.Stdout, syncer.Stderr = os.Stderr, os.Stderr
	syncer.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := syncer.Start(); err != nil {
		return fmt.Errorf("start fedmesh-syncer: %w", err)
	}
	defer func() {
		_ = syncer.Process.Signal(syscall.SIGTERM)
		_ = syncer.Wait()
	}()
	// The syncer installs the MCS CRDs: a returning cluster's exports are
	// made again once ServiceExport is served.
	mcs, err := mcsclient.NewForConfig(kube.Config)
	if err != nil {
		return err
	}
	err = waitFor(sctx, "the service exports of "+cluster+" again", func() error {
		return reexport(sctx, kube.Clientset(), mcs, topo, StateDir(topo.Name), cluster)
	})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "kubeconfig.path"), []byte(kubeconfig), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ready"), nil, 0o600); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// createPods creates the lab's pods of one cluster: the demo namespace (with
// its labels) and each pod on its node with its IP and a named port.
func createPods(ctx context.Context, kube *kubetest.Server, c *Cluster) error {
	namespaces := map[string]bool{}
	for _, n := range c.Nodes {
		for _, p := range n.Pods {
			if !namespaces[p.Namespace] {
				if err := kube.CreateNamespace(ctx, p.Namespace, map[string]string{"team": "demo"}); err != nil {
					return err
				}
				namespaces[p.Namespace] = true
			}
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels},
				Spec: corev1.PodSpec{
					NodeName: n.Name,
					Containers: []corev1.Container{{Name: "app", Image: "example.invalid/probe",
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}},
				},
			}
			if _, err := kube.CreatePod(ctx, pod, p.IP.String(), p.IP6.String()); err != nil {
				return err
			}
		}
	}
	return nil
}
