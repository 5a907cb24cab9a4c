package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/known/timestamppb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	"github.com/fedmesh/fedmesh/tools/fedlab/lab"
)

// probeSpec is one (protocol, port) a probe uses: the app's port (open), a
// closed port (the kernel refuses it when reachable) and a port inside a
// range some random rules use.
var probeSpecs = []struct {
	proto string
	port  uint32
}{{"tcp", 8080}, {"udp", 8080}, {"tcp", 9050}, {"tcp", 7000}}

// randomPolicies draws a set of federated policies over the lab's labels:
// cluster selectors, pod selectors, peers across clusters, named and
// numbered ports, ranges, UDP, ipBlock with except, both directions.
func randomPolicies(r *rand.Rand, round int) []*fedmeshv1.Policy {
	sel := func() *fedmeshv1.LabelSelector {
		switch r.IntN(3) {
		case 0:
			return &fedmeshv1.LabelSelector{}
		case 1:
			return &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
		}
		return &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": "api"}}
	}
	clusterSel := func() *fedmeshv1.LabelSelector {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return &fedmeshv1.LabelSelector{}
		case 2:
			return &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"site": "cluster-a"}}
		}
		return &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"site": "cluster-b"}}
	}
	peers := func() []*fedmeshv1.NetworkPolicyPeer {
		var out []*fedmeshv1.NetworkPolicyPeer
		for i := r.IntN(3); i > 0; i-- {
			switch r.IntN(10) {
			case 0, 1:
				out = append(out, &fedmeshv1.NetworkPolicyPeer{IpBlock: &fedmeshv1.IPBlock{Cidr: "10.0.0.0/8", Except: []string{"10.1.1.0/24"}}})
				continue
			case 2, 3:
				// The IPv6 twin: a block of one family never matches the
				// other, so the same pods are allowed over one family only.
				out = append(out, &fedmeshv1.NetworkPolicyPeer{IpBlock: &fedmeshv1.IPBlock{Cidr: "fd00::/8", Except: []string{"fd00:10:1:1::/64"}}})
				continue
			}
			out = append(out, &fedmeshv1.NetworkPolicyPeer{PodSelector: sel(), ClusterSelector: clusterSel()})
		}
		return out
	}
	ports := func() []*fedmeshv1.NetworkPolicyPort {
		var out []*fedmeshv1.NetworkPolicyPort
		for i := r.IntN(3); i > 0; i-- {
			switch r.IntN(4) {
			case 0:
				out = append(out, &fedmeshv1.NetworkPolicyPort{Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 8080}})
			case 1:
				out = append(out, &fedmeshv1.NetworkPolicyPort{Port: &fedmeshv1.NetworkPolicyPort_Name{Name: "http"}})
			case 2:
				out = append(out, &fedmeshv1.NetworkPolicyPort{Protocol: fedmeshv1.Protocol_PROTOCOL_UDP, Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 8080}})
			default:
				out = append(out, &fedmeshv1.NetworkPolicyPort{Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 9000}, EndPort: 9100})
			}
		}
		return out
	}
	var out []*fedmeshv1.Policy
	for i := 1 + r.IntN(4); i > 0; i-- {
		spec := &fedmeshv1.NetworkPolicySpec{PodSelector: sel()}
		switch r.IntN(3) {
		case 0:
			spec.PolicyTypes = []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_INGRESS}
		case 1:
			spec.PolicyTypes = []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_EGRESS}
		default:
			spec.PolicyTypes = []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_INGRESS, fedmeshv1.PolicyType_POLICY_TYPE_EGRESS}
		}
		for j := r.IntN(3); j > 0; j-- {
			spec.Ingress = append(spec.Ingress, &fedmeshv1.NetworkPolicyIngressRule{From: peers(), Ports: ports()})
		}
		for j := r.IntN(3); j > 0; j-- {
			spec.Egress = append(spec.Egress, &fedmeshv1.NetworkPolicyEgressRule{To: peers(), Ports: ports()})
		}
		ns := "demo"
		if r.IntN(4) == 0 {
			ns = "" // global
		}
		var cs *fedmeshv1.LabelSelector
		if r.IntN(2) == 0 {
			cs = clusterSel()
		}
		out = append(out, &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Namespace: ns,
			Name: fmt.Sprintf("r%d-p%d", round, i), ClusterSelector: cs, Spec: spec})
	}
	return out
}

