package lab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	"github.com/fedmesh/fedmesh/tools/helm"
)

// The kubelet lab (fedlab up --kubelet): every cluster is a real Kubernetes
// cluster. Its etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler run in the management namespace (the apiserver on the
// management address, one port per cluster); every node namespace runs
// containerd and a kubelet, pods get a veth and a /32 host route from the
// CNI plugins ptp + host-local (the node's pod CIDR), and fedmesh's syncer
// and agents are installed with the Helm chart, from the images `make
// images` built. The control-plane replicas stay processes in the
// management namespace: they serve every cluster, so they live in none.
//
// Host-wide traces (FACTS.md, "A real Kubernetes node, offline") are
// recorded in kubelet.json and removed by kubeletDown: mounts, cgroups,
// sysctls the kubelet sets, /run/netns/cni-*, log links.

// kubeletState is what the kubelet lab leaves on the host, saved as
// kubelet.json in the lab's state dir before it is created.
type kubeletState struct {
	// Sysctls are the host-wide values before the kubelets changed them.
	Sysctls map[string]string `json:"sysctls"`
	// CgroupRoots are the nodes' cgroup roots (kubelet cgroupRoot).
	CgroupRoots []string `json:"cgroupRoots"`
	// VarDir holds the containerd roots and kubelet root dirs (on disk).
	VarDir string `json:"varDir"`
	// CreatedKubeletDir: /var/lib/kubelet did not exist before the lab
	// (the kubelet's device-plugin socket is not relocatable).
	CreatedKubeletDir bool `json:"createdKubeletDir"`
	// Netns are the /run/netns/cni-* files of the lab's pods, recorded
	// while their processes run.
	Netns []string `json:"netns"`
	// NetnsBefore are the /run/netns/cni-* files that existed before the
	// lab started its kubelets, and StartedAt when it did: a pod netns
	// made later that no process holds any more (a sandbox torn down or
	// half set up while the lab went down) is the lab's too.
	NetnsBefore []string  `json:"netnsBefore,omitempty"`
	StartedAt   time.Time `json:"startedAt,omitzero"`
	// ImageTag is the tag of the fedmesh images the lab runs.
	ImageTag string `json:"imageTag"`
	// InstallToEnforcing is the time from the first `helm install` to
	// every node enforcing the revision holding every demo pod.
	InstallToEnforcing time.Duration `json:"installToEnforcing"`
}

// KubeletInstallTime is how long the kubelet lab called name took from
// `helm install` to every node enforcing (measured by Up).
func KubeletInstallTime(name string) (time.Duration, error) {
	ks, err := loadKubeletState(name)
	if err != nil {
		return 0, err
	}
	return ks.InstallToEnforcing, nil
}

// kubeletSysctls are the host-wide sysctls a kubelet sets at start
// (protectKernelDefaults: false); restored by fedlab down.
var kubeletSysctls = []string{"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops", "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes"}

func kubeletStateFile(name string) string { return filepath.Join(StateDir(name), "kubelet.json") }

// kubeletVarDir is where the nodes' containerd roots and kubelet root dirs
// live: on disk, not /run, so image layers do not fill the tmpfs.
func kubeletVarDir(name string) string { return filepath.Join("/var/lib/fedlab", name) }

func (s *kubeletState) save(name string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(kubeletStateFile(name), b, 0o600)
}

func loadKubeletState(name string) (*kubeletState, error) {
	b, err := os.ReadFile(kubeletStateFile(name))
	if err != nil {
		return nil, err
	}
	var s kubeletState
	return &s, json.Unmarshal(b, &s)
}

// kubeBins are the Kubernetes programs of the kubelet lab.
type kubeBins struct {
	etcd, apiserver, controllerManager, scheduler, kubelet, helm string
	imagesDir                                                    string
}

// ErrKubeletLabDeps says the kubelet lab's programs or images are missing.
var ErrKubeletLabDeps = errors.New("the kubelet lab needs kubelet, kube-controller-manager, kube-scheduler and helm in .cache/bin, Debian's containerd, runc and containernetworking-plugins (make kubelet-lab-deps), and the images (make images)")

