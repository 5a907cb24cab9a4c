package dataplane

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/identity"
	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// tierWorld is a small federation for the tiered differential test: two
// clusters, three namespaces each, a dozen pods (three of them local to
// the node under test, behind real veths), random ClusterNetworkPolicies
// and NetworkPolicies compiled by the engine the agent runs.
type tierWorld struct {
	r     *rand.Rand
	alloc *identity.Allocator
	eps   []*fedmeshv1.Endpoint
	local map[string]bool // endpoint key string -> attached here
}

var tierNamespaces = []string{"n0", "n1", "n2"}

func (w *tierWorld) pick(vs ...string) string { return vs[w.r.IntN(len(vs))] }

func (w *tierWorld) endpoints(n int) {
	for i := range n {
		cl := fmt.Sprintf("c%d", i%2)
		ns := tierNamespaces[w.r.IntN(len(tierNamespaces))]
		labels := map[string]string{"app": w.pick("a", "b", "c")}
		id, _, err := w.alloc.Acquire(identity.For(cl, ns, labels, nil))
		if err != nil {
			panic(err)
		}
		ep := &fedmeshv1.Endpoint{Cluster: cl, Namespace: ns, Name: fmt.Sprintf("p%d", i), Labels: labels,
			NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": ns, "team": map[string]string{"n0": "t0", "n1": "t1", "n2": "t0"}[ns]},
			Identity:        id, Node: "node0",
			Ips: []string{fmt.Sprintf("198.18.%d.%d", i%2, i+1), fmt.Sprintf("fd00:18:%d::%x", i%2, i+1)}}
		if w.r.IntN(3) != 0 {
			ep.NamedPorts = append(ep.NamedPorts, &fedmeshv1.NamedPort{Name: "http", Port: uint32([]int{80, 8080}[w.r.IntN(2)])})
		}
		if w.r.IntN(2) == 0 {
			ep.NamedPorts = append(ep.NamedPorts, &fedmeshv1.NamedPort{Name: "dns", Port: 53, Protocol: fedmeshv1.Protocol_PROTOCOL_UDP})
		}
		w.eps = append(w.eps, ep)
	}
}

func (w *tierWorld) selector(keys ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	k := keys[w.r.IntN(len(keys))]
	val := func() string {
		switch k {
		case "app":
			return w.pick("a", "b", "c")
		case "team":
			return w.pick("t0", "t1")
		case "region":
			return w.pick("eu", "us")
		}
		return w.pick(tierNamespaces...)
	}
	switch w.r.IntN(4) {
	case 0: // everything
	case 1, 2:
		s.MatchLabels = map[string]string{k: val()}
	case 3:
		s.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: k, Operator: metav1.LabelSelectorOpNotIn, Values: []string{val()}}}
	}
	return s
}

var tierNetworks = []cnpv1.CIDR{"198.18.0.0/16", "198.18.1.0/24", "198.18.0.0/28", "0.0.0.0/0", "203.0.113.0/24",
	"fd00:18::/32", "fd00:18:1::/48", "::/0", "2001:db8::/32"}

func (w *tierWorld) protocols() []cnpv1.ClusterNetworkPolicyProtocol {
	var out []cnpv1.ClusterNetworkPolicyProtocol
	for range w.r.IntN(3) {
		var port *cnpv1.Port
		switch w.r.IntN(3) {
		case 1:
			port = &cnpv1.Port{Number: int32(portPool[w.r.IntN(len(portPool)-1)+1])}
		case 2:
			a := int32(portPool[w.r.IntN(len(portPool)-1)])
			port = &cnpv1.Port{Range: &cnpv1.PortRange{Start: max(a, 1), End: max(a, 1) + 1 + int32(w.r.IntN(2000))}}
		}
		var pr cnpv1.ClusterNetworkPolicyProtocol
		switch w.r.IntN(4) {
		case 0:
			pr.TCP = &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: port}
		case 1:
			pr.UDP = &cnpv1.ClusterNetworkPolicyProtocolUDP{DestinationPort: port}
		case 2:
			pr.SCTP = &cnpv1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: port}
		default:
			pr.DestinationNamedPort = w.pick("http", "dns", "nope")
		}
		out = append(out, pr)
	}
	return out
}

// tierPatterns are the domainNames patterns of the random policies and
// tierNames the names local pods learn addresses for: exact and wildcard
// hits, a wildcard's parent, several labels deep, case and a trailing dot.
var (
	tierPatterns = []cnpv1.DomainName{"api.example.com", "*.example.com", "example.com", "*.svc.test", "Mirror.Example.NET."}
	tierNames    = []string{"api.example.com", "www.example.com", "a.b.example.com", "example.com", "x.svc.test", "mirror.example.net", "other.org"}
)

