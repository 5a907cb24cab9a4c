package syncer

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
// holding 2,000 pods in 20 namespaces, the time from a syncer's start to its
// complete full resync (informer list, mapping, batches handed to the control
// plane client), and the heap it holds afterwards. The baseline is a plain
// paginated List of the same pods in the same run. The syncer writes to a
// real three-replica control plane (through a follower), so the number
// includes every batch's Raft commit.
func BenchmarkInitialSyncFromAPIServer(b *testing.B) {
	const nsCount, perNS = 20, 100
	kube := kubetest.Start(b, kubetest.Options{})
	ctx := context.Background()
	cs := kube.Clientset()
	var wg sync.WaitGroup
	errs := make(chan error, nsCount)
	for n := range nsCount {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns := fmt.Sprintf("ns-%02d", n)
			if err := kube.CreateNamespace(ctx, ns, nil); err != nil {
				errs <- err
				return
			}
			for i := range perNS {
				p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p-%03d", i), Labels: map[string]string{"app": "a"}}, Spec: corev1.PodSpec{NodeName: "n1"}}
				if _, err := kube.CreatePod(ctx, p, fmt.Sprintf("10.1.%d.%d", n, i+1)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
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
