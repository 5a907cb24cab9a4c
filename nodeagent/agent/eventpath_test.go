package agent

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"testing"

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

	rejected := 0
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
			case op < 7:
				evs = append(evs, putEv(rev, randomPolicy(name, false)))
			case op < 9:
				evs = append(evs, putEv(rev, randomPolicy(name, true)))
				rejected++
			default:
				evs = append(evs, delEv(rev, &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "c0", Namespace: "x", Name: name}))
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
			ax, aerr := agentEng.Explain(f)
			rx, rerr := reachEng.Explain(f)
			if (aerr == nil) != (rerr == nil) {
				t.Fatalf("revision %d: agent explain error %v, Reach %v", rev, aerr, rerr)
			}
			if aerr != nil {
				continue
			}
			if ax.Allowed != rx.Allowed || ax.Ingress.Rule != rx.Ingress.Rule || ax.Egress.Rule != rx.Egress.Rule ||
				ax.Ingress.Reason != rx.Ingress.Reason || ax.Egress.Reason != rx.Egress.Reason {
				t.Fatalf("revision %d: %v -> %v tcp/%d:\n agent: %v\n  %s\n  %s\n Reach: %v\n  %s\n  %s", rev, f.Src, f.Dst, f.Port,
					ax.Allowed, ax.Egress, ax.Ingress, rx.Allowed, rx.Egress, rx.Ingress)
			}
		}
	}
	if rejected == 0 {
		t.Fatal("the stream held no policy update the compiler rejects: the failure rule went untested")
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
