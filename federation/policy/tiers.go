package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// ClusterPolicyKey names a ClusterNetworkPolicy: the cluster it was synced
// from ("" for a federated one) and its name. ClusterNetworkPolicies are
// cluster-scoped, so there is no namespace.
type ClusterPolicyKey struct {
	Cluster, Name string
}

func (k ClusterPolicyKey) String() string {
	if k.Cluster == "" {
		return "federated/" + k.Name
	}
	return k.Cluster + "/" + k.Name
}

func compareClusterPolicyKeys(a, b ClusterPolicyKey) int {
	if c := strings.Compare(a.Cluster, b.Cluster); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// ClusterPolicy is a ClusterNetworkPolicy as the semantics core takes it:
// the upstream spec unchanged, plus where it came from and, for a
// federated one, which clusters it and its peers reach.
type ClusterPolicy struct {
	// Cluster the policy was synced from; "" for a federated policy.
	Cluster string
	Name    string
	// ClusterSelector picks the clusters a federated policy applies to; nil
	// means every cluster. Ignored for a synced policy.
	ClusterSelector *metav1.LabelSelector
	Spec            cnpv1.ClusterNetworkPolicySpec
	// IngressPeerClusters[i][j] is the cluster selector of
	// Spec.Ingress[i].From[j] of a federated policy: nil means the subject
	// pod's own cluster, an empty selector every cluster. Missing entries
	// are nil. A synced policy's peers are always in its own cluster.
	IngressPeerClusters [][]*metav1.LabelSelector
	// EgressPeerClusters is the same for Spec.Egress[i].To[j].
	EgressPeerClusters [][]*metav1.LabelSelector
}

// Key returns the policy's key.
func (p *ClusterPolicy) Key() ClusterPolicyKey {
	return ClusterPolicyKey{Cluster: p.Cluster, Name: p.Name}
}

// Layer is one step of the order of decision for a direction.
type Layer uint8

const (
	// LayerAdmin is the ClusterNetworkPolicy Admin tier.
	LayerAdmin Layer = iota + 1
	// LayerNetworkPolicy is Kubernetes NetworkPolicy, federated included.
	LayerNetworkPolicy
	// LayerBaseline is the ClusterNetworkPolicy Baseline tier.
	LayerBaseline
	// LayerDefault is the default: allow.
	LayerDefault
)

func (l Layer) String() string {
	switch l {
	case LayerAdmin:
		return "admin"
	case LayerNetworkPolicy:
		return "networkpolicy"
	case LayerBaseline:
		return "baseline"
	case LayerDefault:
		return "default"
	}
	return "unknown"
}

// TierRule names one rule of a ClusterNetworkPolicy that matched a flow.
type TierRule struct {
	Tier     cnpv1.Tier
	Policy   ClusterPolicyKey
	Priority int32
	// Direction of the rule list (Spec.Ingress or Spec.Egress) and Index in it.
	Direction Direction
	Index     int
	// Name is the rule's name; "" when the rule has none.
	Name   string
	Action cnpv1.ClusterNetworkPolicyRuleAction
}

func (r TierRule) String() string {
	name := r.Name
	if name == "" {
		name = fmt.Sprintf("#%d", r.Index)
	}
	return fmt.Sprintf("%s rule %s (%s) of %s policy %s (priority %d)", r.Direction, name, r.Action, r.Tier, r.Policy, r.Priority)
}

// ruleMatch is what a tier stage of the order of decision needs to know
// about a flow to decide whether one rule matches it.
type flowSide struct {
	local   *endpoint
	dir     Direction
	peerEp  *endpoint  // nil for an address outside the federation
	peerIP  netip.Addr // the peer's address; may be the zero Addr
	proto   uint8
	port    uint16
	cluster labels.Set // labels of local's cluster
	// peerCluster are the labels of peerEp's cluster.
	peerCluster labels.Set
	// names are the names (canonical) the local endpoint resolved peerIP
	// from, for egress: what a domainNames peer matches.
	names []string
	// ifResolved collects the domainNames rules the walk passed because
	// names matched none of their patterns.
	ifResolved *[]NameCondition
}

// tierPolicy is a ClusterPolicy with its selectors parsed once.
type tierPolicy struct {
	key        ClusterPolicyKey
	src        *ClusterPolicy
	clusterSel labels.Selector // nil: every cluster (federated only)
	subject    podSelector
	rules      [2][]tierRule // by Direction
}

type podSelector struct {
	nsSel  labels.Selector
	podSel labels.Selector // nil: every pod of the namespaces
}

func (s podSelector) matches(ep *endpoint) bool {
	return s.nsSel.Matches(ep.nsLabels) && (s.podSel == nil || s.podSel.Matches(ep.labels))
}

type tierRule struct {
	index  int
	name   string
	action cnpv1.ClusterNetworkPolicyRuleAction
	// failClosed: a peer with no field set (a newer CRD than this code);
	// an Accept rule's such peer matches nothing, a Deny rule matches every
	// peer, and a Pass rule becomes a Deny of every peer.
	failClosed bool
	peers      []tierPeer
	anyProto   bool
	protos     []tierProto
}

type tierPeer struct {
	// pods is set for a namespaces or pods peer.
	pods *podSelector
	// mode and clusterSel say which clusters the peer pod may run in.
	mode       clusterMode
	clusterSel labels.Selector
	networks   []netip.Prefix
	// names are a domainNames peer's patterns, canonical: it matches an
	// egress destination the subject pod resolved from a matching name.
	names []string
	// A nodes peer matches nothing: fedmesh does not know node addresses
	// (see doc.go).
}

type tierProto struct {
	proto uint8
	ports PortRange
	// named is a destinationNamedPort: any protocol the destination pod
	// declares that name for.
	named string
}

// Tiers holds the ClusterNetworkPolicies of the federation, both tiers.
// It is a plain value: not safe for concurrent use; its owner serialises
// calls, as with Engine.
type Tiers struct {
	policies map[ClusterPolicyKey]*tierPolicy
	// ordered[tier] is sorted by the order of evaluation; nil when stale.
	ordered map[cnpv1.Tier][]*tierPolicy
}

// NewTiers returns an empty set of ClusterNetworkPolicies.
func NewTiers() *Tiers {
	return &Tiers{policies: map[ClusterPolicyKey]*tierPolicy{}}
}

// Upsert adds or replaces a policy. It fails, leaving the set unchanged,
// when the policy cannot be evaluated as written (an unknown tier or
// action, a selector or CIDR that does not parse): validation at the API
// edge rejects those first, and the core never guesses.
func (t *Tiers) Upsert(p *ClusterPolicy) error {
	tp, err := newTierPolicy(p)
	if err != nil {
		return fmt.Errorf("compile cluster network policy %s: %w", p.Key(), err)
	}
	t.policies[tp.key] = tp
	t.ordered = nil
	return nil
}

// Delete removes a policy; deleting an absent one is a no-op.
func (t *Tiers) Delete(key ClusterPolicyKey) {
	delete(t.policies, key)
	t.ordered = nil
}

// Has reports whether a policy with key is held.
func (t *Tiers) Has(key ClusterPolicyKey) bool { _, ok := t.policies[key]; return ok }

// Len is the number of policies held.
func (t *Tiers) Len() int { return len(t.policies) }

// comparePolicyOrder is the order of evaluation within a tier: ascending
// priority; at equal priority federated policies before synced ones (their
// Cluster "" sorts first), then by cluster name, then by policy name.
func comparePolicyOrder(a, b *tierPolicy) int {
	if c := cmp.Compare(a.src.Spec.Priority, b.src.Spec.Priority); c != 0 {
		return c
	}
	return compareClusterPolicyKeys(a.key, b.key)
}

func (t *Tiers) tier(tier cnpv1.Tier) []*tierPolicy {
	if t.ordered == nil {
		t.ordered = map[cnpv1.Tier][]*tierPolicy{}
		for _, tp := range t.policies {
			t.ordered[tp.src.Spec.Tier] = append(t.ordered[tp.src.Spec.Tier], tp)
		}
		for _, ps := range t.ordered {
			slices.SortFunc(ps, comparePolicyOrder)
		}
	}
	return t.ordered[tier]
}

func parseSelector(s *metav1.LabelSelector, path string) (labels.Selector, error) {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sel, nil
}

func parseNamespacedPod(np *cnpv1.NamespacedPod, path string) (podSelector, error) {
	ns, err := parseSelector(&np.NamespaceSelector, path+".namespaceSelector")
	if err != nil {
		return podSelector{}, err
	}
	pod, err := parseSelector(&np.PodSelector, path+".podSelector")
	if err != nil {
		return podSelector{}, err
	}
	return podSelector{nsSel: ns, podSel: pod}, nil
}

func newTierPolicy(p *ClusterPolicy) (*tierPolicy, error) {
	s := &p.Spec
	if s.Tier != cnpv1.AdminTier && s.Tier != cnpv1.BaselineTier {
		return nil, fmt.Errorf("spec.tier: unknown tier %q", s.Tier)
	}
	tp := &tierPolicy{key: p.Key(), src: p}
	if p.Cluster == "" && p.ClusterSelector != nil {
		sel, err := parseSelector(p.ClusterSelector, "clusterSelector")
		if err != nil {
			return nil, err
		}
		tp.clusterSel = sel
	}
	switch {
	case s.Subject.Namespaces != nil && s.Subject.Pods == nil:
		sel, err := parseSelector(s.Subject.Namespaces, "spec.subject.namespaces")
		if err != nil {
			return nil, err
		}
		tp.subject = podSelector{nsSel: sel}
	case s.Subject.Pods != nil && s.Subject.Namespaces == nil:
		ps, err := parseNamespacedPod(s.Subject.Pods, "spec.subject.pods")
		if err != nil {
			return nil, err
		}
		tp.subject = ps
	default:
		return nil, fmt.Errorf("spec.subject: exactly one of namespaces and pods must be set")
	}
	for i := range s.Ingress {
		r := &s.Ingress[i]
		path := fmt.Sprintf("spec.ingress[%d]", i)
		peers := make([]cnpv1.ClusterNetworkPolicyEgressPeer, len(r.From))
		for j, f := range r.From {
			peers[j] = cnpv1.ClusterNetworkPolicyEgressPeer{Namespaces: f.Namespaces, Pods: f.Pods}
		}
		tr, err := newTierRule(p, Ingress, i, r.Name, r.Action, peers, at(p.IngressPeerClusters, i), r.Protocols, path, "from")
		if err != nil {
			return nil, err
		}
		tp.rules[Ingress] = append(tp.rules[Ingress], tr)
	}
	for i := range s.Egress {
		r := &s.Egress[i]
		path := fmt.Sprintf("spec.egress[%d]", i)
		tr, err := newTierRule(p, Egress, i, r.Name, r.Action, r.To, at(p.EgressPeerClusters, i), r.Protocols, path, "to")
		if err != nil {
			return nil, err
		}
		tp.rules[Egress] = append(tp.rules[Egress], tr)
	}
	return tp, nil
}

func newTierRule(p *ClusterPolicy, dir Direction, index int, name string, action cnpv1.ClusterNetworkPolicyRuleAction,
	peers []cnpv1.ClusterNetworkPolicyEgressPeer, clusters []*metav1.LabelSelector, protos []cnpv1.ClusterNetworkPolicyProtocol,
	path, peerField string) (tierRule, error) {
	switch action {
	case cnpv1.ClusterNetworkPolicyRuleActionAccept, cnpv1.ClusterNetworkPolicyRuleActionDeny, cnpv1.ClusterNetworkPolicyRuleActionPass:
	default:
		return tierRule{}, fmt.Errorf("%s.action: unknown action %q", path, action)
	}
	tr := tierRule{index: index, name: name, action: action, anyProto: len(protos) == 0}
	for j, pe := range peers {
		ppath := fmt.Sprintf("%s.%s[%d]", path, peerField, j)
		tpe := tierPeer{mode: peerOwnCluster}
		if p.Cluster == "" {
			tpe.mode = peerSameCluster
			if j < len(clusters) && clusters[j] != nil {
				sel, err := parseSelector(clusters[j], ppath+".clusterSelector")
				if err != nil {
					return tierRule{}, err
				}
				tpe.mode, tpe.clusterSel = peerClusterSelector, sel
			}
		}
		switch {
		case pe.Namespaces != nil:
			sel, err := parseSelector(pe.Namespaces, ppath+".namespaces")
			if err != nil {
				return tierRule{}, err
			}
			tpe.pods = &podSelector{nsSel: sel}
		case pe.Pods != nil:
			ps, err := parseNamespacedPod(pe.Pods, ppath+".pods")
			if err != nil {
				return tierRule{}, err
			}
			tpe.pods = &ps
		case len(pe.Networks) > 0:
			for k, c := range pe.Networks {
				pfx, err := netip.ParsePrefix(string(c))
				if err != nil {
					return tierRule{}, fmt.Errorf("%s.networks[%d]: %w", ppath, k, err)
				}
				tpe.networks = append(tpe.networks, pfx.Masked())
			}
		case len(pe.DomainNames) > 0:
			for _, d := range pe.DomainNames {
				tpe.names = append(tpe.names, CanonicalDomainName(string(d)))
			}
		case pe.Nodes != nil:
			// Matches nothing (see tierPeer).
		default:
			tr.failClosed = true
		}
		tr.peers = append(tr.peers, tpe)
	}
	for k, pr := range protos {
		ppath := fmt.Sprintf("%s.protocols[%d]", path, k)
		var (
			proto uint8
			port  *cnpv1.Port
			n     int
		)
		if pr.TCP != nil {
			proto, port, n = ProtoTCP, pr.TCP.DestinationPort, n+1
		}
		if pr.UDP != nil {
			proto, port, n = ProtoUDP, pr.UDP.DestinationPort, n+1
		}
		if pr.SCTP != nil {
			proto, port, n = ProtoSCTP, pr.SCTP.DestinationPort, n+1
		}
		if pr.DestinationNamedPort != "" {
			n++
		}
		if n != 1 {
			return tierRule{}, fmt.Errorf("%s: exactly one of tcp, udp, sctp and destinationNamedPort must be set", ppath)
		}
		if pr.DestinationNamedPort != "" {
			tr.protos = append(tr.protos, tierProto{named: pr.DestinationNamedPort})
			continue
		}
		ports, err := portRange(port, ppath)
		if err != nil {
			return tierRule{}, err
		}
		tr.protos = append(tr.protos, tierProto{proto: proto, ports: ports})
	}
	if tr.failClosed && action == cnpv1.ClusterNetworkPolicyRuleActionPass {
		// "For Deny and Pass rules, fail closed means: treat the rule as a
		// Deny all rule" (ClusterNetworkPolicyEgressPeer).
		tr.action = cnpv1.ClusterNetworkPolicyRuleActionDeny
	}
	return tr, nil
}

func portRange(p *cnpv1.Port, path string) (PortRange, error) {
	switch {
	case p == nil:
		return AllPorts, nil
	case p.Range != nil && p.Number == 0:
		r := p.Range
		if r.Start < 1 || r.End > 65535 || r.Start >= r.End {
			return PortRange{}, fmt.Errorf("%s.destinationPort.range: need 1 <= start < end <= 65535, have %d-%d", path, r.Start, r.End)
		}
		return PortRange{First: uint16(r.Start), Last: uint16(r.End)}, nil
	case p.Range == nil && p.Number >= 1 && p.Number <= 65535:
		return PortRange{First: uint16(p.Number), Last: uint16(p.Number)}, nil
	}
	return PortRange{}, fmt.Errorf("%s.destinationPort: need exactly one of number (1-65535) and range", path)
}

// appliesTo reports whether the policy's subject includes the endpoint.
func (tp *tierPolicy) appliesTo(ep *endpoint, cl labels.Set) bool {
	if tp.key.Cluster != "" {
		if ep.key.Cluster != tp.key.Cluster {
			return false
		}
	} else if tp.clusterSel != nil && !tp.clusterSel.Matches(cl) {
		return false
	}
	return tp.subject.matches(ep)
}

func (r *tierRule) matches(tp *tierPolicy, f *flowSide) bool {
	if !r.protoMatches(f, false) {
		return false
	}
	if r.failClosed && r.action != cnpv1.ClusterNetworkPolicyRuleActionAccept {
		return true
	}
	for i := range r.peers {
		pe := &r.peers[i]
		if len(pe.names) > 0 {
			// A name has no named ports (validation rejects the pair).
			if f.dir == Egress && r.protoMatches(f, true) && pe.matchesName(f.names) {
				return true
			}
			continue
		}
		if pe.matches(tp, f) {
			return true
		}
	}
	return false
}

// protoMatches reports whether f's protocol and port match r's;
// numericOnly ignores destinationNamedPort entries.
func (r *tierRule) protoMatches(f *flowSide, numericOnly bool) bool {
	if r.anyProto {
		return true
	}
	dst := f.local // ingress: the local pod is the destination
	if f.dir == Egress {
		dst = f.peerEp
	}
	for _, p := range r.protos {
		if p.named == "" {
			if p.proto == f.proto && f.proto != ProtoICMP && f.proto != ProtoICMPv6 && p.ports.Contains(f.port) {
				return true
			}
			continue
		}
		if dst == nil || numericOnly {
			continue
		}
		if n, ok := dst.resolve(p.named, f.proto); ok && n == f.port {
			return true
		}
	}
	return false
}

func (pe *tierPeer) matches(tp *tierPolicy, f *flowSide) bool {
	if len(pe.networks) > 0 {
		if !f.peerIP.IsValid() {
			return false
		}
		a := f.peerIP.Unmap()
		for _, n := range pe.networks {
			if n.Contains(a) {
				return true
			}
		}
		return false
	}
	if pe.pods == nil || f.peerEp == nil {
		return false
	}
	switch pe.mode {
	case peerOwnCluster:
		if f.peerEp.key.Cluster != tp.key.Cluster {
			return false
		}
	case peerSameCluster:
		if f.peerEp.key.Cluster != f.local.key.Cluster {
			return false
		}
	case peerClusterSelector:
		if !pe.clusterSel.Matches(f.peerCluster) {
			return false
		}
	}
	return pe.pods.matches(f.peerEp)
}

func (pe *tierPeer) matchesName(names []string) bool {
	for _, p := range pe.names {
		for _, n := range names {
			if MatchDomainName(p, n) {
				return true
			}
		}
	}
	return false
}

// nameCondition is the condition under which r would match f but does not:
// a domainNames peer whose patterns no name of f matches. ok is false when
// r has no such peer or its protocols do not match f.
func (r *tierRule) nameCondition(f *flowSide) (patterns []string, ok bool) {
	if f.dir != Egress || !r.protoMatches(f, true) {
		return nil, false
	}
	for i := range r.peers {
		pe := &r.peers[i]
		if len(pe.names) > 0 && !pe.matchesName(f.names) {
			patterns = append(patterns, pe.names...)
		}
	}
	return patterns, len(patterns) > 0
}

// decideTier walks one tier for one direction: the first matching rule of
// the first policy (in evaluation order) that has one decides.
func (t *Tiers) decideTier(tier cnpv1.Tier, f *flowSide) (TierRule, bool) {
	for _, tp := range t.tier(tier) {
		rules := tp.rules[f.dir]
		if len(rules) == 0 || !tp.appliesTo(f.local, f.cluster) {
			continue
		}
		for i := range rules {
			r := &rules[i]
			tr := TierRule{Tier: tier, Policy: tp.key, Priority: tp.src.Spec.Priority,
				Direction: f.dir, Index: r.index, Name: r.name, Action: r.action}
			if r.matches(tp, f) {
				return tr, true
			}
			if f.ifResolved != nil {
				if pats, ok := r.nameCondition(f); ok {
					*f.ifResolved = append(*f.ifResolved, NameCondition{Rule: tr, Patterns: pats})
				}
			}
		}
	}
	return TierRule{}, false
}
