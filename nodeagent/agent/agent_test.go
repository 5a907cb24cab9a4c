package agent_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ---- fixtures ----

const (
	self    = "n1"
	myClust = "a"
)

func clusterObj(name, cidr string) *fedmeshv1.Cluster {
	return &fedmeshv1.Cluster{Name: name, PodCidrs: []string{cidr}, Labels: map[string]string{"site": name}}
}

// endpoint is a pod of namespace web; the control plane allocates its
// identity.
func endpoint(cluster, name, node, ip string, app string) *fedmeshv1.Endpoint {
	return &fedmeshv1.Endpoint{Cluster: cluster, Namespace: "web", Name: name, Node: node, Ips: []string{ip},
		Labels: map[string]string{"app": app}, NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "web"}}
}

// allowFrom is a Kubernetes policy of cluster a: pods app=server accept
// TCP port from pods with app=from of their namespace.
func allowFrom(name, from string, port uint32) *fedmeshv1.Policy {
	return &fedmeshv1.Policy{
		Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: myClust, Namespace: "web", Name: name,
		Spec: &fedmeshv1.NetworkPolicySpec{
			PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			PolicyTypes: []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_INGRESS},
			Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{
				Ports: []*fedmeshv1.NetworkPolicyPort{{Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: &fedmeshv1.NetworkPolicyPort_Number{Number: port}}},
				From:  []*fedmeshv1.NetworkPolicyPeer{{PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": from}}}},
			}},
		},
	}
}

var (
	server = endpoint(myClust, "server", self, "10.0.0.10", "server")
	client = endpoint(myClust, "client", "n2", "10.0.0.20", "client")
	other  = endpoint(myClust, "other", "n2", "10.0.0.30", "other")
	remote = endpoint("b", "remote", "m1", "10.1.0.20", "client")
)

// ---- test doubles of the ports the agent drives around the real dataplane ----

// recorder wraps the in-memory dataplane and records what the agent asks.
type recorder struct {
	*dataplane.Memory

	mu      sync.Mutex
	applied []uint64
	last    *dataplane.Revision
	fail    error
	gate    chan struct{} // when set, Apply waits for it
}

func newRecorder() *recorder {
	return &recorder{Memory: dataplane.NewMemory()}
}

func (r *recorder) Apply(ctx context.Context, rev *dataplane.Revision) error {
	r.mu.Lock()
	gate, fail := r.gate, r.fail
	r.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if fail != nil {
		return fail
	}
	if err := r.Memory.Apply(ctx, rev); err != nil {
		return err
	}
	r.mu.Lock()
	r.applied = append(r.applied, rev.Number)
	r.last = rev
	r.mu.Unlock()
	return nil
}

func (r *recorder) revisions() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]uint64(nil), r.applied...)
}

func (r *recorder) lastRev() *dataplane.Revision {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// verdict sends a TCP SYN from src into the endpoint on the in-memory
// dataplane.
func (r *recorder) verdict(t *testing.T, id string, src, dst string, port uint16) dataplane.Verdict {
	t.Helper()
	v, _, _, err := r.Process(id, policy.Ingress, tcpSYN(netip.MustParseAddr(src), netip.MustParseAddr(dst), 40000, port))
	if err != nil {
		t.Fatalf("process: %v", err)
	}
	return v
}

// tcpSYN is an Ethernet/IPv4/TCP SYN frame.
func tcpSYN(src, dst netip.Addr, sport, dport uint16) []byte {
	f := make([]byte, 14+20+20)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], 40)
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	tcp[12], tcp[13] = 5<<4, 0x02
	return f
}

// routes is an InterfaceResolver over a table the test edits, standing in
// for the kernel's /32 routes to pod veths (NetlinkResolver is tested
// against the kernel in resolver_linux_test.go).
type routes struct {
	mu sync.Mutex
	m  map[netip.Addr]string
}

func (r *routes) set(ip, iface string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if iface == "" {
		delete(r.m, netip.MustParseAddr(ip))
		return
	}
	r.m[netip.MustParseAddr(ip)] = iface
}

func (r *routes) Lookup(_ context.Context, ip netip.Addr) (string, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.m[ip]
	return s, ok, nil
}

// bgpRec records what the agent tells the BGP port.
type bgpRec struct {
	mu      sync.Mutex
	health  []bool
	configs []agent.BGPConfig
}

