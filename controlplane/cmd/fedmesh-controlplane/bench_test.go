package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// repoRoot walks up from the package directory to the module root.
func repoRoot(b *testing.B) string {
	dir, err := os.Getwd()
	if err != nil {
		b.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			b.Fatal("cannot find the repository root (go.mod)")
		}
		dir = parent
	}
}

// etcdBinary finds the etcd that `make deps` caches: $FEDMESH_ETCD when
// set, else .cache/bin/etcd in this checkout, else in the main worktree of
// this repository (a `git worktree` has no .cache of its own).
func etcdBinary(b *testing.B) string {
	if bin := os.Getenv("FEDMESH_ETCD"); bin != "" {
		return bin
	}
	root := repoRoot(b)
	candidates := []string{filepath.Join(root, ".cache", "bin", "etcd")}
	if out, err := exec.Command("git", "-C", root, "rev-parse", "--path-format=absolute", "--git-common-dir").Output(); err == nil {
		main := filepath.Dir(strings.TrimSpace(string(out)))
		candidates = append(candidates, filepath.Join(main, ".cache", "bin", "etcd"))
	}
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			return c
		}
	}
	b.Fatalf("etcd binary not found in %v: run `make deps` to build it, or set FEDMESH_ETCD (the write benchmark compares against a 3-member etcd)", candidates)
	return ""
}

