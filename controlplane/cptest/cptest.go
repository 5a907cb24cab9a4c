// Package cptest runs real fedmesh-controlplane replicas for the tests of
// other packages: separate processes on loopback, each with its own data
// dir and ports, a real Raft group and the real gRPC API. No stand-in, no
// in-process shortcut: a killed replica is a SIGKILLed process. Tests whose
// subject is not process death use controlplane/inproc instead: the same
// replicas inside the test process, with a partitionable Raft network and
// fault injection on the clients' calls.
//
// The binary is built once per test binary (go build of
// ./controlplane/cmd/fedmesh-controlplane into a temporary directory, from
// the Go build cache after the first time). Call Main from TestMain so that
// directory is removed when the tests end:
//
//	func TestMain(m *testing.M) { os.Exit(cptest.Main(m)) }
//
// Start registers a t.Cleanup that ends every replica it started, by PID,
// and dumps the tail of each replica's log when the test failed. Nothing
// listens outside 127.0.0.1.
package cptest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Package path of the control-plane binary.
const binaryPackage = "github.com/fedmesh/fedmesh/controlplane/cmd/fedmesh-controlplane"

var build struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Binary builds fedmesh-controlplane once per test binary and returns its
// path.
func Binary() (string, error) {
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "fedmesh-cptest-bin-")
		if err != nil {
			build.err = fmt.Errorf("create build dir: %w", err)
			return
		}
		build.dir = dir
		path := filepath.Join(dir, "fedmesh-controlplane")
		cmd := exec.Command("go", "build", "-o", path, binaryPackage)
		out, err := cmd.CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("build %s (needs the go tool and this module): %w\n%s", binaryPackage, err, out)
			return
		}
		build.path = path
	})
	return build.path, build.err
}

// Main runs the tests and removes the binary Binary built. Use it from
// TestMain: os.Exit(cptest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	return code
}

// Options tune a Cluster. The zero value starts three replicas.
type Options struct {
	// Replicas is the group size (default 3).
	Replicas int
	// RaftTimeout is --raft-timeout (default 300ms: quick elections on
	// loopback, still stable on a loaded machine).
	RaftTimeout time.Duration
	// EventLogSize is --event-log-size (default: the binary's).
	EventLogSize int
	// Args are extra flags for every replica.
	Args []string
	// LeaderTimeout bounds the wait for the first leader (default 30s).
	LeaderTimeout time.Duration
	// Metrics serves /metrics on a loopback port of every replica (see
	// Replica.Metric).
	Metrics bool
}

// Replica is one fedmesh-controlplane process. Its addresses and data dir
// stay the same across Kill and Restart.
type Replica struct {
	ID       string
	RaftAddr string
	GRPCAddr string
	DataDir  string
	LogPath  string
	// MetricsAddr serves /metrics when Options.Metrics is set.
	MetricsAddr string

	conn *grpc.ClientConn
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Conn is a plaintext gRPC connection to the replica (it reconnects by
// itself after a restart).
func (r *Replica) Conn() *grpc.ClientConn { return r.conn }

// PID is the process ID of the running replica, 0 when stopped.
func (r *Replica) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil || !r.aliveLocked() {
		return 0
	}
	return r.cmd.Process.Pid
}

// Alive reports whether the replica's process is running.
func (r *Replica) Alive() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.aliveLocked()
}