// findKubeBins finds the programs next to kube-apiserver (.cache/bin or
// $FEDMESH_KUBE_BIN_DIR) and the images in ../images beside it.
func findKubeBins() (kubeBins, error) {
	b, err := kubetest.FindBinaries()
	if err != nil {
		return kubeBins{}, fmt.Errorf("%w: %v", ErrKubeletLabDeps, err)
	}
	dir := filepath.Dir(b.APIServer)
	kb := kubeBins{etcd: b.Etcd, apiserver: b.APIServer,
		controllerManager: filepath.Join(dir, "kube-controller-manager"), scheduler: filepath.Join(dir, "kube-scheduler"),
		kubelet: filepath.Join(dir, "kubelet"), helm: filepath.Join(dir, "helm"), imagesDir: filepath.Join(filepath.Dir(dir), "images")}
	var missing []string
	for _, p := range []string{kb.controllerManager, kb.scheduler, kb.kubelet, kb.helm,
		"/usr/bin/containerd", "/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc", "/usr/bin/ctr", "/usr/lib/cni/ptp", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return kb, fmt.Errorf("%w; missing: %s", ErrKubeletLabDeps, strings.Join(missing, ", "))
	}
	return kb, nil
}

// CheckKubeletLab says what the kubelet lab lacks on this machine, if
// anything (make kubelet-lab-deps installs it).
func CheckKubeletLab() error {
	_, err := findKubeBins()
	return err
}

// labImage is one entry of images.json (tools/devtools/images).
type labImage struct {
	Name string `json:"name"`
	Ref  string `json:"ref"`
	File string `json:"file"`
}

func readImages(dir string) (map[string]labImage, error) {
	b, err := os.ReadFile(filepath.Join(dir, "images.json"))
	if err != nil {
		return nil, fmt.Errorf("read images (make images): %w", err)
	}
	var list []labImage
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, "images.json"), err)
	}
	out := map[string]labImage{}
	for _, im := range list {
		out[im.Name] = im
	}
	for _, want := range []string{"fedmesh-agent", "fedmesh-syncer", "fedmesh-labapp", "fedmesh-pause"} {
		if _, ok := out[want]; !ok {
			return nil, fmt.Errorf("image %s not in %s: run make images", want, dir)
		}
	}
	return out, nil
}

// Ports of each cluster's Kubernetes control plane in the management
// namespace: the apiserver on the management address, the rest on loopback.
func apiserverPort(c Cluster) int { return 6440 + c.Index }
func etcdPort(c Cluster) int      { return 2300 + 10*c.Index }

// APIServerAddr is cluster c's kube-apiserver, reachable from the lab's
// nodes and pods.
func (t *Topology) APIServerAddr(c Cluster) string {
	return net.JoinHostPort(t.Mgmt.Addr.Addr().String(), fmt.Sprint(apiserverPort(c)))
}

func kubeDir(labDir string, c Cluster) string { return filepath.Join(labDir, "k8s-"+c.Name) }

// adminToken is the lab's admin bearer token of cluster c (system:masters).
func adminTokenFile(labDir string, c Cluster) string {
	return filepath.Join(kubeDir(labDir, c), "admin.token")
}

