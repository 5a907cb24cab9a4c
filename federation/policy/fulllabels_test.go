package policy_test

// Every label reaches the selectors (issue 24). These tests run the whole
// chain on the real parts: the control plane's FSM (controlplane/store)
// stores pods with every label and assigns identities; an engine fed from
// the FSM's event log, as agents and Reach are, compiles and explains; the
// in-memory dataplane (nodeagent/dataplane, the kernel's twin) loads the
// compiled rules and judges packets. Each verdict is compared with a
// reference evaluation written here from the Kubernetes NetworkPolicy rules
// (plus fedmesh's federated scope), on the pods' full label sets, knowing
// nothing of identities.

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/identity"
	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// fed is one federation: the FSM, an engine compiling every endpoint (all
// agents' work at once) and an in-memory dataplane with every endpoint
// attached.
type fed struct {
	tb       testing.TB
	st       *store.State
	eng      *policy.Engine
	dp       *dataplane.Memory
	rev      uint64
	sport    uint16
	attached map[string]bool
}

func newFed(tb testing.TB) *fed {
	return &fed{tb: tb, st: store.NewState(1 << 20), eng: policy.NewEngine(), dp: dataplane.NewMemory(),
		sport: 30000, attached: map[string]bool{}}
}

// do validates a command as the API edge does, commits it through its log
// encoding, and brings the engine and the dataplane to its revision.
func (f *fed) do(t store.CommandType, payload proto.Message) {
	f.tb.Helper()
	var err error
	switch p := payload.(type) {
	case *fedmeshv1.RegisterClusterRequest:
		err = model.ValidateCluster(p.GetCluster())
	case *fedmeshv1.UpsertEndpointsRequest:
		err = model.ValidateUpsertEndpoints(p, nil)
	case *fedmeshv1.DeleteEndpointsRequest:
		err = model.ValidateDeleteEndpoints(p)
	case *fedmeshv1.ApplyPoliciesRequest:
		err = model.ValidateApplyPolicies(p)
	}
	if err != nil {
		f.tb.Fatalf("the edge rejects command %d: %v", t, err)
	}
	b, err := store.Command{Type: t, Payload: payload}.Encode()
	if err != nil {
		f.tb.Fatal(err)
	}
	c, err := store.DecodeCommand(b)
	if err != nil {
		f.tb.Fatal(err)
	}
	if r := f.st.Apply(c); r.Err != nil {
		f.tb.Fatalf("apply command %d: %v", t, r.Err)
	}
	f.sync()
}

func (f *fed) cluster(name, cidr string, labels map[string]string) {
	f.do(store.CmdRegisterCluster, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: name, PodCidrs: []string{cidr}, Labels: labels}})
}

func (f *fed) pods(cluster string, eps ...*fedmeshv1.Endpoint) {
	f.do(store.CmdUpsertEndpointsFull, &fedmeshv1.UpsertEndpointsRequest{Cluster: cluster, Endpoints: eps})
}

func (f *fed) policies(owner string, ps ...*fedmeshv1.Policy) {
	f.do(store.CmdApplyPolicies, &fedmeshv1.ApplyPoliciesRequest{Cluster: owner, Policies: ps})
}

func (f *fed) deletePolicy(p *fedmeshv1.Policy) {
	f.do(store.CmdDeletePolicy, &fedmeshv1.DeletePolicyRequest{Key: &fedmeshv1.PolicyKey{Cluster: p.GetCluster(), Namespace: p.GetNamespace(), Name: p.GetName()}})
}

// applyEvent is what an agent and Reach do with one watch event.
func applyEvent(eng *policy.Engine, e *fedmeshv1.Event) error {
	del := e.GetType() == fedmeshv1.EventType_EVENT_TYPE_DELETE
	switch o := e.GetObject().(type) {
	case *fedmeshv1.Event_Cluster:
		if del {
			eng.DeleteCluster(o.Cluster.GetName())
		} else {
			eng.UpsertCluster(o.Cluster)
		}
	case *fedmeshv1.Event_Endpoint:
		if del {
			eng.DeleteEndpoint(epKey(o.Endpoint))
		} else {
			eng.UpsertEndpoint(o.Endpoint)
		}
	case *fedmeshv1.Event_Policy:
		p := o.Policy
		if del {
			eng.DeletePolicy(policy.PolicyKey{Cluster: p.GetCluster(), Namespace: p.GetNamespace(), Name: p.GetName()})
			return nil
		}
		return eng.UpsertPolicy(p)
	}
	return nil
}

