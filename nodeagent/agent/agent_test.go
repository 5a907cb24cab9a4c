package agent_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/agent/adapters"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ---- fixtures ----

const (
	self    = "n1"
	myClust = "a"
)

func put(obj any) *fedmeshv1.Event {
	ev := &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT}
	switch o := obj.(type) {
	case *fedmeshv1.Cluster:
		ev.Object = &fedmeshv1.Event_Cluster{Cluster: o}
	case *fedmeshv1.Node:
		ev.Object = &fedmeshv1.Event_Node{Node: o}
	case *fedmeshv1.Endpoint:
		ev.Object = &fedmeshv1.Event_Endpoint{Endpoint: o}
	case *fedmeshv1.Policy:
		ev.Object = &fedmeshv1.Event_Policy{Policy: o}
	}
	return ev
}

func del(obj any) *fedmeshv1.Event {
	ev := put(obj)
	ev.Type = fedmeshv1.EventType_EVENT_TYPE_DELETE
	return ev
}

func clusterObj(name, cidr string) *fedmeshv1.Cluster {
	return &fedmeshv1.Cluster{Name: name, PodCidrs: []string{cidr}, Labels: map[string]string{"site": name}}
}

func endpoint(cluster, name, node, ip string, id uint32, app string) *fedmeshv1.Endpoint {
	return &fedmeshv1.Endpoint{Cluster: cluster, Namespace: "web", Name: name, Node: node, Ips: []string{ip}, Identity: id,
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
	server = endpoint(myClust, "server", self, "10.0.0.10", 1001, "server")
	client = endpoint(myClust, "client", "n2", "10.0.0.20", 1002, "client")
	other  = endpoint(myClust, "other", "n2", "10.0.0.30", 1003, "other")
)

// seed commits the base federation: two clusters, the server on this node
// and two pods on another.
func seed(h *hub) uint64 {
	return h.commit(put(clusterObj("a", "10.0.0.0/16")), put(clusterObj("b", "10.1.0.0/16")),
		put(server), put(client), put(other))
}

// ---- test doubles of the ports the agent drives around the real dataplane ----

// recorder wraps the in-memory dataplane and records what the agent asks.
type recorder struct {
	adapters.Dataplane
	mem *dataplane.Memory

	mu      sync.Mutex
	applied []uint64
	last    *agent.Revision
	fail    error
	gate    chan struct{} // when set, Apply waits for it
}

func newRecorder() *recorder {
	m := dataplane.NewMemory()
	return &recorder{Dataplane: adapters.Dataplane{DP: m}, mem: m}
}

func (r *recorder) Apply(ctx context.Context, rev *agent.Revision) error {
	r.mu.Lock()
	gate, fail := r.gate, r.fail
	r.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if fail != nil {
		return fail
	}
	if err := r.Dataplane.Apply(ctx, rev); err != nil {
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

func (r *recorder) lastRev() *agent.Revision {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// verdict sends a TCP SYN from src into the endpoint on the in-memory
// dataplane.
func (r *recorder) verdict(t *testing.T, id string, src, dst string, port uint16) dataplane.Verdict {
	t.Helper()
	v, _, _, err := r.mem.Process(id, policy.Ingress, tcpSYN(netip.MustParseAddr(src), netip.MustParseAddr(dst), 40000, port))
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
}

func startAgent(t *testing.T, addrs []string, tweak func(*agent.Config)) *harness {
	t.Helper()
	cl, err := agent.NewClient(addrs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	cl.CallTimeout = time.Second
	h := &harness{dp: newRecorder(), routes: &routes{m: map[netip.Addr]string{}}, bgp: &bgpRec{}, client: cl}
	cfg := agent.Config{
		Cluster: myClust, Node: self, UnderlayIP: netip.MustParseAddr("198.18.0.1"), PodCIDRs: []string{"10.0.0.0/24"},
		DataplaneName: "memory", Tick: 20 * time.Millisecond, StatusInterval: 100 * time.Millisecond,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, ReadyLag: 10 * time.Second,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	a, err := agent.New(cfg, agent.Deps{
		ControlPlane: cl, Dataplane: h.dp, Interfaces: h.routes, BGP: h.bgp,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
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

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
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

// ---- scenarios ----

func TestAgentEnforcesCompiledPolicyAndReportsTheRevision(t *testing.T) {
	hb := newHub()
	seed(hb)
	r := startReplica(t, hb, "")
	h := startAgent(t, []string{r.addr}, nil)
	h.routes.set("10.0.0.10", "cali-server")

	rev := hb.commit(put(allowFrom("allow-client", "client", 80)))
	eventually(t, "the policy's revision enforced", enforcedAt(h, rev))
	last := h.dp.lastRev()
	rules, ok := last.Rules["a/web/server"]
	if !ok || !rules.Ingress.Enforced || rules.Identity != 1001 {
		t.Fatalf("server rules = %+v (ok=%v), want enforced ingress for identity 1001", rules, ok)
	}
	if len(last.Rules) != 1 {
		t.Errorf("rules for %d endpoints, want only the local one: %v", len(last.Rules), last.Rules)
	}
	if len(last.IPCache) != 3 {
		t.Errorf("ipcache = %v, want the three endpoints of the federation", last.IPCache)
	}
	eventually(t, "the server attached", func() bool {
		return testutil.ToFloat64(mustGauge(t, h.a, "fedmesh_agent_attached_endpoints")) == 1
	})
	if v := h.dp.verdict(t, "a/web/server", "10.0.0.20", "10.0.0.10", 80); v != dataplane.Allow {
		t.Errorf("client -> server:80 = %v, want allow", v)
	}
	if v := h.dp.verdict(t, "a/web/server", "10.0.0.30", "10.0.0.10", 80); v != dataplane.Deny {
		t.Errorf("other -> server:80 = %v, want deny", v)
	}
	eventually(t, "the enforced revision reported", func() bool {
		st := hb.lastStatus()
		return st != nil && st.GetEnforcedRevision() >= rev && st.GetReady() && st.GetDataplane() == "memory" && st.GetLocalEndpoints() == 1
	})
	if ok, why := h.a.Ready(); !ok {
		t.Errorf("not ready: %s", why)
	}
	if healthy, ok := h.bgp.lastHealth(); !ok || !healthy {
		t.Errorf("BGP health = %v (set=%v), want healthy", healthy, ok)
	}

	// The pod's route goes away: detached; the endpoint is deleted: gone.
	h.routes.set("10.0.0.10", "")
	eventually(t, "the server detached", func() bool {
		return testutil.ToFloat64(mustGauge(t, h.a, "fedmesh_agent_attached_endpoints")) == 0
	})
	rev = hb.commit(del(server))
	eventually(t, "the delete enforced", enforcedAt(h, rev))
	if n := len(h.dp.lastRev().Rules); n != 0 {
		t.Errorf("rules after the local endpoint left: %d, want 0", n)
	}
}

func TestAgentCoalescesABurstIntoTheNewestRevision(t *testing.T) {
	hb := newHub()
	base := seed(hb)
	r := startReplica(t, hb, "")
	h := startAgent(t, []string{r.addr}, nil)
	eventually(t, "the seed enforced", enforcedAt(h, base))

	// Hold the dataplane while 200 revisions arrive, then let it go.
	gate := make(chan struct{})
	h.dp.mu.Lock()
	h.dp.gate = gate
	h.dp.mu.Unlock()
	var last uint64
	for i := range 200 {
		last = hb.commit(put(allowFrom("p", "client", uint32(1000+i))))
	}
	time.Sleep(50 * time.Millisecond)
	h.dp.mu.Lock()
	h.dp.gate = nil
	h.dp.mu.Unlock()
	close(gate)
	eventually(t, "the newest revision enforced", enforcedAt(h, last))
	applied := h.dp.revisions()
	if got := applied[len(applied)-1]; got != last {
		t.Errorf("last applied revision = %d, want %d", got, last)
	}
	if n := len(applied); n > 10 {
		t.Errorf("%d dataplane applies for 200 revisions, want a handful (coalesced)", n)
	}
	port := h.dp.lastRev().Rules["a/web/server"].Ingress.Identities
	if len(port) != 1 || port[0].Ports.First != 1199 {
		t.Errorf("enforced rules %+v, want the newest policy (port 1199)", port)
	}
	if c := testutil.ToFloat64(mustCounter(t, h.a, "fedmesh_agent_coalesced_messages_total")); c == 0 {
		t.Errorf("coalesced messages = 0, want > 0")
	}
}

func TestAgentKeepsEnforcingWhileTheControlPlaneIsDownAndResumes(t *testing.T) {
	hb := newHub()
	seed(hb)
	r := startReplica(t, hb, "")
	h := startAgent(t, []string{r.addr}, nil)
	h.routes.set("10.0.0.10", "cali-server")
	rev := hb.commit(put(allowFrom("allow-client", "client", 80)))
	eventually(t, "the policy enforced", enforcedAt(h, rev))
	eventually(t, "the server attached", func() bool {
		return testutil.ToFloat64(mustGauge(t, h.a, "fedmesh_agent_attached_endpoints")) == 1
	})

	r.stop()
	before := len(h.dp.revisions())
	time.Sleep(300 * time.Millisecond) // several failed reconnects
	if n := len(h.dp.revisions()); n != before {
		t.Errorf("dataplane applied %d revisions while disconnected, want none", n-before)
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

	// A change made while the agent was away is enforced after the replica
	// returns, resuming from the revision (no snapshot).
	rev = hb.commit(put(allowFrom("allow-client", "other", 80)))
	r2 := startReplica(t, hb, r.addr)
	_ = r2
	start := time.Now()
	eventually(t, "the change made while disconnected enforced", enforcedAt(h, rev))
	if d := time.Since(start); d > time.Second {
		t.Errorf("enforced %s after the replica returned, want within 1s", d)
	}
	if v := h.dp.verdict(t, "a/web/server", "10.0.0.30", "10.0.0.10", 80); v != dataplane.Allow {
		t.Errorf("after reconnect: other -> server:80 = %v, want allow", v)
	}
	froms := hb.watchFroms()
	if froms[0] != 0 || froms[len(froms)-1] < rev-1 {
		t.Errorf("watch from revisions %v, want 0 first and the last applied revision on resume", froms)
	}
}

func TestAgentTakesASnapshotWhenItsRevisionWasCompacted(t *testing.T) {
	hb := newHub()
	seed(hb)
	r := startReplica(t, hb, "")
	h := startAgent(t, []string{r.addr}, nil)
	rev := hb.commit(put(allowFrom("allow-client", "client", 80)))
	eventually(t, "the policy enforced", enforcedAt(h, rev))

	r.stop()
	hb.commit(del(allowFrom("allow-client", "client", 80)))
	rev = hb.commit(put(allowFrom("allow-other", "other", 443)), del(client))
	hb.compact()
	startReplica(t, hb, r.addr)
	eventually(t, "the compacted revision enforced", enforcedAt(h, rev))
	last := h.dp.lastRev()
	ids := last.Rules["a/web/server"].Ingress.Identities
	if len(ids) != 1 || ids[0].Peer != 1003 || ids[0].Ports.First != 443 {
		t.Errorf("rules after the snapshot = %+v, want only other:443", ids)
	}
	if len(last.IPCache) != 2 {
		t.Errorf("ipcache after the snapshot = %v, want the deleted client gone", last.IPCache)
	}
}

func TestAgentFailsOverToAnotherReplica(t *testing.T) {
	hb := newHub()
	seed(hb)
	r1, r2 := startReplica(t, hb, ""), startReplica(t, hb, "")
	h := startAgent(t, []string{r1.addr, r2.addr}, nil)
	rev := hb.commit(put(allowFrom("allow-client", "client", 80)))
	eventually(t, "the policy enforced", enforcedAt(h, rev))
	first := h.client.Current()
	if first == r1.addr {
		r1.stop()
	} else {
		r2.stop()
	}
	rev = hb.commit(put(allowFrom("allow-client", "client", 81)))
	eventually(t, "enforced through the other replica", enforcedAt(h, rev))
	if h.client.Current() == first {
		t.Errorf("still on %s after it stopped", first)
	}
	eventually(t, "status reported through the other replica", func() bool {
		st := hb.lastStatus()
		return st != nil && st.GetEnforcedRevision() >= rev
	})
}

func TestAgentSkipsBadInputAndKeepsGoing(t *testing.T) {
	hb := newHub()
	base := seed(hb)
	r := startReplica(t, hb, "")
	h := startAgent(t, []string{r.addr}, nil)
	eventually(t, "the seed enforced", enforcedAt(h, base))
	badPolicy := allowFrom("bad", "client", 80)
	badPolicy.Spec.Ingress[0].Ports[0].Protocol = fedmeshv1.Protocol_PROTOCOL_ICMP // not expressible in Kubernetes
	hb.commit(
		&fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT},   // a kind this agent does not know
		put(endpoint("a", "outside", "n2", "10.9.9.9", 1004, "x")),   // outside a's 10.0.0.0/16
		put(endpoint("b", "dup", "m1", "10.0.0.20", 2001, "client")), // claims a's client address
		put(badPolicy),
	)
	rev := hb.commit(put(allowFrom("allow-client", "client", 80)))
	eventually(t, "the revision after the bad input enforced", enforcedAt(h, rev))
	for reason, want := range map[string]float64{
		agent.ReasonUnknownKind: 1, agent.ReasonIPOutside: 2, agent.ReasonPolicyCompile: 1,
	} {
		if got := testutil.ToFloat64(mustCounterVec(t, h.a, "fedmesh_agent_bad_input_total", reason)); got != want {
			t.Errorf("bad input %s = %v, want %v", reason, got, want)
		}
	}
	last := h.dp.lastRev()
	for _, e := range last.IPCache {
		if e.Prefix.Addr().String() == "10.9.9.9" {
			t.Errorf("address outside every cluster CIDR is in the ipcache: %v", e)
		}
		if e.Prefix.Addr().String() == "10.0.0.20" && e.Identity != 1002 {
			t.Errorf("the client's address maps to %d, want its own identity 1002", e.Identity)
		}
	}
	if ids := last.Rules["a/web/server"].Ingress.Identities; len(ids) != 1 || ids[0].Peer != 1002 {
		t.Errorf("server rules = %+v, want the good policy only", ids)
	}
}

func TestAgentBecomesUnreadyWhenTheDataplaneFailsAndTellsBGP(t *testing.T) {
	hb := newHub()
	base := seed(hb)
	r := startReplica(t, hb, "")
	h := startAgent(t, []string{r.addr}, func(c *agent.Config) { c.ReadyLag = 200 * time.Millisecond })
	eventually(t, "the seed enforced", enforcedAt(h, base))
	eventually(t, "BGP told healthy", func() bool { v, ok := h.bgp.lastHealth(); return ok && v })

	h.dp.mu.Lock()
	h.dp.fail = errors.New("map update failed")
	h.dp.mu.Unlock()
	rev := hb.commit(put(allowFrom("allow-client", "client", 80)))
	eventually(t, "BGP told unhealthy", func() bool { v, ok := h.bgp.lastHealth(); return ok && !v })
	if ok, why := h.a.Ready(); ok || !strings.Contains(why, "behind") {
		t.Errorf("ready = %v (%q), want not ready, behind", ok, why)
	}
	eventually(t, "unready reported", func() bool { st := hb.lastStatus(); return st != nil && !st.GetReady() })

	h.dp.mu.Lock()
	h.dp.fail = nil
	h.dp.mu.Unlock()
	eventually(t, "the revision enforced after the retry", enforcedAt(h, rev))
	eventually(t, "BGP told healthy again", func() bool { v, ok := h.bgp.lastHealth(); return ok && v })
}