// egressPeers draws a rule's peers; withNames (Accept rules: the only ones
// validation lets carry domainNames) adds domainNames peers to the mix.
func (w *tierWorld) egressPeers(withNames bool) []cnpv1.ClusterNetworkPolicyEgressPeer {
	var out []cnpv1.ClusterNetworkPolicyEgressPeer
	for range 1 + w.r.IntN(2) {
		var pe cnpv1.ClusterNetworkPolicyEgressPeer
		n := 3
		if withNames {
			n = 5
		}
		switch w.r.IntN(n) {
		case 3, 4:
			for range 1 + w.r.IntN(2) {
				pe.DomainNames = append(pe.DomainNames, tierPatterns[w.r.IntN(len(tierPatterns))])
			}
		case 0:
			pe.Namespaces = w.selector("team", "kubernetes.io/metadata.name")
		case 1:
			pe.Pods = &cnpv1.NamespacedPod{NamespaceSelector: *w.selector("team"), PodSelector: *w.selector("app")}
		default:
			for range 1 + w.r.IntN(2) {
				pe.Networks = append(pe.Networks, tierNetworks[w.r.IntN(len(tierNetworks))])
			}
		}
		out = append(out, pe)
	}
	return out
}

var tierActions = []cnpv1.ClusterNetworkPolicyRuleAction{cnpv1.ClusterNetworkPolicyRuleActionAccept,
	cnpv1.ClusterNetworkPolicyRuleActionDeny, cnpv1.ClusterNetworkPolicyRuleActionPass}

// clusterPolicy is a random ClusterNetworkPolicy: either tier, every
// action, priorities 0-2 (equal ones are common), synced or federated.
func (w *tierWorld) clusterPolicy(i int) *policy.ClusterPolicy {
	p := &policy.ClusterPolicy{Name: fmt.Sprintf("cnp%d", i)}
	if w.r.IntN(2) == 0 {
		p.Cluster = fmt.Sprintf("c%d", w.r.IntN(2))
	}
	s := &p.Spec
	s.Tier = []cnpv1.Tier{cnpv1.AdminTier, cnpv1.BaselineTier}[w.r.IntN(2)]
	s.Priority = int32(w.r.IntN(3))
	if w.r.IntN(2) == 0 {
		s.Subject.Namespaces = w.selector("team", "kubernetes.io/metadata.name")
	} else {
		s.Subject.Pods = &cnpv1.NamespacedPod{NamespaceSelector: *w.selector("team"), PodSelector: *w.selector("app")}
	}
	for range w.r.IntN(3) {
		var from []cnpv1.ClusterNetworkPolicyIngressPeer
		var cls []*metav1.LabelSelector
		for _, pe := range w.egressPeers(false) {
			if pe.Networks == nil {
				from = append(from, cnpv1.ClusterNetworkPolicyIngressPeer{Namespaces: pe.Namespaces, Pods: pe.Pods})
				if p.Cluster == "" && w.r.IntN(2) == 0 {
					cls = append(cls, &metav1.LabelSelector{}) // every cluster
				} else {
					cls = append(cls, nil)
				}
			}
		}
		if len(from) == 0 {
			from = []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}
			cls = nil
		}
		s.Ingress = append(s.Ingress, cnpv1.ClusterNetworkPolicyIngressRule{Name: fmt.Sprintf("in%d", len(s.Ingress)),
			Action: tierActions[w.r.IntN(3)], From: from, Protocols: w.protocols()})
		p.IngressPeerClusters = append(p.IngressPeerClusters, cls)
	}
	for range w.r.IntN(3) {
		action := tierActions[w.r.IntN(3)]
		s.Egress = append(s.Egress, cnpv1.ClusterNetworkPolicyEgressRule{Name: fmt.Sprintf("eg%d", len(s.Egress)),
			Action: action, To: w.egressPeers(action == cnpv1.ClusterNetworkPolicyRuleActionAccept), Protocols: w.protocols()})
	}
	return p
}

