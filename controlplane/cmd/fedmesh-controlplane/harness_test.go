package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/cptest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// binary is the fedmesh-controlplane built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fedmesh-cp-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "fedmesh-controlplane")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build fedmesh-controlplane:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// replica is one fedmesh-controlplane process.
type replica struct {
	id, raftAddr, grpcAddr, dataDir, logPath string
	joiner                                   bool   // started without bootstrap peers, added at runtime
	tlsDir                                   string // credentials, when the group runs mTLS
	cmd                                      *exec.Cmd
	done                                     chan struct{}
	conn                                     *grpc.ClientConn
}

// group is a Raft group of replica processes on loopback.
type group struct {
	t     testing.TB
	reps  []*replica
	peers string
	extra []string
	// pki, when set, runs the group over mTLS with credentials it issues.
	pki *pki
}

func startGroup(t testing.TB, n int, extra ...string) *group {
	t.Helper()
	return startGroupWith(t, n, nil, extra...)
}

func startGroupWith(t testing.TB, n int, p *pki, extra ...string) *group {
	t.Helper()
	g := &group{t: t, extra: extra, pki: p}
	var peers []string
	addrs := cptest.FreeAddrs(t, 2*n)
	for i := range n {
		r := &replica{id: fmt.Sprintf("r%d", i+1), raftAddr: addrs[2*i], grpcAddr: addrs[2*i+1], dataDir: t.TempDir()}
		r.logPath = filepath.Join(r.dataDir, "..", r.id+".log")
		if p != nil {
			r.tlsDir = p.replicaDir(t, r.id)
		}
		g.reps = append(g.reps, r)
		peers = append(peers, fmt.Sprintf("%s=%s/%s", r.id, r.raftAddr, r.grpcAddr))
	}
	g.peers = strings.Join(peers, ",")
	for _, r := range g.reps {
		g.start(r)
	}
	t.Cleanup(func() {
		for _, r := range g.reps {
			g.kill(r)
		}
		if t.Failed() {
			for _, r := range g.reps {
				if b, err := os.ReadFile(r.logPath); err == nil {
					t.Logf("--- %s log (tail) ---\n%s", r.id, tail(string(b), 3000))
				}
			}
		}
	})
	g.leader(30 * time.Second)
	return g
}

// join starts a new replica with an empty data dir and no bootstrap peers;
// it waits to be added with AddMember.
func (g *group) join(id string) *replica {
	g.t.Helper()
	addrs := cptest.FreeAddrs(g.t, 2)
	r := &replica{id: id, raftAddr: addrs[0], grpcAddr: addrs[1], dataDir: g.t.TempDir(), joiner: true}
	r.logPath = filepath.Join(r.dataDir, "..", r.id+".log")
	if g.pki != nil && r.tlsDir == "" {
		r.tlsDir = g.pki.replicaDir(g.t, r.id)
	}
	g.reps = append(g.reps, r)
	g.start(r)
	return r
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (g *group) start(r *replica) {
	g.t.Helper()
	logf, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		g.t.Fatal(err)
	}
	args := append([]string{"--node-id", r.id, "--data-dir", r.dataDir, "--raft-addr", r.raftAddr, "--grpc-addr", r.grpcAddr,
		"--raft-timeout", "300ms", "--log-level", "warn"}, g.extra...)
	if g.pki == nil {
		args = append(args, "--insecure-dev")
	} else {
		args = append(args, "--tls-dir", r.tlsDir)
	}
	if !r.joiner {
		args = append(args, "--bootstrap-peers", g.peers)
	}
	r.cmd = exec.Command(binary, args...)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	if err := r.cmd.Start(); err != nil {
		g.t.Fatalf("start %s: %v", r.id, err)
	}
	r.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); logf.Close(); close(done) }(r.cmd, r.done)
	if r.conn == nil {
		creds := grpc.WithTransportCredentials(insecure.NewCredentials())
		if g.pki != nil {
			creds = g.pki.creds(g.t, auth.Admin())
		}
		cc, err := grpc.NewClient(r.grpcAddr, creds)
		if err != nil {
			g.t.Fatal(err)
		}
		r.conn = cc
		g.t.Cleanup(func() { cc.Close() })
	}
}

// kill sends SIGKILL to the replica's process (started by this test) and
// waits for it to exit.
func (g *group) kill(r *replica) {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

func (g *group) signal(r *replica, s syscall.Signal) {
	if err := r.cmd.Process.Signal(s); err != nil {
		g.t.Fatalf("signal %s: %v", r.id, err)
	}
}

func (g *group) alive(r *replica) bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

func (g *group) status(ctx context.Context, r *replica) (*fedmeshv1.GetReplicaStatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return fedmeshv1.NewControlPlaneServiceClient(r.conn).GetReplicaStatus(ctx, &fedmeshv1.GetReplicaStatusRequest{})
}

// leader waits until a live replica reports being leader and every live
// replica agrees on it.
func (g *group) leader(timeout time.Duration) *replica {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var lead *replica
		agree := true
		for _, r := range g.reps {
			if !g.alive(r) {
				continue
			}
			st, err := g.status(context.Background(), r)
			if err != nil {
				agree = false
				break
			}
			if st.GetRaftState() == "Leader" {
				lead = r
			}
			if lead != nil && st.GetLeaderId() != lead.id && st.GetLeaderId() != "" {
				agree = false
			}
		}
		if lead != nil && agree {
			return lead
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.t.Fatal("no leader elected")
	return nil
}

func (g *group) followers(lead *replica) []*replica {
	var out []*replica
	for _, r := range g.reps {
		if r != lead && g.alive(r) {
			out = append(out, r)
		}
	}
	return out
}

// waitSameRevision waits until every live replica is at the same revision
// and returns it.
func (g *group) waitSameRevision(timeout time.Duration) uint64 {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	var revs []uint64
	for time.Now().Before(deadline) {
		revs = revs[:0]
		for _, r := range g.reps {
			if !g.alive(r) {
				continue
			}
			st, err := g.status(context.Background(), r)
			if err != nil {
				revs = append(revs, 0)
				continue
			}
			revs = append(revs, st.GetRevision())
		}
		same := len(revs) > 0
		for _, v := range revs {
			same = same && v == revs[0] && v > 0
		}
		if same {
			return revs[0]
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.t.Fatalf("replicas did not converge: revisions %v", revs)
	return 0
}

// retryable reports whether a failed call may succeed on another attempt
// (maybe on another replica).
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.Unknown:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded)
}
