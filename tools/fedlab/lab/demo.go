package lab

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Demo is the narrated tour `make demo` runs on a lab that is up: traffic
// across sites, a federated policy applied with --wait, the verdict
// explained, the policy removed, a service exported in one cluster and
// imported in the other, and Redis across clusters: a real client reaching
// its local instance through the node-local DNS and the ClusterSetIP,
// failing over to the other cluster's when the local one is killed and
// withdrawn (fedctl wait shows the withdrawal enforced), and back; then the
// whole of the other cluster lost (its API, syncer and agents), an
// application's open connection to it failing over, and the cluster
// re-admitted when it returns; egress by DNS name to the lab's outside
// namespace (demo_dns.go) comes after the tiers. The
// demo's federated policy selects only the api pods and is deleted before
// the Redis step, so nothing in it stands between the client and the db
// pods. It fails on the first step that does not behave.
type Demo struct {
	Lab *Lab
	Out io.Writer
	// PolicyFile is the federated policy the tour applies.
	PolicyFile string
	step       int
}

func (d *Demo) say(format string, args ...any) {
	d.step++
	fmt.Fprintf(d.Out, "\n==> %d. %s\n", d.step, fmt.Sprintf(format, args...))
}

// fedctl shows a fedctl command and its output (errors included), so a
// failure it returns says only that: the output is not repeated.
func (d *Demo) fedctl(ctx context.Context, args ...string) (string, error) {
	fmt.Fprintf(d.Out, "$ fedctl %s\n", strings.Join(args, " "))
	out, err := d.Lab.Fedctl(ctx, args...)
	fmt.Fprint(d.Out, indent(out))
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return out, fmt.Errorf("fedctl %s: %w (its output is above)", args[0], exitErr)
	}
	return out, err
}

// denied says whether err is `fedctl reach` answering denied (exit 2).
func denied(err error) bool {
	var exitErr *exec.ExitError
	return errors.As(err, &exitErr) && exitErr.ExitCode() == 2
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ") + "\n"
}

// probe runs one TCP exchange from a pod to addr; want says whether it
// should get through. Allowed probes are retried briefly: the first packet
// to a new WireGuard peer waits for the handshake.
func (d *Demo) probe(ctx context.Context, from, to string, addr string, want bool) error {
	tries := 1
	if want {
		tries = 3
	}
	var err error
	for i := 0; i < tries; i++ {
		cmd, e := d.Lab.Topo.PodCommand(ctx, from, d.Lab.bin("fedlab"), "probe", "--timeout", "2s", addr)
		if e != nil {
			return e
		}
		out, e := cmd.CombinedOutput()
		err = e
		if (e == nil) == want {
			break
		}
		_ = out
	}
	got := "refused (dropped)"
	if err == nil {
		got = "connected"
	}
	fmt.Fprintf(d.Out, "    %s -> %s (%s) tcp/%d: %s\n", from, to, addr, AppPort, got)
	if (err == nil) != want {
		return fmt.Errorf("%s -> %s: got %s, want %s", from, to, got, map[bool]string{true: "connected", false: "refused"}[want])
	}
	return nil
}

// DemoPolicy is the federated policy the tour applies.
//
//go:embed demo-policy.yaml
var DemoPolicy []byte

