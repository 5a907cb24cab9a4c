package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

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

// Redis across clusters: every db pod of the lab runs a real redis-server
// (Debian's) as its application beside the probe server, and each cluster
// can export the same service "redis" (namespace demo, port 6379, the db
// pods, `fedmesh.io/affinity: local`) through its kube-apiserver. Each
// instance holds the key RedisClusterKey set to its cluster's name (and
// RedisPodKey to its pod's) when it starts, so a client can tell which
// cluster answered.
const (
	RedisPort       = 6379
	RedisService    = "redis"
	RedisClusterKey = "fedlab:cluster"
	RedisPodKey     = "fedlab:pod"
	// RedisName is the service's clusterset name, resolved by the pods
	// through their node's node-local DNS.
	RedisName = "redis.demo.svc.clusterset.local"
)

// RedisProc is the lab process name of a pod's redis-server.
func RedisProc(pod string) string { return "redis-" + pod }

// IsRedisPod says whether the pod runs redis-server (the db pods).
func IsRedisPod(p Pod) bool { return p.Labels["app"] == "db" }

// startRedis runs redis-server in a db pod (its netns and its node's
// cgroup), without persistence, and seeds its identity keys.
func (l *Lab) startRedis(ctx context.Context, c Cluster, n Node, p Pod) error {
	dir := filepath.Join(l.Dir, p.NS)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	proc, err := startIn(l.Dir, p.NS, l.Topo.NodeCgroup(n), RedisProc(p.Name), []string{"/usr/bin/redis-server",
		"--port", fmt.Sprint(RedisPort), "--bind", "*", "-::*", "--protected-mode", "no",
		"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", ""})
	if err != nil {
		return err
	}
	if err := l.record(proc); err != nil {
		return err
	}
	return l.seedRedis(ctx, c, p)
}

// seedRedis waits for the pod's redis-server and sets its identity keys.
func (l *Lab) seedRedis(ctx context.Context, c Cluster, p Pod) error {
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return waitFor(wctx, "redis-server in "+p.Name, func() error {
		cmd, err := l.Topo.PodCommand(wctx, p.Name, "redis-cli", "-h", p.IP.String(), "-p", fmt.Sprint(RedisPort),
			"MSET", RedisClusterKey, c.Name, RedisPodKey, p.Name)
		if err != nil {
			return err
		}
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "OK" {
			return fmt.Errorf("redis-cli MSET: %v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	})
}

// RestartRedis starts a stopped (or killed) pod's redis-server again and
// seeds its keys.
func (l *Lab) RestartRedis(ctx context.Context, pod string) error {
	c, _, p, ok := l.Topo.Pod(pod)
	if !ok {
		return fmt.Errorf("no pod %s in lab %s", pod, l.Topo.Name)
	}
	if err := l.Restart(RedisProc(pod)); err != nil {
		return err
	}
	return l.seedRedis(ctx, *c, *p)
}

// RedisPods are the pods running redis-server in one cluster.
func (t *Topology) RedisPods(cluster string) []Pod {
	var out []Pod
	for _, c := range t.Clusters {
		if c.Name != cluster {
			continue
		}
		for _, n := range c.Nodes {
			for _, p := range n.Pods {
				if IsRedisPod(p) {
					out = append(out, p)
				}
			}
		}
	}
	return out
}

// RedisReadyText is how `fedctl service imports` summarises a cluster's
// redis backends with ready of them ready: one backend per db pod and
// family (the pods are dual-stack).
func (t *Topology) RedisReadyText(cluster string, ready bool) string {
	n := 2 * len(t.RedisPods(cluster))
	r := n
	if !ready {
		r = 0
	}
	return fmt.Sprintf("%s(%d/%d)", cluster, r, n)
}

// KubeClients are clients of a cluster's kube-apiserver from fedlab's own
// process: the apiserver listens on loopback in the management namespace,
// so every connection is opened inside it. The kubeconfig is read at each
// call: a restarted cluster listens on another port.
func (l *Lab) KubeClients(cluster string) (kubernetes.Interface, mcsclient.Interface, error) {
	b, err := os.ReadFile(filepath.Join(l.Dir, "kube-"+cluster, "kubeconfig.path"))
	if err != nil {
		return nil, nil, fmt.Errorf("cluster %s has no kube-apiserver in this lab: %w", cluster, err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", strings.TrimSpace(string(b)))
	if err != nil {
		return nil, nil, err
	}
	ns := l.Topo.Mgmt.NS
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialInNS(ctx, ns, network, addr)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	mcs, err := mcsclient.NewForConfig(cfg)
	return cs, mcs, err
}

// exportMarker records that the lab exported a service from a cluster, so
// the cluster's supervisor exports it again when the cluster's API comes
// back after a loss (the lab's apiserver keeps no data across a restart; a
// real cluster's etcd would).
func exportMarker(dir, cluster, service string) string {
	return filepath.Join(dir, "kube-"+cluster, exportMarkerPrefix+service)
}

const exportMarkerPrefix = "exports-"

// ExportRedis exports service redis from one cluster through its
// kube-apiserver, as a user would: the Service (port 6379 selecting the db
// pods), the EndpointSlice its controller would write (every db pod
// ready), and a ServiceExport with `fedmesh.io/affinity: local`.
func (l *Lab) ExportRedis(ctx context.Context, cluster string) error {
	cs, mcs, err := l.KubeClients(cluster)
	if err != nil {
		return err
	}
	if err := applyRedisExport(ctx, cs, mcs, l.Topo, cluster); err != nil {
		return err
	}
	return os.WriteFile(exportMarker(l.Dir, cluster, RedisService), nil, 0o600)
}

func applyRedisExport(ctx context.Context, cs kubernetes.Interface, mcs mcsclient.Interface, topo *Topology, cluster string) error {
	ns := "demo"
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: RedisService}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "db"},
		Ports:    []corev1.ServicePort{{Name: "redis", Port: RedisPort, TargetPort: intstr.FromInt32(RedisPort)}},
	}}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service redis in %s: %w", cluster, err)
	}
	// One slice per family, as the EndpointSlice controller writes for a
	// dual-stack service: the pods are dual-stack and the import gets a
	// ClusterSetIP of each family, each translating to its own family.
	for _, fam := range []int{4, 6} {
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: redisSlice(fam), Labels: map[string]string{discoveryv1.LabelServiceName: RedisService}},
			AddressType: map[int]discoveryv1.AddressType{4: discoveryv1.AddressTypeIPv4, 6: discoveryv1.AddressTypeIPv6}[fam],
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("redis"), Port: ptr.To(int32(RedisPort))}},
		}
		for _, c := range topo.Clusters {
			if c.Name != cluster {
				continue
			}
			for _, n := range c.Nodes {
				for _, p := range n.Pods {
					if IsRedisPod(p) {
						slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.Addr(fam).String()},
							NodeName: ptr.To(n.Name), TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p.Name},
							Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
					}
				}
			}
		}
		if len(slice.Endpoints) == 0 {
			return fmt.Errorf("cluster %s has no db pod to run redis (the lab needs 3 pods per node)", cluster)
		}
		if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create endpoint slice of redis in %s: %w", cluster, err)
		}
	}
	se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: RedisService,
		Annotations: map[string]string{"fedmesh.io/affinity": "local"}}}
	if _, err := mcs.MulticlusterV1beta1().ServiceExports(ns).Create(ctx, se, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service export of redis in %s: %w", cluster, err)
	}
	return nil
}

