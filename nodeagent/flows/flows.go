// Package flows owns the node's flow records: it drains the dataplane's
// verdict events, attributes each to what decided it — the policy and rule
// (the compiled RuleOrigin of the event's RuleID), the policies selecting
// the endpoint when no rule allowed, or "not selected" — and to both
// workloads (cluster, namespace, pod, identity; the control plane adds the
// labels), and hands the
// records to a sink (the agent's shipper to the control plane's
// FlowService). Nothing here serves flows: they leave the node only over
// the agent's mTLS identity.
//
// Directory is the attribution context: the sync goroutine writes it (every
// endpoint of the federation by address, and the compiled rules of the
// local endpoints once the dataplane enforces them); the flow goroutine
// reads it.
package flows

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// local is what attribution needs of one local endpoint's enforced rules.
type local struct {
	compiled *policy.Compiled
	// selecting are the policies with rules for the endpoint, per
	// direction, in policy-key order.
	selecting [2][]*fedmeshv1.PolicyKey
}

// Directory resolves addresses to workloads and rule IDs to their origin.
//
// Contract: the agent's sync goroutine is the only writer (UpsertEndpoint,
// DeleteEndpoint, Stage, Commit); Attribute may be called from any
// goroutine. Writers hold the lock for a map update only, so they never
// wait on the flow path for long.
type Directory struct {
	mu     sync.RWMutex
	byIP   map[netip.Addr]*fedmeshv1.Workload
	ips    map[policy.EndpointKey][]netip.Addr
	locals map[string]*local

	staged map[string]*policy.Compiled // nil value: removed
}

// NewDirectory returns an empty directory.
func NewDirectory() *Directory {
	return &Directory{byIP: map[netip.Addr]*fedmeshv1.Workload{}, ips: map[policy.EndpointKey][]netip.Addr{},
		locals: map[string]*local{}, staged: map[string]*policy.Compiled{}}
}