func epKey(e *fedmeshv1.Endpoint) policy.EndpointKey {
	return policy.EndpointKey{Cluster: e.GetCluster(), Namespace: e.GetNamespace(), Name: e.GetName()}
}

// sync applies the FSM's new events to the engine, recompiles, and loads
// the dataplane with the revision: the ipcache of every endpoint and every
// endpoint's compiled rules.
func (f *fed) sync() {
	f.tb.Helper()
	batches, ok := f.st.Log().Since(f.rev, 1<<30)
	if !ok {
		f.tb.Fatal("event log compacted")
	}
	for _, b := range batches {
		for _, e := range b.Events {
			if err := applyEvent(f.eng, e); err != nil {
				f.tb.Fatal(err)
			}
		}
		f.rev = b.Revision
	}
	f.eng.Recompute()
	ctx := context.Background()
	rev := &dataplane.Revision{Number: f.rev, Rules: map[string]policy.EndpointRules{}}
	ipc := dataplane.NewIPCacheBuilder(dataplane.IPCache{})
	live := map[string]bool{}
	for _, ep := range f.st.Endpoints("", "", "") {
		id := epKey(ep).String()
		live[id] = true
		for _, s := range ep.GetIps() {
			a := netip.MustParseAddr(s)
			ipc.Set(netip.PrefixFrom(a, a.BitLen()), ep.GetIdentity())
		}
		c, ok := f.eng.Rules(epKey(ep))
		if !ok {
			f.tb.Fatalf("no compiled rules for %s", id)
		}
		rev.Rules[id] = c.Rules
		if !f.attached[id] {
			if err := f.dp.Attach(ctx, dataplane.Endpoint{ID: id, Interface: "veth-" + id}); err != nil {
				f.tb.Fatal(err)
			}
			f.attached[id] = true
		}
	}
	for id := range f.attached {
		if !live[id] {
			if err := f.dp.Detach(ctx, id); err != nil {
				f.tb.Fatal(err)
			}
			delete(f.attached, id)
		}
	}
	rev.IPCache = ipc.IPCache()
	if err := f.dp.Apply(ctx, rev); err != nil {
		f.tb.Fatal(err)
	}
}

func (f *fed) ep(key string) *fedmeshv1.Endpoint {
	f.tb.Helper()
	p := strings.Split(key, "/")
	e := f.st.Endpoint(p[0], p[1], p[2])
	if e == nil {
		f.tb.Fatalf("no endpoint %s", key)
	}
	return e
}

// verdicts of one flow by each evaluator.
type verdicts struct {
	Explain, Compiled, Dataplane, Reference bool
}

func (v verdicts) agree() bool {
	return v.Explain == v.Reference && v.Compiled == v.Reference && v.Dataplane == v.Reference
}

// judge decides a new flow from src to dst on proto/port four ways.
func (f *fed) judge(src, dst *fedmeshv1.Endpoint, proto uint8, port uint16) verdicts {
	f.tb.Helper()
	sk, dk := epKey(src), epKey(dst)
	sip, dip := netip.MustParseAddr(src.GetIps()[0]), netip.MustParseAddr(dst.GetIps()[0])
	var v verdicts
	x, err := f.eng.Explain(policy.Flow{Src: policy.Target{Endpoint: &sk, IP: sip}, Dst: policy.Target{Endpoint: &dk, IP: dip}, Proto: proto, Port: port})
	if err != nil {
		f.tb.Fatal(err)
	}
	v.Explain = x.Allowed
	sc, _ := f.eng.Rules(sk)
	dc, _ := f.eng.Rules(dk)
	out, _ := sc.Rules.Evaluate(policy.Egress, dst.GetIdentity(), dip, proto, port)
	in, _ := dc.Rules.Evaluate(policy.Ingress, src.GetIdentity(), sip, proto, port)
	v.Compiled = out && in
	f.sport++ // a new flow: conntrack must not answer
	pkt := frame(sip, dip, proto, f.sport, port)
	ve, _, _, err := f.dp.Process(sk.String(), policy.Egress, pkt)
	if err != nil {
		f.tb.Fatal(err)
	}
	vi, _, _, err := f.dp.Process(dk.String(), policy.Ingress, pkt)
	if err != nil {
		f.tb.Fatal(err)
	}
	v.Dataplane = ve == dataplane.Allow && vi == dataplane.Allow
	v.Reference = reference{f.st}.allowed(src, dst, proto, port)
	return v
}

