package policy

import (
	"fmt"
	"strings"

	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// TieredVerdict is the decision of one direction through every layer:
// Admin tier, NetworkPolicy, Baseline tier, default.
type TieredVerdict struct {
	Direction Direction
	Allowed   bool
	// Layer decided the direction.
	Layer Layer
	// Rule is the deciding ClusterNetworkPolicy rule (Layer Admin or
	// Baseline); its Action is Accept or Deny.
	Rule TierRule
	// Passed are the Pass rules that handed the decision on to a later
	// layer, in order: at most one from the Admin tier and one from the
	// Baseline tier.
	Passed []TierRule
	// NetworkPolicy is the NetworkPolicy layer's view (always computed, so
	// an Admin decision can still show what NetworkPolicy would say); it
	// decided when Layer is LayerNetworkPolicy.
	NetworkPolicy DirectionVerdict
	// NotEnforced: the side is not a federation endpoint; nothing applies.
	NotEnforced bool
	// IfResolved are the domainNames rules (egress) the walk passed, in
	// order, before the layer that decided: each would have accepted the
	// flow had the destination been resolved from a name matching one of
	// its patterns (Flow.DstNames matched none). An address alone cannot
	// decide a domainNames rule.
	IfResolved []NameCondition
}

// NameCondition is a domainNames rule that did not match a flow only
// because the destination was not resolved from a matching name.
type NameCondition struct {
	Rule TierRule
	// Patterns are the rule's domainNames patterns Flow.DstNames missed.
	Patterns []string
}

func (c NameCondition) String() string {
	return fmt.Sprintf("%s would accept if the destination was resolved from a name matching %s",
		c.Rule, strings.Join(c.Patterns, ", "))
}

// String is a sentence for humans.
func (v TieredVerdict) String() string {
	side := "destination ingress"
	if v.Direction == Egress {
		side = "source egress"
	}
	verdict := "denied"
	if v.Allowed {
		verdict = "allowed"
	}
	var b strings.Builder
	switch {
	case v.NotEnforced:
		return fmt.Sprintf("%s: allowed: not a federation endpoint, nothing enforced", side)
	case v.Layer == LayerAdmin || v.Layer == LayerBaseline:
		fmt.Fprintf(&b, "%s: %s by %s", side, verdict, v.Rule)
	case v.Layer == LayerNetworkPolicy:
		b.WriteString(v.NetworkPolicy.String())
	default:
		fmt.Fprintf(&b, "%s: allowed: no ClusterNetworkPolicy or NetworkPolicy decides (default allow)", side)
	}
	for _, p := range v.Passed {
		fmt.Fprintf(&b, "; passed on by %s", p)
	}
	for _, c := range v.IfResolved {
		fmt.Fprintf(&b, "; %s", c)
	}
	return b.String()
}

// TieredExplanation is the verdict on a flow through every layer.
type TieredExplanation struct {
	// Allowed only when both directions allow.
	Allowed  bool
	Egress   TieredVerdict
	Ingress  TieredVerdict
	Src, Dst Resolved
}

// Explain decides a flow through the order of decision: egress at the
// source, ingress at the destination, each through the Admin tier of t,
// the NetworkPolicies of e, the Baseline tier of t and the default allow.
// Endpoints are resolved in e.
func (t *Tiers) Explain(e *Engine, f Flow) (TieredExplanation, error) {
	src, srcEp, err := e.resolveTarget(f.Src)
	if err != nil {
		return TieredExplanation{}, fmt.Errorf("explain flow: source: %w", err)
	}
	dst, dstEp, err := e.resolveTarget(f.Dst)
	if err != nil {
		return TieredExplanation{}, fmt.Errorf("explain flow: destination: %w", err)
	}
	x := TieredExplanation{Src: src, Dst: dst}
	x.Egress = TieredVerdict{Direction: Egress, Allowed: true, NotEnforced: true, Layer: LayerDefault}
	if srcEp != nil {
		x.Egress = t.decide(e, srcEp, Egress, dstEp, dst, f)
	}
	x.Ingress = TieredVerdict{Direction: Ingress, Allowed: true, NotEnforced: true, Layer: LayerDefault}
	if dstEp != nil {
		x.Ingress = t.decide(e, dstEp, Ingress, srcEp, src, f)
	}
	x.Allowed = x.Egress.Allowed && x.Ingress.Allowed
	return x, nil
}

func (t *Tiers) decide(e *Engine, local *endpoint, dir Direction, peerEp *endpoint, peer Resolved, f Flow) TieredVerdict {
	v := TieredVerdict{Direction: dir}
	side := &flowSide{local: local, dir: dir, peerEp: peerEp, peerIP: peer.IP, proto: f.Proto, port: f.Port,
		cluster: e.clusterLabels(local.key.Cluster), ifResolved: &v.IfResolved}
	if dir == Egress {
		side.names = f.DstNames
	}
	if peerEp != nil {
		side.peerCluster = e.clusterLabels(peerEp.key.Cluster)
	}
	v.NetworkPolicy = e.explainDirection(local, dir, peerEp, peer.IP, f.Proto, f.Port)
	if r, ok := t.decideTier(cnpv1.AdminTier, side); ok {
		if r.Action != cnpv1.ClusterNetworkPolicyRuleActionPass {
			v.Layer, v.Rule, v.Allowed = LayerAdmin, r, r.Action == cnpv1.ClusterNetworkPolicyRuleActionAccept
			return v
		}
		v.Passed = append(v.Passed, r)
	}
	if v.NetworkPolicy.Reason != ReasonNotSelected {
		v.Layer, v.Allowed = LayerNetworkPolicy, v.NetworkPolicy.Allowed
		return v
	}
	if r, ok := t.decideTier(cnpv1.BaselineTier, side); ok {
		if r.Action != cnpv1.ClusterNetworkPolicyRuleActionPass {
			v.Layer, v.Rule, v.Allowed = LayerBaseline, r, r.Action == cnpv1.ClusterNetworkPolicyRuleActionAccept
			return v
		}
		v.Passed = append(v.Passed, r)
	}
	v.Layer, v.Allowed = LayerDefault, true
	return v
}
