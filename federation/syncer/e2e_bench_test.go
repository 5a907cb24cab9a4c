package syncer

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// reportClock is a node agent's real control-plane client that notes when
// the agent reports each enforced revision: the moment the node says it
// enforces it.
type reportClock struct {
	agent.ControlPlane
	node  int
	clock *enforceClock
}

func (r *reportClock) ReportNodeStatus(ctx context.Context, cluster, node string, st *fedmeshv1.NodeStatus) error {
	r.clock.note(r.node, st.GetEnforcedRevision())
	r.clock.sent.Add(1)
	return r.ControlPlane.ReportNodeStatus(ctx, cluster, node, st)
}

// enforceClock holds, per node, the revisions its agent reported and when.
type enforceClock struct {
	sent    atomic.Int64 // status reports, all nodes
	mu      sync.Mutex
	reports [][]report // by node, in report order
}

type report struct {
	rev uint64
	at  time.Time
}

func (c *enforceClock) note(node int, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.reports[node]); n == 0 || c.reports[node][n-1].rev < rev {
		c.reports[node] = append(c.reports[node], report{rev, time.Now()})
	}
}

// everywhere returns when the last node reported enforcing rev or later,
// and whether every node did.
func (c *enforceClock) everywhere(rev uint64) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var last time.Time
	for _, rs := range c.reports {
		found := false
		for _, r := range rs {
			if r.rev >= rev {
				if r.at.After(last) {
					last = r.at
				}
				found = true
				break
			}
		}
		if !found {
			return time.Time{}, false
		}
	}
	return last, true
}