// networkPolicy is a random Kubernetes NetworkPolicy of one cluster.
func (w *tierWorld) networkPolicy(i int) *policy.NetworkPolicy {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	ports := func() []networkingv1.NetworkPolicyPort {
		switch w.r.IntN(4) {
		case 0:
			return nil
		case 1:
			p := intstr.FromInt32(int32(portPool[w.r.IntN(len(portPool))]))
			return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}}
		case 2:
			p := intstr.FromString("dns")
			return []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &p}}
		}
		p := intstr.FromInt32(1000)
		end := int32(9000)
		return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p, EndPort: &end}}
	}
	peers := func() []networkingv1.NetworkPolicyPeer {
		switch w.r.IntN(3) {
		case 0:
			return nil
		case 1:
			return []networkingv1.NetworkPolicyPeer{{PodSelector: w.selector("app")}}
		}
		return []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: w.pick("198.18.0.0/16", "0.0.0.0/0", "fd00:18::/32")}}}
	}
	np := &policy.NetworkPolicy{Cluster: fmt.Sprintf("c%d", w.r.IntN(2))}
	np.Policy.Namespace = w.pick(tierNamespaces...)
	np.Policy.Name = fmt.Sprintf("np%d", i)
	np.Policy.Spec.PodSelector = *w.selector("app")
	np.Policy.Spec.PolicyTypes = [][]networkingv1.PolicyType{{networkingv1.PolicyTypeIngress}, {networkingv1.PolicyTypeEgress},
		{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}}[w.r.IntN(3)]
	for range w.r.IntN(3) {
		np.Policy.Spec.Ingress = append(np.Policy.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers(), Ports: ports()})
	}
	for range w.r.IntN(3) {
		np.Policy.Spec.Egress = append(np.Policy.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: peers(), Ports: ports()})
	}
	return np
}

func endpointKey(ep *fedmeshv1.Endpoint) policy.EndpointKey {
	return policy.EndpointKey{Cluster: ep.Cluster, Namespace: ep.Namespace, Name: ep.Name}
}