// frame is an Ethernet frame with an IPv4 TCP SYN or UDP datagram.
func frame(src, dst netip.Addr, proto uint8, sport, dport uint16) []byte {
	l4 := 8
	if proto == policy.ProtoTCP {
		l4 = 20
	}
	b := make([]byte, 14+20+l4)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(20+l4))
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	h := ip[20:]
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	if proto == policy.ProtoTCP {
		h[12], h[13] = 5<<4, 0x02
	} else {
		binary.BigEndian.PutUint16(h[4:], uint16(l4))
	}
	return b
}

// reference evaluates NetworkPolicy semantics on the stored pods' full
// label sets: a direction of a pod selected by no policy applying to that
// direction is open; otherwise some rule of a selecting policy must allow
// the flow. Federated policies select in every cluster their cluster
// selector matches (every namespace when they have none); their peers
// without a cluster selector stay in the selected pod's cluster.
type reference struct{ st *store.State }

func (r reference) allowed(src, dst *fedmeshv1.Endpoint, proto uint8, port uint16) bool {
	return r.direction(src, policy.Egress, dst, dst, proto, port) && r.direction(dst, policy.Ingress, src, dst, proto, port)
}

func (r reference) direction(local *fedmeshv1.Endpoint, dir policy.Direction, peer, dst *fedmeshv1.Endpoint, proto uint8, port uint16) bool {
	selected := false
	for _, p := range r.st.Policies(fedmeshv1.PolicyKind_POLICY_KIND_UNSPECIFIED, "", "") {
		if !appliesTo(p, dir) || !r.selects(p, local) {
			continue
		}
		selected = true
		spec := p.GetSpec()
		if dir == policy.Ingress {
			for _, rule := range spec.GetIngress() {
				if portAllows(rule.GetPorts(), dst, proto, port) && r.peersAllow(p, rule.GetFrom(), local, peer) {
					return true
				}
			}
		} else {
			for _, rule := range spec.GetEgress() {
				if portAllows(rule.GetPorts(), dst, proto, port) && r.peersAllow(p, rule.GetTo(), local, peer) {
					return true
				}
			}
		}
	}
	return !selected
}

func appliesTo(p *fedmeshv1.Policy, dir policy.Direction) bool {
	types := p.GetSpec().GetPolicyTypes()
	if len(types) == 0 {
		return dir == policy.Ingress || len(p.GetSpec().GetEgress()) > 0
	}
	want := fedmeshv1.PolicyType_POLICY_TYPE_INGRESS
	if dir == policy.Egress {
		want = fedmeshv1.PolicyType_POLICY_TYPE_EGRESS
	}
	return slices.Contains(types, want)
}

func (r reference) clusterLabels(name string) map[string]string {
	return r.st.Cluster(name).GetLabels()
}

func (r reference) selects(p *fedmeshv1.Policy, ep *fedmeshv1.Endpoint) bool {
	if p.GetKind() == fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES {
		if ep.GetCluster() != p.GetCluster() || ep.GetNamespace() != p.GetNamespace() {
			return false
		}
	} else {
		if p.GetNamespace() != "" && ep.GetNamespace() != p.GetNamespace() {
			return false
		}
		if p.GetClusterSelector() != nil && !matches(p.GetClusterSelector(), r.clusterLabels(ep.GetCluster())) {
			return false
		}
	}
	return matches(p.GetSpec().GetPodSelector(), ep.GetLabels())
}

func (r reference) peersAllow(p *fedmeshv1.Policy, peers []*fedmeshv1.NetworkPolicyPeer, local, peer *fedmeshv1.Endpoint) bool {
	if len(peers) == 0 {
		return true
	}
	for _, pe := range peers {
		if pe.GetIpBlock() != nil {
			panic("reference: ipBlock peers are not generated")
		}
		switch {
		case p.GetKind() == fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES:
			if peer.GetCluster() != p.GetCluster() {
				continue
			}
		case pe.GetClusterSelector() == nil:
			if peer.GetCluster() != local.GetCluster() {
				continue
			}
		default:
			if !matches(pe.GetClusterSelector(), r.clusterLabels(peer.GetCluster())) {
				continue
			}
		}
		if pe.GetNamespaceSelector() != nil {
			if !matches(pe.GetNamespaceSelector(), peer.GetNamespaceLabels()) {
				continue
			}
		} else if p.GetNamespace() != "" && peer.GetNamespace() != p.GetNamespace() {
			continue
		}
		if pe.GetPodSelector() == nil || matches(pe.GetPodSelector(), peer.GetLabels()) {
			return true
		}
	}
	return false
}