// BenchmarkPodCreatedToEnforcedOnEveryNode creates pods in cluster east's
// real kube-apiserver at 200 pods/s (1,000 pods) and measures, per pod,
// the time from the start of its creation (create, then the status write
// that gives it its IP, as a kubelet would) to the moment every node of
// cluster west reports enforcing a revision that holds it: east's syncer
// publishes it to a real three-replica control plane, west's three real
// node agents (view, compiler and the in-memory dataplane) receive it on
// their watches, enforce it and report. Reported: p50/p99 of that
// end-to-end latency and, as baselines of the same pods in the same run,
// of the commit alone (seen on the leader's watch stream; with their
// ratio) and of the creation itself (until the apiserver acknowledged the
// pod's IP), and the part after that acknowledgement: what the
// federation adds. It also reports how often the nodes reported their
// status while the pods came: every revision the syncer commits costs each
// node an enforcement and a report.
func BenchmarkPodCreatedToEnforcedOnEveryNode(b *testing.B) {
	const pods, rate, nodes, workers = 1000, 200, 3, 8
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kube := kubetest.Start(b, kubetest.Options{})
	cp := cptest.Start(b, cptest.Options{})
	cc := benchConn(b, cp)
	clusters := fedmeshv1.NewClusterServiceClient(cc)
	for _, c := range []*fedmeshv1.Cluster{
		{Name: "east", PodCidrs: []string{"10.1.0.0/16"}},
		{Name: "west", PodCidrs: []string{"10.2.0.0/16"}},
	} {
		if _, err := clusters.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: c}); err != nil {
			b.Fatal(err)
		}
	}

	s, err := New(Config{Cluster: "east", REST: kube.Config, ControlPlane: NewControlPlane(cc), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	s.commits = make(chan uint64, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		if err := s.Run(ctx); err != nil {
			b.Error(err)
		}
	})
	<-s.commits // the initial resync

	clock := &enforceClock{reports: make([][]report, nodes)}
	for i := range nodes {
		cl, err := agent.NewClient(cp.Addrs(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cl.Close() })
		a, err := agent.New(agent.Config{
			Cluster: "west", Node: fmt.Sprintf("n%d", i), UnderlayIP: netip.AddrFrom4([4]byte{198, 18, 2, byte(10 + i)}),
			PodCIDRs: []string{fmt.Sprintf("10.2.%d.0/24", i)}, DataplaneName: "memory",
		}, agent.Deps{
			ControlPlane: &reportClock{ControlPlane: cl, node: i, clock: clock},
			Dataplane:    dataplane.NewMemory(),
			Logger:       slog.New(slog.DiscardHandler),
		})
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			if err := a.Run(ctx); err != nil {
				b.Error(err)
			}
		})
	}

	// The leader's watch says at which revision each pod's endpoint
	// committed, and when.
	type commit struct {
		rev uint64
		at  time.Time
	}
	var mu sync.Mutex
	commits := map[string]commit{}
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
			now := time.Now()
			mu.Lock()
			for _, ev := range m.GetEvents() {
				if e := ev.GetEndpoint(); e != nil && ev.GetType() == fedmeshv1.EventType_EVENT_TYPE_PUT {
					if _, ok := commits[e.GetName()]; !ok {
						commits[e.GetName()] = commit{ev.GetRevision(), now}
					}
				}
			}
			mu.Unlock()
		}
	}()
	// Every node enforces the federation as it is before the first pod.
	settled, err := clusters.GetCluster(ctx, &fedmeshv1.GetClusterRequest{Name: "west"})
	if err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, ok := clock.everywhere(settled.GetCluster().GetMeta().GetRevision()); ok {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the agents did not report enforcing the initial state")
		}
		time.Sleep(20 * time.Millisecond)
	}

	type latencies struct {
		e2e, commit, kube, fed []time.Duration
		reportRate             float64
	}
	// run creates n pods at the rate in a namespace of its own and waits
	// until every node enforces each of them.
	run := func(round, n int) latencies {
		var l latencies
		reports0, start := clock.sent.Load(), time.Now()
		ns := fmt.Sprintf("churn-%d", round)
		if err := kube.CreateNamespace(ctx, ns, nil); err != nil {
			b.Fatal(err)
		}
		type created struct {
			name     string
			at, done time.Time // creation started; the apiserver acknowledged the pod's IP
		}
		var (
			sent   []created
			sentMu sync.Mutex
			cwg    sync.WaitGroup
		)
		work := make(chan int, n)
		for range workers {
			cwg.Go(func() {
				for i := range work {
					name := fmt.Sprintf("r%d-p%04d", round, i)
					p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": fmt.Sprintf("a%d", i%20)}}, Spec: corev1.PodSpec{NodeName: "n1"}}
					at := time.Now()
					if _, err := kube.CreatePod(ctx, p, fmt.Sprintf("10.1.%d.%d", (round*pods+i)/250%256, (round*pods+i)%250+1)); err != nil {
						b.Error(err)
						continue
					}
					sentMu.Lock()
					sent = append(sent, created{name, at, time.Now()})
					sentMu.Unlock()
				}
			})
		}
		tick := time.NewTicker(time.Second / rate)
		for i := range n {
			<-tick.C
			work <- i
		}
		tick.Stop()
		close(work)
		cwg.Wait()
		l.reportRate = float64(clock.sent.Load()-reports0) / time.Since(start).Seconds()

		deadline := time.Now().Add(60 * time.Second)
		for _, c := range sent {
			for {
				mu.Lock()
				cm, ok := commits[c.name]
				mu.Unlock()
				var at time.Time
				if ok {
					at, ok = clock.everywhere(cm.rev)
				}
				if ok {
					l.kube = append(l.kube, c.done.Sub(c.at))
					l.commit = append(l.commit, cm.at.Sub(c.at))
					l.e2e = append(l.e2e, at.Sub(c.at))
					l.fed = append(l.fed, at.Sub(c.done))
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("pod %s not enforced on every node of west within 60s of the last pod", c.name)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		return l
	}
	// One second of the same churn first: the first writes to fresh
	// replicas (their logs' files grow, connections open) are not the
	// steady state this measures.
	run(0, rate)
	var l latencies
	round := 0
	for b.Loop() {
		round++
		l = run(round, pods)
	}
	e2eLat, commitLat, kubeLat, fedLat, reportRate := l.e2e, l.commit, l.kube, l.fed, l.reportRate
	p50, p99 := pct(e2eLat, 0.5), pct(e2eLat, 0.99)
	b.ReportMetric(reportRate, "node-reports/s")
	c50, c99 := pct(commitLat, 0.5), pct(commitLat, 0.99)
	b.ReportMetric(p50, "enforced-p50-ms")
	b.ReportMetric(p99, "enforced-p99-ms")
	b.ReportMetric(c50, "commit-p50-ms")
	b.ReportMetric(c99, "commit-p99-ms")
	b.ReportMetric(p99/c99, "enforced/commit-p99")
	b.ReportMetric(pct(kubeLat, 0.5), "created-p50-ms")
	b.ReportMetric(pct(kubeLat, 0.99), "created-p99-ms")
	b.ReportMetric(pct(fedLat, 0.5), "after-created-p50-ms")
	b.ReportMetric(pct(fedLat, 0.99), "after-created-p99-ms")
	b.ReportMetric(float64(len(e2eLat)), "pods")
}