func (r *Replica) aliveLocked() bool {
	if r.done == nil {
		return false
	}
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// Cluster is a Raft group of replica processes.
type Cluster struct {
	Replicas []*Replica

	t     testing.TB
	bin   string
	opts  Options
	peers string
}

// Start builds the binary if needed, starts the replicas and waits until
// they agree on a leader. Everything is stopped in t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Replicas == 0 {
		opts.Replicas = 3
	}
	if opts.RaftTimeout == 0 {
		opts.RaftTimeout = 300 * time.Millisecond
	}
	if opts.LeaderTimeout == 0 {
		opts.LeaderTimeout = 30 * time.Second
	}
	bin, err := Binary()
	if err != nil {
		t.Fatalf("cptest: %v", err)
	}
	dir := t.TempDir()
	c := &Cluster{t: t, bin: bin, opts: opts}
	var peers []string
	addrs := FreeAddrs(t, 3*opts.Replicas)
	for i := range opts.Replicas {
		id := fmt.Sprintf("r%d", i+1)
		r := &Replica{ID: id, RaftAddr: addrs[3*i], GRPCAddr: addrs[3*i+1],
			DataDir: filepath.Join(dir, id), LogPath: filepath.Join(dir, id+".log")}
		if opts.Metrics {
			r.MetricsAddr = addrs[3*i+2]
		}
		cc, err := grpc.NewClient(r.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatalf("cptest: client for %s: %v", id, err)
		}
		r.conn = cc
		c.Replicas = append(c.Replicas, r)
		peers = append(peers, fmt.Sprintf("%s=%s/%s", r.ID, r.RaftAddr, r.GRPCAddr))
	}
	c.peers = strings.Join(peers, ",")
	t.Cleanup(func() {
		for _, r := range c.Replicas {
			c.stop(r, syscall.SIGTERM)
			r.conn.Close()
		}
		if t.Failed() {
			for _, r := range c.Replicas {
				if b, err := os.ReadFile(r.LogPath); err == nil {
					t.Logf("--- control-plane replica %s log (tail) ---\n%s", r.ID, tail(string(b), 4000))
				}
			}
		}
	})
	for _, r := range c.Replicas {
		if err := c.start(r); err != nil {
			t.Fatalf("cptest: %v", err)
		}
	}
	if _, err := c.WaitLeader(opts.LeaderTimeout); err != nil {
		t.Fatalf("cptest: %v", err)
	}
	return c
}

