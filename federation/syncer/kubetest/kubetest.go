// Package kubetest starts a real etcd and a real kube-apiserver on loopback
// for tests and the lab: no fake clientset, no HTTP stub. The apiserver
// serves the upstream ClusterNetworkPolicy CRD (crds.go) unless told not to. The binaries are
// the ones `make deps` builds into .cache/bin (found by walking up from the
// working directory) or those in $FEDMESH_KUBE_BIN_DIR.
//
// A Server owns two processes and a temporary directory; Stop (registered
// with t.Cleanup by Start) ends both processes by PID and removes the
// directory. Nothing listens outside 127.0.0.1.
package kubetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// EnvBinDir overrides where the etcd and kube-apiserver binaries are looked
// for.
const EnvBinDir = "FEDMESH_KUBE_BIN_DIR"

// ErrNoBinaries means etcd or kube-apiserver is not built on this machine.
var ErrNoBinaries = errors.New("etcd or kube-apiserver not found; run `make deps` (or set " + EnvBinDir + ")")

// Binaries are the paths of the two programs a Server runs.
type Binaries struct {
	Etcd, APIServer string
}

// FindBinaries looks in $FEDMESH_KUBE_BIN_DIR, then in .cache/bin of the
// working directory and each of its parents (tests run in their package's
// folder, deep inside the repository).
func FindBinaries() (Binaries, error) {
	var dirs []string
	if d := os.Getenv(EnvBinDir); d != "" {
		dirs = append(dirs, d)
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			dirs = append(dirs, filepath.Join(d, ".cache", "bin"))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, d := range dirs {
		b := Binaries{Etcd: filepath.Join(d, "etcd"), APIServer: filepath.Join(d, "kube-apiserver")}
		if isExec(b.Etcd) && isExec(b.APIServer) {
			return b, nil
		}
	}
	return Binaries{}, fmt.Errorf("look in %v: %w", dirs, ErrNoBinaries)
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// Server is a running etcd + kube-apiserver pair.
type Server struct {
	// Config is an admin (system:masters) client config for the apiserver.
	Config *rest.Config
	// URL is the apiserver's https address on 127.0.0.1.
	URL string
	// Dir holds the data, certificates and logs; removed by Stop.
	Dir string

	token     string
	etcdURL   string
	procs     []*proc // started order; stopped in reverse
	removeDir bool
	stopOnce  sync.Once
}

// proc is one child process and a channel closed once it has been reaped.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Options tune a Server. The zero value is fine.
type Options struct {
	// ServiceCIDR is --service-cluster-ip-range (default 10.96.0.0/16).
	ServiceCIDR string
	// KeepLogs keeps the temporary directory (with etcd.log and
	// apiserver.log) after Stop, for debugging.
	KeepLogs bool
	// Dir, when set, holds etcd's data and the apiserver's files instead of
	// a new temporary directory (the lab puts it in its state dir, so
	// `fedlab down` removes it even after a crash).
	Dir string
	// NoClusterNetworkPolicyCRD leaves out the upstream ClusterNetworkPolicy
	// CRD, which every Server otherwise serves (crds.go), to test a cluster
	// without it.
	NoClusterNetworkPolicyCRD bool
}

// Start runs etcd and kube-apiserver for the test and stops them in
// t.Cleanup. Without binaries it skips the test with a hint, but fails it
// when CI=true, where `make deps` must have built them.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bins, err := FindBinaries()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("kubetest: %v", err)
		}
		t.Skipf("kubetest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s, err := StartServer(ctx, bins, opts)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// StartServer runs etcd and kube-apiserver in a fresh temporary directory
// and waits until the apiserver is ready. The caller must call Stop.
func StartServer(ctx context.Context, bins Binaries, opts Options) (_ *Server, err error) {
	if opts.ServiceCIDR == "" {
		opts.ServiceCIDR = "10.96.0.0/16"
	}
	dir := opts.Dir
	if dir != "" {
		err = os.MkdirAll(dir, 0o700)
	} else {
		dir, err = os.MkdirTemp("", "fedmesh-kubetest-")
	}
	if err != nil {
		return nil, fmt.Errorf("create dir for etcd and kube-apiserver: %w", err)
	}
	s := &Server{Dir: dir}
	defer func() {
		if err != nil {
			// Keep the logs: they are how a user finds out why.
			s.stop(false)
			err = fmt.Errorf("%w (logs in %s)", err, dir)
		}
	}()
	if err := s.startEtcd(ctx, bins.Etcd); err != nil {
		return nil, err
	}
	if err := s.startAPIServer(ctx, bins.APIServer, opts); err != nil {
		return nil, err
	}
	if !opts.NoClusterNetworkPolicyCRD {
		if err := InstallClusterNetworkPolicyCRD(ctx, s.Config); err != nil {
			return nil, err
		}
	}
	s.removeDir = !opts.KeepLogs
	return s, nil
}

func (s *Server) startEtcd(ctx context.Context, bin string) error {
	// A port picked free may be taken before etcd binds it; retry a few
	// times rather than fail a test run on a race with a parallel test.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			return err
		}
		client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		data := filepath.Join(s.Dir, "etcd-data-"+strconv.Itoa(attempt))
		p, err := s.spawn(bin, "etcd.log",
			"--name=kubetest",
			"--data-dir="+data,
			"--listen-client-urls="+client,
			"--advertise-client-urls="+client,
			"--listen-peer-urls="+peer,
			"--initial-advertise-peer-urls="+peer,
			"--initial-cluster=kubetest="+peer,
			"--log-level=warn",
			"--quota-backend-bytes=4294967296",
			"--unsafe-no-fsync", // test data: durability buys nothing, fsync costs seconds
		)
		if err != nil {
			return err
		}
		err = waitHTTP(ctx, client+"/health", nil, p)
		if err == nil {
			s.etcdURL = client
			return nil
		}
		lastErr = err
		s.kill(p)
	}
	return fmt.Errorf("start etcd: %w", lastErr)
}