// Run plays the tour.
func (d *Demo) Run(ctx context.Context) error {
	t := d.Lab.Topo
	if d.PolicyFile == "" {
		d.PolicyFile = filepath.Join(d.Lab.Dir, "demo-policy.yaml")
		if err := os.WriteFile(d.PolicyFile, DemoPolicy, 0o644); err != nil {
			return err
		}
	}
	if len(t.Clusters) < 2 || len(t.Clusters[1].Nodes[0].Pods) < 2 {
		return errors.New("the demo needs 2 clusters and 2 pods per node")
	}
	a, b := t.Clusters[0], t.Clusters[1]
	web := a.Nodes[0].Pods[0]               // web pod in cluster-a
	api := b.Nodes[0].Pods[1]               // api pod in cluster-b
	webB := b.Nodes[len(b.Nodes)-1].Pods[0] // web pod in cluster-b
	apiAddr := fmt.Sprintf("%s:%d", api.IP, AppPort)
	apiAddr6 := netip.AddrPortFrom(api.IP6, AppPort).String()

	d.say("The federation: %d clusters registered in a 3-replica Raft control plane", len(t.Clusters))
	if _, err := d.fedctl(ctx, "cluster", "list"); err != nil {
		return err
	}
	d.say("Every node runs an agent: eBPF enforcement, a BGP session to its ToR, WireGuard to the other site")
	if _, err := d.fedctl(ctx, "cluster", "status"); err != nil {
		return err
	}
	for _, c := range t.Clusters {
		routes, _ := ToRRoutes(ctx, c)
		fmt.Fprintf(d.Out, "    %s ToR (%s) learned over BGP:\n", c.Name, map[string]string{"bird": "BIRD 2", "frr": "FRR"}[c.ToRKind])
		for _, l := range strings.Split(routes, "\n") {
			if strings.Contains(l, "proto bird") || strings.Contains(l, "proto bgp") {
				fmt.Fprintf(d.Out, "      %s\n", strings.TrimSpace(l))
			}
		}
	}
	d.say("Endpoints published by each cluster's fedmesh-syncer from its kube-apiserver, with federation-wide identities")
	if _, err := d.fedctl(ctx, "endpoint", "list"); err != nil {
		return err
	}

	d.say("A pod in %s reaches a pod in %s over TCP (routed by the ToR within a site, encrypted by WireGuard between sites)", a.Name, b.Name)
	if err := d.probe(ctx, web.Name, b.Name+"/"+api.Name, apiAddr, true); err != nil {
		return err
	}
	if err := d.probe(ctx, webB.Name, b.Name+"/"+api.Name, apiAddr, true); err != nil {
		return err
	}
	d.say("The same pods are dual-stack: over IPv6 (ULA pod addresses, learned by both ToRs, carried between sites inside the IPv4 WireGuard tunnel)")
	if err := d.probe(ctx, web.Name, b.Name+"/"+api.Name, apiAddr6, true); err != nil {
		return err
	}

	d.say("Apply ONE federated policy, stored once and enforced in every prod cluster, and --wait until every node enforces it")
	fmt.Fprint(d.Out, indent(readFile(d.PolicyFile)))
	if _, err := d.fedctl(ctx, "policy", "apply", "-f", d.PolicyFile, "--wait"); err != nil {
		return err
	}
	d.say("The cross-cluster connection is now refused; the local web pod still connects")
	if err := d.probe(ctx, web.Name, b.Name+"/"+api.Name, apiAddr, false); err != nil {
		return err
	}
	if err := d.probe(ctx, web.Name, b.Name+"/"+api.Name, apiAddr6, false); err != nil {
		return err
	}
	if err := d.probe(ctx, webB.Name, b.Name+"/"+api.Name, apiAddr, true); err != nil {
		return err
	}
	if err := d.flows(ctx, b, api); err != nil {
		return err
	}
	d.say("fedctl reach explains the verdict with the same compiler the agents load into eBPF")
	src, dst := a.Name+"/demo/"+web.Name, b.Name+"/demo/"+api.Name
	if _, err := d.fedctl(ctx, "reach", src, dst, "--port", fmt.Sprint(AppPort)); err != nil && !denied(err) {
		fmt.Fprintf(d.Out, "    (reach: %v)\n", err)
	}
	if _, err := d.fedctl(ctx, "reach", b.Name+"/demo/"+webB.Name, dst, "--port", fmt.Sprint(AppPort)); err != nil {
		fmt.Fprintf(d.Out, "    (reach: %v)\n", err)
	}
	if _, err := d.fedctl(ctx, "reach", src, dst, "--port", fmt.Sprint(AppPort), "--family", "6"); err != nil && !denied(err) {
		fmt.Fprintf(d.Out, "    (reach: %v)\n", err)
	}

	d.say("Remove the policy (--wait) and traffic flows again")
	if _, err := d.fedctl(ctx, "policy", "delete", "federated/demo/api-local-web-only", "--wait"); err != nil {
		return err
	}
	if err := d.probe(ctx, web.Name, b.Name+"/"+api.Name, apiAddr, true); err != nil {
		return err
	}
	if err := d.probe(ctx, web.Name, b.Name+"/"+api.Name, apiAddr6, true); err != nil {
		return err
	}

	if !d.Lab.State.Config.NoKube {
		if err := d.tiers(ctx, a, b, web, webB, api, apiAddr); err != nil {
			return err
		}
	}

	if err := d.dns(ctx, web); err != nil {
		return err
	}

	if !d.Lab.State.Config.NoKube {
		d.say("Multi-cluster services: export service %q from %s (MCS API ServiceExport)", "api", b.Name)
		if err := d.kubeOp(ctx, "kube-export", "--cluster", b.Name, "--service", "api"); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var out string
		err := waitFor(wctx, "the import in "+a.Name, func() error {
			var err error
			out, err = d.Lab.Fedctl(wctx, "service", "imports", "--cluster", a.Name)
			if err == nil && !strings.Contains(out, b.Name) {
				err = errors.New("not imported yet")
			}
			return err
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(d.Out, "$ fedctl service imports --cluster %s\n%s", a.Name, indent(out))
		d.say("%s's syncer wrote the ServiceImport and EndpointSlices into %s's API, as KEP-1645 specifies", a.Name, a.Name)
		err = waitFor(wctx, "the ServiceImport in "+a.Name, func() error {
			return d.kubeOp(wctx, "kube-imports", "--cluster", a.Name)
		})
		if err != nil {
			return err
		}
	}

	if !d.Lab.State.Config.NoKube && len(t.RedisPods(a.Name)) > 0 && len(t.RedisPods(b.Name)) > 0 {
		if err := d.redis(ctx, a, b, web); err != nil {
			return err
		}
	}

	fmt.Fprintf(d.Out, `
Done. The lab keeps running. Try:
  %[4]s policy list
  %[4]s watch
  sudo ./bin/fedlab status --name %[1]s
  sudo ./bin/fedlab exec --name %[1]s %[2]s -- ./bin/fedlab probe %[3]s
(fedlab fedctl runs fedctl with context %[5]s inside the lab's management
namespace, the only place its control plane is reachable from; everything is
mTLS, with the lab's CA and admin certificate in %[6]s.)
When you are done:
  sudo ./bin/fedlab down --name %[1]s
`, t.Name, web.Name, apiAddr, FedctlCommand("./bin/fedlab", t.Name), ContextName(t.Name), pkiDir(d.Lab.Dir))
	return nil
}

// redisGet makes one new connection from a pod to the redis service
// (resolved by the node-local DNS, translated at the ClusterSetIP) and
// checks which cluster's instance answered.
func (d *Demo) redisGet(ctx context.Context, from Pod, want string) error {
	var ans RedisAnswer
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	err := waitFor(wctx, "redis to answer from "+want, func() error {
		var err error
		ans, err = d.Lab.RedisGet(wctx, from.Name)
		if err == nil && ans.Cluster != want {
			err = fmt.Errorf("answered by %s", ans.Cluster)
		}
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(d.Out, "    %s -> %s:%d (new connection, GET %s): %s (pod %s)\n", from.Name, RedisName, RedisPort, RedisClusterKey, ans.Cluster, ans.Pod)
	return nil
}

// redis is the tour's Redis step: the same service exported by both
// clusters with local affinity, a real client in cluster a, its instance
// withdrawn and restored.
func (d *Demo) redis(ctx context.Context, a, b Cluster, client Pod) error {
	redisA := d.Lab.Topo.RedisPods(a.Name)
	d.say("Redis across clusters: redis-server runs in the db pods of both clusters; each exports service %q (port %d, fedmesh.io/affinity: local) through its kube-apiserver", RedisService, RedisPort)
	for _, c := range []Cluster{a, b} {
		if err := d.Lab.ExportRedis(ctx, c.Name); err != nil {
			return err
		}
	}
	if err := d.waitImport(ctx, a.Name, d.Lab.Topo.RedisReadyText(a.Name, true), d.Lab.Topo.RedisReadyText(b.Name, true)); err != nil {
		return err
	}
	d.say("A real redis-cli in %s resolves %s through its node's fedmesh-agent DNS and connects to the ClusterSetIP: the agent's socket translation picks the local instance", client.Name, RedisName)
	cmd, err := d.Lab.Topo.PodCommand(ctx, client.Name, "redis-cli", "-h", RedisName, "-p", fmt.Sprint(RedisPort), "GET", RedisClusterKey)
	if err != nil {
		return err
	}
	out, err := cmd.CombinedOutput()
	fmt.Fprintf(d.Out, "$ fedlab exec %s -- redis-cli -h %s GET %s\n%s", client.Name, RedisName, RedisClusterKey, indent(string(out)))
	if err != nil || strings.TrimSpace(string(out)) != a.Name {
		return fmt.Errorf("redis-cli from %s: %v: %q, want %s", client.Name, err, out, a.Name)
	}
	if err := d.redisGet(ctx, client, a.Name); err != nil {
		return err
	}

	d.say("Kill %s's redis-servers and mark them not ready in its EndpointSlices; fedctl wait until every node of %s enforces the withdrawal", a.Name, a.Name)
	for _, p := range redisA {
		if err := d.Lab.Signal(RedisProc(p.Name), syscall.SIGKILL); err != nil {
			return err
		}
		if err := d.Lab.SetRedisReady(ctx, p.Name, false); err != nil {
			return err
		}
	}
	if err := d.waitImport(ctx, a.Name, d.Lab.Topo.RedisReadyText(a.Name, false)); err != nil {
		return err
	}
	rev, err := d.importsRevision(ctx, a.Name)
	if err != nil {
		return err
	}
	if _, err := d.fedctl(ctx, "wait", fmt.Sprint(rev), "--cluster", a.Name, "--wait-timeout", "20s"); err != nil {
		return err
	}
	d.say("New connections now reach %s's instances (affinity local fails over when no local backend is ready)", b.Name)
	for range 3 {
		if err := d.redisGet(ctx, client, b.Name); err != nil {
			return err
		}
	}
	if _, err := d.fedctl(ctx, "service", "get", "demo/"+RedisService, "--cluster", a.Name); err != nil {
		return err
	}
	// An application's client keeps one connection open from now on; it
	// lands on cluster b's instance, the only one ready.
	app, err := d.Lab.StartRedisClient(ctx, client.Name, 50*time.Millisecond, false)
	if err != nil {
		return err
	}
	defer app.Stop()
	if _, err := d.appAnswer(app, client, b.Name, 10*time.Second); err != nil {
		return err
	}

	d.say("Restart %s's redis-servers and mark them ready: new connections prefer the local instances again", a.Name)
	for _, p := range redisA {
		if err := d.Lab.RestartRedis(ctx, p.Name); err != nil {
			return err
		}
		if err := d.Lab.SetRedisReady(ctx, p.Name, true); err != nil {
			return err
		}
	}
	if err := d.waitImport(ctx, a.Name, d.Lab.Topo.RedisReadyText(a.Name, true), d.Lab.Topo.RedisReadyText(b.Name, true)); err != nil {
		return err
	}
	if err := d.redisGet(ctx, client, a.Name); err != nil {
		return err
	}
	drainAnswers(app)
	if _, err := d.appAnswer(app, client, b.Name, 2*time.Second); err != nil {
		return err
	}
	return d.loseCluster(ctx, a, b, app, client)
}

// loseCluster is the tour's site-loss step: the whole of cluster b's
// control goes (kube-apiserver, etcd, syncer, agents); the application's
// connection to b's instance fails over to a's, the control plane marks b
// unreachable, and re-admits it when it comes back.
func (d *Demo) loseCluster(ctx context.Context, a, b Cluster, app *RedisClient, client Pod) (err error) {
	d.say("Lose the whole of %s: kill its kube-apiserver (with etcd and its fedmesh-syncer) and every fedmesh-agent, as a lost site", b.Name)
	drainAnswers(app)
	lost := time.Now()
	if err := d.Lab.LoseCluster(ctx, b.Name); err != nil {
		return err
	}
	restored := false
	defer func() {
		if !restored {
			// Leave the lab whole for whoever looks at the failure.
			err = errors.Join(err, d.Lab.RestoreCluster(context.WithoutCancel(ctx), b.Name, 2*time.Minute))
		}
	}()
	ans, err := d.appAnswer(app, client, a.Name, 10*time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.Out, "    the application's client failed over to %s %s in %s\n", ans.Cluster, ans.Pod, ans.At.Sub(lost).Round(time.Millisecond))
	if err := d.waitImport(ctx, a.Name, d.Lab.Topo.RedisReadyText(b.Name, true)+"!unreachable"); err != nil {
		return err
	}
	if _, err := d.fedctl(ctx, "cluster", "list"); err != nil {
		return err
	}
	if err := d.redisGet(ctx, client, a.Name); err != nil {
		return err
	}

	d.say("%s comes back (kube-apiserver, syncer, agents restarted): the control plane re-admits it", b.Name)
	if err := d.Lab.RestoreCluster(ctx, b.Name, 2*time.Minute); err != nil {
		return err
	}
	restored = true
	// The lab's apiserver keeps no data across a restart: its supervisor
	// exports redis and the tour's api service again, and both imports
	// come back whole.
	apis := 0
	for _, n := range b.Nodes {
		for _, p := range n.Pods {
			if p.Labels["app"] == "api" {
				apis++
			}
		}
	}
	apiText := fmt.Sprintf("%s(%d/%d)", b.Name, apis, apis)
	if err := d.waitImportWithout(ctx, a.Name, "unreachable", apiText, d.Lab.Topo.RedisReadyText(a.Name, true), d.Lab.Topo.RedisReadyText(b.Name, true)); err != nil {
		return err
	}
	if _, err := d.fedctl(ctx, "cluster", "list"); err != nil {
		return err
	}
	_, err = d.fedctl(ctx, "service", "get", "demo/"+RedisService, "--cluster", a.Name)
	return err
}

// appAnswer waits for the application client's next answer from cluster
// want (errors and answers from elsewhere are skipped) and prints it.
func (d *Demo) appAnswer(app *RedisClient, client Pod, want string, timeout time.Duration) (RedisAnswer, error) {
	deadline := time.After(timeout)
	var last RedisAnswer
	for {
		select {
		case a, ok := <-app.Answers:
			if !ok {
				return last, fmt.Errorf("the application's redis client in %s ended; last answer %+v", client.Name, last)
			}
			last = a
			if a.OK && a.Cluster == want {
				fmt.Fprintf(d.Out, "    %s -> %s:%d (the application's open connection): %s (pod %s)\n", client.Name, RedisName, RedisPort, a.Cluster, a.Pod)
				return a, nil
			}
		case <-deadline:
			return last, fmt.Errorf("the application's redis client in %s: no answer from %s within %s; last %+v", client.Name, want, timeout, last)
		}
	}
}

// drainAnswers drops the answers the client gave so far.
func drainAnswers(c *RedisClient) {
	for {
		select {
		case <-c.Answers:
		default:
			return
		}
	}
}

// waitImport waits until `fedctl service imports --cluster importer` shows
// every want substring, then prints it.
func (d *Demo) waitImport(ctx context.Context, importer string, want ...string) error {
	return d.waitImportWithout(ctx, importer, "", want...)
}

// waitImportWithout is waitImport that also waits for without ("":
// nothing) to be gone.
func (d *Demo) waitImportWithout(ctx context.Context, importer, without string, want ...string) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out string
	err := waitFor(wctx, "the redis import to show "+strings.Join(want, " "), func() error {
		var err error
		if out, err = d.Lab.Fedctl(wctx, "service", "imports", "--cluster", importer); err != nil {
			return err
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				return fmt.Errorf("no %s yet", w)
			}
		}
		if without != "" && strings.Contains(out, without) {
			return fmt.Errorf("still %s", without)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(d.Out, "$ fedctl service imports --cluster %s\n%s", importer, indent(out))
	return nil
}

// importsRevision is the revision of the imports as importer sees them.
func (d *Demo) importsRevision(ctx context.Context, importer string) (uint64, error) {
	cc, err := d.Lab.Dial()
	if err != nil {
		return 0, err
	}
	defer cc.Close()
	resp, err := fedmeshv1.NewMultiClusterServiceClient(cc).ListServiceImports(ctx, &fedmeshv1.ListServiceImportsRequest{Cluster: importer})
	if err != nil {
		return 0, fmt.Errorf("list service imports: %w", err)
	}
	return resp.GetRevision(), nil
}

// kubeOp runs a fedlab kube command inside the management namespace (where
// the kube-apiservers listen) and prints its output.
func (d *Demo) kubeOp(ctx context.Context, args ...string) error {
	argv := append([]string{"--net=/var/run/netns/" + d.Lab.Topo.Mgmt.NS, "--", d.Lab.bin("fedlab"), "--name", d.Lab.Topo.Name}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", argv...).CombinedOutput()
	if err == nil {
		fmt.Fprint(d.Out, indent(string(out)))
	}
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func readFile(p string) string {
	b, err := os.ReadFile(filepath.Clean(p))
	if err != nil {
		return err.Error()
	}
	return string(b)
}