func (b *bgpRec) Apply(_ context.Context, c agent.BGPConfig) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.configs = append(b.configs, c)
	return nil
}

func (b *bgpRec) SetHealthy(_ context.Context, h bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.health = append(b.health, h)
	return nil
}

func (b *bgpRec) Status(context.Context) ([]*fedmeshv1.BGPPeerStatus, error) { return nil, nil }

func (b *bgpRec) Problems() []string { return nil }

func (b *bgpRec) lastHealth() (bool, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.health) == 0 {
		return false, false
	}
	return b.health[len(b.health)-1], true
}

type harness struct {
	a      *agent.Agent
	dp     *recorder
	routes *routes
	bgp    *bgpRec
	client *agent.Client
	logs   *logRecorder
	svc    *svcRecorder
	dns    *dnsRecorder
	// faults fail, delay or break the agent's calls to the control plane.
	faults *inproc.Faults
}

func startAgent(t *testing.T, addrs []string, tweak func(*agent.Config)) *harness {
	t.Helper()
	return startAgentWith(t, addrs, tweak, nil)
}

// startAgentWith is startAgent with the deps edited by tweakDeps.
func startAgentWith(t *testing.T, addrs []string, tweak func(*agent.Config), tweakDeps func(*agent.Deps)) *harness {
	t.Helper()
	return startAgentFaulted(t, addrs, tweak, tweakDeps)
}

// startAgentFaulted is startAgentWith with rules injected into the
// agent's calls before it runs, so even its first call meets them.
func startAgentFaulted(t *testing.T, addrs []string, tweak func(*agent.Config), tweakDeps func(*agent.Deps), rules ...inproc.Rule) *harness {
	t.Helper()
	faults := inproc.NewFaults()
	for _, r := range rules {
		faults.Inject(r)
	}
	cl, err := agent.NewClient(addrs, append(faults.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	cl.CallTimeout = time.Second
	h := &harness{dp: newRecorder(), routes: &routes{m: map[netip.Addr]string{}}, bgp: &bgpRec{}, client: cl, logs: &logRecorder{}, faults: faults, svc: newSvcRecorder(), dns: &dnsRecorder{}}
	cfg := agent.Config{
		Cluster: myClust, Node: self, UnderlayIP: netip.MustParseAddr("198.18.0.1"), PodCIDRs: []string{"10.0.0.0/24"},
		DataplaneName: "memory", Tick: 20 * time.Millisecond, StatusInterval: 100 * time.Millisecond,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, ReadyLag: 10 * time.Second,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	deps := agent.Deps{
		ControlPlane: cl, Dataplane: h.dp, Interfaces: h.routes, BGP: h.bgp, Services: h.svc, DNS: h.dns,
		Logger: slog.New(h.logs),
	}
	if tweakDeps != nil {
		tweakDeps(&deps)
	}
	a, err := agent.New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	h.a = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent run: %v", err)
		}
	})
	return h
}

// eventually polls cond for up to 15 s (a loaded 2-core machine runs three
// replicas, the agent and the test).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func enforcedAt(h *harness, rev uint64) func() bool {
	return func() bool { r, ok := h.a.Enforced(); return ok && r >= rev }
}

func attached(t *testing.T, h *harness, n float64) func() bool {
	return func() bool { return testutil.ToFloat64(mustGauge(t, h.a, "fedmesh_agent_attached_endpoints")) == n }
}

func connected(t *testing.T, h *harness, on bool) func() bool {
	want := 0.0
	if on {
		want = 1
	}
	return func() bool {
		return testutil.ToFloat64(mustGauge(t, h.a, "fedmesh_agent_controlplane_connected")) == want
	}
}

// ---- scenarios, each on three real control-plane replicas (in this
// process unless a replica process must die) ----

