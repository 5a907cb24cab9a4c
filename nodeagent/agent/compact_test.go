package agent

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// TestCompactViewEnforcesWhatTheFullEndpointsCompileTo replays a random
// mix of endpoint and policy changes (relabels, moves between nodes, named
// ports, pods replaced at an address, deletes, NetworkPolicies and both
// tiers of ClusterNetworkPolicies, resync snapshots) through
// the agent, which keeps only the compact form of each endpoint and hands
// the proto to its compiler once, and after every revision compares what
// the dataplane was given with the revision built the way the agent did
// before: a compiler fed its own untouched copy of every object (Reach's
// path), and an ipcache computed from the full endpoints (the newest
// claim of an address wins). Any label, node, address or identity the
// compact form lost, or a name interned wrongly, shows up as a rule or an
// ipcache entry that differs.
func TestCompactViewEnforcesWhatTheFullEndpointsCompileTo(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { replayCompactAndFull(t, seed) })
	}
}

func replayCompactAndFull(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	rec := &lastRevision{Memory: dataplane.NewMemory()}
	a, err := New(Config{Cluster: "c0", Node: "n0", DataplaneName: "memory"},
		Deps{ControlPlane: noControlPlane{}, Dataplane: rec, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ref := policy.NewEngine(policy.WithNode("c0", "n0"))
	full := map[policy.EndpointKey]*fedmeshv1.Endpoint{} // the reference's endpoints
	pols := map[policy.PolicyKey]*fedmeshv1.Policy{}
	cnps := map[string]*fedmeshv1.ClusterNetworkPolicy{}

	clusters := []string{"c0", "c1", "c2"}
	nss := []string{"x", "y", "z"}
	apps := []string{"web", "db", "api"}
	tiers := []string{"front", "back"}
	// An identity per (cluster, namespace, labels), as the control plane
	// assigns them.
	ids := map[string]uint32{}
	identity := func(c, ns string, l map[string]string) uint32 {
		k := c + "/" + ns + "/" + l["app"] + "/" + l["tier"]
		if ids[k] == 0 {
			ids[k] = uint32(1000 + len(ids))
		}
		return ids[k]
	}
	// Each cluster has 12 address slots; pods take a slot, and a new pod
	// may take the slot of one not deleted yet (a pod replaced).
	endpoint := func(rev uint64) *fedmeshv1.Endpoint {
		ci := rng.IntN(len(clusters))
		c, ns := clusters[ci], nss[rng.IntN(len(nss))]
		l := map[string]string{"app": apps[rng.IntN(len(apps))], "tier": tiers[rng.IntN(len(tiers))]}
		e := &fedmeshv1.Endpoint{Cluster: c, Namespace: ns, Name: fmt.Sprintf("p%d", rng.IntN(8)),
			Node: fmt.Sprintf("n%d", rng.IntN(3)), Labels: l, NamespaceLabels: map[string]string{"team": ns},
			Ips:      []string{fmt.Sprintf("10.%d.0.%d", ci, 1+rng.IntN(12))},
			Identity: identity(c, ns, l), Meta: &fedmeshv1.ObjectMeta{Revision: rev}}
		if rng.IntN(3) == 0 {
			e.Ips = append(e.Ips, fmt.Sprintf("fd00:%d::%d", ci, 1+rng.IntN(12)))
		}
		if rng.IntN(2) == 0 {
			e.NamedPorts = []*fedmeshv1.NamedPort{{Name: "http", Port: uint32([]int{80, 8080}[rng.IntN(2)])}}
		}
		return e
	}
	sel := func(k, v string) *fedmeshv1.LabelSelector {
		return &fedmeshv1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	randomPolicy := func(rev uint64) *fedmeshv1.Policy {
		peer := &fedmeshv1.NetworkPolicyPeer{PodSelector: sel("app", apps[rng.IntN(len(apps))])}
		if rng.IntN(2) == 0 {
			peer.NamespaceSelector = sel("team", nss[rng.IntN(len(nss))])
		}
		port := &fedmeshv1.NetworkPolicyPort{Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 80}}
		if rng.IntN(2) == 0 {
			// Resolved against the peers' named ports: remote endpoints'
			// ports matter to a local endpoint's egress.
			port.Port = &fedmeshv1.NetworkPolicyPort_Name{Name: "http"}
		}
		p := &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "c0", Namespace: nss[rng.IntN(len(nss))],
			Name: fmt.Sprintf("pol%d", rng.IntN(4)), Meta: &fedmeshv1.ObjectMeta{Revision: rev},
			Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: sel("tier", tiers[rng.IntN(len(tiers))]),
				Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{From: []*fedmeshv1.NetworkPolicyPeer{peer}}},
				Egress:  []*fedmeshv1.NetworkPolicyEgressRule{{To: []*fedmeshv1.NetworkPolicyPeer{peer}, Ports: []*fedmeshv1.NetworkPolicyPort{port}}}}}
		if rng.IntN(3) == 0 {
			p.Kind, p.Cluster = fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, ""
		}
		return p
	}

	// randomCNP is an Admin or Baseline tier policy selecting pods by
	// labels: tier subjects and peers are matched against the endpoints'
	// own label sets, which the compiler shares per group.
	randomCNP := func(rev uint64) *fedmeshv1.ClusterNetworkPolicy {
		actions := []cnpv1.ClusterNetworkPolicyRuleAction{cnpv1.ClusterNetworkPolicyRuleActionAccept,
			cnpv1.ClusterNetworkPolicyRuleActionDeny, cnpv1.ClusterNetworkPolicyRuleActionPass}
		tier := cnpv1.AdminTier
		if rng.IntN(3) == 0 {
			tier = cnpv1.BaselineTier
		}
		pods := func(k string, vs []string) cnpv1.NamespacedPod {
			return cnpv1.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{k: vs[rng.IntN(len(vs))]}}}
		}
		subject, from := pods("tier", tiers), pods("app", apps)
		cp := &policy.ClusterPolicy{Name: fmt.Sprintf("cnp%d", rng.IntN(3)), Spec: cnpv1.ClusterNetworkPolicySpec{
			Tier: tier, Priority: int32(rng.IntN(3)),
			Subject: cnpv1.ClusterNetworkPolicySubject{Pods: &subject},
			Ingress: []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "r0", Action: actions[rng.IntN(3)],
				From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Pods: &from}}}},
		}}
		p, err := policy.ClusterPolicyToProto(cp)
		if err != nil {
			t.Fatal(err)
		}
		p.Meta = &fedmeshv1.ObjectMeta{Revision: rev}
		return p
	}

	// deliver hands the agent its messages and the reference its own
	// copy of every event (as events: Reach's rebuild takes a snapshot
	// so), copied before the agent, which interns names in the protos it
	// is handed, sees them.
	deliver := func(evs []*fedmeshv1.Event, items ...watchItem) {
		copies := make([]*fedmeshv1.Event, len(evs))
		for i, ev := range evs {
			copies[i] = proto.CloneOf(ev)
		}
		a.handleBatch(context.Background(), items)
		for _, ev := range copies {
			if err := policy.ApplyEvent(ref, ev); err != nil {
				t.Fatal(err)
			}
			if p := ev.GetClusterNetworkPolicy(); p != nil {
				cnps[p.GetName()] = p
			}
			if p := ev.GetPolicy(); p != nil {
				pols[policy.PolicyKey{Cluster: p.GetCluster(), Namespace: p.GetNamespace(), Name: p.GetName()}] = p
			}
			if e := ev.GetEndpoint(); e != nil {
				k := policy.EndpointKey{Cluster: e.GetCluster(), Namespace: e.GetNamespace(), Name: e.GetName()}
				if ev.GetType() == fedmeshv1.EventType_EVENT_TYPE_DELETE {
					delete(full, k)
				} else {
					full[k] = e
				}
			}
		}
	}
	check := func(rev uint64) {
		t.Helper()
		if got, _ := a.Enforced(); got != rev {
			t.Fatalf("agent enforces revision %d, want %d", got, rev)
		}
		ref.Recompute()
		dp := rec.last
		want := map[string]policy.EndpointRules{}
		for k, e := range full {
			if e.GetCluster() == "c0" && e.GetNode() == "n0" {
				c, ok := ref.Rules(k)
				if !ok {
					t.Fatalf("revision %d: the reference compiled no rules for local endpoint %s", rev, k)
				}
				want[k.String()] = c.Rules
			}
		}
		if !reflect.DeepEqual(dp.Rules, want) {
			t.Fatalf("revision %d: the agent enforces\n%v\nthe full endpoints compile to\n%v", rev, dp.Rules, want)
		}
		if got, want := entries(dp.IPCache), fullIPCache(full); !slices.Equal(got, want) {
			t.Fatalf("revision %d: ipcache\n%q\nfrom the full endpoints\n%q", rev, got, want)
		}
	}

	rev := uint64(1)
	var evs []*fedmeshv1.Event
	for i, c := range clusters {
		evs = append(evs, putEv(rev, cluster(c, fmt.Sprintf("10.%d.0.0/16", i), fmt.Sprintf("fd00:%d::/64", i))))
	}
	for range 30 {
		evs = append(evs, putEv(rev, endpoint(rev)))
	}
	for range 3 {
		evs = append(evs, putEv(rev, randomPolicy(rev)))
	}
	deliver(evs, watchItem{Resp: snap(rev, false, evs...)})
	check(rev)
	locals := 0
	for range 200 {
		rev++
		evs = nil
		for range 1 + rng.IntN(4) {
			switch op := rng.IntN(10); {
			case op < 6:
				evs = append(evs, putEv(rev, endpoint(rev)))
			case op < 8:
				e := endpoint(rev)
				evs = append(evs, delEv(rev, e)) // unknown keys too: a no-op
			case op < 9:
				evs = append(evs, putEv(rev, randomPolicy(rev)))
			default:
				evs = append(evs, putEv(rev, randomCNP(rev)))
			}
		}
		deliver(evs, watchItem{Resp: events(rev, evs...)})
		if rev%50 == 0 {
			// A resync: a new stream's snapshot of what the agent holds,
			// which must change nothing.
			var all []*fedmeshv1.Event
			for i, c := range clusters {
				all = append(all, putEv(1, cluster(c, fmt.Sprintf("10.%d.0.0/16", i), fmt.Sprintf("fd00:%d::/64", i))))
			}
			for _, e := range full {
				all = append(all, putEv(e.GetMeta().GetRevision(), proto.CloneOf(e)))
			}
			for _, p := range pols {
				all = append(all, putEv(p.GetMeta().GetRevision(), proto.CloneOf(p)))
			}
			for _, p := range cnps {
				all = append(all, putEv(p.GetMeta().GetRevision(), proto.CloneOf(p)))
			}
			a.handleBatch(context.Background(), []watchItem{{NewStream: true}, {Resp: snap(rev, false, all...)}})
		}
		check(rev)
		locals += len(rec.last.Rules)
	}
	if locals == 0 {
		t.Fatal("no revision had a local endpoint: the compiled rules went unchecked")
	}
}

