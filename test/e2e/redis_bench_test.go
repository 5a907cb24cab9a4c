package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	"github.com/fedmesh/fedmesh/tools/fedlab/lab"
)

// failoverTrials is how many losses each failover benchmark times.
const failoverTrials = 20

// percentile of sorted durations.
func percentile(d []time.Duration, q float64) time.Duration { return d[int(q*float64(len(d)-1))] }

// reportFailover reports p50/p99 of the trials and p99 against the target.
func reportFailover(b *testing.B, unit, what string, d []time.Duration, target time.Duration) {
	slices.Sort(d)
	p50, p99 := percentile(d, 0.5), percentile(d, 0.99)
	b.ReportMetric(float64(p50.Microseconds())/1000, unit+"p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, unit+"p99-ms")
	b.ReportMetric(float64(p99)/float64(target), unit+"p99-vs-target")
	b.Logf("%s, %d trials: p50 %s p99 %s max %s (target p99 < %s)", what, len(d), p50, p99, d[len(d)-1], target)
}

// BenchmarkRedisFailoverBackendRemoved times, 20 times, from the loss of
// cluster-a's Redis instance (SIGKILL and withdrawn from its EndpointSlice
// as not ready, as a failed readiness probe does) to the first successful
// new connection from a cluster-a pod through the ClusterSetIP (answered
// by cluster-b's instance). The client opens a new connection every 10 ms.
func BenchmarkRedisFailoverBackendRemoved(b *testing.B) {
	l := useLab(b, redisLab)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	a, other := l.Topo.Clusters[0], l.Topo.Clusters[1]
	client, redisA, _ := redisSetup(b, ctx, l)
	for i := 0; i < b.N; i++ {
		prober, err := l.StartRedisClient(ctx, client.Name, 10*time.Millisecond, true)
		if err != nil {
			b.Fatal(err)
		}
		var times []time.Duration
		for trial := 0; trial < failoverTrials; trial++ {
			awaitAnswer(b, prober, a.Name, 10*time.Second)
			drain(prober)
			lost := time.Now()
			if err := l.Kill(lab.RedisProc(redisA.Name)); err != nil {
				b.Fatal(err)
			}
			if err := l.SetRedisReady(ctx, redisA.Name, false); err != nil {
				b.Fatal(err)
			}
			ans := awaitAnswer(b, prober, other.Name, 10*time.Second)
			times = append(times, ans.At.Sub(lost))
			if err := l.RestartRedis(ctx, redisA.Name); err != nil {
				b.Fatal(err)
			}
			if err := l.SetRedisReady(ctx, redisA.Name, true); err != nil {
				b.Fatal(err)
			}
		}
		awaitAnswer(b, prober, a.Name, 10*time.Second)
		_ = prober.Stop()
		reportFailover(b, "", "backend removed -> first new connection through the ClusterSetIP to the other cluster", times, 500*time.Millisecond)
	}
}

// BenchmarkRedisFailoverClusterLost times, 20 times, the loss of all of
// cluster-b (its kube-apiserver, etcd, syncer and agents SIGKILLed) while
// an application client in cluster-a holds a connection to cluster-b's
// instance (made while cluster-a's was not ready; cluster-a's is ready
// again, so new connections prefer it). Two times per trial, from the
// loss:
//   - failover: the client's first successful answer from cluster-a's
//     instance on a new connection through the ClusterSetIP (the client
//     notices the dead connection by its 300 ms command timeout);
//   - withdrawn: the control plane has judged cluster-b unreachable and
//     every node of cluster-a enforces the revision that withdrew its
//     backends (default liveness settings).
func BenchmarkRedisFailoverClusterLost(b *testing.B) {
	l := useLab(b, redisLab)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	a, lostC := l.Topo.Clusters[0], l.Topo.Clusters[1]
	client, redisA, _ := redisSetup(b, ctx, l)
	cc, err := l.Dial()
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	svcs := fedmeshv1.NewMultiClusterServiceClient(cc)
	nodes := fedmeshv1.NewNodeServiceClient(cc)
	for i := 0; i < b.N; i++ {
		var failover, withdrawn []time.Duration
		for trial := 0; trial < failoverTrials; trial++ {
			// The application's connection goes to cluster-b's instance.
			if err := l.SetRedisReady(ctx, redisA.Name, false); err != nil {
				b.Fatal(err)
			}
			waitRedis(b, ctx, l, client.Name, lostC.Name, 10*time.Second)
			app, err := l.StartRedisClient(ctx, client.Name, 20*time.Millisecond, false)
			if err != nil {
				b.Fatal(err)
			}
			awaitAnswer(b, app, lostC.Name, 10*time.Second)
			if err := l.SetRedisReady(ctx, redisA.Name, true); err != nil {
				b.Fatal(err)
			}
			waitRedis(b, ctx, l, client.Name, a.Name, 10*time.Second)
			drain(app)
			awaitAnswer(b, app, lostC.Name, 2*time.Second)

			lost := time.Now()
			loseCluster(b, l, lostC)
			w, err := withdrawnEnforced(ctx, svcs, nodes, a.Name, lostC.Name)
			if err != nil {
				b.Fatal(err)
			}
			ans := awaitAnswer(b, app, a.Name, 10*time.Second)
			failover = append(failover, ans.At.Sub(lost))
			withdrawn = append(withdrawn, w.Sub(lost))
			_ = app.Stop()
			restoreCluster(b, ctx, l, lostC)
			if err := waitReachable(ctx, svcs, a.Name, lostC.Name); err != nil {
				b.Fatal(err)
			}
		}
		reportFailover(b, "failover-", "cluster lost -> the client's first answer from the other cluster on a new connection", failover, 2*time.Second)
		reportFailover(b, "withdrawn-", "cluster lost -> its backends withdrawn and enforced on every node of "+a.Name, withdrawn, 2*time.Second)
	}
}

// withdrawnEnforced polls until importer's view of redis marks cluster
// gone unreachable, waits until importer's nodes enforce that revision and
// returns when they did.
func withdrawnEnforced(ctx context.Context, svcs fedmeshv1.MultiClusterServiceClient, nodes fedmeshv1.NodeServiceClient, importer, gone string) (time.Time, error) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := svcs.ListServiceImports(ctx, &fedmeshv1.ListServiceImportsRequest{Cluster: importer})
		if err == nil && clusterReachability(resp, gone) == fedmeshv1.Reachability_REACHABILITY_UNREACHABLE {
			w, err := nodes.WaitEnforced(ctx, &fedmeshv1.WaitEnforcedRequest{Revision: resp.GetRevision(), Clusters: []string{importer}, Timeout: durationpb.New(10 * time.Second)})
			if err != nil || !w.GetEnforced() {
				return time.Time{}, fmt.Errorf("revision %d withdrawing %s not enforced in %s: %v %v", resp.GetRevision(), gone, importer, w, err)
			}
			return time.Now(), nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("%s not judged unreachable within 20s", gone)
}

// waitReachable waits until importer's view of redis has cluster back,
// reachable with a ready backend.
func waitReachable(ctx context.Context, svcs fedmeshv1.MultiClusterServiceClient, importer, cluster string) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		resp, err := svcs.ListServiceImports(ctx, &fedmeshv1.ListServiceImportsRequest{Cluster: importer})
		if err == nil && clusterReachability(resp, cluster) == fedmeshv1.Reachability_REACHABILITY_REACHABLE {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not re-admitted within a minute", cluster)
}

// clusterReachability is the reachability of cluster's backends of the
// redis import (UNSPECIFIED when it exports none).
func clusterReachability(resp *fedmeshv1.ListServiceImportsResponse, cluster string) fedmeshv1.Reachability {
	for _, im := range resp.GetImports() {
		if im.GetNamespace() != "demo" || im.GetName() != lab.RedisService {
			continue
		}
		for _, cb := range im.GetClusters() {
			if cb.GetCluster() == cluster && len(cb.GetEndpoints()) > 0 {
				return cb.GetReachability()
			}
		}
	}
	return fedmeshv1.Reachability_REACHABILITY_UNSPECIFIED
}