func (s *Server) startAPIServer(ctx context.Context, bin string, opts Options) error {
	saKey := filepath.Join(s.Dir, "sa.key")
	if err := writeRSAKey(saKey); err != nil {
		return err
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return fmt.Errorf("make admin token: %w", err)
	}
	s.token = hex.EncodeToString(tok)
	tokens := filepath.Join(s.Dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(s.token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return fmt.Errorf("write token file: %w", err)
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ports, err := freePorts(1)
		if err != nil {
			return err
		}
		s.URL = "https://127.0.0.1:" + strconv.Itoa(ports[0])
		p, err := s.spawn(bin, "apiserver.log",
			"--etcd-servers="+s.etcdURL,
			"--etcd-prefix=/kubetest",
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port="+strconv.Itoa(ports[0]),
			"--endpoint-reconciler-type=none", // it exits on a loopback advertise address otherwise
			"--cert-dir="+filepath.Join(s.Dir, "certs"),
			"--token-auth-file="+tokens,
			"--authorization-mode=RBAC",
			"--service-cluster-ip-range="+opts.ServiceCIDR,
			"--service-account-issuer=https://kubetest.invalid",
			"--service-account-key-file="+saKey,
			"--service-account-signing-key-file="+saKey,
			"--disable-admission-plugins=ServiceAccount",
			"--watch-cache=true",
			"--v=0",
		)
		if err != nil {
			return err
		}
		s.Config = &rest.Config{
			Host:            s.URL,
			BearerToken:     s.token,
			TLSClientConfig: rest.TLSClientConfig{Insecure: true}, // self-signed serving cert made at start
			QPS:             1000,
			Burst:           2000,
		}
		err = waitHTTP(ctx, s.URL+"/readyz", s.Config, p)
		if err == nil {
			return nil
		}
		lastErr = err
		s.kill(p)
	}
	return fmt.Errorf("start kube-apiserver: %w", lastErr)
}

// spawn starts a program with its output in a log file inside s.Dir. The
// child gets its own process group so Stop can end it and nothing else.
func (s *Server) spawn(bin, logName string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(filepath.Join(s.Dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", filepath.Base(bin), err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	p := &proc{cmd: cmd, done: done}
	s.procs = append(s.procs, p)
	return p, nil
}

// kill ends one process by PID (TERM, then KILL after 10 s) and waits until
// it is reaped.
func (s *Server) kill(p *proc) {
	_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// Stop ends the apiserver, then etcd, by PID, and removes the directory
// unless KeepLogs was set. Safe to call twice.
func (s *Server) Stop() { s.stop(s.removeDir) }

func (s *Server) stop(remove bool) {
	s.stopOnce.Do(func() {
		for i := len(s.procs) - 1; i >= 0; i-- {
			s.kill(s.procs[i])
		}
		if remove {
			_ = os.RemoveAll(s.Dir)
		}
	})
}

// Clientset returns an admin clientset.
func (s *Server) Clientset() kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(s.Config)
}

// WriteKubeconfig writes an admin kubeconfig for the server and returns its
// path (inside Dir), for binaries under test that take --kubeconfig.
func (s *Server) WriteKubeconfig() (string, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: s.URL, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: s.token}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "admin"}
	cfg.CurrentContext = "kubetest"
	p := filepath.Join(s.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		return "", fmt.Errorf("write kubeconfig: %w", err)
	}
	return p, nil
}

// CreateNamespace creates a namespace with labels and its default
// ServiceAccount: no controller-manager runs, and pods are refused in a
// namespace without one.
func (s *Server) CreateNamespace(ctx context.Context, name string, labels map[string]string) error {
	cs := s.Clientset()
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	_, err = cs.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create default service account in %s: %w", name, err)
	}
	return nil
}

