package syncer

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// BenchmarkMapAndPlanResync maps 10,000 pods in 100 namespaces to
// endpoints and plans their full resync: the CPU side of an initial sync.
// The baseline deep-copies the same pods (what an informer's list costs at
// least), so the ratio is the mapping and batching overhead.
func BenchmarkMapAndPlanResync(b *testing.B) {
	spec := &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.0.0.0/8"}}
	var pods []*corev1.Pod
	nss := map[string]*corev1.Namespace{}
	for i := range 10000 {
		ns := fmt.Sprintf("ns-%03d", i%100)
		nss[ns] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{corev1.LabelMetadataName: ns, "team": "t"}}}
		pods = append(pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pod-%05d", i), Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%50), "pod-template-hash": "abc"}},
			Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.%d.%d.%d", i/65536, i/256%256, i%256)}}},
		})
	}
	b.Run("baseline-deepcopy", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, p := range pods {
				_ = p.DeepCopy()
			}
		}
	})
	b.Run("map-and-plan", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			d := make(Published, len(pods))
			for _, p := range pods {
				ep, err := EndpointFromPod("east", p, nss[p.Namespace], spec)
				if err != nil {
					b.Fatal(err)
				}
				d[Key{KindEndpoint, p.Namespace, p.Name}] = ep
			}
			_ = PlanResync("east", d, 1, 0)
		}
	})
}

// BenchmarkInitialSyncFromAPIServer measures, against a real kube-apiserver
// holding 10,000 pods in 100 namespaces (issue 9's size), the time from a syncer's start to its
// complete full resync (informer list, mapping, batches handed to the control
// plane client), and the heap it holds afterwards. The baseline is a plain
// paginated List of the same pods in the same run. The syncer writes to a
// real three-replica control plane (through a follower), so the number
// includes every batch's Raft commit.
func BenchmarkInitialSyncFromAPIServer(b *testing.B) {
	const nsCount, perNS, workers = 100, 100, 32
	kube := kubetest.Start(b, kubetest.Options{})
	ctx := context.Background()
	cs := kube.Clientset()
	// Setup writes 10,000 pods (a create and a status write each): a pool
	// of writers keeps it to about a minute on two cores without
	// swamping the apiserver.
	setup := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, nsCount*perNS)
	for n := range nsCount {
		if err := kube.CreateNamespace(ctx, fmt.Sprintf("ns-%03d", n), nil); err != nil {
			b.Fatal(err)
		}
	}
	type podAt struct{ n, i int }
	work := make(chan podAt)
	for range workers {
		wg.Go(func() {
			for w := range work {
				p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%03d", w.n), Name: fmt.Sprintf("p-%03d", w.i), Labels: map[string]string{"app": fmt.Sprintf("a%d", w.i%10)}}, Spec: corev1.PodSpec{NodeName: "n1"}}
				if _, err := kube.CreatePod(ctx, p, fmt.Sprintf("10.1.%d.%d", w.n, w.i+1)); err != nil {
					errs <- err
				}
			}
		})
	}
	for n := range nsCount {
		for i := range perNS {
			work <- podAt{n, i}
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.Logf("setup: %d pods in %d namespaces written in %s", nsCount*perNS, nsCount, time.Since(setup).Round(time.Second))
	b.Run("baseline-list", func(b *testing.B) {
		for b.Loop() {
			n, cont := 0, ""
			for {
				l, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{Limit: 500, Continue: cont})
				if err != nil {
					b.Fatal(err)
				}
				n += len(l.Items)
				if cont = l.Continue; cont == "" {
					break
				}
			}
			if n != nsCount*perNS {
				b.Fatalf("listed %d pods", n)
			}
		}
	})
	cp := cptest.Start(b, cptest.Options{})
	cc := benchConn(b, cp)
	if _, err := fedmeshv1.NewClusterServiceClient(cc).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
		Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		b.Fatal(err)
	}
	b.Run("syncer-initial-sync", func(b *testing.B) {
		var heap uint64
		for b.Loop() {
			s, err := New(Config{Cluster: "east", REST: kube.Config, ControlPlane: NewControlPlane(cc), Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			// The first commit the syncer signals is the end of its full
			// resync.
			s.commits = make(chan uint64, 1)
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- s.Run(rctx) }()
			<-s.commits
			b.StopTimer()
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			heap = ms.HeapAlloc
			cancel()
			<-done
			b.StartTimer()
		}
		b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/sync")
		b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
	})
}