func TestAgentEnforcesCompiledPolicyAndReportsTheRevision(t *testing.T) {
	f := startFed(t, inproc.Options{})
	ids := f.seed()
	h := startAgent(t, f.cp.Addrs(), nil)
	h.routes.set("10.0.0.10", "cali-server")
	f.waitRegistered()

	rev := f.applyPolicy(allowFrom("allow-client", "client", 80))
	if resp := f.waitEnforced(rev, 15*time.Second); !resp.GetEnforced() {
		t.Fatalf("WaitEnforced(%d) = %v, want enforced", rev, resp)
	}
	if got, ok := h.a.Enforced(); !ok || got < rev {
		t.Fatalf("agent enforces %d (%v), control plane says >= %d", got, ok, rev)
	}
	n, err := f.node()
	if err != nil {
		t.Fatal(err)
	}
	if st := n.GetStatus(); st.GetEnforcedRevision() < rev || !st.GetReady() || st.GetDataplane() != "memory" || st.GetLocalEndpoints() != 1 {
		t.Errorf("node status in the control plane = %v, want enforced >= %d, ready, memory, 1 local endpoint", st, rev)
	}
	last := h.dp.lastRev()
	rules, ok := last.Rules["a/web/server"]
	if !ok || !rules.Ingress.Enforced || rules.Identity != ids["server"] {
		t.Fatalf("server rules = %+v (ok=%v), want enforced ingress for identity %d", rules, ok, ids["server"])
	}
	if len(last.Rules) != 1 {
		t.Errorf("rules for %d endpoints, want only the local one: %v", len(last.Rules), last.Rules)
	}
	if n := last.IPCache.Len(); n != 4 {
		t.Errorf("ipcache has %d entries, want the four endpoints of the federation", n)
	}
	eventually(t, "the server attached", attached(t, h, 1))
	for _, c := range []struct {
		src  string
		want dataplane.Verdict
	}{
		{"10.0.0.20", dataplane.Allow}, // a/client
		{"10.0.0.30", dataplane.Deny},  // a/other
		{"10.1.0.20", dataplane.Deny},  // b/remote: app=client too, but a NetworkPolicy stays in its cluster
	} {
		if v := h.dp.verdict(t, "a/web/server", c.src, "10.0.0.10", 80); v != c.want {
			t.Errorf("%s -> server:80 = %v, want %v", c.src, v, c.want)
		}
	}
	if ok, why := h.a.Ready(); !ok {
		t.Errorf("not ready: %s", why)
	}
	if healthy, ok := h.bgp.lastHealth(); !ok || !healthy {
		t.Errorf("BGP health = %v (set=%v), want healthy", healthy, ok)
	}

	// The pod's route goes away: detached; the endpoint is deleted: gone.
	h.routes.set("10.0.0.10", "")
	eventually(t, "the server detached", attached(t, h, 0))
	rev = f.deleteEndpoint(server)
	if resp := f.waitEnforced(rev, 15*time.Second); !resp.GetEnforced() {
		t.Fatalf("WaitEnforced(%d) after the delete = %v", rev, resp)
	}
	if n := len(h.dp.lastRev().Rules); n != 0 {
		t.Errorf("rules after the local endpoint left: %d, want 0", n)
	}
}

// Every status report is a write: it bumps the revision and comes back to
// the agent as a Node event. The agent must not answer its own report with
// another one.
func TestStatusReportsDoNotFeedBackIntoWrites(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.seed()
	h := startAgent(t, f.cp.Addrs(), func(c *agent.Config) { c.StatusInterval = time.Second })
	f.waitRegistered()
	rev := f.applyPolicy(allowFrom("allow-client", "client", 80))
	if resp := f.waitEnforced(rev, 15*time.Second); !resp.GetEnforced() {
		t.Fatalf("WaitEnforced(%d) = %v", rev, resp)
	}
	reports := func() float64 {
		return testutil.ToFloat64(mustCounterVec(t, h.a, "fedmesh_agent_status_reports_total", "ok"))
	}
	before := reports()
	st0, err := f.cp.Replicas[0].Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// An observation window, not a wait for a condition: nothing should
	// happen in it but the 1s heartbeat.
	time.Sleep(3 * time.Second)
	st1, err := f.cp.Replicas[0].Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := reports() - before; n > 6 {
		t.Errorf("%v status reports (revision %d -> %d) in 3s with a 1s heartbeat and no other writes, want about 3",
			n, st0.GetRevision(), st1.GetRevision())
	}
}

