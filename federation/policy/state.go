package policy

import (
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// clusterMode says which clusters a selector peer's pods may run in.
type clusterMode uint8

const (
	// peerOwnCluster: a Kubernetes policy's peer, in the policy's cluster.
	peerOwnCluster clusterMode = iota
	// peerSameCluster: a federated peer without cluster selector, in the
	// cluster of the selected (local) pod.
	peerSameCluster
	// peerClusterSelector: a federated peer whose clusters match a selector.
	peerClusterSelector
)

// peer is one selector peer (podSelector/namespaceSelector/clusterSelector)
// of one rule, with the groups and identities it currently matches.
type peer struct {
	rule       *rule
	podSel     labels.Selector // nil: every pod
	nsSel      labels.Selector // nil: the policy's namespace (every one if global)
	mode       clusterMode
	clusterSel labels.Selector
	// groups the peer matches, ignoring peerSameCluster (applied per local
	// endpoint by reading ids of its cluster).
	groups map[*group]struct{}
	// ids[cluster][identity] counts the matched groups holding endpoints
	// of that identity (never 0).
	ids map[string]map[uint32]int
}

type rule struct {
	pol     *policyState
	dir     Direction
	index   int
	ports   []portSpec
	anyPort bool // no ports listed: every port of every protocol
	anyPeer bool // no peers listed: every source/destination
	peers   []*peer
	cidrs   []cidrPeer
	named   bool // some port is named
}

type policyState struct {
	key       PolicyKey
	np        *NetworkPolicy
	federated bool
	podSel    labels.Selector
	// clusterSel of a federated policy; nil means every cluster.
	clusterSel labels.Selector
	applies    [2]bool // by Direction: policyTypes after defaulting
	rules      [2][]*rule
	// selected[cluster] are the groups the policy selects.
	selected map[string]map[*group]struct{}
	// global is true when the compiled rules of selected endpoints depend on
	// every endpoint (egress named ports to any peer or to an ipBlock).
	global bool
}

func newPolicyState(np *NetworkPolicy) *policyState {
	ps := &policyState{key: np.Key(), np: np, federated: np.Federated, selected: map[string]map[*group]struct{}{}}
	spec := &np.Policy.Spec
	ps.podSel = selector(&spec.PodSelector)
	if np.Federated && np.ClusterSelector != nil {
		ps.clusterSel = selector(np.ClusterSelector)
	}
	if len(spec.PolicyTypes) == 0 {
		// Kubernetes defaulting: Ingress always, Egress when rules exist.
		ps.applies[Ingress] = true
		ps.applies[Egress] = len(spec.Egress) > 0
	}
	for _, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ps.applies[Ingress] = true
		case networkingv1.PolicyTypeEgress:
			ps.applies[Egress] = true
		}
	}
	for i, r := range spec.Ingress {
		ps.rules[Ingress] = append(ps.rules[Ingress], ps.newRule(Ingress, i, r.Ports, r.From, at(np.IngressPeerClusters, i)))
	}
	for i, r := range spec.Egress {
		ps.rules[Egress] = append(ps.rules[Egress], ps.newRule(Egress, i, r.Ports, r.To, at(np.EgressPeerClusters, i)))
	}
	return ps
}

func (ps *policyState) newRule(dir Direction, index int, ports []networkingv1.NetworkPolicyPort, peers []networkingv1.NetworkPolicyPeer, clusters []*metav1.LabelSelector) *rule {
	r := &rule{pol: ps, dir: dir, index: index, ports: buildPorts(ports), anyPort: len(ports) == 0, anyPeer: len(peers) == 0}
	for _, p := range r.ports {
		if p.name != "" {
			r.named = true
		}
	}
	for j, p := range peers {
		if p.IPBlock != nil {
			if c, ok := buildCIDR(p.IPBlock); ok {
				r.cidrs = append(r.cidrs, c)
			}
			continue
		}
		pe := &peer{rule: r, groups: map[*group]struct{}{}, ids: map[string]map[uint32]int{}}
		if p.PodSelector != nil {
			pe.podSel = selector(p.PodSelector)
		}
		if p.NamespaceSelector != nil {
			pe.nsSel = selector(p.NamespaceSelector)
		}
		switch {
		case !ps.federated:
			pe.mode = peerOwnCluster
		case j < len(clusters) && clusters[j] != nil:
			pe.mode = peerClusterSelector
			pe.clusterSel = selector(clusters[j])
		default:
			pe.mode = peerSameCluster
		}
		r.peers = append(r.peers, pe)
	}
	if dir == Egress && r.named && (r.anyPeer || len(r.cidrs) > 0) {
		ps.global = true
	}
	return r
}

// selects reports whether the policy selects endpoints of group g, whose
// cluster has labels cl.
func (ps *policyState) selects(g *group, cl labels.Set) bool {
	if ps.federated {
		if ns := ps.key.Namespace; ns != "" && g.ns != ns {
			return false
		}
		if ps.clusterSel != nil && !ps.clusterSel.Matches(cl) {
			return false
		}
	} else if g.cluster != ps.key.Cluster || g.ns != ps.key.Namespace {
		return false
	}
	return ps.podSel.Matches(g.labels)
}

// matches reports whether the peer's selectors match pods of group g
// (cluster labels cl), leaving out the peerSameCluster condition. Endpoints
// without an identity are matched by no peer (the dataplane could not tell
// them apart): the peer's identities leave out 0, and Explain checks.
func (p *peer) matches(g *group, cl labels.Set) bool {
	pol := p.rule.pol
	switch p.mode {
	case peerOwnCluster:
		if g.cluster != pol.key.Cluster {
			return false
		}
	case peerClusterSelector:
		if !p.clusterSel.Matches(cl) {
			return false
		}
	}
	if p.nsSel != nil {
		if !p.nsSel.Matches(g.nsLabels) {
			return false
		}
	} else if ns := pol.key.Namespace; ns != "" && g.ns != ns {
		return false
	}
	return p.podSel == nil || p.podSel.Matches(g.labels)
}

// group is the set of endpoints with equal cluster, namespace, labels and
// namespace labels: every selector treats them alike, so selectors are
// evaluated once per group, not per endpoint. Identities are not part of
// it: an endpoint whose identity changes (a policy made a filtered label
// key count, and its identity split) stays in its group, and only the
// identity sets of the peers matching the group change.
type group struct {
	key      string
	cluster  string
	ns       string
	labels   labels.Set
	nsLabels labels.Set
	// ids counts the group's endpoints per identity.
	ids map[uint32]int
	eps map[*endpoint]struct{}
	// locals counts the local endpoints of eps (those compiled).
	locals     int
	selectedBy map[*policyState]struct{}
	peerOf     map[*peer]struct{}
	// tiers are the tier policies applying to the group (Admin, Baseline),
	// in evaluation order, when tiersValid (computed for local groups on
	// their first compile, then kept in step by tierPolicyChanged).
	tiers      [2][]*tierPolicy
	tiersValid bool
}

type clusterNS struct{ cluster, ns string }