// fullIPCache is the ipcache of the full endpoints, computed directly:
// every address of an endpoint with an identity, inside its cluster's
// CIDR (fixed in the test: 10.<cluster>.0.0/16, fd00:<cluster>::/64), the
// newest claim winning (ties: the greater key).
func fullIPCache(eps map[policy.EndpointKey]*fedmeshv1.Endpoint) []string {
	type claim struct {
		rev uint64
		key policy.EndpointKey
		id  uint32
	}
	win := map[netip.Addr]claim{}
	for k, e := range eps {
		for _, s := range e.GetIps() {
			a := netip.MustParseAddr(s)
			c := claim{e.GetMeta().GetRevision(), k, e.GetIdentity()}
			if w, ok := win[a]; !ok || c.rev > w.rev || (c.rev == w.rev && compareEndpointKeys(c.key, w.key) > 0) {
				win[a] = c
			}
		}
	}
	var out []string
	for a, c := range win {
		out = append(out, fmt.Sprintf("%s=%d", netip.PrefixFrom(a, a.BitLen()), c.id))
	}
	slices.Sort(out)
	return out
}

// lastRevision is the in-memory dataplane keeping the last revision it
// applied.
type lastRevision struct {
	*dataplane.Memory
	last *dataplane.Revision
}

func (l *lastRevision) Apply(ctx context.Context, rev *dataplane.Revision) error {
	if err := l.Memory.Apply(ctx, rev); err != nil {
		return err
	}
	l.last = rev
	return nil
}