// FreeAddrs returns n distinct free loopback addresses. Every listener
// stays open until all n are picked: picked one at a time and closed at
// once, the kernel may hand the same port out twice, and two replicas of
// one group then share an address.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range out {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("cptest: pick a free port: %v", err)
		}
		defer l.Close()
		out[i] = l.Addr().String()
	}
	return out
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func (c *Cluster) start(r *Replica) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.aliveLocked() {
		return fmt.Errorf("start replica %s: already running (pid %d)", r.ID, r.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(r.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("open log of replica %s: %w", r.ID, err)
	}
	args := []string{
		"--node-id", r.ID, "--data-dir", r.DataDir,
		"--raft-addr", r.RaftAddr, "--grpc-addr", r.GRPCAddr,
		"--bootstrap-peers", c.peers,
		"--raft-timeout", c.opts.RaftTimeout.String(),
		// Always explicit: the default is about to become false.
		"--insecure-dev",
		"--log-level", "warn",
	}
	if r.MetricsAddr != "" {
		args = append(args, "--metrics-addr", r.MetricsAddr)
	}
	if c.opts.EventLogSize > 0 {
		args = append(args, "--event-log-size", fmt.Sprint(c.opts.EventLogSize))
	}
	args = append(args, c.opts.Args...)
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start replica %s: %w", r.ID, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	r.cmd, r.done = cmd, done
	return nil
}

// stop signals the replica's process (started by this cluster) and waits
// for it to exit; a SIGTERM not obeyed within 10s becomes a SIGKILL.
func (c *Cluster) stop(r *Replica, sig syscall.Signal) {
	r.mu.Lock()
	cmd, done, alive := r.cmd, r.done, r.aliveLocked()
	r.mu.Unlock()
	if !alive {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

// Kill SIGKILLs the replica's process and waits until it is gone: a crash,
// no graceful shutdown.
func (c *Cluster) Kill(r *Replica) { c.stop(r, syscall.SIGKILL) }

// Stop ends the replica's process gracefully (SIGTERM).
func (c *Cluster) Stop(r *Replica) { c.stop(r, syscall.SIGTERM) }

// KillAll SIGKILLs every replica.
func (c *Cluster) KillAll() {
	for _, r := range c.Replicas {
		c.Kill(r)
	}
}

// Restart starts a stopped replica again on the same addresses and data
// dir (it recovers from disk). It does not wait for a leader.
func (c *Cluster) Restart(r *Replica) {
	c.t.Helper()
	if err := c.start(r); err != nil {
		c.t.Fatalf("cptest: %v", err)
	}
}

// RestartAll starts every stopped replica and waits for a leader.
func (c *Cluster) RestartAll() *Replica {
	c.t.Helper()
	for _, r := range c.Replicas {
		if !r.Alive() {
			c.Restart(r)
		}
	}
	return c.Leader()
}

// Addrs are the gRPC addresses of all replicas, in order.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Replicas))
	for i, r := range c.Replicas {
		out[i] = r.GRPCAddr
	}
	return out
}

// Status asks one replica for its Raft state and revision.
func Status(ctx context.Context, r *Replica) (*fedmeshv1.GetReplicaStatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return fedmeshv1.NewControlPlaneServiceClient(r.conn).GetReplicaStatus(ctx, &fedmeshv1.GetReplicaStatusRequest{})
}

// WaitLeader waits until a live replica is leader and every live replica
// that answers names it.
func (c *Cluster) WaitLeader(timeout time.Duration) (*Replica, error) {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		lead, why := c.leaderOnce()
		if lead != nil {
			return lead, nil
		}
		last = why
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no leader agreed on within %s: %s", timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) leaderOnce() (*Replica, string) {
	var lead *Replica
	leaderIDs := map[string]bool{}
	live := 0
	for _, r := range c.Replicas {
		if !r.Alive() {
			continue
		}
		live++
		st, err := Status(context.Background(), r)
		if err != nil {
			return nil, fmt.Sprintf("replica %s: %v", r.ID, err)
		}
		if st.GetRaftState() == "Leader" {
			lead = r
		}
		leaderIDs[st.GetLeaderId()] = true
	}
	if live == 0 {
		return nil, "no replica running"
	}
	if lead == nil {
		return nil, "no replica is leader"
	}
	if len(leaderIDs) != 1 || !leaderIDs[lead.ID] {
		return nil, fmt.Sprintf("replicas disagree on the leader: %v", leaderIDs)
	}
	return lead, ""
}

// Leader waits (up to Options.LeaderTimeout) for the agreed leader.
func (c *Cluster) Leader() *Replica {
	c.t.Helper()
	r, err := c.WaitLeader(c.opts.LeaderTimeout)
	if err != nil {
		c.t.Fatalf("cptest: %v", err)
	}
	return r
}

// Followers are the live replicas other than lead.
func (c *Cluster) Followers(lead *Replica) []*Replica {
	var out []*Replica
	for _, r := range c.Replicas {
		if r != lead && r.Alive() {
			out = append(out, r)
		}
	}
	return out
}

// WaitRevision waits until every live replica has applied at least rev.
func (c *Cluster) WaitRevision(rev uint64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var lagging []string
		for _, r := range c.Replicas {
			if !r.Alive() {
				continue
			}
			st, err := Status(context.Background(), r)
			if err != nil || st.GetRevision() < rev {
				lagging = append(lagging, fmt.Sprintf("%s at %d (%v)", r.ID, st.GetRevision(), err))
			}
		}
		if len(lagging) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replicas not at revision %d within %s: %s", rev, timeout, strings.Join(lagging, ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ErrNoReplica is returned when no replica of the cluster is running.
var ErrNoReplica = errors.New("no control-plane replica is running")

// Any returns a live replica, the leader when one is agreed on.
func (c *Cluster) Any() (*Replica, error) {
	if lead, _ := c.leaderOnce(); lead != nil {
		return lead, nil
	}
	for _, r := range c.Replicas {
		if r.Alive() {
			return r, nil
		}
	}
	return nil, ErrNoReplica
}

// Metric reads one unlabelled counter or gauge from the replica's /metrics
// (Options.Metrics must be set).
func (r *Replica) Metric(ctx context.Context, name string) (float64, error) {
	if r.MetricsAddr == "" {
		return 0, fmt.Errorf("read metric %s of replica %s: start the cluster with Options.Metrics", name, r.ID)
	}
	v, err := ReadMetric(ctx, r.MetricsAddr, name)
	if err != nil {
		return 0, fmt.Errorf("replica %s: %w", r.ID, err)
	}
	return v, nil
}

// ReadMetric reads one unlabelled counter or gauge from the Prometheus
// text served on http://addr/metrics.
func ReadMetric(ctx context.Context, addr, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("read metric %s: %w", name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("read metric %s: %w", name, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		v, ok := strings.CutPrefix(line, name+" ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return 0, fmt.Errorf("parse metric %s: %w", name, err)
		}
		return f, nil
	}
	return 0, fmt.Errorf("no metric %s at %s", name, addr)
}