// The agent watches with filter.importing_cluster=a and only the kinds it
// needs, so a write it cannot see must still move its revision: the control
// plane sends a PROGRESS message, the agent enforces (and reports) that
// revision, and WaitEnforced on the write returns.
func TestFilteredWritesReachTheAgentAsProgress(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.registerCluster(clusterObj("a", "10.0.0.0/16"))
	b := clusterObj("b", "10.1.0.0/16")
	b.Exports = &fedmeshv1.NamespaceScope{Names: []string{"public"}}
	f.registerCluster(b)
	f.upsert("a", server)
	hidden := endpoint("b", "hidden", "m1", "10.1.0.30", "x")
	hidden.Namespace = "private" // not exported by b: a never sees it

	t.Run("the watch stream itself", func(t *testing.T) {
		// No agent runs here: nothing else writes, so the message after
		// the hidden write is the one that write caused.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		lead := f.cp.Leader()
		st, err := lead.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		w, err := fedmeshv1.NewWatchServiceClient(lead.Conn()).Watch(ctx, &fedmeshv1.WatchRequest{
			FromRevision: st.GetRevision(), Kinds: agentKinds,
			Filter: &fedmeshv1.WatchFilter{ImportingCluster: myClust}})
		if err != nil {
			t.Fatal(err)
		}
		for i, write := range []func() uint64{
			func() uint64 { return f.upsert("b", hidden) },
			func() uint64 { return f.exportService("b", "public", "svc") }, // a kind the agent does not watch
		} {
			rev := write()
			for {
				m, err := w.Recv()
				if err != nil {
					t.Fatalf("write %d: watch ended: %v", i, err)
				}
				if m.GetRevision() < rev {
					continue
				}
				if m.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_PROGRESS || len(m.GetEvents()) != 0 || m.GetRevision() != rev {
					t.Fatalf("write %d at revision %d: got %v, want a PROGRESS message at %d", i, rev, m, rev)
				}
				break
			}
		}
	})

	t.Run("the agent and WaitEnforced", func(t *testing.T) {
		// A heartbeat far beyond the wait: the report must come from the
		// progress itself.
		h := startAgent(t, f.cp.Addrs(), func(c *agent.Config) { c.StatusInterval = time.Minute })
		f.waitRegistered()
		eventually(t, "the first report", func() bool {
			n, err := f.node()
			return err == nil && n.GetStatus().GetEnforcedRevision() > 0
		})
		hidden.Name = "hidden-2"
		hidden.Ips = []string{"10.1.0.31"}
		rev := f.upsert("b", hidden)
		if resp := f.waitEnforced(rev, 3*time.Second); !resp.GetEnforced() {
			got, _ := h.a.Enforced()
			t.Fatalf("WaitEnforced(%d) for a write the agent filters out = %v (the agent enforces %d); "+
				"a revision with nothing to enforce is reported only with the next heartbeat", rev, resp, got)
		}
		for p := range h.dp.lastRev().IPCache.All() {
			if p.Addr().String() == "10.1.0.31" || p.Addr().String() == "10.1.0.30" {
				t.Errorf("an endpoint of a namespace b does not export reached the agent: %v", p)
			}
		}
	})
}

// agentKinds are the kinds the agent asks for (view.go).
var agentKinds = []fedmeshv1.ResourceKind{
	fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER,
	fedmeshv1.ResourceKind_RESOURCE_KIND_NODE,
	fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT,
	fedmeshv1.ResourceKind_RESOURCE_KIND_POLICY,
}

func TestAgentCoalescesABurstIntoTheNewestRevision(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.seed()
	h := startAgent(t, f.cp.Addrs(), nil)
	base := f.applyPolicy(allowFrom("p", "client", 999))
	eventually(t, "the seed enforced", enforcedAt(h, base))

	// Hold the dataplane while 100 revisions commit, then let it go.
	gate := make(chan struct{})
	h.dp.mu.Lock()
	h.dp.gate = gate
	h.dp.mu.Unlock()
	var last uint64
	for i := range 100 {
		last = f.applyPolicy(allowFrom("p", "client", uint32(1000+i)))
	}
	// The sync goroutine may be inside Apply already (waiting on the gate)
	// or not; either way the messages queue up behind it.
	h.dp.mu.Lock()
	h.dp.gate = nil
	h.dp.mu.Unlock()
	close(gate)
	eventually(t, "the newest revision enforced", enforcedAt(h, last))
	applied := h.dp.revisions()
	var after []uint64
	for _, r := range applied {
		if r > base {
			after = append(after, r)
		}
	}
	if n := len(after); n == 0 || n > 10 {
		t.Errorf("%d dataplane applies for 100 revisions (%v), want a handful (coalesced)", n, after)
	}
	port := h.dp.lastRev().Rules["a/web/server"].Ingress.Identities
	if len(port) != 1 || port[0].Ports.First != 1099 {
		t.Errorf("enforced rules %+v, want the newest policy (port 1099)", port)
	}
	if c := testutil.ToFloat64(mustCounter(t, h.a, "fedmesh_agent_coalesced_messages_total")); c == 0 {
		t.Errorf("coalesced messages = 0, want > 0")
	}
}