// portAllows applies a rule's ports; named ports resolve on the
// destination pod. A rule without ports allows every protocol (ICMP too).
func portAllows(ports []*fedmeshv1.NetworkPolicyPort, dst *fedmeshv1.Endpoint, proto uint8, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if policy.ProtoFromAPI(p.GetProtocol()) != proto {
			continue
		}
		switch pp := p.GetPort().(type) {
		case nil:
			return true
		case *fedmeshv1.NetworkPolicyPort_Number:
			last := pp.Number
			if p.GetEndPort() != 0 {
				last = p.GetEndPort()
			}
			if uint32(port) >= pp.Number && uint32(port) <= last {
				return true
			}
		case *fedmeshv1.NetworkPolicyPort_Name:
			for _, np := range dst.GetNamedPorts() {
				if np.GetName() == pp.Name && policy.ProtoFromAPI(np.GetProtocol()) == proto && np.GetPort() == uint32(port) {
					return true
				}
			}
		}
	}
	return false
}

// matches is Kubernetes label selector semantics, written out: every
// matchLabels pair present, every requirement met (NotIn and DoesNotExist
// hold for a missing key).
func matches(s *fedmeshv1.LabelSelector, labels map[string]string) bool {
	for k, v := range s.GetMatchLabels() {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, req := range s.GetMatchExpressions() {
		v, ok := labels[req.GetKey()]
		switch req.GetOperator() {
		case "In":
			if !ok || !slices.Contains(req.GetValues(), v) {
				return false
			}
		case "NotIn":
			if ok && slices.Contains(req.GetValues(), v) {
				return false
			}
		case "Exists":
			if !ok {
				return false
			}
		case "DoesNotExist":
			if ok {
				return false
			}
		default:
			panic("reference: operator " + req.GetOperator())
		}
	}
	return true
}

func sel(kv ...string) *fedmeshv1.LabelSelector {
	s := &fedmeshv1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func types(dirs ...fedmeshv1.PolicyType) []fedmeshv1.PolicyType { return dirs }

var (
	ingressOnly = types(fedmeshv1.PolicyType_POLICY_TYPE_INGRESS)
	egressOnly  = types(fedmeshv1.PolicyType_POLICY_TYPE_EGRESS)
)

// filteredKeys are a key for every entry of the default filter (one under
// the reserved prefix for its '*').
func filteredKeys() []string {
	var out []string
	for _, k := range identity.DefaultExcluded {
		if p, ok := strings.CutSuffix(k, "*"); ok {
			k = p + "role"
		}
		out = append(out, k)
	}
	return out
}

// TestEveryDefaultFilterKeySelectsAsTargetAndAsPeer: for every key the
// identity filter drops by default, a policy selecting on it, as its target
// or as a peer, for ingress and for egress, in one cluster (a Kubernetes
// policy) and across clusters (a federated policy), decides as Kubernetes
// would; the pods' identities are one before the policy, split while it
// exists, and one again after its delete.
func TestEveryDefaultFilterKeySelectsAsTargetAndAsPeer(t *testing.T) {
	type row struct {
		src, dst string
		allow    bool
	}
	type scenario struct {
		name string
		// make builds the policy for key k selecting value "v0".
		make func(k string) *fedmeshv1.Policy
		rows []row
	}
	k8s := func(name string, spec *fedmeshv1.NetworkPolicySpec) *fedmeshv1.Policy {
		return &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "a", Namespace: "shop", Name: name, Spec: spec}
	}
	federated := func(name string, clusters *fedmeshv1.LabelSelector, spec *fedmeshv1.NetworkPolicySpec) *fedmeshv1.Policy {
		return &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Namespace: "shop", Name: name, ClusterSelector: clusters, Spec: spec}
	}
	peer := func(s *fedmeshv1.LabelSelector, clusters *fedmeshv1.LabelSelector) []*fedmeshv1.NetworkPolicyPeer {
		return []*fedmeshv1.NetworkPolicyPeer{{PodSelector: s, ClusterSelector: clusters}}
	}
	scenarios := []scenario{
		{"one cluster, target, ingress", func(k string) *fedmeshv1.Policy {
			return k8s("isolate", &fedmeshv1.NetworkPolicySpec{PodSelector: sel(k, "v0"), PolicyTypes: ingressOnly})
		}, []row{{"a/shop/cli-1", "a/shop/srv-0", false}, {"a/shop/cli-1", "a/shop/srv-1", true}}},
		{"one cluster, target, egress", func(k string) *fedmeshv1.Policy {
			return k8s("isolate", &fedmeshv1.NetworkPolicySpec{PodSelector: sel(k, "v0"), PolicyTypes: egressOnly})
		}, []row{{"a/shop/cli-0", "a/shop/srv-1", false}, {"a/shop/cli-1", "a/shop/srv-1", true}}},
		{"one cluster, peer, ingress", func(k string) *fedmeshv1.Policy {
			return k8s("from-v0", &fedmeshv1.NetworkPolicySpec{PodSelector: sel("app", "srv"),
				Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{From: peer(sel(k, "v0"), nil)}}})
		}, []row{{"a/shop/cli-0", "a/shop/srv-1", true}, {"a/shop/cli-1", "a/shop/srv-1", false}}},
		{"one cluster, peer, egress", func(k string) *fedmeshv1.Policy {
			return k8s("to-v0", &fedmeshv1.NetworkPolicySpec{PodSelector: sel("app", "cli"), PolicyTypes: egressOnly,
				Egress: []*fedmeshv1.NetworkPolicyEgressRule{{To: peer(sel(k, "v0"), nil)}}})
		}, []row{{"a/shop/cli-1", "a/shop/srv-0", true}, {"a/shop/cli-1", "a/shop/srv-1", false}}},
		{"across clusters, target, ingress", func(k string) *fedmeshv1.Policy {
			return federated("isolate", sel("region", "eu"), &fedmeshv1.NetworkPolicySpec{PodSelector: sel(k, "v0"), PolicyTypes: ingressOnly})
		}, []row{{"b/shop/cli-1", "a/shop/srv-0", false}, {"b/shop/cli-1", "a/shop/srv-1", true}, {"a/shop/cli-1", "b/shop/srv-0", true}}},
		{"across clusters, target, egress", func(k string) *fedmeshv1.Policy {
			return federated("isolate", sel("region", "us"), &fedmeshv1.NetworkPolicySpec{PodSelector: sel(k, "v0"), PolicyTypes: egressOnly})
		}, []row{{"b/shop/cli-0", "a/shop/srv-1", false}, {"b/shop/cli-1", "a/shop/srv-1", true}, {"a/shop/cli-0", "b/shop/srv-1", true}}},
		{"across clusters, peer, ingress", func(k string) *fedmeshv1.Policy {
			return federated("from-v0", sel("region", "eu"), &fedmeshv1.NetworkPolicySpec{PodSelector: sel("app", "srv"),
				Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{From: peer(sel(k, "v0"), sel())}}})
		}, []row{{"b/shop/cli-0", "a/shop/srv-1", true}, {"b/shop/cli-1", "a/shop/srv-1", false}}},
		{"across clusters, peer, egress", func(k string) *fedmeshv1.Policy {
			return federated("to-v0", sel("region", "us"), &fedmeshv1.NetworkPolicySpec{PodSelector: sel("app", "cli"), PolicyTypes: egressOnly,
				Egress: []*fedmeshv1.NetworkPolicyEgressRule{{To: peer(sel(k, "v0"), sel("region", "eu"))}}})
		}, []row{{"b/shop/cli-1", "a/shop/srv-0", true}, {"b/shop/cli-1", "a/shop/srv-1", false}}},
	}
	for _, k := range filteredKeys() {
		for _, sc := range scenarios {
			t.Run(k+"/"+sc.name, func(t *testing.T) {
				f := newFed(t)
				f.cluster("a", "10.1.0.0/16", map[string]string{"region": "eu"})
				f.cluster("b", "10.2.0.0/16", map[string]string{"region": "us"})
				for ci, c := range []string{"a", "b"} {
					var eps []*fedmeshv1.Endpoint
					for i, name := range []string{"srv-0", "srv-1", "cli-0", "cli-1"} {
						app, _, _ := strings.Cut(name, "-")
						eps = append(eps, &fedmeshv1.Endpoint{Namespace: "shop", Name: name, Node: "n1",
							Ips:             []string{fmt.Sprintf("10.%d.0.%d", ci+1, i+1)},
							Labels:          map[string]string{"app": app, k: "v" + name[len(name)-1:]},
							NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "shop"}})
					}
					f.pods(c, eps...)
				}
				if f.ep("a/shop/srv-0").GetIdentity() != f.ep("a/shop/srv-1").GetIdentity() {
					t.Fatalf("before any policy selects %s, srv-0 and srv-1 must share an identity", k)
				}
				p := sc.make(k)
				f.policies(p.GetCluster(), p)
				if f.ep("a/shop/srv-0").GetIdentity() == f.ep("a/shop/srv-1").GetIdentity() {
					t.Fatalf("the policy selects %s, yet srv-0 and srv-1 share an identity", k)
				}
				for _, r := range sc.rows {
					v := f.judge(f.ep(r.src), f.ep(r.dst), policy.ProtoTCP, 80)
					if !v.agree() || v.Reference != r.allow {
						t.Errorf("%s -> %s tcp/80: %+v, want allowed=%v everywhere", r.src, r.dst, v, r.allow)
					}
				}
				f.deletePolicy(p)
				if f.ep("a/shop/srv-0").GetIdentity() != f.ep("a/shop/srv-1").GetIdentity() {
					t.Fatalf("after the only policy on %s went, srv-0 and srv-1 must share an identity again", k)
				}
				for _, r := range sc.rows {
					if v := f.judge(f.ep(r.src), f.ep(r.dst), policy.ProtoTCP, 80); !v.agree() || !v.Reference {
						t.Errorf("%s -> %s tcp/80 with no policy: %+v, want allowed everywhere", r.src, r.dst, v)
					}
				}
			})
		}
	}
}