// startKubeletClusters brings up every cluster's Kubernetes (control plane,
// then nodes), installs fedmesh with its chart and the demo Deployments.
func (l *Lab) startKubeletClusters(ctx context.Context) error {
	bins, err := findKubeBins()
	if err != nil {
		return err
	}
	if d := l.State.Config.ImagesDir; d != "" {
		bins.imagesDir = d
	}
	images, err := readImages(bins.imagesDir)
	if err != nil {
		return err
	}
	tag := images["fedmesh-agent"].Ref[strings.LastIndex(images["fedmesh-agent"].Ref, ":")+1:]
	ks := &kubeletState{Sysctls: map[string]string{}, VarDir: kubeletVarDir(l.Topo.Name), ImageTag: tag, StartedAt: time.Now()}
	ks.NetnsBefore, _ = filepath.Glob("/run/netns/cni-*")
	for _, k := range kubeletSysctls {
		if b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(k, ".", "/")); err == nil {
			ks.Sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	if _, err := os.Stat("/var/lib/kubelet"); errors.Is(err, os.ErrNotExist) {
		ks.CreatedKubeletDir = true
	}
	for _, c := range l.Topo.Clusters {
		for _, n := range c.Nodes {
			ks.CgroupRoots = append(ks.CgroupRoots, "fedlab-"+n.Host.NS)
		}
	}
	// Saved before anything is changed: a failure from here on is undone
	// by Down from this record.
	if err := ks.save(l.Topo.Name); err != nil {
		return err
	}
	// The management namespace routes to every cluster's pods through its
	// ToR: pods (the syncer) talk to the control plane and the apiserver.
	for _, c := range l.Topo.Clusters {
		if err := ip(ctx, "-n", l.Topo.Mgmt.NS, "route", "add", c.PodCIDR.String(), "via", c.ToR.Addr.Addr().String()); err != nil {
			return err
		}
	}
	for _, c := range l.Topo.Clusters {
		l.Log.Info("starting Kubernetes control plane", "cluster", c.Name, "apiserver", l.Topo.APIServerAddr(c))
		if err := l.startKubeControlPlane(ctx, bins, c); err != nil {
			return err
		}
	}
	for _, c := range l.Topo.Clusters {
		for _, n := range c.Nodes {
			l.Log.Info("starting containerd and kubelet", "node", n.Name, "ns", n.Host.NS)
			if err := l.startNode(ctx, bins, images, c, n); err != nil {
				return err
			}
		}
	}
	for _, c := range l.Topo.Clusters {
		if err := l.waitNodesReady(ctx, c); err != nil {
			return err
		}
	}
	installStart := time.Now()
	for _, c := range l.Topo.Clusters {
		l.Log.Info("installing fedmesh with its Helm chart", "cluster", c.Name)
		if _, err := l.HelmInstall(ctx, c, "install", tag); err != nil {
			return err
		}
		if err := l.createDemoWorkloads(ctx, c, images["fedmesh-labapp"].Ref); err != nil {
			return err
		}
	}
	// Every node enforcing the newest revision, which holds the demo pods:
	// the lab is whole when Up returns.
	if err := l.waitDemoPublished(ctx); err != nil {
		return err
	}
	rev, err := l.WaitEnforced(ctx, 120*time.Second)
	if err != nil {
		return err
	}
	ks.InstallToEnforcing = time.Since(installStart)
	l.Log.Info("helm install to every node enforcing", "took", ks.InstallToEnforcing.Round(time.Millisecond), "revision", rev)
	return ks.save(l.Topo.Name)
}

// waitDemoPublished waits until every demo pod runs, is ready and is an
// endpoint of the federation (its syncer published it).
func (l *Lab) waitDemoPublished(ctx context.Context) error {
	want := map[string]bool{}
	for _, c := range l.Topo.Clusters {
		for _, app := range DemoApps {
			pods, err := l.WaitKubePods(ctx, c, "demo", "app="+app, len(c.Nodes), 120*time.Second)
			if err != nil {
				return err
			}
			for _, p := range pods {
				want[c.Name+"/demo/"+p.Name] = true
			}
		}
	}
	cc, err := l.Dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	eps := fedmeshv1.NewEndpointServiceClient(cc)
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return waitFor(wctx, "every demo pod to be published", func() error {
		resp, err := eps.ListEndpoints(wctx, &fedmeshv1.ListEndpointsRequest{})
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, e := range resp.GetEndpoints() {
			have[e.GetCluster()+"/"+e.GetNamespace()+"/"+e.GetName()] = true
		}
		for k := range want {
			if !have[k] {
				return fmt.Errorf("%s not published yet", k)
			}
		}
		return nil
	})
}

// writeClusterPKI makes cluster c's CA and the apiserver's serving
// certificate (for the management address, loopback and the kubernetes
// Service), so in-cluster clients verify the apiserver with kube-root-ca.crt.
func writeClusterPKI(dir string, mgmt net.IP) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fedlab kubernetes CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{mgmt, net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return err
	}
	for name, block := range map[string]*pem.Block{
		"ca.crt":        {Type: "CERTIFICATE", Bytes: caDER},
		"apiserver.crt": {Type: "CERTIFICATE", Bytes: der},
		"apiserver.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
		"sa.key":        {Type: "EC PRIVATE KEY", Bytes: saDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// kubeconfig writes a kubeconfig for the apiserver at server with a bearer
// token.
func writeKubeconfig(path, server, caFile, token string) error {
	return os.WriteFile(path, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: https://%s
    certificate-authority: %s
users:
- name: lab
  user:
    token: %s
contexts:
- name: lab
  context: {cluster: lab, user: lab}
current-context: lab
`, server, caFile, token)), 0o600)
}

// startKubeControlPlane runs cluster c's etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler in the management namespace.
func (l *Lab) startKubeControlPlane(ctx context.Context, bins kubeBins, c Cluster) error {
	t := l.Topo
	dir := kubeDir(l.Dir, c)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	mgmt := net.IP(t.Mgmt.Addr.Addr().AsSlice())
	if err := writeClusterPKI(dir, mgmt); err != nil {
		return fmt.Errorf("make the PKI of %s: %w", c.Name, err)
	}
	admin := randomToken()
	lines := []string{admin + `,admin,admin,"system:masters"`}
	for _, n := range c.Nodes {
		tok := randomToken()
		lines = append(lines, fmt.Sprintf(`%s,system:node:%s,node-%s,"system:nodes"`, tok, n.Name, n.Name))
		if err := writeKubeconfig(filepath.Join(dir, n.Name+".kubeconfig"), t.APIServerAddr(c), filepath.Join(dir, "ca.crt"), tok); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(adminTokenFile(l.Dir, c), []byte(admin), 0o600); err != nil {
		return err
	}
	adminKC := filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfig(adminKC, t.APIServerAddr(c), filepath.Join(dir, "ca.crt"), admin); err != nil {
		return err
	}
	etcd := fmt.Sprintf("http://127.0.0.1:%d", etcdPort(c))
	peer := fmt.Sprintf("http://127.0.0.1:%d", etcdPort(c)+1)
	ns := t.Mgmt.NS
	procs := []struct {
		name string
		argv []string
	}{
		{"etcd-" + c.Name, []string{bins.etcd, "--name=" + c.Name, "--data-dir=" + filepath.Join(dir, "etcd"),
			"--listen-client-urls=" + etcd, "--advertise-client-urls=" + etcd, "--listen-peer-urls=" + peer,
			"--initial-advertise-peer-urls=" + peer, "--initial-cluster=" + c.Name + "=" + peer, "--log-level=warn", "--unsafe-no-fsync"}},
		{"kube-apiserver-" + c.Name, []string{bins.apiserver, "--etcd-servers=" + etcd,
			"--bind-address=" + mgmt.String(), "--advertise-address=" + mgmt.String(), fmt.Sprintf("--secure-port=%d", apiserverPort(c)),
			"--tls-cert-file=" + filepath.Join(dir, "apiserver.crt"), "--tls-private-key-file=" + filepath.Join(dir, "apiserver.key"),
			"--client-ca-file=" + filepath.Join(dir, "ca.crt"),
			"--token-auth-file=" + filepath.Join(dir, "tokens.csv"), "--authorization-mode=Node,RBAC",
			"--service-cluster-ip-range=10.96.0.0/16", "--service-account-issuer=https://kubernetes.default.svc",
			"--service-account-key-file=" + filepath.Join(dir, "sa.key"), "--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
			"--kubelet-preferred-address-types=InternalIP", "--v=0"}},
	}
	for _, p := range procs {
		proc, err := start(l.Dir, ns, p.name, p.argv)
		if err != nil {
			return err
		}
		if err := l.record(proc); err != nil {
			return err
		}
	}
	cs, err := l.KubeClient(c)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	err = waitFor(wctx, "kube-apiserver of "+c.Name, func() error {
		_, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(wctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("%w (see %s)", err, filepath.Join(l.Dir, "kube-apiserver-"+c.Name+".log"))
	}
	for _, p := range []struct {
		name string
		argv []string
	}{
		{"kube-controller-manager-" + c.Name, []string{bins.controllerManager, "--kubeconfig=" + adminKC,
			"--authentication-kubeconfig=" + adminKC, "--authorization-kubeconfig=" + adminKC,
			"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", 10300+c.Index),
			"--root-ca-file=" + filepath.Join(dir, "ca.crt"), "--service-account-private-key-file=" + filepath.Join(dir, "sa.key"),
			"--use-service-account-credentials=true", "--leader-elect=false",
			// The lab assigns pod CIDRs itself (each node's host-local range).
			"--allocate-node-cidrs=false", "--controllers=*,-nodeipam", "--v=0"}},
		{"kube-scheduler-" + c.Name, []string{bins.scheduler, "--kubeconfig=" + adminKC,
			"--authentication-kubeconfig=" + adminKC, "--authorization-kubeconfig=" + adminKC,
			"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", 10400+c.Index), "--leader-elect=false", "--v=0"}},
	} {
		proc, err := start(l.Dir, ns, p.name, p.argv)
		if err != nil {
			return err
		}
		if err := l.record(proc); err != nil {
			return err
		}
	}
	return nil
}

// KubeClient is an admin client of cluster c's apiserver, dialing from the
// management namespace.
func (l *Lab) KubeClient(c Cluster) (kubernetes.Interface, error) {
	cfg, err := l.KubeConfig(c)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// KubeConfig is the admin rest.Config of cluster c (connections are made
// inside the management namespace).
func (l *Lab) KubeConfig(c Cluster) (*rest.Config, error) {
	tok, err := os.ReadFile(adminTokenFile(l.Dir, c))
	if err != nil {
		return nil, fmt.Errorf("cluster %s has no Kubernetes API in this lab (fedlab up --kubelet): %w", c.Name, err)
	}
	ns := l.Topo.Mgmt.NS
	return &rest.Config{
		Host:            "https://" + l.Topo.APIServerAddr(c),
		BearerToken:     string(tok),
		TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(kubeDir(l.Dir, c), "ca.crt")},
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialInNS(ctx, ns, network, addr)
		},
		QPS: 100, Burst: 200,
	}, nil
}

// cgroupControllers are the cgroup v1 hierarchies of this kind of machine
// (hybrid: v1 controllers plus the unified tree).
var cgroupControllers = []string{"blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd", "unified"}

// makeCgroupRoot creates a node's cgroup root in every hierarchy, cpuset
// filled from its parent (an empty cpuset takes no task), and returns it.
func makeCgroupRoot(root string) error {
	for _, ctl := range cgroupControllers {
		base := filepath.Join("/sys/fs/cgroup", ctl)
		if _, err := os.Stat(base); err != nil {
			continue
		}
		for _, sub := range []string{root, root + "/runtime"} {
			d := filepath.Join(base, sub)
			if err := os.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("create cgroup %s: %w", d, err)
			}
			if ctl == "cpuset" {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					b, err := os.ReadFile(filepath.Join(filepath.Dir(d), f))
					if err != nil {
						return err
					}
					if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
						return fmt.Errorf("fill %s/%s: %w", d, f, err)
					}
				}
			}
		}
	}
	return nil
}

// joinCgroup moves pid into root/runtime in every hierarchy, so its
// children (containerd's shims) can be found and stopped by cgroup.
func joinCgroup(root string, pid int) error {
	for _, ctl := range cgroupControllers {
		d := filepath.Join("/sys/fs/cgroup", ctl, root, "runtime")
		if _, err := os.Stat(d); err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(fmt.Sprint(pid)), 0o644); err != nil {
			return fmt.Errorf("move pid %d into cgroup %s: %w", pid, d, err)
		}
	}
	return nil
}

// nodeDirs are one node's directories: run (sockets, state, CNI config) in
// the lab's state dir, var (containerd root, kubelet root) on disk.
func (l *Lab) nodeDirs(n Node) (run, vard string) {
	return filepath.Join(l.Dir, "node-"+n.Name), filepath.Join(kubeletVarDir(l.Topo.Name), n.Name)
}

// cniNetwork is the CNI network name of the lab's nodes; /var/lib/cni keeps
// results under it, which fedlab down removes.
func cniNetwork(lab string) string { return "fedlab-" + lab }

// startNode runs containerd (with the lab's images imported) and a kubelet
// in node n's namespace.
func (l *Lab) startNode(ctx context.Context, bins kubeBins, images map[string]labImage, c Cluster, n Node) error {
	runDir, vard := l.nodeDirs(n)
	for _, d := range []string{runDir, vard, filepath.Join(runDir, "cni"), filepath.Join(vard, "kubelet"), filepath.Join(vard, "pod-logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	root := "fedlab-" + n.Host.NS
	if err := makeCgroupRoot(root); err != nil {
		return err
	}
	sock := filepath.Join(runDir, "containerd.sock")
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
oom_score = 0
[grpc]
  address = %q
[ttrpc]
  address = %q
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # This machine lacks CAP_SYS_RESOURCE: without it the sandbox fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %q
`, filepath.Join(vard, "containerd"), filepath.Join(runDir, "containerd-state"), sock, sock+".ttrpc",
		filepath.Join(vard, "opt"), images["fedmesh-pause"].Ref, filepath.Join(runDir, "cni"), filepath.Join(runDir, "runc"))
	confPath := filepath.Join(runDir, "containerd.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	// ptp: a veth per pod, the pod's /32 and /128 routed to it on the
	// node, as the agent's resolver expects; host-local hands out the
	// node's pod prefixes of both families.
	cni := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [{
    "type": "ptp",
    "mtu": 1400,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q}], [{"subnet": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
      "dataDir": %q
    }
  }]
}
`, cniNetwork(l.Topo.Name), n.PodCIDR.String(), n.PodCIDR6.String(), filepath.Join(runDir, "ipam"))
	if err := os.WriteFile(filepath.Join(runDir, "cni", "10-fedlab.conflist"), []byte(cni), 0o644); err != nil {
		return err
	}
	p, err := start(l.Dir, n.Host.NS, "containerd-"+n.Name, []string{"/usr/bin/containerd", "--config", confPath})
	if err != nil {
		return err
	}
	if err := joinCgroup(root, p.PID); err != nil {
		return err
	}
	if err := l.record(p); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := waitFor(wctx, "containerd of "+n.Name, func() error { return run(wctx, "ctr", "-a", sock, "version") }); err != nil {
		return err
	}
	for _, name := range []string{"fedmesh-pause", "fedmesh-agent", "fedmesh-syncer", "fedmesh-labapp"} {
		if err := run(ctx, "ctr", "-a", sock, "-n", "k8s.io", "images", "import", images[name].File); err != nil {
			return fmt.Errorf("import %s into %s: %w", name, n.Name, err)
		}
	}
	kcfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%s
failSwapOn: false
oomScoreAdj: 0
protectKernelDefaults: false
podLogsDir: %s
volumePluginDir: %s
containerRuntimeEndpoint: unix://%s
address: %s
readOnlyPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
localStorageCapacityIsolation: false
`, root, filepath.Join(vard, "pod-logs"), filepath.Join(vard, "volume-plugins"), sock, n.Host.Addr.Addr())
	kcfgPath := filepath.Join(runDir, "kubelet.yaml")
	if err := os.WriteFile(kcfgPath, []byte(kcfg), 0o644); err != nil {
		return err
	}
	kp, err := start(l.Dir, n.Host.NS, "kubelet-"+n.Name, []string{bins.kubelet, "--config=" + kcfgPath,
		"--kubeconfig=" + filepath.Join(kubeDir(l.Dir, c), n.Name+".kubeconfig"),
		"--hostname-override=" + n.Name, "--node-ip=" + n.Host.Addr.Addr().String(),
		"--root-dir=" + filepath.Join(vard, "kubelet"), "--cert-dir=" + filepath.Join(runDir, "kubelet-pki"), "--v=1"})
	if err != nil {
		return err
	}
	return l.record(kp)
}

// waitNodesReady waits until every node of c registered, gives it its pod
// CIDR (the lab is the IPAM: the host-local range of its CNI config) and
// waits until it is Ready.
func (l *Lab) waitNodesReady(ctx context.Context, c Cluster) error {
	cs, err := l.KubeClient(c)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	for _, n := range c.Nodes {
		err := waitFor(wctx, "node "+n.Name+" to register", func() error {
			_, err := cs.CoreV1().Nodes().Get(wctx, n.Name, metav1.GetOptions{})
			return err
		})
		if err != nil {
			return fmt.Errorf("%w (see %s)", err, filepath.Join(l.Dir, "kubelet-"+n.Name+".log"))
		}
		patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q,%q]}}`, n.PodCIDR, n.PodCIDR, n.PodCIDR6)
		if _, err := cs.CoreV1().Nodes().Patch(wctx, n.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("set pod CIDR of node %s: %w", n.Name, err)
		}
		err = waitFor(wctx, "node "+n.Name+" to be Ready", func() error {
			node, err := cs.CoreV1().Nodes().Get(wctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, cond := range node.Status.Conditions {
				if cond.Type == corev1.NodeReady {
					if cond.Status == corev1.ConditionTrue {
						return nil
					}
					return fmt.Errorf("%s: %s", cond.Reason, cond.Message)
				}
			}
			return errors.New("no Ready condition yet")
		})
		if err != nil {
			return fmt.Errorf("%w (see %s)", err, filepath.Join(l.Dir, "kubelet-"+n.Name+".log"))
		}
	}
	return nil
}

// FedmeshNamespace is where the lab installs the chart.
const FedmeshNamespace = "fedmesh-system"

// HelmInstall runs `helm install` (verb "install") or `helm upgrade` of
// the fedmesh chart into cluster c with the images tagged tag, with every
// value the cluster needs, and waits for the rollout. It returns helm's
// output.
func (l *Lab) HelmInstall(ctx context.Context, c Cluster, verb, tag string) (string, error) {
	bins, err := findKubeBins()
	if err != nil {
		return "", err
	}
	chart, err := helm.WriteChart(filepath.Join(l.Dir, "chart"))
	if err != nil {
		return "", err
	}
	ca, err := os.ReadFile(caFile(l.Dir))
	if err != nil {
		return "", err
	}
	values := map[string]any{
		"clusterName":  c.Name,
		"controlPlane": map[string]any{"addresses": l.Topo.ControlPlaneAddrs(), "caCert": string(ca)},
		"image":        map[string]any{"tag": tag, "pullPolicy": "Never"},
		"kubernetes":   map[string]any{"serviceHost": l.Topo.Mgmt.Addr.Addr().String(), "servicePort": apiserverPort(c)},
		"agent": map[string]any{
			"bpfPinRoot":     filepath.Join(bpfPinRoot, l.Topo.Name),
			"stateDir":       filepath.Join(kubeletVarDir(l.Topo.Name), "agent-state"),
			"statusInterval": "2s",
		},
	}
	if verb == "install" {
		tok, err := os.ReadFile(syncerTokenFile(l.Dir, c.Name))
		if err != nil {
			return "", fmt.Errorf("read the syncer's join token: %w", err)
		}
		tokens := map[string]any{}
		for _, n := range c.Nodes {
			if tokens[n.Name], err = l.joinToken(ctx, c.Name, n.Name); err != nil {
				return "", err
			}
		}
		values["syncer"] = map[string]any{"joinToken": strings.TrimSpace(string(tok))}
		values["agent"].(map[string]any)["joinTokens"] = tokens
	} else {
		// The agents keep their certificates on the node; the syncer's new
		// pod (its state is an emptyDir here) joins again with a new token.
		tok, err := l.joinToken(ctx, c.Name, "")
		if err != nil {
			return "", err
		}
		values["syncer"] = map[string]any{"joinToken": tok}
	}
	vb, err := json.Marshal(values)
	if err != nil {
		return "", err
	}
	vf := filepath.Join(kubeDir(l.Dir, c), "values-"+verb+".json")
	if err := os.WriteFile(vf, vb, 0o600); err != nil {
		return "", err
	}
	args := []string{"--net=/var/run/netns/" + l.Topo.Mgmt.NS, "--", bins.helm, verb, "fedmesh", chart,
		"--kubeconfig", filepath.Join(kubeDir(l.Dir, c), "admin.kubeconfig"), "--namespace", FedmeshNamespace,
		"-f", vf, "--wait", "--timeout", "3m"}
	if verb == "install" {
		args = append(args, "--create-namespace")
	} else {
		// An upgrade keeps the tokens given at install.
		args = append(args, "--reuse-values")
	}
	out, err := exec.CommandContext(ctx, "nsenter", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s fedmesh into %s: %w: %s\n%s", verb, c.Name, err, strings.TrimSpace(string(out)), l.PodReport(ctx, c, FedmeshNamespace))
	}
	return string(out), nil
}

// PodReport says, for a failed rollout, what each pod of ns is waiting on,
// with the tail of its containers' logs.
func (l *Lab) PodReport(ctx context.Context, c Cluster, ns string) string {
	cs, err := l.KubeClient(c)
	if err != nil {
		return err.Error()
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "pod %s/%s on %s: %s\n", p.Namespace, p.Name, p.Spec.NodeName, p.Status.Phase)
		for _, cond := range p.Status.Conditions {
			if cond.Status != corev1.ConditionTrue {
				fmt.Fprintf(&b, "  %s=%s %s %s\n", cond.Type, cond.Status, cond.Reason, cond.Message)
			}
		}
		for _, st := range p.Status.ContainerStatuses {
			fmt.Fprintf(&b, "  container %s ready=%t restarts=%d state=%+v last=%+v\n", st.Name, st.Ready, st.RestartCount, st.State, st.LastTerminationState)
			for _, prev := range []bool{false, true} {
				logs, err := cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: st.Name, TailLines: ptrTo(int64(15)), Previous: prev}).DoRaw(ctx)
				if err == nil && len(logs) > 0 {
					fmt.Fprintf(&b, "  logs (previous=%t):\n    %s\n", prev, strings.ReplaceAll(strings.TrimSpace(string(logs)), "\n", "\n    "))
				}
			}
		}
	}
	if evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, e := range evs.Items {
			if e.Type != corev1.EventTypeNormal {
				fmt.Fprintf(&b, "event %s %s: %s\n", e.InvolvedObject.Name, e.Reason, e.Message)
			}
		}
	}
	return b.String()
}

func ptrTo[T any](v T) *T { return &v }

// DemoApps are the lab's Deployments in every cluster: the probe server
// under two app labels, one replica per node.
var DemoApps = []string{"web", "api"}

// createDemoWorkloads creates the demo namespace and Deployments, spread
// one pod per node.
func (l *Lab) createDemoWorkloads(ctx context.Context, c Cluster, image string) error {
	cs, err := l.KubeClient(c)
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{"team": "demo"}}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace demo in %s: %w", c.Name, err)
	}
	for _, app := range DemoApps {
		if err := createDeployment(ctx, cs, app, image, int32(len(c.Nodes))); err != nil {
			return fmt.Errorf("create Deployment %s in %s: %w", app, c.Name, err)
		}
	}
	return nil
}