// UpsertEndpoint records (or replaces) an endpoint's addresses.
func (d *Directory) UpsertEndpoint(ep *fedmeshv1.Endpoint) {
	k := policy.EndpointKey{Cluster: ep.GetCluster(), Namespace: ep.GetNamespace(), Name: ep.GetName()}
	w := &fedmeshv1.Workload{Cluster: k.Cluster, Namespace: k.Namespace, Pod: k.Name, Identity: ep.GetIdentity()}
	var ips []netip.Addr
	for _, s := range ep.GetIps() {
		if a, err := netip.ParseAddr(s); err == nil {
			ips = append(ips, a.Unmap())
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.drop(k)
	for _, a := range ips {
		d.byIP[a] = w
	}
	d.ips[k] = ips
}

// DeleteEndpoint forgets an endpoint's addresses.
func (d *Directory) DeleteEndpoint(k policy.EndpointKey) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.drop(k)
}

func (d *Directory) drop(k policy.EndpointKey) {
	for _, a := range d.ips[k] {
		if w := d.byIP[a]; w != nil && w.Cluster == k.Cluster && w.Namespace == k.Namespace && w.Pod == k.Name {
			delete(d.byIP, a)
		}
	}
	delete(d.ips, k)
}

// Stage records a local endpoint's newly compiled rules (nil: removed);
// they attribute events once Commit says the dataplane enforces them, so
// an event is never read against the rule numbering of a revision the
// kernel has not loaded yet.
func (d *Directory) Stage(id string, c *policy.Compiled) { d.staged[id] = c }

// Commit makes the staged rules the ones events are attributed with; the
// agent calls it after the dataplane applied the revision holding them.
func (d *Directory) Commit() {
	if len(d.staged) == 0 {
		return
	}
	next := make(map[string]*local, len(d.staged))
	for id, c := range d.staged {
		if c != nil {
			next[id] = newLocal(c)
		}
	}
	d.mu.Lock()
	for id, c := range d.staged {
		if c == nil {
			delete(d.locals, id)
		} else {
			d.locals[id] = next[id]
		}
	}
	d.mu.Unlock()
	clear(d.staged)
}

func newLocal(c *policy.Compiled) *local {
	l := &local{compiled: c}
	seen := map[policy.RuleOrigin]bool{}
	for _, o := range c.Origins {
		if o.Tier != policy.TierNetworkPolicy {
			continue // selected_by names the NetworkPolicies
		}
		k := policy.RuleOrigin{Cluster: o.Cluster, Namespace: o.Namespace, Name: o.Name, Direction: o.Direction}
		if seen[k] {
			continue
		}
		seen[k] = true
		l.selecting[o.Direction] = append(l.selecting[o.Direction], &fedmeshv1.PolicyKey{Cluster: o.Cluster, Namespace: o.Namespace, Name: o.Name})
	}
	return l
}

func policyType(d policy.Direction) fedmeshv1.PolicyType {
	if d == policy.Egress {
		return fedmeshv1.PolicyType_POLICY_TYPE_EGRESS
	}
	return fedmeshv1.PolicyType_POLICY_TYPE_INGRESS
}

// Attribute turns one verdict event of this node into a flow record.
func (d *Directory) Attribute(ev dataplane.Event, cluster, node string, now time.Time) *fedmeshv1.Flow {
	d.mu.RLock()
	src := d.workload(ev.Src, ev.SrcIdentity, ev.SrcPort)
	dst := d.workload(ev.Dst, ev.DstIdentity, ev.DstPort)
	l := d.locals[ev.EndpointID]
	d.mu.RUnlock()
	f := &fedmeshv1.Flow{
		Time: timestamppb.New(now), Cluster: cluster, Node: node, Source: src, Destination: dst,
		Protocol: uint32(ev.Proto), Verdict: fedmeshv1.Verdict_VERDICT_ALLOW,
		Decision: decide(ev, l),
	}
	if ev.Verdict == dataplane.Deny {
		f.Verdict = fedmeshv1.Verdict_VERDICT_DENY
	}
	return f
}

// workload is the directory's workload with this flow's address and port;
// an address no endpoint has is outside the federation. Labels stay off
// the record: the control plane, which has every endpoint's labels, fills
// them in once per workload, so the node does not encode them per flow.
func (d *Directory) workload(a netip.Addr, id uint32, port uint16) *fedmeshv1.Workload {
	out := &fedmeshv1.Workload{Identity: id, Ip: a.String(), Port: uint32(port)}
	if w := d.byIP[a.Unmap()]; w != nil {
		out.Cluster, out.Namespace, out.Pod = w.Cluster, w.Namespace, w.Pod
	}
	return out
}

// decision is what decided an event's direction at the local endpoint,
// before it becomes a record (decide) or wire bytes (AppendFlow).
type decision struct {
	kind      fedmeshv1.FlowDecisionKind
	origin    policy.RuleOrigin // for RULE
	selecting []*fedmeshv1.PolicyKey
}

func classify(ev dataplane.Event, l *local) decision {
	var d decision
	if l != nil {
		d.selecting = l.selecting[ev.Direction]
	}
	switch {
	case ev.Rule != 0 && l != nil:
		o, ok := l.compiled.Origin(ev.Rule)
		if !ok {
			d.kind = fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_DATAPLANE
			return d
		}
		d.kind, d.origin = fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE, o
	case ev.Reason == dataplane.ReasonDenyPolicy:
		d.kind = fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NO_RULE_ALLOWS
	case ev.Reason == dataplane.ReasonAllowOpen:
		d.kind, d.selecting = fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NOT_SELECTED, nil
	default:
		d.kind = fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_DATAPLANE
	}
	return d
}

func policyKind(o policy.RuleOrigin) fedmeshv1.PolicyKind {
	if o.Federated {
		return fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED
	}
	return fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES
}

// decide names what decided the event's direction at the local endpoint.
func decide(ev dataplane.Event, l *local) *fedmeshv1.FlowDecision {
	c := classify(ev, l)
	d := &fedmeshv1.FlowDecision{Direction: policyType(ev.Direction), Kind: c.kind, SelectedBy: c.selecting,
		DataplaneReason: ev.Reason.String(), RuleId: uint32(ev.Rule)}
	if c.kind == fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE {
		o := c.origin
		d.Rule = &fedmeshv1.RuleRef{Policy: &fedmeshv1.PolicyKey{Cluster: o.Cluster, Namespace: o.Namespace, Name: o.Name},
			Kind: policyKind(o), Direction: policyType(o.Direction), Index: uint32(o.Index)}
		d.Tier = tierName(o)
	}
	return d
}

// tierName is the upstream tier name of a ClusterNetworkPolicy rule
// ("Admin", "Baseline"); "" for a NetworkPolicy rule.
func tierName(o policy.RuleOrigin) string {
	if tr, ok := o.TierRule(); ok {
		return string(tr.Tier)
	}
	return ""
}

// Explain is the decision as a sentence: "allowed by ingress rule 0 of
// a/demo/allow-web", "denied: selected by a/demo/deny-all and no rule
// allowed", "not selected (open)".
func Explain(d *fedmeshv1.FlowDecision) string {
	dir := "ingress"
	if d.GetDirection() == fedmeshv1.PolicyType_POLICY_TYPE_EGRESS {
		dir = "egress"
	}
	switch d.GetKind() {
	case fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE:
		r := d.GetRule()
		s := dir + " rule " + strconv.FormatUint(uint64(r.GetIndex()), 10) + " of " + PolicyString(r.GetPolicy())
		if d.GetTier() != "" {
			s = d.GetTier() + " " + s
		}
		return s
	case fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NO_RULE_ALLOWS:
		if len(d.GetSelectedBy()) == 0 {
			return dir + ": selected by a policy with no " + dir + " rules, none allowed"
		}
		names := make([]string, len(d.GetSelectedBy()))
		for i, k := range d.GetSelectedBy() {
			names[i] = PolicyString(k)
		}
		return dir + ": selected by " + strings.Join(names, ", ") + " and no rule allowed"
	case fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NOT_SELECTED:
		return dir + ": not selected by any policy (open)"
	}
	return dir + ": " + d.GetDataplaneReason()
}

// PolicyString is a policy key as flows show it: cluster/namespace/name,
// "federated/namespace/name" for a federated one.
func PolicyString(k *fedmeshv1.PolicyKey) string {
	c := k.GetCluster()
	if c == "" {
		c = "federated"
	}
	if k.GetNamespace() == "" {
		return c + "/" + k.GetName()
	}
	return c + "/" + k.GetNamespace() + "/" + k.GetName()
}

// Sink receives flow records in wire form (an encoded fedmesh.v1.Flow).
// Offer must not block: it queues or drops (and counts) the record. The
// slice is the caller's: the Reader encodes the next record into the same
// bytes once Offer returns, so a sink keeps a copy, never the slice.
type Sink interface {
	Offer(flow []byte)
}

// Names gives the DNS name a local endpoint resolved an address from
// (the agent's per-pod cache of DNS answers).
//
// Contract: called from the Reader's goroutine for every egress event,
// with the time the event was read; must not block; "" when no name is
// known at that time.
type Names interface {
	Name(endpointID string, addr netip.Addr, at time.Time) string
}

// Reader drains the dataplane's events into a sink.
type Reader struct {
	Cluster, Node string
	Dir           *Directory
	Sink          Sink
	// Names, when set, fills Flow.dns_name of egress flows: the name the
	// local endpoint resolved the destination from. Only the client's
	// node knows it, so only the client's (egress) record carries it.
	Names Names
	// Now is the clock (default time.Now).
	Now func() time.Time

	events atomic.Uint64
	// buf is the record's bytes, reused for every event (Sink copies).
	buf []byte
}

// Events is how many events Run has read.
func (r *Reader) Events() uint64 { return r.events.Load() }

// Run consumes events until ctx ends or the channel closes.
func (r *Reader) Run(ctx context.Context, events <-chan dataplane.Event) {
	now := r.Now
	if now == nil {
		now = time.Now
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			r.events.Add(1)
			t := now()
			var name string
			if r.Names != nil && ev.Direction == policy.Egress {
				name = r.Names.Name(ev.EndpointID, ev.Dst.Unmap(), t)
			}
			b := r.Dir.AppendFlow(r.buf[:0], ev, r.Cluster, r.Node, t)
			// A field appended to an encoded message is part of it.
			r.buf = appendString(b, flowDNSName, name)
			r.Sink.Offer(r.buf)
		}
	}
}