// world generates random pods and policies over label keys most of which
// the identity filter drops by default.
type propWorld struct {
	r   *rand.Rand
	f   *fed
	seq int
}

var propValues = map[string][]string{
	"app":                                {"a", "b"},
	"tier":                               {"x", "y"},
	"pod-template-hash":                  {"h1", "h2"},
	"statefulset.kubernetes.io/pod-name": {"s-0", "s-1", "s-2"},
	"controller-revision-hash":           {"r1", "r2"},
	"apps.kubernetes.io/pod-index":       {"0", "1"},
	"batch.kubernetes.io/job-completion-index": {"0", "1"},
	"fedmesh.io/role":                          {"primary", "replica"},
	"fedmesh.io/cluster":                       {"c0", "c1"}, // a pod trying to pass for another cluster
	"team":                                     {"t0", "t1"},
	"region":                                   {"eu", "us"},
	"kubernetes.io/metadata.name":              {"n0", "n1"},
}

var propPodKeys = []string{"tier", "pod-template-hash", "statefulset.kubernetes.io/pod-name", "controller-revision-hash",
	"apps.kubernetes.io/pod-index", "batch.kubernetes.io/job-completion-index", "fedmesh.io/role", "fedmesh.io/cluster"}

func (w *propWorld) pick(vs []string) string { return vs[w.r.IntN(len(vs))] }