// Every probe's real outcome through the kernel equals what Reach says,
// computed by the same compiler the agents load: random federated policy
// sets, cross-cluster included, ≥ 1,000 probes.
func TestDifferentialEnforcementMatchesReach(t *testing.T) {
	l := useLab(t, lab.Config{Clusters: 2, Nodes: 2, Pods: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cc, err := l.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	policies := fedmeshv1.NewPolicyServiceClient(cc)
	nodes := fedmeshv1.NewNodeServiceClient(cc)
	reach := fedmeshv1.NewReachServiceClient(cc)
	flowsAPI := fedmeshv1.NewFlowServiceClient(cc)

	type pod struct {
		cluster string
		p       lab.Pod
	}
	var pods []pod
	for _, c := range l.Topo.Clusters {
		for _, n := range c.Nodes {
			for _, p := range n.Pods {
				pods = append(pods, pod{c.Name, p})
			}
		}
	}
	// FEDMESH_E2E_SEED replays the rounds a failed run drew (its log
	// prints the seed).
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("FEDMESH_E2E_SEED"); v != "" {
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("FEDMESH_E2E_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (FEDMESH_E2E_SEED=%d replays it)", seed, seed)
	r := rand.New(rand.NewPCG(seed, 7))
	total, mismatches, denied := 0, 0, 0
	total6, denied6 := 0, 0 // of them over IPv6
	var prev []*fedmeshv1.Policy
	// The lab is shared: the last round's policies go, enforced everywhere,
	// before the next scenario.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var rev uint64
		for _, p := range prev {
			resp, err := policies.DeletePolicy(ctx, &fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Namespace: p.Namespace, Name: p.Name}})
			if err != nil {
				t.Errorf("delete policy %s/%s: %v", p.Namespace, p.Name, err)
				return
			}
			rev = resp.GetRevision()
		}
		if w, err := nodes.WaitEnforced(ctx, &fedmeshv1.WaitEnforcedRequest{Revision: rev}); err != nil || !w.GetEnforced() {
			t.Errorf("deleting the last round's policies not enforced: %v %v", w, err)
		}
	})
	// Rounds go on until ≥ 1,000 probes and both verdicts over both
	// families: a draw that denies (or allows) every probe proves nothing
	// alone, and one run in a few dozen draws one. At most 8 rounds.
	meaningful := func() bool { return denied > 0 && denied < total && denied6 > 0 && denied6 < total6 }
	for round := 0; round < 8 && (total < 1000 || !meaningful()); round++ {
		for _, p := range prev {
			if _, err := policies.DeletePolicy(ctx, &fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Namespace: p.Namespace, Name: p.Name}}); err != nil {
				t.Fatal(err)
			}
		}
		set := randomPolicies(r, round)
		resp, err := policies.ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Policies: set})
		if err != nil {
			t.Fatalf("round %d: apply %v: %v", round, set, err)
		}
		prev = set
		roundStart := time.Now()
		// mismatched are this round's probes the kernel and Reach disagree
		// on, for the flow records logged below.
		type mismatch struct {
			src, dst     pod
			proto        string
			port, family uint32
		}
		var mismatched []mismatch
		w, err := nodes.WaitEnforced(ctx, &fedmeshv1.WaitEnforcedRequest{Revision: resp.GetRevision()})
		if err != nil || !w.GetEnforced() {
			t.Fatalf("round %d: not enforced: %v %v", round, w, err)
		}
		// Established flows survive policy changes (conntrack); let the
		// previous round's entries of these 4-tuples expire from
		// relevance by using fresh source ports (every probe dials anew).
		var mu sync.Mutex
		var wg sync.WaitGroup
		sem := make(chan struct{}, 2) // two sources at a time
		for _, src := range pods {
			var targets []lab.Target
			type q struct {
				dst    pod
				spec   int
				family uint32
			}
			var qs []q
			for _, dst := range pods {
				if dst.p.Name == src.p.Name {
					continue
				}
				for si, s := range probeSpecs {
					// Every probe over both families: Reach is asked for the
					// pods' addresses of the probe's family.
					for _, fam := range []uint32{4, 6} {
						ap := netip.AddrPortFrom(dst.p.Addr(int(fam)), uint16(s.port))
						targets = append(targets, lab.Target{Proto: s.proto, Addr: ap.String()})
						qs = append(qs, q{dst, si, fam})
					}
				}
			}
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				outcomes, err := l.ProbeBatchFrom(ctx, src.p.Name, targets, 700*time.Millisecond)
				if err != nil {
					t.Error(err)
					return
				}
				// A probe that timed out is tried once more, alone and with
				// a longer timeout: on this loaded 2-core machine a first
				// contact (ARP, a WireGuard handshake in userspace) can take
				// longer than the batch allows. A real drop stays a drop.
				var again []lab.Target
				var idx []int
				for i, o := range outcomes {
					if o == lab.Timeout {
						again = append(again, targets[i])
						idx = append(idx, i)
					}
				}
				if len(again) > 0 {
					second, err := l.ProbeBatchFrom(ctx, src.p.Name, again, 2*time.Second)
					if err != nil {
						t.Error(err)
						return
					}
					for j, o := range second {
						outcomes[idx[j]] = o
					}
				}
				for i, o := range outcomes {
					s := probeSpecs[qs[i].spec]
					proto := fedmeshv1.Protocol_PROTOCOL_TCP
					if s.proto == "udp" {
						proto = fedmeshv1.Protocol_PROTOCOL_UDP
					}
					rctx := metadata.AppendToOutgoingContext(ctx, "fedmesh-consistency", "linearizable")
					req := &fedmeshv1.ReachRequest{
						Source:      &fedmeshv1.ReachTarget{Target: &fedmeshv1.ReachTarget_Endpoint{Endpoint: &fedmeshv1.EndpointRef{Cluster: src.cluster, Namespace: "demo", Name: src.p.Name}}},
						Destination: &fedmeshv1.ReachTarget{Target: &fedmeshv1.ReachTarget_Endpoint{Endpoint: &fedmeshv1.EndpointRef{Cluster: qs[i].dst.cluster, Namespace: "demo", Name: qs[i].dst.p.Name}}},
						Protocol:    proto, Port: s.port, Family: qs[i].family,
					}
					// A linearizable read during a leader change answers
					// Unavailable ("not the leader; retry"): retry it.
					var v *fedmeshv1.ReachResponse
					for attempt := 0; attempt < 5; attempt++ {
						if v, err = reach.Reach(rctx, req); status.Code(err) != codes.Unavailable {
							break
						}
						time.Sleep(200 * time.Millisecond)
					}
					if err != nil {
						t.Errorf("reach: %v", err)
						return
					}
					want := v.GetVerdict() == fedmeshv1.Verdict_VERDICT_ALLOW
					mu.Lock()
					total++
					if qs[i].family == 6 {
						total6++
					}
					if !want {
						denied++
						if qs[i].family == 6 {
							denied6++
						}
					}
					if o.Reachable() != want {
						mismatched = append(mismatched, mismatch{src, qs[i].dst, s.proto, s.port, qs[i].family})
						mismatches++
						if mismatches <= 10 {
							t.Errorf("round %d: %s/%s -> %s/%s %s/%d IPv%d: kernel %s, reach %s (egress %s, ingress %s)", round,
								src.cluster, src.p.Name, qs[i].dst.cluster, qs[i].dst.p.Name, s.proto, s.port, qs[i].family, o, v.GetVerdict(),
								v.GetEgress().GetExplanation(), v.GetIngress().GetExplanation())
						}
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if t.Failed() && mismatches > 0 {
			// The evidence first, the policies last (they are long): a
			// fresh probe of each mismatched flow says whether the
			// disagreement lasts (state) or has passed (timing); what each
			// node's dataplane reported for the flows names the deciding
			// rule or reason (an allowed packet with no event since the
			// round began passed by conntrack).
			for i, m := range mismatched[:min(len(mismatched), 10)] {
				ap := netip.AddrPortFrom(m.dst.p.Addr(int(m.family)), uint16(m.port))
				again, err := l.ProbeBatchFrom(ctx, m.src.p.Name, []lab.Target{{Proto: m.proto, Addr: ap.String()}}, 2*time.Second)
				t.Logf("mismatch %d probed again %s after the round began: %v %v", i, time.Since(roundStart).Round(time.Millisecond), again, err)
				logFlows(ctx, t, flowsAPI, m.src, m.dst, m.port, m.family, roundStart)
			}
			var names []string
			for _, p := range set {
				names = append(names, prototext.MarshalOptions{}.Format(p))
			}
			t.Logf("round %d policies, one a line:\n%s", round, strings.Join(names, "\n"))
			break
		}
	}
	t.Logf("%d probes (%d denied by policy; %d over IPv6, %d of them denied), %d mismatches between the kernel and Reach", total, denied, total6, denied6, mismatches)
	if denied == 0 || denied == total {
		t.Errorf("the random policies denied %d of %d probes: the comparison proves nothing", denied, total)
	}
	if denied6 == 0 || denied6 == total6 {
		t.Errorf("the random policies denied %d of %d IPv6 probes: the comparison proves nothing for IPv6", denied6, total6)
	}
	if total < 1000 && !t.Failed() {
		t.Fatalf("only %d probes", total)
	}
}

// logFlows logs the flow records of src's pod to dst's on port over IPv
// family since start, as both nodes' dataplanes reported them.
func logFlows(ctx context.Context, t *testing.T, api fedmeshv1.FlowServiceClient, src, dst struct {
	cluster string
	p       lab.Pod
}, port, family uint32, start time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	// Records reach the control plane in batches: give them a moment.
	time.Sleep(3 * time.Second)
	// The filter's pod matches either end: both nodes' records come back.
	st, err := api.GetFlows(ctx, &fedmeshv1.GetFlowsRequest{Since: timestamppb.New(start), Limit: 5000,
		Filter: &fedmeshv1.FlowFilter{Cluster: src.cluster, Namespace: "demo", Pod: src.p.Name}})
	if err != nil {
		t.Logf("flows of %s/%s: %v", src.cluster, src.p.Name, err)
		return
	}
	dstIP := dst.p.Addr(int(family)).String()
	n := 0
	for {
		r, err := st.Recv()
		if err != nil {
			break
		}
		for _, f := range r.GetFlows() {
			if f.GetSource().GetPod() != src.p.Name || f.GetDestination().GetIp() != dstIP ||
				f.GetDestination().GetPort() != port {
				continue
			}
			n++
			t.Logf("flow record at %s/%s: %s %s:%d -> %s:%d %s, decision {%s}", f.GetCluster(), f.GetNode(),
				f.GetTime().AsTime().Format(time.RFC3339Nano), f.GetSource().GetIp(), f.GetSource().GetPort(), dstIP, port,
				f.GetVerdict(), prototext.MarshalOptions{}.Format(f.GetDecision()))
		}
	}
	t.Logf("%d flow records of %s -> %s (%s:%d) since the round began (an allowed probe with none passed by conntrack, or its event was rate-limited)",
		n, src.p.Name, dst.p.Name, dstIP, port)
}