// startEtcd runs a 3-member etcd on loopback and returns its client
// addresses.
func startEtcd(b *testing.B) (clients []string, pids []int) {
	bin := etcdBinary(b)
	type member struct{ name, peer, client string }
	var ms []member
	var initial []string
	addrs := cptest.FreeAddrs(b, 6)
	for i := range 3 {
		m := member{name: fmt.Sprintf("e%d", i), peer: addrs[2*i], client: addrs[2*i+1]}
		ms = append(ms, m)
		initial = append(initial, fmt.Sprintf("%s=http://%s", m.name, m.peer))
	}
	for _, m := range ms {
		dir := b.TempDir()
		cmd := exec.Command(bin, "--name", m.name, "--data-dir", filepath.Join(dir, "data"),
			"--listen-peer-urls", "http://"+m.peer, "--initial-advertise-peer-urls", "http://"+m.peer,
			"--listen-client-urls", "http://"+m.client, "--advertise-client-urls", "http://"+m.client,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "fedmesh-bench", "--log-level", "error", "--quota-backend-bytes", fmt.Sprint(8<<30))
		logf, err := os.Create(filepath.Join(dir, "etcd.log"))
		if err != nil {
			b.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			b.Fatalf("start etcd: %v", err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); logf.Close(); close(done) }()
		b.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGKILL); <-done })
		clients = append(clients, m.client)
		pids = append(pids, cmd.Process.Pid)
	}
	cc := dialB(b, clients[0])
	kv := etcdserverpb.NewKVClient(cc)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := kv.Put(ctx, &etcdserverpb.PutRequest{Key: []byte("ready"), Value: []byte("1")})
		cancel()
		if err == nil {
			return clients, pids
		}
		if time.Now().After(deadline) {
			b.Fatalf("etcd not ready: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func dialB(b *testing.B, addr string) *grpc.ClientConn {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	return cc
}

// kibEndpoint is endpoint k padded with labels to about 1 KiB encoded.
func kibEndpoint(k int) *fedmeshv1.Endpoint {
	labels := map[string]string{"app": fmt.Sprintf("app%d", k%50)}
	for i := range 12 {
		labels[fmt.Sprintf("example.com/pad%02d", i)] = strings.Repeat("x", 55)
	}
	return &fedmeshv1.Endpoint{Namespace: "bench", Name: fmt.Sprintf("p%d", k),
		Ips: []string{fmt.Sprintf("10.%d.%d.%d", k>>16&255, k>>8&255, k&255)}, Labels: labels, Node: "n1"}
}

const benchKeySpace = 100_000

type writeResult struct {
	perSec, p50, p99 float64
	// cpuMs is the CPU time the servers (all three) spent per write.
	cpuMs float64
}

// cpuTime is the CPU time (user + system) the processes used so far.
func cpuTime(b *testing.B, pids []int) time.Duration {
	var ticks int64
	for _, pid := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			b.Fatalf("read CPU time of process %d: %v", pid, err)
		}
		// Fields after the command name, which is in parentheses: state is
		// field 3, utime 14 and stime 15.
		f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
		for _, x := range f[11:13] {
			n, err := strconv.ParseInt(x, 10, 64)
			if err != nil {
				b.Fatalf("parse /proc/%d/stat: %v", pid, err)
			}
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ is 100 on Linux
}

// writeSample is the latencies of a run of writes and its wall time.
type writeSample struct {
	lat          []time.Duration
	elapsed, cpu time.Duration
	retries      int
}

func (s *writeSample) add(o writeSample) {
	s.lat = append(s.lat, o.lat...)
	s.elapsed += o.elapsed
	s.cpu += o.cpu
	s.retries += o.retries
}

func (s writeSample) result() writeResult {
	lat := slices.Clone(s.lat)
	slices.Sort(lat)
	n := len(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return writeResult{perSec: float64(n) / s.elapsed.Seconds(), p50: ms(lat[n/2]), p99: ms(lat[min(n-1, n*99/100)]), cpuMs: ms(s.cpu) / float64(n)}
}

// runWrites performs writes first..first+n-1 from `workers` goroutines and
// returns their latencies, the wall time and the CPU time of the server
// processes pids.
func runWrites(b *testing.B, pids []int, first, n, workers int, write func(worker, i int) error) writeSample {
	lat := make([]time.Duration, n)
	cpu0 := cpuTime(b, pids)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	var retries atomic.Int64
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t0 := time.Now()
				// An endpoint upsert is idempotent: a write that failed
				// with a retryable status (a leader change under load) is
				// retried, as a client would, and its latency includes
				// the retries.
				err := write(w, first+i)
				for try := 0; err != nil && retryable(err) && try < 20; try++ {
					retries.Add(1)
					time.Sleep(50 * time.Millisecond)
					err = write(w, first+i)
				}
				if err != nil {
					failed.Store(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := failed.Load().(error); err != nil {
		b.Fatalf("write: %v", err)
	}
	return writeSample{lat: lat, elapsed: elapsed, cpu: cpuTime(b, pids) - cpu0, retries: int(retries.Load())}
}

// writeRounds is how many alternating rounds each system gets: on a
// machine shared with other work, load that comes and goes then hits both
// alike instead of whichever ran at that moment.
const writeRounds = 6

// BenchmarkWritesVsEtcd measures committed writes (1 KiB endpoints, batches
// of 1 and 100, 32 concurrent clients spread over the replicas) on a
// 3-replica fedmesh control plane and on a 3-member etcd in the same run,
// alternating between the two in rounds, and prints the ratios.
func BenchmarkWritesVsEtcd(b *testing.B) {
	etcd, etcdPids := startEtcd(b)
	g := startGroup(b, 3)
	var fmPids []int
	for _, r := range g.reps {
		fmPids = append(fmPids, r.cmd.Process.Pid)
	}
	ctx := context.Background()
	if _, err := fedmeshv1.NewClusterServiceClient(g.leader(10*time.Second).conn).RegisterCluster(ctx,
		&fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.0.0.0/8"}}}); err != nil {
		b.Fatal(err)
	}
	var fm []fedmeshv1.EndpointServiceClient
	for _, r := range g.reps {
		fm = append(fm, fedmeshv1.NewEndpointServiceClient(r.conn))
	}
	var kv []etcdserverpb.KVClient
	for _, a := range etcd {
		kv = append(kv, etcdserverpb.NewKVClient(dialB(b, a)))
	}
	const workers = 32
	for _, batch := range []int{1, 100} {
		reqs := func(i int) *fedmeshv1.UpsertEndpointsRequest {
			req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east"}
			for j := range batch {
				req.Endpoints = append(req.Endpoints, kibEndpoint((i*batch+j)%benchKeySpace))
			}
			return req
		}
		writeFedmesh := func(w, i int) error {
			_, err := fm[w%len(fm)].UpsertEndpoints(ctx, reqs(i))
			return err
		}
		writeEtcd := func(w, i int) error {
			req := reqs(i)
			txn := &etcdserverpb.TxnRequest{}
			for _, e := range req.GetEndpoints() {
				v, err := proto.Marshal(e)
				if err != nil {
					return err
				}
				txn.Success = append(txn.Success, &etcdserverpb.RequestOp{Request: &etcdserverpb.RequestOp_RequestPut{
					RequestPut: &etcdserverpb.PutRequest{Key: []byte("/fedmesh/endpoints/east/bench/" + e.GetName()), Value: v}}})
			}
			_, err := kv[w%len(kv)].Txn(ctx, txn)
			return err
		}
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			var fs, es writeSample
			per := max(1, b.N/writeRounds)
			for r := range writeRounds {
				fs.add(runWrites(b, fmPids, r*per, per, workers, writeFedmesh))
				es.add(runWrites(b, etcdPids, r*per, per, workers, writeEtcd))
			}
			fres, eres := fs.result(), es.result()
			b.ReportMetric(fres.perSec, "fedmesh-writes/s")
			b.ReportMetric(fres.p50, "fedmesh-p50-ms")
			b.ReportMetric(fres.p99, "fedmesh-p99-ms")
			b.ReportMetric(eres.perSec, "etcd-writes/s")
			b.ReportMetric(eres.p50, "etcd-p50-ms")
			b.ReportMetric(eres.p99, "etcd-p99-ms")
			b.ReportMetric(fres.perSec/eres.perSec, "throughput-ratio")
			b.ReportMetric(fres.p99/eres.p99, "p99-ratio")
			b.ReportMetric(fres.cpuMs, "fedmesh-cpu-ms/write")
			b.ReportMetric(eres.cpuMs, "etcd-cpu-ms/write")
			b.ReportMetric(float64(fs.retries), "fedmesh-retries")
			b.ReportMetric(float64(es.retries), "etcd-retries")
			if b.N > 1 {
				if fs.retries+es.retries > 0 {
					fmt.Printf("writes batch=%d: retried after a retryable error: fedmesh %d, etcd %d\n", batch, fs.retries, es.retries)
					for _, r := range g.reps {
						if raw, err := os.ReadFile(r.logPath); err == nil {
							b.Logf("--- %s log (tail) ---\n%s", r.id, tail(string(raw), 1500))
						}
					}
				}
				fmt.Printf("writes batch=%d: fedmesh %.0f/s p50 %.2fms p99 %.2fms cpu %.2fms/write | etcd %.0f/s p50 %.2fms p99 %.2fms cpu %.2fms/write | throughput ratio %.2fx, p99 ratio %.2fx, cpu ratio %.2fx\n",
					batch, fres.perSec, fres.p50, fres.p99, fres.cpuMs, eres.perSec, eres.p50, eres.p99, eres.cpuMs,
					fres.perSec/eres.perSec, fres.p99/eres.p99, fres.cpuMs/eres.cpuMs)
			}
		})
	}
}

// BenchmarkWatchFanout measures how long one change takes to reach 1,000
// watchers on a follower (from the write's call to each watcher's receive).
func BenchmarkWatchFanout(b *testing.B) {
	g := startGroup(b, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lead := g.leader(10 * time.Second)
	follower := g.followers(lead)[0]
	resp, err := fedmeshv1.NewClusterServiceClient(lead.conn).RegisterCluster(ctx,
		&fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.0.0.0/8"}}})
	if err != nil {
		b.Fatal(err)
	}
	g.waitSameRevision(10 * time.Second)
	const watchers, conns = 1000, 10
	var ccs []*grpc.ClientConn
	for range conns {
		ccs = append(ccs, dialB(b, follower.grpcAddr))
	}
	type recv struct {
		rev uint64
		at  time.Time
	}
	got := make(chan recv, watchers*4)
	for i := range watchers {
		w, err := fedmeshv1.NewWatchServiceClient(ccs[i%conns]).Watch(ctx, &fedmeshv1.WatchRequest{FromRevision: resp.GetRevision()})
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				r, err := w.Recv()
				if err != nil {
					return
				}
				got <- recv{rev: r.GetRevision(), at: time.Now()}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond) // let every stream register on the server
	eps := fedmeshv1.NewEndpointServiceClient(lead.conn)
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		w, err := eps.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{kibEndpoint(i % benchKeySpace)}})
		if err != nil {
			b.Fatal(err)
		}
		for seen := 0; seen < watchers; {
			select {
			case r := <-got:
				if r.rev >= w.GetRevision() {
					lat = append(lat, r.at.Sub(t0))
					seen++
				}
			case <-time.After(30 * time.Second):
				b.Fatalf("only %d of %d watchers saw revision %d", seen, watchers, w.GetRevision())
			}
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	fmt.Printf("watch fan-out to %d watchers on a follower: p50 %.1fms p99 %.1fms (target p99 < 200ms)\n", watchers, ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100]))
}