func (w *propWorld) labels() map[string]string {
	m := map[string]string{"app": w.pick(propValues["app"])}
	for _, k := range propPodKeys {
		if w.r.IntN(2) == 0 {
			m[k] = w.pick(propValues[k])
		}
	}
	return m
}

func (w *propWorld) pod(cluster, ns, name string) *fedmeshv1.Endpoint {
	e := &fedmeshv1.Endpoint{Namespace: ns, Name: name, Node: "n1", Labels: w.labels(),
		NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": ns, "team": map[string]string{"n0": "t0", "n1": "t1"}[ns]}}
	var n int
	fmt.Sscanf(name, "p%d", &n)
	e.Ips = []string{fmt.Sprintf("10.%d.%d.%d", cluster[1]-'0'+1, n/250, n%250+1)}
	if w.r.IntN(3) != 0 {
		e.NamedPorts = append(e.NamedPorts, &fedmeshv1.NamedPort{Name: "http", Port: []uint32{80, 8080}[w.r.IntN(2)]})
	}
	if w.r.IntN(2) == 0 {
		e.NamedPorts = append(e.NamedPorts, &fedmeshv1.NamedPort{Name: "dns", Port: 53, Protocol: fedmeshv1.Protocol_PROTOCOL_UDP})
	}
	return e
}

func (w *propWorld) selector(keys []string) *fedmeshv1.LabelSelector {
	k := w.pick(keys)
	switch w.r.IntN(7) {
	case 0:
		return &fedmeshv1.LabelSelector{}
	case 1, 2:
		return sel(k, w.pick(propValues[k]))
	case 3:
		vs := []string{w.pick(propValues[k])}
		if v := w.pick(propValues[k]); v != vs[0] {
			vs = append(vs, v)
		}
		return &fedmeshv1.LabelSelector{MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: k, Operator: "In", Values: vs}}}
	case 4:
		return &fedmeshv1.LabelSelector{MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: k, Operator: "NotIn", Values: []string{w.pick(propValues[k])}}}}
	case 5:
		return &fedmeshv1.LabelSelector{MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: k, Operator: "Exists"}}}
	default:
		return &fedmeshv1.LabelSelector{MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: k, Operator: "DoesNotExist"}},
			MatchLabels: map[string]string{"app": w.pick(propValues["app"])}}
	}
}