// SetRedisReady sets the ready condition of a db pod in its cluster's
// redis EndpointSlice, as the EndpointSlice controller does when the pod's
// readiness probe fails or passes again.
func (l *Lab) SetRedisReady(ctx context.Context, pod string, ready bool) error {
	c, _, p, ok := l.Topo.Pod(pod)
	if !ok {
		return fmt.Errorf("no pod %s in lab %s", pod, l.Topo.Name)
	}
	cs, _, err := l.KubeClients(c.Name)
	if err != nil {
		return err
	}
	slices := cs.DiscoveryV1().EndpointSlices("demo")
	for _, fam := range []int{4, 6} {
		s, err := slices.Get(ctx, redisSlice(fam), metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get the redis endpoint slice of %s: %w", c.Name, err)
		}
		found := false
		for i, e := range s.Endpoints {
			if len(e.Addresses) > 0 && e.Addresses[0] == p.Addr(fam).String() {
				s.Endpoints[i].Conditions.Ready = ptr.To(ready)
				found = true
			}
		}
		if !found {
			return fmt.Errorf("pod %s is not in the redis endpoint slice %s of %s", pod, s.Name, c.Name)
		}
		if _, err := slices.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update the redis endpoint slice of %s: %w", c.Name, err)
		}
	}
	return nil
}

// redisSlice names the lab's redis EndpointSlice of one family.
func redisSlice(fam int) string {
	if fam == 6 {
		return RedisService + "-lab6"
	}
	return RedisService + "-lab"
}

// reexport exports again, in a cluster whose supervisor restarted, every
// service the lab had exported there (redis and the demo's app services).
func reexport(ctx context.Context, cs kubernetes.Interface, mcs mcsclient.Interface, topo *Topology, dir, cluster string) error {
	markers, err := filepath.Glob(exportMarker(dir, cluster, "*"))
	if err != nil {
		return err
	}
	for _, m := range markers {
		svc := strings.TrimPrefix(filepath.Base(m), exportMarkerPrefix)
		if svc == RedisService {
			err = applyRedisExport(ctx, cs, mcs, topo, cluster)
		} else {
			err = applyServiceExport(ctx, cs, mcs, topo, cluster, svc)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// NodeDNS is the node-local resolver's address on every lab node (the
// agents' --dns-listen; a link-local address on the agent's dummy link, as
// NodeLocal DNSCache uses), the nameserver of every lab pod.
const NodeDNS = "169.254.20.10"

// resolvConf is a pod's resolv.conf: the node-local resolver only. The lab
// has no cluster DNS, so the agents run without --dns-upstream and answer
// clusterset.local alone; other names are REFUSED at once.
func resolvConf() string {
	return "# fedlab: the node's fedmesh-agent resolver (clusterset.local)\nnameserver " + NodeDNS + "\noptions timeout:1 attempts:2\n"
}

// resolvPath is where a pod's resolv.conf lives; every command the lab
// runs in the pod sees it bind-mounted on /etc/resolv.conf (enterPod).
func resolvPath(lab, podNS string) string {
	return filepath.Join(StateDir(lab), "resolv", podNS+".conf")
}

// writeResolvConfs writes every pod's resolv.conf.
func writeResolvConfs(t *Topology) error {
	for _, c := range t.Clusters {
		for _, n := range c.Nodes {
			for _, p := range n.Pods {
				path := resolvPath(t.Name, p.NS)
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					return err
				}
				if err := os.WriteFile(path, []byte(resolvConf()), 0o644); err != nil {
					return fmt.Errorf("write the resolv.conf of pod %s: %w", p.Name, err)
				}
			}
		}
	}
	return nil
}