func TestAgentKeepsEnforcingWhileTheControlPlaneIsDownAndResumes(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.seed()
	h := startAgent(t, f.cp.Addrs(), nil)
	h.routes.set("10.0.0.10", "cali-server")
	f.waitRegistered()
	rev := f.applyPolicy(allowFrom("allow-client", "client", 80))
	eventually(t, "the policy enforced", enforcedAt(h, rev))
	eventually(t, "the server attached", attached(t, h, 1))

	f.cp.StopAll()
	eventually(t, "the watch lost", connected(t, h, false))
	down, _ := h.a.Enforced()
	before := len(h.dp.revisions())
	fails := h.logs.count(msgUnreachable)
	eventually(t, "several failed reconnects", func() bool { return h.logs.count(msgUnreachable) >= fails+5 })
	if n := len(h.dp.revisions()); n != before {
		t.Errorf("dataplane applied %d revisions while disconnected, want none", n-before)
	}
	if got, _ := h.a.Enforced(); got != down {
		t.Errorf("enforced revision moved from %d to %d while disconnected", down, got)
	}
	if v := h.dp.verdict(t, "a/web/server", "10.0.0.20", "10.0.0.10", 80); v != dataplane.Allow {
		t.Errorf("while disconnected: client -> server:80 = %v, want allow (last state kept)", v)
	}
	if v := h.dp.verdict(t, "a/web/server", "10.0.0.30", "10.0.0.10", 80); v != dataplane.Deny {
		t.Errorf("while disconnected: other -> server:80 = %v, want deny (last state kept)", v)
	}
	if ok, why := h.a.Ready(); !ok {
		t.Errorf("not ready while disconnected with nothing newer seen: %s", why)
	}

	restarted := time.Now()
	f.cp.RestartAll()
	eventually(t, "the watch back", connected(t, h, true))
	reconnect := time.Since(restarted)
	froms := h.logs.uints(msgWatching, "from_revision")
	if len(froms) < 2 || froms[0] != 0 || froms[len(froms)-1] < down {
		t.Errorf("watch from revisions %v, want 0 first and at least %d (the enforced one) on resume", froms, down)
	}
	rev = f.applyPolicy(allowFrom("allow-client", "other", 80))
	committed := time.Now()
	eventually(t, "the change after the restart enforced", enforcedAt(h, rev))
	took := time.Since(committed)
	t.Logf("control plane restarted: watch back after %s, change enforced %s after its commit", reconnect.Round(time.Millisecond), took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("enforced %s after the commit, want within 1s", took)
	}
	if v := h.dp.verdict(t, "a/web/server", "10.0.0.30", "10.0.0.10", 80); v != dataplane.Allow {
		t.Errorf("after reconnect: other -> server:80 = %v, want allow", v)
	}
}

// Log messages of the agent's watch goroutine the tests follow.
const (
	msgWatching    = "watching the control plane"
	msgUnreachable = "control plane unreachable; retrying"
)