var propPodSelectorKeys = append([]string{"app"}, propPodKeys...)

func (w *propWorld) ports() []*fedmeshv1.NetworkPolicyPort {
	var out []*fedmeshv1.NetworkPolicyPort
	for range w.r.IntN(3) {
		p := &fedmeshv1.NetworkPolicyPort{Protocol: []fedmeshv1.Protocol{fedmeshv1.Protocol_PROTOCOL_TCP, fedmeshv1.Protocol_PROTOCOL_UDP}[w.r.IntN(2)]}
		switch w.r.IntN(4) {
		case 0:
		case 1:
			p.Port = &fedmeshv1.NetworkPolicyPort_Number{Number: []uint32{53, 80, 8080}[w.r.IntN(3)]}
		case 2:
			p.Port = &fedmeshv1.NetworkPolicyPort_Number{Number: 53}
			p.EndPort = 8080
		default:
			p.Port = &fedmeshv1.NetworkPolicyPort_Name{Name: w.pick([]string{"http", "dns"})}
		}
		out = append(out, p)
	}
	return out
}

func (w *propWorld) peers(federated bool) []*fedmeshv1.NetworkPolicyPeer {
	var out []*fedmeshv1.NetworkPolicyPeer
	for range w.r.IntN(3) {
		p := &fedmeshv1.NetworkPolicyPeer{}
		switch w.r.IntN(3) {
		case 0:
			p.PodSelector = w.selector(propPodSelectorKeys)
		case 1:
			p.NamespaceSelector = w.selector([]string{"team", "kubernetes.io/metadata.name"})
		default:
			p.PodSelector = w.selector(propPodSelectorKeys)
			p.NamespaceSelector = w.selector([]string{"team", "kubernetes.io/metadata.name"})
		}
		if federated && w.r.IntN(2) == 0 {
			p.ClusterSelector = w.selector([]string{"region"})
		}
		out = append(out, p)
	}
	return out
}

func (w *propWorld) policy(name string) *fedmeshv1.Policy {
	p := &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Name: name, Spec: &fedmeshv1.NetworkPolicySpec{}}
	fed := w.r.IntN(3) == 0
	if fed {
		p.Kind = fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED
		if w.r.IntN(2) == 0 {
			p.Namespace = w.pick([]string{"n0", "n1"})
		}
		if w.r.IntN(2) == 0 {
			p.ClusterSelector = w.selector([]string{"region"})
		}
	} else {
		p.Cluster, p.Namespace = w.pick([]string{"c0", "c1", "c2"}), w.pick([]string{"n0", "n1"})
	}
	p.Spec.PodSelector = w.selector(propPodSelectorKeys)
	switch w.r.IntN(4) {
	case 1:
		p.Spec.PolicyTypes = ingressOnly
	case 2:
		p.Spec.PolicyTypes = egressOnly
	case 3:
		p.Spec.PolicyTypes = types(fedmeshv1.PolicyType_POLICY_TYPE_INGRESS, fedmeshv1.PolicyType_POLICY_TYPE_EGRESS)
	}
	for range w.r.IntN(3) {
		p.Spec.Ingress = append(p.Spec.Ingress, &fedmeshv1.NetworkPolicyIngressRule{Ports: w.ports(), From: w.peers(fed)})
	}
	for range w.r.IntN(3) {
		p.Spec.Egress = append(p.Spec.Egress, &fedmeshv1.NetworkPolicyEgressRule{Ports: w.ports(), To: w.peers(fed)})
	}
	return p
}

