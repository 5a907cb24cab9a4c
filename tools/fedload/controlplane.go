package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// replicaProc is one fedmesh-controlplane process the load run started
// (a separate process, so its RSS and CPU are its own).
type replicaProc struct {
	nonVoter                                 bool
	id, raftAddr, grpcAddr, metricsAddr, dir string
	peers                                    string // --bootstrap-peers it was started with
	cmd                                      *exec.Cmd
	done                                     chan struct{}
	log                                      string
}

// federation is the control plane under load: its replicas, its CA and the
// TLS material clients dial with.
type federation struct {
	replicas []*replicaProc
	ca       *ca.CA
	dir      string
	memLimit string // every replica's GOMEMLIMIT; empty: inherited
}

// freeAddrs reserves n loopback ports (closed again before use; the
// window is small on loopback).
func freeAddrs(n int) ([]string, error) {
	var out []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("reserve loopback port: %w", err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// startFederation starts n voting replicas of bin over mTLS with a fresh
// CA in dir, waits until an admin can read, then adds nonVoters read
// replicas as an operator would (fedctl controlplane members add
// --nonvoter).
func startFederation(ctx context.Context, bin, dir string, n, nonVoters int, extraArgs []string, memLimit string) (*federation, error) {
	caDir := filepath.Join(dir, "ca")
	c, err := ca.Init(caDir, "fedload CA", 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	f := &federation{ca: c, dir: dir, memLimit: memLimit}
	addrs, err := freeAddrs(3 * (n + nonVoters))
	if err != nil {
		return nil, err
	}
	var peers []string
	for i := range n + nonVoters {
		r := &replicaProc{nonVoter: i >= n, id: fmt.Sprintf("r%d", i+1), raftAddr: addrs[3*i], grpcAddr: addrs[3*i+1], metricsAddr: addrs[3*i+2],
			dir: filepath.Join(dir, fmt.Sprintf("r%d", i+1))}
		f.replicas = append(f.replicas, r)
		if !r.nonVoter {
			peers = append(peers, fmt.Sprintf("%s=%s/%s", r.id, r.raftAddr, r.grpcAddr))
		}
	}
	for _, r := range f.replicas {
		p := strings.Join(peers, ",")
		if r.nonVoter {
			p = ""
		}
		if err := f.start(r, p, extraArgs, bin); err != nil {
			f.stop()
			return nil, err
		}
	}
	admin, err := f.dial(auth.Admin(), f.voterAddrs())
	if err != nil {
		f.stop()
		return nil, err
	}
	defer admin.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := fedmeshv1.NewClusterServiceClient(admin).ListClusters(cctx, &fedmeshv1.ListClustersRequest{})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			f.stop()
			return nil, fmt.Errorf("wait for the control plane to serve: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, r := range f.replicas {
		if !r.nonVoter {
			continue
		}
		for {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := fedmeshv1.NewControlPlaneServiceClient(admin).AddMember(cctx, &fedmeshv1.AddMemberRequest{
				Id: r.id, RaftAddress: r.raftAddr, GrpcAddress: r.grpcAddr, Nonvoter: true})
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				f.stop()
				return nil, fmt.Errorf("add read replica %s: %w", r.id, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return f, nil
}

func (f *federation) start(r *replicaProc, peers string, extraArgs []string, bin string) error {
	tlsDir := filepath.Join(r.dir, "tls")
	if err := os.MkdirAll(tlsDir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", tlsDir, err)
	}
	if err := os.WriteFile(filepath.Join(tlsDir, ca.CertFile), f.ca.CertPEM(), 0o600); err != nil {
		return fmt.Errorf("write CA certificate: %w", err)
	}
	certPEM, keyPEM, err := f.ca.Issue(ca.Leaf{ID: auth.Replica(r.id).URI(), Usage: ca.UsageReplica, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Lifetime: 24 * time.Hour})
	if err != nil {
		return fmt.Errorf("issue replica %s certificate: %w", r.id, err)
	}
	if err := ca.WriteCredentials(filepath.Join(tlsDir, "replica.crt"), filepath.Join(tlsDir, "replica.key"), certPEM, keyPEM); err != nil {
		return fmt.Errorf("write replica %s credentials: %w", r.id, err)
	}
	r.peers = peers
	r.log = filepath.Join(r.dir, "replica.log")
	// Appended to: a restarted replica keeps its first run's log.
	logf, err := os.OpenFile(r.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("create replica log: %w", err)
	}
	args := append([]string{"--node-id", r.id, "--data-dir", filepath.Join(r.dir, "data"),
		"--raft-addr", r.raftAddr, "--grpc-addr", r.grpcAddr, "--metrics-addr", r.metricsAddr,
		"--bootstrap-peers", peers, "--tls-dir", tlsDir, "--log-level", "warn"}, extraArgs...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if f.memLimit != "" {
		cmd.Env = append(os.Environ(), "GOMEMLIMIT="+f.memLimit)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start replica %s (%s): %w", r.id, bin, err)
	}
	r.cmd, r.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(r.done) }()
	return nil
}

// stop ends every replica this run started, by PID.
func (f *federation) stop() {
	for _, r := range f.replicas {
		if r.cmd == nil {
			continue
		}
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			_ = r.cmd.Process.Kill()
			<-r.done
		}
	}
}

// voterAddrs are the voting replicas' API addresses, the syncers' list.
func (f *federation) voterAddrs() []string {
	var out []string
	for _, r := range f.replicas {
		if !r.nonVoter {
			out = append(out, r.grpcAddr)
		}
	}
	return out
}

// agentAddrs are the agents' replica list, for agent order: the read
// replicas first when there are any (agent order spread across them),
// then the voters, as an operator would point agents at read replicas.
func (f *federation) agentAddrs(order int) []string {
	var readers []string
	for _, r := range f.replicas {
		if r.nonVoter {
			readers = append(readers, r.grpcAddr)
		}
	}
	voters := f.voterAddrs()
	rot := func(xs []string) []string {
		out := make([]string, len(xs))
		for i := range xs {
			out[i] = xs[(order+i)%len(xs)]
		}
		return out
	}
	if len(readers) == 0 {
		return rot(voters)
	}
	return append(rot(readers), voters...)
}

// clientCreds issues a client certificate for p straight from the CA, as
// the control plane's Join would after a token exchange.
func (f *federation) clientCreds(p auth.Principal) (grpc.DialOption, error) {
	certPEM, keyPEM, err := f.ca.Issue(ca.Leaf{ID: p.URI(), Usage: ca.UsageClient, Lifetime: 24 * time.Hour})
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", p, err)
	}
	cert, err := auth.NewCertificate(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load certificate for %s: %w", p, err)
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(f.ca.Pool(), cert))), nil
}

// dial connects to the first of addrs as p.
func (f *federation) dial(p auth.Principal, addrs []string) (*grpc.ClientConn, error) {
	creds, err := f.clientCreds(p)
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(addrs[0], creds)
	if err != nil {
		return nil, fmt.Errorf("dial %s as %s: %w", addrs[0], p, err)
	}
	return cc, nil
}

// catchUp starts one more replica with an empty data dir, adds it as a read
// replica and returns how long it took to apply rev (snapshot install plus
// the log after it).
func (f *federation) catchUp(ctx context.Context, bin string, extraArgs []string, rev uint64) (time.Duration, error) {
	addrs, err := freeAddrs(3)
	if err != nil {
		return 0, err
	}
	id := fmt.Sprintf("r%d", len(f.replicas)+1)
	r := &replicaProc{nonVoter: true, id: id, raftAddr: addrs[0], grpcAddr: addrs[1], metricsAddr: addrs[2], dir: filepath.Join(f.dir, id)}
	f.replicas = append(f.replicas, r)
	start := time.Now()
	if err := f.start(r, "", extraArgs, bin); err != nil {
		return 0, err
	}
	admin, err := f.dial(auth.Admin(), f.voterAddrs())
	if err != nil {
		return 0, err
	}
	defer admin.Close()
	self, err := f.dial(auth.Admin(), []string{r.grpcAddr})
	if err != nil {
		return 0, err
	}
	defer self.Close()
	deadline := time.Now().Add(5 * time.Minute)
	added := false
	for {
		if !added {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := fedmeshv1.NewControlPlaneServiceClient(admin).AddMember(cctx, &fedmeshv1.AddMemberRequest{Id: id, RaftAddress: r.raftAddr, GrpcAddress: r.grpcAddr, Nonvoter: true})
			cancel()
			added = err == nil
		} else {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := fedmeshv1.NewControlPlaneServiceClient(self).GetReplicaStatus(cctx, &fedmeshv1.GetReplicaStatusRequest{})
			cancel()
			if err == nil && st.GetRevision() >= rev {
				return time.Since(start), nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, fmt.Errorf("new replica %s did not reach revision %d within 5m", id, rev)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// restart stops replica i (SIGTERM, as an operator's rollout would) and
// starts it again on the same data dir; it returns how long the new
// process took to serve rev (snapshot restore plus the log after it) and
// the new process's peak RSS by then.
func (f *federation) restart(ctx context.Context, bin string, extraArgs []string, i int, rev uint64) (time.Duration, uint64, error) {
	r := f.replicas[i]
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	start := time.Now()
	if err := f.start(r, r.peers, extraArgs, bin); err != nil {
		return 0, 0, err
	}
	self, err := f.dial(auth.Admin(), []string{r.grpcAddr})
	if err != nil {
		return 0, 0, err
	}
	defer self.Close()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := fedmeshv1.NewControlPlaneServiceClient(self).GetReplicaStatus(cctx, &fedmeshv1.GetReplicaStatusRequest{})
		cancel()
		if err == nil && st.GetRevision() >= rev {
			d := time.Since(start)
			ps, _ := readProc(r.cmd.Process.Pid)
			return d, ps.PeakRSS, nil
		}
		select {
		case <-r.done:
			return 0, 0, fmt.Errorf("restarted replica %s exited before serving revision %d (see %s)", r.id, rev, r.log)
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, 0, fmt.Errorf("restarted replica %s did not reach revision %d within 10m", r.id, rev)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