func TestAgentTakesASnapshotWhenItsRevisionWasCompacted(t *testing.T) {
	// An event log of 8 events: a replica that was down while more
	// happened can only answer with a snapshot.
	f := startFed(t, inproc.Options{EventLogSize: 8})
	ids := f.seed()
	follower := f.cp.Followers(f.cp.Leader())[0]
	h := startAgent(t, []string{follower.GRPCAddr}, nil)
	rev := f.applyPolicy(allowFrom("allow-client", "client", 80))
	eventually(t, "the policy enforced", enforcedAt(h, rev))

	f.cp.Stop(follower)
	eventually(t, "the watch lost", connected(t, h, false))
	f.deletePolicy(allowFrom("allow-client", "client", 80))
	f.applyPolicy(allowFrom("allow-other", "other", 443))
	f.deleteEndpoint(client)
	for i := range 10 { // more than the event log holds
		f.applyPolicy(allowFrom(fmt.Sprintf("filler-%d", i), "nobody", 1))
	}
	rev = f.deletePolicy(allowFrom("filler-0", "nobody", 1))
	// The agent gets back only once the restarted replica has caught up,
	// when its event log no longer holds the agent's revision (reconnected
	// earlier, mid-replay, it could still resume from events).
	heal := h.faults.Inject(inproc.Rule{Method: fedmeshv1.WatchService_Watch_FullMethodName, Code: codes.Unavailable})
	f.cp.Restart(follower)
	if err := f.cp.WaitRevision(rev, 20*time.Second, follower); err != nil {
		t.Fatal(err)
	}
	heal()
	eventually(t, "the compacted revision enforced", enforcedAt(h, rev))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if n, err := follower.Metric(ctx, "fedmesh_controlplane_watch_snapshots_total"); err != nil || n < 1 {
		t.Errorf("snapshots sent by the restarted replica = %v (%v), want >= 1", n, err)
	}
	last := h.dp.lastRev()
	var peers []uint32
	for _, r := range last.Rules["a/web/server"].Ingress.Identities {
		if r.Ports.First != 1 {
			peers = append(peers, r.Peer)
		}
	}
	if len(peers) != 1 || peers[0] != ids["other"] {
		t.Errorf("server peers after the snapshot = %v, want only other (%d) on 443", peers, ids["other"])
	}
	if id, ok := last.IPCache.Get(netip.MustParsePrefix("10.0.0.20/32")); ok {
		t.Errorf("the deleted client is still in the ipcache after the snapshot (identity %d)", id)
	}
	if n := last.IPCache.Len(); n != 3 {
		t.Errorf("ipcache after the snapshot has %d entries, want server, other and remote", n)
	}
}

func TestAgentFailsOverWhenTheLeaderIsKilled(t *testing.T) {
	f := startFedProcesses(t, cptest.Options{})
	f.seed()
	lead := f.procs.Leader()
	// The leader first: the agent watches it and reports through it.
	addrs := []string{lead.GRPCAddr}
	for _, r := range f.procs.Followers(lead) {
		addrs = append(addrs, r.GRPCAddr)
	}
	h := startAgent(t, addrs, nil)
	h.routes.set("10.0.0.10", "cali-server")
	f.waitRegistered()
	rev := f.applyPolicy(allowFrom("allow-client", "client", 80))
	eventually(t, "the policy enforced", enforcedAt(h, rev))
	if cur := h.client.Current(); cur != lead.GRPCAddr {
		t.Fatalf("agent on %s, want the leader %s", cur, lead.GRPCAddr)
	}

	f.procs.Kill(lead)
	next := f.procs.Leader()
	rev = f.applyPolicy(allowFrom("allow-client", "client", 81))
	eventually(t, "enforced through another replica", enforcedAt(h, rev))
	eventually(t, "the server attached", attached(t, h, 1))
	if h.client.Current() == lead.GRPCAddr {
		t.Errorf("still on %s after it was killed", lead.GRPCAddr)
	}
	if resp := f.waitEnforced(rev, 15*time.Second); !resp.GetEnforced() {
		t.Fatalf("WaitEnforced(%d) on the new leader %s = %v", rev, next.ID, resp)
	}
	if v := h.dp.verdict(t, "a/web/server", "10.0.0.20", "10.0.0.10", 81); v != dataplane.Allow {
		t.Errorf("client -> server:81 after failover = %v, want allow", v)
	}
}

