package agent

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// TestAgentAndReachFollowOneEventStreamToTheSameVerdicts replays one random
// event stream — endpoints relabelled and deleted, policies put, deleted,
// and updated to versions the compiler cannot compile — into the agent's
// path (watch message → View → feed → its engine) and into Reach's
// (each event → policy.ApplyEvent, the whole of reachEngine.apply), and
// after every revision compares the two engines' verdicts and deciding
// rules on random flows. Both follow policy.Apply's failure rule, so a
// rejected update leaves the previous version in force in both.
func TestAgentAndReachFollowOneEventStreamToTheSameVerdicts(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			replayBothPaths(t, seed)
		})
	}
}

func replayBothPaths(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 42))
	agentEng := policy.NewEngine(policy.WithNode("c0", "n0"))
	a, err := New(Config{Cluster: "c0", Node: "n0", DataplaneName: "memory"},
		Deps{ControlPlane: noControlPlane{}, Dataplane: dataplane.NewMemory(), Compiler: agentEng,
			Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	// As reachEngine.rebuild makes it: nothing local, explain only.
	reachEng := policy.NewEngine(policy.WithLocal(func(*fedmeshv1.Endpoint) bool { return false }))

	apps := []string{"web", "db", "api"}
	nss := []string{"x", "y"}
	type podRef struct{ cluster, ns, name string }
	var pods []podRef
	endpoint := func(p podRef, app string, rev uint64) *fedmeshv1.Endpoint {
		ci := int(p.cluster[1] - '0')
		idx := 0
		for i, q := range pods {
			if q == p {
				idx = i
			}
		}
		node := "n1"
		if idx%3 == 0 {
			node = "n0"
		}
		return &fedmeshv1.Endpoint{Cluster: p.cluster, Namespace: p.ns, Name: p.name, Node: node,
			Identity: uint32(1000 + 10*ci + len(apps)*slicesIndex(nss, p.ns) + slicesIndex(apps, app)),
			Labels:   map[string]string{"app": app}, NamespaceLabels: map[string]string{"ns": p.ns},
			Ips:  []string{fmt.Sprintf("10.%d.%d.%d", ci, slicesIndex(nss, p.ns), idx+1)},
			Meta: &fedmeshv1.ObjectMeta{Revision: rev}}
	}
	for _, c := range []string{"c0", "c1"} {
		for _, ns := range nss {
			for i := range 3 {
				pods = append(pods, podRef{c, ns, fmt.Sprintf("p%d", i)})
			}
		}
	}
	randomPolicy := func(name string, broken bool) *fedmeshv1.Policy {
		rule := func() *fedmeshv1.NetworkPolicyPeer {
			return &fedmeshv1.NetworkPolicyPeer{PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": apps[rng.IntN(len(apps))]}}}
		}
		port := &fedmeshv1.NetworkPolicyPort{Protocol: fedmeshv1.Protocol_PROTOCOL_TCP,
			Port: &fedmeshv1.NetworkPolicyPort_Number{Number: uint32(80 + rng.IntN(2))}}
		if broken {
			// The compiler refuses ICMP in a port (policy.ErrUnsupported).
			port.Protocol = fedmeshv1.Protocol_PROTOCOL_ICMP
		}
		return &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "c0", Namespace: "x", Name: name,
			Spec: &fedmeshv1.NetworkPolicySpec{
				PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": apps[rng.IntN(len(apps))]}},
				Ingress:     []*fedmeshv1.NetworkPolicyIngressRule{{From: []*fedmeshv1.NetworkPolicyPeer{rule()}, Ports: []*fedmeshv1.NetworkPolicyPort{port}}},
			}}
	}

	// ClusterNetworkPolicies of both tiers and all three actions, synced
	// (c0) and federated; broken ones carry a spec the converter cannot
	// decode (a version skew), which both paths must reject alike.
	randomCNP := func(name string, broken bool) *fedmeshv1.ClusterNetworkPolicy {
		actions := []cnpv1.ClusterNetworkPolicyRuleAction{cnpv1.ClusterNetworkPolicyRuleActionAccept,
			cnpv1.ClusterNetworkPolicyRuleActionDeny, cnpv1.ClusterNetworkPolicyRuleActionPass}
		tier := cnpv1.AdminTier
		if rng.IntN(3) == 0 {
			tier = cnpv1.BaselineTier
		}
		sel := func() metav1.LabelSelector {
			return metav1.LabelSelector{MatchLabels: map[string]string{"app": apps[rng.IntN(len(apps))]}}
		}
		cp := &policy.ClusterPolicy{Name: name, Spec: cnpv1.ClusterNetworkPolicySpec{
			Tier: tier, Priority: int32(rng.IntN(3)),
			Subject: cnpv1.ClusterNetworkPolicySubject{Pods: &cnpv1.NamespacedPod{PodSelector: sel()}},
			Ingress: []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "r0", Action: actions[rng.IntN(3)],
				From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1.NamespacedPod{PodSelector: sel()}}}}},
		}}
		if rng.IntN(2) == 0 {
			cp.Cluster = "c0"
		}
		p, err := policy.ClusterPolicyToProto(cp)
		if err != nil {
			t.Fatal(err)
		}
		if broken {
			p.SpecJson = []byte(`{"tier":`)
		}
		return p
	}

	rev := uint64(1)
	snap := &fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT, Revision: rev}
	snap.Events = append(snap.Events, putEv(rev, cluster("c0", "10.0.0.0/16")), putEv(rev, cluster("c1", "10.1.0.0/16")))
	alive := map[podRef]bool{}
	for _, p := range pods {
		snap.Events = append(snap.Events, putEv(rev, endpoint(p, apps[rng.IntN(len(apps))], rev)))
		alive[p] = true
	}
	deliver := func(msg *fedmeshv1.WatchResponse) {
		a.handleBatch(context.Background(), []watchItem{{Resp: msg}})
		for _, ev := range msg.GetEvents() {
			_ = policy.ApplyEvent(reachEng, ev) // reachEngine.apply, less its log line
		}
	}
	deliver(snap)

	rejected, rejectedCNP := 0, 0
	for range 150 {
		rev++
		var evs []*fedmeshv1.Event
		for range 1 + rng.IntN(3) {
			name := fmt.Sprintf("pol%d", rng.IntN(3))
			switch op := rng.IntN(10); {
			case op < 3:
				p := pods[rng.IntN(len(pods))]
				evs = append(evs, putEv(rev, endpoint(p, apps[rng.IntN(len(apps))], rev)))
				alive[p] = true
			case op < 4:
				p := pods[rng.IntN(len(pods))]
				if alive[p] {
					evs = append(evs, delEv(rev, endpoint(p, "web", rev)))
					alive[p] = false
				}
			case op < 6:
				evs = append(evs, putEv(rev, randomPolicy(name, false)))
			case op < 7:
				evs = append(evs, putEv(rev, randomPolicy(name, true)))
				rejected++
			case op < 9:
				evs = append(evs, putEv(rev, randomCNP(name, false)))
			case op < 10 && rng.IntN(2) == 0:
				evs = append(evs, putEv(rev, randomCNP(name, true)))
				rejectedCNP++
			default:
				if rng.IntN(2) == 0 {
					evs = append(evs, delEv(rev, &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "c0", Namespace: "x", Name: name}))
				} else {
					evs = append(evs, delEv(rev, &fedmeshv1.ClusterNetworkPolicy{Cluster: []string{"", "c0"}[rng.IntN(2)], Name: name}))
				}
			}
		}
		deliver(events(rev, evs...))
		if got, _ := a.Enforced(); got != rev {
			t.Fatalf("agent enforces revision %d, want %d", got, rev)
		}
		for range 20 {
			src, dst := pods[rng.IntN(len(pods))], pods[rng.IntN(len(pods))]
			f := policy.Flow{Proto: policy.ProtoTCP, Port: uint16(79 + rng.IntN(3))}
			if !alive[src] || !alive[dst] {
				continue
			}
			sk := policy.EndpointKey{Cluster: src.cluster, Namespace: src.ns, Name: src.name}
			dk := policy.EndpointKey{Cluster: dst.cluster, Namespace: dst.ns, Name: dst.name}
			f.Src, f.Dst = policy.Target{Endpoint: &sk}, policy.Target{Endpoint: &dk}
			if rng.IntN(4) == 0 {
				f.Src = policy.Target{IP: netip.MustParseAddr("192.0.2.1")}
			}
			ax, aerr := agentEng.Tiers().Explain(agentEng, f)
			rx, rerr := reachEng.Tiers().Explain(reachEng, f)
			if (aerr == nil) != (rerr == nil) {
				t.Fatalf("revision %d: agent explain error %v, Reach %v", rev, aerr, rerr)
			}
			if aerr != nil {
				continue
			}
			if ax.Allowed != rx.Allowed || ax.Ingress.String() != rx.Ingress.String() || ax.Egress.String() != rx.Egress.String() {
				t.Fatalf("revision %d: %v -> %v tcp/%d:\n agent: %v\n  %s\n  %s\n Reach: %v\n  %s\n  %s", rev, f.Src, f.Dst, f.Port,
					ax.Allowed, ax.Egress, ax.Ingress, rx.Allowed, rx.Egress, rx.Ingress)
			}
		}
	}
	if rejected == 0 || rejectedCNP == 0 {
		t.Fatalf("the stream held %d NetworkPolicy and %d ClusterNetworkPolicy updates the compiler rejects: the failure rule went untested", rejected, rejectedCNP)
	}
}

func slicesIndex(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}
