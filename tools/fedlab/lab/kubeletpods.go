package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// createDeployment creates Deployment app in namespace demo: the probe
// server (fedmesh-labapp) labelled app=<app>, one pod per node.
func createDeployment(ctx context.Context, cs kubernetes.Interface, app, image string, replicas int32) error {
	labels := map[string]string{"app": app}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: "demo", Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					AutomountServiceAccountToken: ptr.To(false),
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: corev1.LabelHostname,
						WhenUnsatisfiable: corev1.DoNotSchedule, LabelSelector: &metav1.LabelSelector{MatchLabels: labels}}},
					Containers: []corev1.Container{{
						Name: "app", Image: image, ImagePullPolicy: corev1.PullNever,
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: AppPort, Protocol: corev1.ProtocolTCP}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("http")}},
							PeriodSeconds: 2},
					}},
				},
			},
		},
	}
	_, err := cs.AppsV1().Deployments("demo").Create(ctx, d, metav1.CreateOptions{})
	return err
}

// KubePod is a running pod of the kubelet lab.
type KubePod struct {
	Cluster, Namespace, Name, Node, App, IP string
	UID                                     string
}

// Addr is the pod's app address.
func (p KubePod) Addr() string { return p.IP + ":" + strconv.Itoa(AppPort) }

// KubePods lists the Running, Ready pods of namespace ns in cluster c
// (sorted by name).
func (l *Lab) KubePods(ctx context.Context, c Cluster, ns, selector string) ([]KubePod, error) {
	cs, err := l.KubeClient(c)
	if err != nil {
		return nil, err
	}
	list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("list pods of %s/%s: %w", c.Name, ns, err)
	}
	var out []KubePod
	for _, p := range list.Items {
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.DeletionTimestamp != nil || !podReady(&p) {
			continue
		}
		out = append(out, KubePod{Cluster: c.Name, Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName,
			App: p.Labels["app"], IP: p.Status.PodIP, UID: string(p.UID)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// WaitKubePods waits until cluster c has want Ready pods matching selector
// in ns, and returns them.
func (l *Lab) WaitKubePods(ctx context.Context, c Cluster, ns, selector string, want int, timeout time.Duration) ([]KubePod, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var pods []KubePod
	err := waitFor(wctx, fmt.Sprintf("%d ready pods %q in %s/%s", want, selector, c.Name, ns), func() error {
		var err error
		if pods, err = l.KubePods(wctx, c, ns, selector); err != nil {
			return err
		}
		if len(pods) != want {
			return fmt.Errorf("%d ready", len(pods))
		}
		return nil
	})
	return pods, err
}

// PodNetNS is the network namespace of a running pod, as /proc/PID/ns/net
// of one of its processes: found through the pod's cgroup (kubelet's
// cgroupfs layout, <root>/kubepods/<qos>/pod<UID>/<container>).
func (l *Lab) PodNetNS(p KubePod) (string, error) {
	var nodeNS string
	for _, c := range l.Topo.Clusters {
		for _, n := range c.Nodes {
			if n.Name == p.Node {
				nodeNS = n.Host.NS
			}
		}
	}
	if nodeNS == "" {
		return "", fmt.Errorf("pod %s is on node %q, which is not in the lab", p.Name, p.Node)
	}
	base := filepath.Join("/sys/fs/cgroup/pids", "fedlab-"+nodeNS, "kubepods")
	pattern := []string{filepath.Join(base, "pod"+p.UID, "*", "cgroup.procs"), filepath.Join(base, "*", "pod"+p.UID, "*", "cgroup.procs")}
	for _, pat := range pattern {
		files, _ := filepath.Glob(pat)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, pid := range strings.Fields(string(b)) {
				ns := "/proc/" + pid + "/ns/net"
				if _, err := os.Stat(ns); err == nil {
					return ns, nil
				}
			}
		}
	}
	return "", fmt.Errorf("no process of pod %s/%s (uid %s) under %s", p.Namespace, p.Name, p.UID, base)
}

// ProbeFromPod runs one probe (fedlab probe) from inside a kubelet pod's
// network namespace to addr.
func (l *Lab) ProbeFromPod(ctx context.Context, from KubePod, proto, addr string, timeout time.Duration) error {
	ns, err := l.PodNetNS(from)
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+ns, "--",
		l.bin("fedlab"), "probe", "--proto", proto, "--timeout", timeout.String(), addr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s -> %s/%s: %w: %s", from.Name, addr, proto, ErrBlocked, strings.TrimSpace(string(out)))
	}
	return nil
}

// ImportImages imports every image of dir (images.json, as make images
// writes it) into every node's containerd, e.g. a rebuilt agent to upgrade
// to.
func (l *Lab) ImportImages(ctx context.Context, dir string) error {
	images, err := readImages(dir)
	if err != nil {
		return err
	}
	for _, c := range l.Topo.Clusters {
		for _, n := range c.Nodes {
			runDir, _ := l.nodeDirs(n)
			for _, im := range images {
				if err := run(ctx, "ctr", "-a", filepath.Join(runDir, "containerd.sock"), "-n", "k8s.io", "images", "import", im.File); err != nil {
					return fmt.Errorf("import %s into %s: %w", im.Name, n.Name, err)
				}
			}
		}
	}
	return nil
}

// HelmUninstall runs `helm uninstall --wait` of the fedmesh release in
// cluster c.
func (l *Lab) HelmUninstall(ctx context.Context, c Cluster) (string, error) {
	bins, err := findKubeBins()
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, "nsenter", "--net=/var/run/netns/"+l.Topo.Mgmt.NS, "--", bins.helm, "uninstall", "fedmesh",
		"--kubeconfig", filepath.Join(kubeDir(l.Dir, c), "admin.kubeconfig"), "--namespace", FedmeshNamespace, "--wait", "--timeout", "2m").CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm uninstall fedmesh from %s: %w: %s", c.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// PodPIDs are the processes of a running pod (all its containers, the
// sandbox's pause included), from its cgroups.
func (l *Lab) PodPIDs(p KubePod) []int {
	var out []int
	for _, c := range l.Topo.Clusters {
		for _, n := range c.Nodes {
			if n.Name != p.Node {
				continue
			}
			base := filepath.Join("/sys/fs/cgroup/pids", "fedlab-"+n.Host.NS, "kubepods")
			for _, pat := range []string{filepath.Join(base, "pod"+p.UID, "*", "cgroup.procs"), filepath.Join(base, "*", "pod"+p.UID, "*", "cgroup.procs")} {
				files, _ := filepath.Glob(pat)
				for _, f := range files {
					b, _ := os.ReadFile(f)
					for _, s := range strings.Fields(string(b)) {
						if pid, err := strconv.Atoi(s); err == nil {
							out = append(out, pid)
						}
					}
				}
			}
		}
	}
	return out
}

// PinDir is where the agent pod of node n pins its dataplane (the chart's
// agent.bpfPinRoot as the lab sets it, then the node name).
func (l *Lab) PinDir(n Node) string { return filepath.Join(bpfPinRoot, l.Topo.Name, n.Name) }