// Bad input is refused by the control plane and never reaches the agent,
// and the revisions after it are enforced as usual. (The agent's own
// skipping of stream input it cannot place is covered by the pure tests of
// IPCacheIndex and the view.)
func TestAgentSkipsBadInputAndKeepsGoing(t *testing.T) {
	f := startFed(t, inproc.Options{})
	ids := f.seed()
	h := startAgent(t, f.cp.Addrs(), nil)
	h.routes.set("10.0.0.10", "cali-server")
	f.waitRegistered()
	base := f.applyPolicy(allowFrom("allow-client", "client", 80))
	eventually(t, "the seed enforced", enforcedAt(h, base))
	eventually(t, "the server attached", attached(t, h, 1))

	// Cluster b may not move to a pod CIDR that would leave its endpoint
	// outside every CIDR of its cluster.
	err := f.call("register cluster b", func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := fedmeshv1.NewClusterServiceClient(cc).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: clusterObj("b", "10.2.0.0/16")})
		return err
	})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("cluster b moved away from its endpoint: %v, want InvalidArgument", err)
	}
	// Two clusters claiming one address: the control plane refuses it.
	if _, err := f.upsertErr("b", endpoint("b", "dup", "m1", "10.0.0.20", "client")); status.Code(err) != codes.InvalidArgument {
		t.Errorf("endpoint of b with a's address: %v, want InvalidArgument", err)
	}

	rev := f.applyPolicy(allowFrom("allow-client", "client", 8080))
	eventually(t, "the revision after the bad input enforced", enforcedAt(h, rev))
	if got := testutil.ToFloat64(mustCounterVec(t, h.a, "fedmesh_agent_bad_input_total", agent.ReasonIPOutside)); got != 0 {
		t.Errorf("bad input %s = %v, want 0: nothing outside a cluster reached the agent", agent.ReasonIPOutside, got)
	}
	last := h.dp.lastRev()
	if id, _ := last.IPCache.Get(netip.MustParsePrefix("10.0.0.20/32")); id != ids["client"] {
		t.Errorf("the client's address maps to %d, want its own identity %d", id, ids["client"])
	}
	if v := h.dp.verdict(t, "a/web/server", "10.0.0.20", "10.0.0.10", 8080); v != dataplane.Allow {
		t.Errorf("client -> server:8080 = %v, want allow", v)
	}
}

func TestAgentBecomesUnreadyWhenTheDataplaneFailsAndTellsBGP(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.seed()
	h := startAgent(t, f.cp.Addrs(), func(c *agent.Config) { c.ReadyLag = 200 * time.Millisecond })
	f.waitRegistered()
	base := f.applyPolicy(allowFrom("allow-client", "client", 80))
	eventually(t, "the seed enforced", enforcedAt(h, base))
	eventually(t, "BGP told healthy", func() bool { v, ok := h.bgp.lastHealth(); return ok && v })

	h.dp.mu.Lock()
	h.dp.fail = errors.New("map update failed")
	h.dp.mu.Unlock()
	rev := f.applyPolicy(allowFrom("allow-client", "client", 81))
	eventually(t, "BGP told unhealthy", func() bool { v, ok := h.bgp.lastHealth(); return ok && !v })
	if ok, why := h.a.Ready(); ok || !strings.Contains(why, "behind") {
		t.Errorf("ready = %v (%q), want not ready, behind", ok, why)
	}
	eventually(t, "unready reported to the control plane, saying what the dataplane refuses", func() bool {
		n, err := f.node()
		return err == nil && n.GetStatus() != nil && !n.GetStatus().GetReady() &&
			strings.Contains(n.GetStatus().GetMessage(), fmt.Sprintf("the dataplane refuses revision %d", rev)) &&
			strings.Contains(n.GetStatus().GetMessage(), "map update failed")
	})
	if resp := f.waitEnforced(rev, 500*time.Millisecond); resp.GetEnforced() || len(resp.GetLagging()) != 1 {
		t.Errorf("WaitEnforced(%d) while the dataplane fails = %v, want this node lagging", rev, resp)
	}

	h.dp.mu.Lock()
	h.dp.fail = nil
	h.dp.mu.Unlock()
	eventually(t, "the revision enforced after the retry", enforcedAt(h, rev))
	eventually(t, "BGP told healthy again", func() bool { v, ok := h.bgp.lastHealth(); return ok && v })
	eventually(t, "the refusal cleared from the node's status", func() bool {
		n, err := f.node()
		return err == nil && n.GetStatus().GetReady() && !strings.Contains(n.GetStatus().GetMessage(), "refuses")
	})
	if resp := f.waitEnforced(rev, 15*time.Second); !resp.GetEnforced() {
		t.Errorf("WaitEnforced(%d) after recovery = %v", rev, resp)
	}
}