// checkCompact asserts the identity count is exactly the number of
// distinct (cluster, namespace, counted labels), counted labels being
// those the default filter keeps or a stored policy selects on: identities
// are as few as exactness allows.
func checkCompact(t *testing.T, f *fed, step string) {
	t.Helper()
	selected := map[string]bool{}
	for _, p := range f.st.Policies(fedmeshv1.PolicyKind_POLICY_KIND_UNSPECIFIED, "", "") {
		for _, k := range policy.PodLabelKeys(p) {
			selected[k] = true
		}
	}
	keep := identity.DefaultFilter()
	keys := map[string]uint32{}
	ids := map[uint32]string{}
	for _, e := range f.st.Endpoints("", "", "") {
		var parts []string
		for k, v := range e.GetLabels() {
			if keep.Keep(k) || selected[k] {
				parts = append(parts, k+"="+v)
			}
		}
		slices.Sort(parts)
		key := e.GetCluster() + "/" + e.GetNamespace() + "{" + strings.Join(parts, ",") + "}"
		if id, ok := keys[key]; ok && id != e.GetIdentity() {
			t.Fatalf("%s: %s has identity %d, another pod of %s has %d: not compact", step, epKey(e), e.GetIdentity(), key, id)
		}
		if k, ok := ids[e.GetIdentity()]; ok && k != key {
			t.Fatalf("%s: identity %d stands for %s and %s", step, e.GetIdentity(), k, key)
		}
		keys[key], ids[e.GetIdentity()] = e.GetIdentity(), key
	}
}

// TestRandomPoliciesOnFilteredKeysAgreeWithAReferenceOnFullLabels: random
// federations whose pods carry filtered keys (StatefulSet and Job indexes,
// template hashes, fedmesh.io/ labels, one claiming another cluster) and
// whose random policies select on them, changed step by step (policies
// stored and deleted, pods relabelled, created and deleted): after every
// step, Explain, the compiled rules and the in-memory dataplane decide
// random flows as the reference does on the full label sets, and the
// identities are exactly as many as the counted labels distinguish.
func TestRandomPoliciesOnFilteredKeysAgreeWithAReferenceOnFullLabels(t *testing.T) {
	const seeds, steps, flows = 16, 30, 30
	cases := 0
	for seed := range uint64(seeds) {
		w := &propWorld{r: rand.New(rand.NewPCG(seed, 24)), f: newFed(t)}
		f := w.f
		f.cluster("c0", "10.1.0.0/16", map[string]string{"region": "eu"})
		f.cluster("c1", "10.2.0.0/16", map[string]string{"region": "us"})
		f.cluster("c2", "10.3.0.0/16", map[string]string{"region": "us"})
		for _, c := range []string{"c0", "c1", "c2"} {
			var eps []*fedmeshv1.Endpoint
			for range 10 {
				w.seq++
				eps = append(eps, w.pod(c, w.pick([]string{"n0", "n1"}), fmt.Sprintf("p%d", w.seq)))
			}
			f.pods(c, eps...)
		}
		var pols []*fedmeshv1.Policy
		for step := range steps {
			switch op := w.r.IntN(10); {
			case op < 4 || len(pols) == 0:
				p := w.policy(fmt.Sprintf("pol%d", step))
				pols = append(pols, p)
				f.policies(p.GetCluster(), p)
			case op < 6:
				i := w.r.IntN(len(pols))
				f.deletePolicy(pols[i])
				pols = slices.Delete(pols, i, i+1)
			case op < 8:
				all := f.st.Endpoints("", "", "")
				e := all[w.r.IntN(len(all))]
				f.pods(e.GetCluster(), w.pod(e.GetCluster(), e.GetNamespace(), e.GetName()))
			case op < 9:
				c := w.pick([]string{"c0", "c1", "c2"})
				w.seq++
				f.pods(c, w.pod(c, w.pick([]string{"n0", "n1"}), fmt.Sprintf("p%d", w.seq)))
			default:
				all := f.st.Endpoints("", "", "")
				e := all[w.r.IntN(len(all))]
				f.do(store.CmdDeleteEndpoints, &fedmeshv1.DeleteEndpointsRequest{Cluster: e.GetCluster(), Keys: []*fedmeshv1.EndpointKey{{Namespace: e.GetNamespace(), Name: e.GetName()}}})
			}
			where := fmt.Sprintf("seed %d step %d", seed, step)
			checkCompact(t, f, where)
			all := f.st.Endpoints("", "", "")
			for range flows {
				src, dst := all[w.r.IntN(len(all))], all[w.r.IntN(len(all))]
				proto := []uint8{policy.ProtoTCP, policy.ProtoUDP}[w.r.IntN(2)]
				port := []uint16{53, 80, 443, 8080}[w.r.IntN(4)]
				if v := f.judge(src, dst, proto, port); !v.agree() {
					t.Fatalf("%s: %s %v -> %s %v proto %d port %d: %+v\npolicies: %v", where, epKey(src), src.GetLabels(), epKey(dst), dst.GetLabels(), proto, port, v, pols)
				}
				cases++
			}
		}
	}
	if cases < 10000 {
		t.Fatalf("only %d flows", cases)
	}
	t.Logf("%d random flows agreed", cases)
}