// CreatePod creates a pod and, as no kubelet runs, sets its status: Running,
// ready, with the given IPs (none leaves the pod without an address).
func (s *Server) CreatePod(ctx context.Context, pod *corev1.Pod, ips ...string) (*corev1.Pod, error) {
	cs := s.Clientset()
	if len(pod.Spec.Containers) == 0 {
		pod.Spec.Containers = []corev1.Container{{Name: "c", Image: "example.invalid/app"}}
	}
	created, err := cs.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return s.SetPodIPs(ctx, created, ips...)
}

// SetPodIPs writes a pod's status subresource as a kubelet would.
func (s *Server) SetPodIPs(ctx context.Context, pod *corev1.Pod, ips ...string) (*corev1.Pod, error) {
	pod = pod.DeepCopy()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	pod.Status.PodIP, pod.Status.PodIPs = "", nil
	for i, ip := range ips {
		if i == 0 {
			pod.Status.PodIP = ip
		}
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	out, err := s.Clientset().CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("set status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return out, nil
}

// LogTail returns the end of the apiserver's log, for failure messages.
func (s *Server) LogTail() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "apiserver.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(bytes.TrimSpace(b))
}

func writeRSAKey(path string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generate service account key: %w", err)
	}
	der := x509.MarshalPKCS1PrivateKey(key)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write service account key: %w", err)
	}
	return nil
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free loopback port: %w", err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// waitHTTP polls url until it answers 200, the process exits, or ctx ends.
func waitHTTP(ctx context.Context, url string, cfg *rest.Config, p *proc) error {
	client := &http.Client{Timeout: 2 * time.Second}
	if cfg != nil {
		rt, err := rest.TransportFor(cfg)
		if err != nil {
			return fmt.Errorf("make client transport: %w", err)
		}
		client.Transport = rt
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("make request: %w", err)
		}
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("%s answered %s", url, resp.Status)
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %v)", url, ctx.Err(), last)
		case <-p.done:
			return fmt.Errorf("%s exited before %s was ready", filepath.Base(p.cmd.Path), url)
		case <-tick.C:
		}
	}
}

// PIDs returns the process ids of the running etcd and kube-apiserver.
func (s *Server) PIDs() []int {
	var out []int
	for _, p := range s.procs {
		out = append(out, p.cmd.Process.Pid)
	}
	return out
}
