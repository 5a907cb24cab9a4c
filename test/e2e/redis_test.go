package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/tools/fedlab/lab"
)

// redisLab is the lab of the Redis scenarios: two clusters of one node,
// each with a web, an api and a db pod; the db pods run redis-server.
var redisLab = lab.Config{Clusters: 2, Nodes: 1, Pods: 3}

// redisSetup exports redis from both clusters (affinity local) and waits
// until the client pod of cluster-a reaches its local instance.
func redisSetup(t testing.TB, ctx context.Context, l *lab.Lab) (client lab.Pod, redisA, redisB lab.Pod) {
	t.Helper()
	a, b := l.Topo.Clusters[0], l.Topo.Clusters[1]
	client = a.Nodes[0].Pods[0]
	redisA, redisB = l.Topo.RedisPods(a.Name)[0], l.Topo.RedisPods(b.Name)[0]
	for _, c := range []string{a.Name, b.Name} {
		if err := l.ExportRedis(ctx, c); err != nil {
			t.Fatalf("export redis from %s: %v", c, err)
		}
	}
	waitRedis(t, ctx, l, client.Name, a.Name, 30*time.Second)
	return client, redisA, redisB
}

// waitRedis waits until a new connection from pod to the redis service
// reaches an instance of cluster want.
func waitRedis(t testing.TB, ctx context.Context, l *lab.Lab, pod, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last string
	for time.Now().Before(deadline) {
		a, err := l.RedisGet(ctx, pod)
		if err == nil && a.Cluster == want {
			return
		}
		last = fmt.Sprintf("answer %+v, err %v", a, err)
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("new connections from %s to %s:%d do not reach %s within %s: last %s", pod, lab.RedisName, lab.RedisPort, want, d, last)
}

// loseCluster kills everything of a cluster's control: its kube-apiserver
// with etcd and its syncer, and every agent.
func loseCluster(t testing.TB, l *lab.Lab, c lab.Cluster) {
	t.Helper()
	if err := l.LoseCluster(context.Background(), c.Name); err != nil {
		t.Fatal(err)
	}
}

// restoreCluster starts a lost cluster again: its API (the lab exports
// again what it had exported there), its syncer and agents.
func restoreCluster(t testing.TB, ctx context.Context, l *lab.Lab, c lab.Cluster) {
	t.Helper()
	if err := l.RestoreCluster(ctx, c.Name, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// importsShow waits until `fedctl service imports` (as importer sees it)
// lists the redis import with every want substring.
func importsShow(t *testing.T, ctx context.Context, l *lab.Lab, importer string, want ...string) string {
	t.Helper()
	return importsShowWithout(t, ctx, l, importer, "", want...)
}

// importsShowWithout is importsShow that also waits for without ("":
// nothing) to be gone.
func importsShowWithout(t *testing.T, ctx context.Context, l *lab.Lab, importer, without string, want ...string) string {
	t.Helper()
	var out string
	eventually(t, "fedctl service imports to show "+strings.Join(want, ", "), 30*time.Second, func() error {
		var err error
		out, err = l.Fedctl(ctx, "service", "imports", "--cluster", importer)
		if err != nil {
			return err
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				return fmt.Errorf("no %q in:\n%s", w, out)
			}
		}
		if without != "" && strings.Contains(out, without) {
			return fmt.Errorf("still %q in:\n%s", without, out)
		}
		return nil
	})
	return out
}

func TestRedisAcrossClustersFailsOverAndComesBack(t *testing.T) {
	l := useLab(t, redisLab)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	a, b := l.Topo.Clusters[0], l.Topo.Clusters[1]
	client, redisA, _ := redisSetup(t, ctx, l)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		// The syncers and the control plane say what they made of a lost
		// and returning cluster.
		for _, p := range l.State.Procs {
			if strings.HasPrefix(p.Name, "kube-") || strings.HasPrefix(p.Name, "controlplane-") {
				if b, err := os.ReadFile(p.Log); err == nil {
					t.Logf("--- %s log (tail):\n%s", p.Name, tail(string(b), 25))
				}
			}
		}
	})
	// Whatever a failed step leaves broken, the lab is marked failed and
	// rebuilt for the next scenario (useLab); these restore a passing run.
	t.Cleanup(func() {
		if !l.Alive(lab.RedisProc(redisA.Name)) {
			_ = l.RestartRedis(ctx, redisA.Name)
		}
		_ = l.SetRedisReady(ctx, redisA.Name, true)
	})

	t.Run("a real redis-cli resolves the clusterset name through the node-local DNS and reaches its own cluster's instance", func(t *testing.T) {
		cmd, err := l.Topo.PodCommand(ctx, client.Name, "redis-cli", "-h", lab.RedisName, "-p", fmt.Sprint(lab.RedisPort), "GET", lab.RedisClusterKey)
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != a.Name {
			t.Fatalf("redis-cli GET %s via %s: %v: %q, want %q", lab.RedisClusterKey, lab.RedisName, err, out, a.Name)
		}
		// The resolver answers the ClusterSetIP, the one fedctl lists.
		dig, err := l.Topo.PodCommand(ctx, client.Name, "getent", "ahostsv4", lab.RedisName)
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := dig.Output()
		if err != nil || len(strings.Fields(string(addrs))) == 0 {
			t.Fatalf("getent %s in %s: %v %q", lab.RedisName, client.Name, err, addrs)
		}
		vip := strings.Fields(string(addrs))[0]
		importsShow(t, ctx, l, a.Name, vip, "local", l.Topo.RedisReadyText(a.Name, true), l.Topo.RedisReadyText(b.Name, true))
		// A name outside clusterset.local is refused at once (no upstream
		// in the lab), not left to time out.
		start := time.Now()
		other, _ := l.Topo.PodCommand(ctx, client.Name, "getent", "hosts", "example.org")
		if err := other.Run(); err == nil {
			t.Errorf("example.org resolved in a pod: the lab's resolvers have no upstream")
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("a name outside the zone took %s to fail: want REFUSED at once", d)
		}
	})

	t.Run("cluster-a's instance killed and withdrawn: new connections go to cluster-b", func(t *testing.T) {
		if err := l.Signal(lab.RedisProc(redisA.Name), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := l.SetRedisReady(ctx, redisA.Name, false); err != nil {
			t.Fatal(err)
		}
		waitRedis(t, ctx, l, client.Name, b.Name, 5*time.Second)
		// Every new connection from now on: none to the withdrawn one.
		for i := 0; i < 10; i++ {
			if ans, err := l.RedisGet(ctx, client.Name); err != nil || ans.Cluster != b.Name {
				t.Fatalf("connection %d after the failover: %+v %v, want %s", i, ans, err, b.Name)
			}
		}
		importsShow(t, ctx, l, a.Name, l.Topo.RedisReadyText(a.Name, false), l.Topo.RedisReadyText(b.Name, true))
		out, err := l.Fedctl(ctx, "service", "get", "demo/redis", "--cluster", a.Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("fedctl service get demo/redis --cluster %s:\n%s", a.Name, out)
	})

	t.Run("cluster-b lost: clients on its instance fail over to cluster-a's, and it is re-admitted when it returns", func(t *testing.T) {
		// An application client keeps its connection (to cluster-b's
		// instance, chosen while cluster-a had none ready).
		app, err := l.StartRedisClient(ctx, client.Name, 50*time.Millisecond, false)
		if err != nil {
			t.Fatal(err)
		}
		defer app.Stop()
		awaitAnswer(t, app, b.Name, 10*time.Second)
		// cluster-a's instance is back: new connections prefer it, the
		// established connection stays where it is.
		if err := l.RestartRedis(ctx, redisA.Name); err != nil {
			t.Fatal(err)
		}
		if err := l.SetRedisReady(ctx, redisA.Name, true); err != nil {
			t.Fatal(err)
		}
		waitRedis(t, ctx, l, client.Name, a.Name, 5*time.Second)
		drain(app)
		awaitAnswer(t, app, b.Name, 2*time.Second)

		drain(app)
		lost := time.Now()
		loseCluster(t, l, b)
		restored := false
		defer func() {
			if !restored {
				restoreCluster(t, context.WithoutCancel(ctx), l, b)
			}
		}()
		ans := awaitAnswer(t, app, a.Name, 10*time.Second)
		t.Logf("the application's client failed over to %s %s after %s", ans.Cluster, ans.Pod, ans.At.Sub(lost).Round(time.Millisecond))
		importsShow(t, ctx, l, a.Name, l.Topo.RedisReadyText(b.Name, true)+"!unreachable")
		out, err := l.Fedctl(ctx, "cluster", "list")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("fedctl cluster list with %s lost:\n%s", b.Name, out)
		waitRedis(t, ctx, l, client.Name, a.Name, 5*time.Second)

		restoreCluster(t, ctx, l, b)
		restored = true
		out = importsShowWithout(t, ctx, l, a.Name, "unreachable", l.Topo.RedisReadyText(a.Name, true), l.Topo.RedisReadyText(b.Name, true))
		t.Logf("%s re-admitted:\n%s", b.Name, out)
		// Re-admitted: with cluster-a's instance withdrawn again, new
		// connections reach cluster-b's.
		if err := l.SetRedisReady(ctx, redisA.Name, false); err != nil {
			t.Fatal(err)
		}
		waitRedis(t, ctx, l, client.Name, b.Name, 10*time.Second)
		if err := l.SetRedisReady(ctx, redisA.Name, true); err != nil {
			t.Fatal(err)
		}
		waitRedis(t, ctx, l, client.Name, a.Name, 10*time.Second)
	})
}

// drain drops the answers the client gave so far.
func drain(c *lab.RedisClient) {
	for {
		select {
		case <-c.Answers:
		default:
			return
		}
	}
}

// awaitAnswer waits for the client's next successful answer from cluster
// want (answers from elsewhere and errors are skipped).
func awaitAnswer(t testing.TB, c *lab.RedisClient, want string, d time.Duration) lab.RedisAnswer {
	t.Helper()
	timeout := time.After(d)
	var last lab.RedisAnswer
	for {
		select {
		case a, ok := <-c.Answers:
			if !ok {
				t.Fatalf("the redis client ended; last answer %+v", last)
			}
			last = a
			if a.OK && a.Cluster == want {
				return a
			}
		case <-timeout:
			t.Fatalf("no answer from %s within %s; last %+v", want, d, last)
		}
	}
}