// TestDifferentialTiersKernelVsMemoryVsExplain holds the kernel program,
// the in-memory twin and the reference semantics (Tiers.Explain through
// the engine) to the same verdict on random mixes of ClusterNetworkPolicies
// (both tiers, all three actions, equal priorities, namespaces, pods and
// networks peers, port ranges, named ports) and NetworkPolicies: every new
// flow through a local endpoint, real packets through the kernel program,
// and the deciding rule the twin names maps back (Compiled.Origin) to the
// rule Explain names. Per-rule counters (tier Deny rules included) must
// agree between kernel and twin.
func TestDifferentialTiersKernelVsMemoryVsExplain(t *testing.T) {
	requireKernel(t)
	ns, nsPath := newNetNS(t)
	ifaces := []string{"t0", "t1", "t2"}
	for _, i := range ifaces {
		run(t, "ip", "-n", ns, "link", "add", i, "type", "veth", "peer", "name", "p"+i)
		run(t, "ip", "-n", ns, "link", "set", i, "up")
	}
	ctx := context.Background()
	const revisions, perRevision = 10, 1100
	total, withNames, byLayer := 0, 0, map[string]int{}
	for n := range revisions {
		w := &tierWorld{r: rand.New(rand.NewPCG(uint64(n), 7)), alloc: identity.NewAllocator(), local: map[string]bool{}}
		w.endpoints(12)
		locals := w.eps[:3]
		for _, ep := range locals {
			w.local[endpointKey(ep).String()] = true
		}
		e := policy.NewEngine(policy.WithLocal(func(ep *fedmeshv1.Endpoint) bool { return w.local[endpointKey(ep).String()] }))
		for c := range 2 {
			e.UpsertCluster(&fedmeshv1.Cluster{Name: fmt.Sprintf("c%d", c), Labels: map[string]string{"region": []string{"eu", "us"}[c]}})
		}
		for _, ep := range w.eps {
			e.UpsertEndpoint(ep)
		}
		for i := range 4 + w.r.IntN(4) {
			if err := e.UpsertClusterPolicy(w.clusterPolicy(i)); err != nil {
				t.Fatal(err)
			}
		}
		for i := range w.r.IntN(4) {
			e.UpsertNetworkPolicy(w.networkPolicy(i))
		}
		e.Recompute()
		rev := &Revision{Number: uint64(n + 1), Rules: map[string]policy.EndpointRules{}}
		ipc := NewIPCacheBuilder(IPCache{})
		for _, ep := range w.eps {
			for _, a := range ep.Ips {
				addr := netip.MustParseAddr(a)
				ipc.Set(netip.PrefixFrom(addr, addr.BitLen()), ep.Identity)
			}
		}
		rev.IPCache = ipc.IPCache()
		compiled := map[string]*policy.Compiled{}
		for _, ep := range locals {
			c, ok := e.Rules(endpointKey(ep))
			if !ok {
				t.Fatalf("no rules for local endpoint %s", endpointKey(ep))
			}
			compiled[endpointKey(ep).String()] = c
			rev.Rules[endpointKey(ep).String()] = c.Rules
		}
		// Fresh dataplanes per revision: every packet is a new flow for
		// the twin and the kernel alike, so each is a policy decision
		// (except when a packet happens to repeat a flow; those are
		// compared between kernel and twin only).
		kern, _ := newEBPF(t, nsPath)
		// Every other revision is read through the policy index and
		// ipcache hashes and the CIDR trie, as when the arrays cannot
		// hold a revision.
		viaHash := n%2 == 1
		if viaHash {
			kern.pfaLimit, kern.ipcLimit, kern.cidrLimit = 1, 1, 1
		}
		mem := NewMemory(WithIfindexResolver(func(iface string) (uint32, error) { return ifindexIn(nsPath, iface) }))
		idx := map[string]uint32{}
		for _, dp := range []Dataplane{kern, mem} {
			if err := dp.Apply(ctx, rev); err != nil {
				t.Fatalf("revision %d: %v", n, err)
			}
			for i, ep := range locals {
				if err := dp.Attach(ctx, Endpoint{ID: endpointKey(ep).String(), Interface: ifaces[i]}); err != nil {
					t.Fatal(err)
				}
			}
		}
		for i, ep := range locals {
			idx[endpointKey(ep).String()], _ = ifindexIn(nsPath, ifaces[i])
		}
		for ifindex, v := range kern.shadow[kern.active].fastEndpoints() {
			if got := v.Flags&epfPFPairs != 0; got == viaHash {
				t.Fatalf("revision %d: endpoint %d reads the policy index array: %v, want %v", n, ifindex, got, !viaHash)
			}
			if got := v.Flags&epfIPCArray != 0; got == viaHash {
				t.Fatalf("revision %d: endpoint %d reads the ipcache array: %v, want %v", n, ifindex, got, !viaHash)
			}
		}
		external := []string{"203.0.113.9", "192.0.2.1", "2001:db8::7", "fd00:99::1"}
		// Learned addresses: each local pod resolves random names to
		// external and pod addresses; some answers expire before the
		// packets (the datapath must ignore them), the rest stay live.
		// live[pod][address] are the names Explain is told.
		live := map[string]map[netip.Addr][]string{}
		var learned []LearnedAddr
		now := time.Now()
		for _, ep := range locals {
			id := endpointKey(ep).String()
			live[id] = map[netip.Addr][]string{}
			for range 8 {
				var a netip.Addr
				if w.r.IntN(2) == 0 {
					a = netip.MustParseAddr(external[w.r.IntN(len(external))])
				} else {
					a = netip.MustParseAddr(w.eps[w.r.IntN(len(w.eps))].Ips[w.r.IntN(2)])
				}
				name := tierNames[w.r.IntN(len(tierNames))]
				la := LearnedAddr{Endpoint: id, Addr: a, Name: name, Expires: now.Add(time.Hour)}
				if w.r.IntN(4) == 0 {
					la.Expires = now.Add(20 * time.Millisecond)
				} else {
					live[id][a] = append(live[id][a], name)
				}
				learned = append(learned, la)
			}
		}
		for _, dp := range []Dataplane{kern, mem} {
			if err := dp.Learn(ctx, learned); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(50 * time.Millisecond) // the short answers expire
		err := inNetNS(nsPath, func() error {
			for range perRevision {
				li := w.r.IntN(len(locals))
				local := locals[li]
				fam := w.r.IntN(2)
				localIP := netip.MustParseAddr(local.Ips[fam])
				var peerIP netip.Addr
				if w.r.IntN(6) == 0 {
					peerIP = netip.MustParseAddr(external[2*fam+w.r.IntN(2)])
				} else {
					peerIP = netip.MustParseAddr(w.eps[w.r.IntN(len(w.eps))].Ips[fam])
				}
				dir := policy.Direction(w.r.IntN(2))
				p := pktSpec{src: peerIP, dst: localIP, sport: uint16(1024 + w.r.IntN(60000))}
				if dir == policy.Egress {
					p.src, p.dst = localIP, peerIP
				}
				p.proto = []uint8{protoTCP, protoTCP, protoUDP, protoSCTP, protoICMP}[w.r.IntN(5)]
				p.dport = []uint16{53, 80, 443, 1000, 1023, 8080, 8443, uint16(1 + w.r.IntN(65535))}[w.r.IntN(8)]
				switch p.proto {
				case protoTCP:
					p.tcpFlags = 0x02
				case protoICMP:
					if fam == 1 {
						p.proto = protoICMPv6
						p.icmpType = 128
					} else {
						p.icmpType = 8
					}
					p.icmpID, p.dport = p.sport, 0
				}
				f := p.frame()
				id := endpointKey(local).String()
				got, err := kern.runProg(uint8(dir), idx[id], f)
				if err != nil {
					return fmt.Errorf("run program: %w", err)
				}
				v, reason, rule, err := mem.Process(id, dir, f)
				if err != nil {
					return err
				}
				want := int32(retNext)
				if v == Deny {
					want = retDrop
				}
				if got != want {
					return fmt.Errorf("revision %d packet %d (%s %s): kernel returned %d, memory %s (%s rule %d)\nspec %+v\nrules %+v",
						n, total, id, dir, got, v, reason, rule, p, rev.Rules[id])
				}
				total++
				if reason == ReasonAllowConntrack || reason == ReasonAllowRelated {
					continue
				}
				port := p.dport
				if p.proto == protoICMP || p.proto == protoICMPv6 {
					port = 0
				}
				var names []string
				if dir == policy.Egress {
					names = live[id][peerIP]
				}
				if len(names) > 0 {
					withNames++
				}
				x, err := e.Tiers().Explain(e, policy.Flow{Src: policy.Target{IP: p.src}, Dst: policy.Target{IP: p.dst}, Proto: p.proto, Port: port, DstNames: names})
				if err != nil {
					return fmt.Errorf("explain: %w", err)
				}
				tv := x.Ingress
				if dir == policy.Egress {
					tv = x.Egress
				}
				byLayer[fmt.Sprintf("%s/%v", tv.Layer, tv.Allowed)]++
				if dir == policy.Egress && rule != 0 && slices.ContainsFunc(rev.Rules[id].Egress.Names, func(r policy.NameRule) bool { return r.Rule == policy.RuleID(rule) }) {
					byLayer["by-domainNames"]++
				}
				if (v == Allow) != tv.Allowed {
					return fmt.Errorf("revision %d packet %d (%s %s): dataplane %s (%s rule %d), Explain: %v\nspec %+v\nrules %+v",
						n, total, id, dir, v, reason, rule, tv, p, rev.Rules[id])
				}
				if err := sameDecider(compiled[id], rule, tv); err != nil {
					return fmt.Errorf("revision %d packet %d (%s %s): %w\nspec %+v", n, total, id, dir, err, p)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		kc, err := kern.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mc, _ := mem.Counters(ctx)
		for r, c := range mc.Rules {
			if kc.Rules[r].Packets != c.Packets {
				t.Errorf("revision %d rule %d: kernel counted %d packets, memory %d", n, r, kc.Rules[r].Packets, c.Packets)
			}
		}
		kern.Close()
		mem.Close()
	}
	if total < 10000 {
		t.Fatalf("compared %d packets, want >= 10000", total)
	}
	if byLayer["by-domainNames"] == 0 {
		t.Fatal("no packet was decided by a domainNames rule: the generator lost them")
	}
	t.Logf("%d packets agree (kernel, twin, Explain), %d to learned addresses; directions decided: %v", total, withNames, byLayer)
}

// sameDecider checks that the rule the dataplane named maps back to the
// rule Explain says decided.
func sameDecider(c *policy.Compiled, rule policy.RuleID, v policy.TieredVerdict) error {
	origin, _ := c.Origin(rule)
	tr, isTier := origin.TierRule()
	switch v.Layer {
	case policy.LayerAdmin, policy.LayerBaseline:
		if !isTier || tr != v.Rule {
			return fmt.Errorf("dataplane rule %d (%+v), Explain decided by %v", rule, origin, v.Rule)
		}
	case policy.LayerNetworkPolicy:
		// Which allowing NetworkPolicy rule names a packet is the longest
		// port prefix's (any allowing rule is right); only the layer must
		// agree.
		if isTier || (v.Allowed && rule == 0) || (!v.Allowed && rule != 0) {
			return fmt.Errorf("dataplane rule %d (%+v), Explain: %v", rule, origin, v)
		}
	default:
		var want policy.TierRule
		if n := len(v.Passed); n > 0 && v.Passed[n-1].Tier == cnpv1.BaselineTier {
			want = v.Passed[n-1]
		}
		if tr != want {
			return fmt.Errorf("dataplane rule %d (%+v), Explain: %v", rule, origin, v)
		}
	}
	return nil
}