// TestViewForgetsTheNamesOfEndpointsThatAreGone: the view interns the
// cluster, namespace and node names of its endpoints; once most of the
// endpoints (and with them their node names) are gone, or names churn
// (pods moving to new nodes), a sweep drops the names no endpoint uses, so
// the interner stays within twice the names in use (plus a floor),
// whatever names it ever saw.
func TestViewForgetsTheNamesOfEndpointsThatAreGone(t *testing.T) {
	v := NewView()
	var evs []*fedmeshv1.Event
	for i := range 5000 {
		evs = append(evs, putEv(2, ep("c0", "ns", fmt.Sprintf("p%d", i), fmt.Sprintf("node-%d", i), 100, 2, "10.0.0.1")))
	}
	if _, _, err := v.Apply(snap(2, false, evs...)); err != nil {
		t.Fatal(err)
	}
	if n := len(v.names.m); n < 5000 {
		t.Fatalf("interner holds %d names after 5,000 endpoints on 5,000 nodes, want them all", n)
	}
	for i := range 4990 {
		if _, _, err := v.Apply(events(uint64(3+i), delEv(uint64(3+i), ep("c0", "ns", fmt.Sprintf("p%d", i), "", 0, 0)))); err != nil {
			t.Fatal(err)
		}
	}
	// 10 endpoints left: their 10 nodes, one cluster, one namespace.
	if n, limit := len(v.names.m), 2*12+sweepFloor; n > limit {
		t.Fatalf("interner holds %d names with 12 in use, want at most %d", n, limit)
	}
	// The 10 pods move to new nodes, 10,000 times: names come and go while
	// the endpoints stay as many.
	rev := uint64(5000)
	for i := range 10_000 {
		rev++
		e := ep("c0", "ns", fmt.Sprintf("p%d", 4990+i%10), fmt.Sprintf("moved-%d", i), 100, rev, "10.0.0.1")
		if _, _, err := v.Apply(events(rev, putEv(rev, e))); err != nil {
			t.Fatal(err)
		}
	}
	if n, limit := len(v.names.m), 2*12+sweepFloor; n > limit {
		t.Fatalf("interner holds %d names after 10,000 node names came and went, 12 in use, want at most %d", n, limit)
	}
	for k, e := range v.Endpoints {
		if v.names.m[k.Cluster] != k.Cluster || v.names.m[k.Namespace] != k.Namespace || v.names.m[e.Node] != e.Node {
			t.Fatalf("endpoint %s: its names %q, %q, %q are no longer interned", k, k.Cluster, k.Namespace, e.Node)
		}
	}
}