// benchConn connects to a follower of cp: the syncer's writes take the
// forwarding path, as most syncers' do in a three-replica federation.
func benchConn(b *testing.B, cp *cptest.Cluster) *grpc.ClientConn {
	b.Helper()
	r := cp.Followers(cp.Leader())[0]
	cc, err := grpc.NewClient(r.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	return cc
}

// BenchmarkChurnApiserverToCommit changes pod labels in a real
// kube-apiserver at 200 changes/s (1,000 changes over 200 pods) while a
// syncer publishes them to a real three-replica control plane, and reports
// the latency from the apiserver write to the change's commit, seen on the
// leader's watch stream (p50/p99), and the syncer's committed writes per
// second over the run. The baseline, measured on the same changes, is the
// apiserver's own watch: what any informer sees at best. Sub-benchmarks
// run the syncer with the default (adaptive batching, MaxDelay 0) and with
// a MaxDelay that holds changes for fewer, larger writes.
func BenchmarkChurnApiserverToCommit(b *testing.B) {
	const pods, changes, rate = 200, 1000, 200
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kube := kubetest.Start(b, kubetest.Options{})
	cs := kube.Clientset()
	if err := kube.CreateNamespace(ctx, "churn", nil); err != nil {
		b.Fatal(err)
	}
	for i := range pods {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "churn", Name: fmt.Sprintf("p-%03d", i), Labels: map[string]string{"seq": "s0"}}, Spec: corev1.PodSpec{NodeName: "n1"}}
		if _, err := kube.CreatePod(ctx, p, fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)); err != nil {
			b.Fatal(err)
		}
	}
	cp := cptest.Start(b, cptest.Options{})
	cc := benchConn(b, cp)
	if _, err := fedmeshv1.NewClusterServiceClient(cc).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
		Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		b.Fatal(err)
	}

	var mu sync.Mutex
	seen := map[string]time.Time{} // "commit|kube" + pod + seq -> first arrival
	mark := func(kind, pod, seq string) {
		mu.Lock()
		if _, ok := seen[kind+pod+seq]; !ok {
			seen[kind+pod+seq] = time.Now()
		}
		mu.Unlock()
	}
	w, err := fedmeshv1.NewWatchServiceClient(cp.Leader().Conn()).Watch(ctx, &fedmeshv1.WatchRequest{
		Kinds: []fedmeshv1.ResourceKind{fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT}})
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			m, err := w.Recv()
			if err != nil {
				return
			}
			for _, ev := range m.GetEvents() {
				if e := ev.GetEndpoint(); e != nil && ev.GetType() == fedmeshv1.EventType_EVENT_TYPE_PUT {
					mark("commit|", e.GetName(), e.GetLabels()["seq"])
				}
			}
		}
	}()
	kw, err := cs.CoreV1().Pods("churn").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer kw.Stop()
	go func() {
		for ev := range kw.ResultChan() {
			if p, ok := ev.Object.(*corev1.Pod); ok {
				mark("kube|", p.Name, p.Labels["seq"])
			}
		}
	}()

	for _, maxDelay := range []time.Duration{0, 50 * time.Millisecond, 250 * time.Millisecond} {
		b.Run(fmt.Sprintf("max-delay=%s", maxDelay), func(b *testing.B) {
			reg := prometheus.NewRegistry()
			tcp := &timedControlPlane{ControlPlane: NewControlPlane(cc)}
			s, err := New(Config{Cluster: "east", REST: kube.Config, ControlPlane: tcp, Logger: slog.New(slog.DiscardHandler), Registerer: reg, MaxDelay: maxDelay})
			if err != nil {
				b.Fatal(err)
			}
			s.commits = make(chan uint64, 1)
			sctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- s.Run(sctx) }()
			defer func() { stop(); <-done }()
			<-s.commits // the initial resync

			// measure makes n changes at the rate and waits for their
			// commits.
			measure := func(n int) (kubeLat, commitLat []time.Duration, writes, secs float64) {
				writes0, start := batchesTotal(b, reg), time.Now()
				tcp.reset()
				type change struct {
					pod, seq string
					at       time.Time
				}
				var (
					sent   []change
					sentMu sync.Mutex
					wg     sync.WaitGroup
				)
				work := make(chan change, n)
				for range 4 {
					wg.Go(func() {
						for c := range work {
							patch := fmt.Sprintf(`{"metadata":{"labels":{"seq":%q}}}`, c.seq)
							c.at = time.Now()
							if _, err := cs.CoreV1().Pods("churn").Patch(ctx, c.pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
								b.Error(err)
								continue
							}
							sentMu.Lock()
							sent = append(sent, c)
							sentMu.Unlock()
						}
					})
				}
				tick := time.NewTicker(time.Second / rate)
				for i := range n {
					<-tick.C
					work <- change{pod: fmt.Sprintf("p-%03d", i%pods), seq: fmt.Sprintf("s%d-%d", time.Now().UnixNano()%1e9, i)}
				}
				tick.Stop()
				close(work)
				wg.Wait()
				// Every change reaches the commit stream, or a later change of
				// the same pod superseded it within one batch.
				deadline := time.Now().Add(30 * time.Second)
				for {
					mu.Lock()
					missing := 0
					for _, c := range sent {
						if _, ok := seen["commit|"+c.pod+c.seq]; !ok {
							missing++
						}
					}
					mu.Unlock()
					if missing == 0 || time.Now().After(deadline) {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				writes, secs = batchesTotal(b, reg)-writes0, time.Since(start).Seconds()
				mu.Lock()
				for _, c := range sent {
					if t, ok := seen["kube|"+c.pod+c.seq]; ok {
						kubeLat = append(kubeLat, t.Sub(c.at))
					}
					if t, ok := seen["commit|"+c.pod+c.seq]; ok {
						commitLat = append(commitLat, t.Sub(c.at))
					}
				}
				mu.Unlock()
				if len(commitLat) < len(sent)*9/10 {
					b.Fatalf("only %d of %d changes reached the control plane's commit stream", len(commitLat), len(sent))
				}
				return kubeLat, commitLat, writes, secs
			}
			// One second of the same churn first, not measured: the first
			// writes to fresh replicas are not the steady state.
			measure(rate)
			var kubeLat, commitLat []time.Duration
			var writes, secs float64
			for b.Loop() {
				kubeLat, commitLat, writes, secs = measure(changes)
			}
			b.ReportMetric(pct(kubeLat, 0.5), "kube-watch-p50-ms")
			b.ReportMetric(pct(kubeLat, 0.99), "kube-watch-p99-ms")
			b.ReportMetric(pct(commitLat, 0.5), "commit-p50-ms")
			b.ReportMetric(pct(commitLat, 0.99), "commit-p99-ms")
			b.ReportMetric(float64(len(commitLat)), "changes-committed")
			b.ReportMetric(writes/secs, "commits/s")
			durs := tcp.taken()
			b.ReportMetric(pct(durs, 0.5), "write-p50-ms")
			b.ReportMetric(pct(durs, 0.99), "write-p99-ms")
			b.ReportMetric(float64(len(commitLat))/writes, "changes/commit")
		})
	}
}

// timedControlPlane records how long each endpoint upsert takes (forward to
// the leader, Raft commit, answer): the part of the latency that is the
// write itself.
type timedControlPlane struct {
	ControlPlane
	mu   sync.Mutex
	durs []time.Duration
}

func (t *timedControlPlane) UpsertEndpoints(ctx context.Context, req *fedmeshv1.UpsertEndpointsRequest) (uint64, error) {
	start := time.Now()
	rev, err := t.ControlPlane.UpsertEndpoints(ctx, req)
	t.mu.Lock()
	t.durs = append(t.durs, time.Since(start))
	t.mu.Unlock()
	return rev, err
}

func (t *timedControlPlane) taken() []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.durs)
}

func (t *timedControlPlane) reset() {
	t.mu.Lock()
	t.durs = nil
	t.mu.Unlock()
}

// pct is the p-quantile of d in milliseconds (d is sorted in place).
func pct(d []time.Duration, p float64) float64 {
	slices.Sort(d)
	return float64(d[int(float64(len(d)-1)*p)].Microseconds()) / 1000
}

// batchesTotal is the syncer's count of committed writes.
func batchesTotal(b *testing.B, reg *prometheus.Registry) float64 {
	b.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "fedmesh_syncer_batches_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}
