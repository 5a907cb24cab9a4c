package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// reachEngine owns a policy.Engine, the compiler the node agents run, and
// brings it to the store's state by applying the store's committed events
// (clusters, endpoints, policies, ClusterNetworkPolicies) when a request
// needs it: incremental, no
// rebuild per request. Only its run goroutine touches the engine; handlers ask
// through explain, which answers at a revision at least the one they name.
type reachEngine struct {
	fsm  *store.FSM
	log  *slog.Logger
	reqs chan *explainReq
	// fedNP and fedCNP are the federated policies the engine holds, by
	// key, so an overlay of staged policies (staged_eval.go) can put back
	// what it replaced. Only the run goroutine touches them.
	fedNP  map[policy.PolicyKey]*fedmeshv1.Policy
	fedCNP map[string]*fedmeshv1.ClusterNetworkPolicy
	// stale: an overlay could not be taken back; the engine is rebuilt
	// from the state before it answers again.
	stale bool
}

type explainReq struct {
	flow policy.Flow
	// staged, when set, asks for its flows evaluated with and without
	// staged policies instead (staged_eval.go).
	staged *stagedEval
	minRev uint64
	reply  chan explainResp
}

type explainResp struct {
	x      policy.TieredExplanation
	staged *stagedResult
	rev    uint64
	err    error
}

func newReachEngine(fsm *store.FSM, log *slog.Logger) *reachEngine {
	return &reachEngine{fsm: fsm, log: log, reqs: make(chan *explainReq)}
}

// explain asks the engine goroutine to explain f once it has applied
// revision minRev. It blocks until the answer, ctx's end or shutdown.
func (r *reachEngine) explain(ctx context.Context, f policy.Flow, minRev uint64) (policy.TieredExplanation, uint64, error) {
	req := &explainReq{flow: f, minRev: minRev, reply: make(chan explainResp, 1)}
	select {
	case r.reqs <- req:
	case <-ctx.Done():
		return policy.TieredExplanation{}, 0, status.FromContextError(ctx.Err()).Err()
	}
	select {
	case resp := <-req.reply:
		return resp.x, resp.rev, resp.err
	case <-ctx.Done():
		return policy.TieredExplanation{}, 0, status.FromContextError(ctx.Err()).Err()
	}
}

// engineEventChunk bounds the events applied per read of the event log,
// so requests are served between chunks while catching up.
const engineEventChunk = 10_000

// run is the engine's owner loop. It works only on demand: while no
// request waits it does nothing, so a stream of writes costs the replicas no
// policy-compiler work (on a small machine that work competes with Raft for
// the CPU). A request makes it catch up from the event log (or rebuild from
// the state when the log was compacted past it), answer, and park requests
// whose revision it has not reached until it does. It returns when ctx ends.
func (r *reachEngine) run(ctx context.Context) {
	var (
		eng     *policy.Engine
		rev     uint64
		pending []*explainReq
	)
	for {
		if len(pending) == 0 {
			select {
			case req := <-r.reqs:
				pending = append(pending, req)
			case <-ctx.Done():
				return
			}
		}
		changed := r.fsm.Changed()
		if eng == nil {
			eng, rev = r.rebuild()
		}
		caughtUp, ok := r.catchUp(eng, &rev)
		if !ok {
			eng = nil // compacted past us: rebuild from the state
			continue
		}
		kept := pending[:0]
		for _, req := range pending {
			if rev >= req.minRev {
				req.reply <- r.answer(eng, req, rev)
			} else {
				kept = append(kept, req)
			}
		}
		clear(pending[len(kept):])
		pending = kept
		if r.stale {
			eng, r.stale = nil, false
		}
		if !caughtUp || len(pending) == 0 {
			// More events are waiting (still take requests in between),
			// or nothing waits: go back to idling.
			select {
			case req := <-r.reqs:
				pending = append(pending, req)
			case <-ctx.Done():
				return
			default:
			}
			continue
		}
		select {
		case <-changed:
		case req := <-r.reqs:
			pending = append(pending, req)
		case <-ctx.Done():
			return
		}
	}
}

// answer decides a request's flow through every layer: the engine's
// ClusterNetworkPolicy tiers around its NetworkPolicies, as the agents'
// dataplanes do; or evaluates its staged batch.
func (r *reachEngine) answer(eng *policy.Engine, req *explainReq, rev uint64) explainResp {
	if req.staged != nil {
		return explainResp{staged: r.evalStaged(eng, req.staged), rev: rev}
	}
	x, err := eng.Tiers().Explain(eng, req.flow)
	return explainResp{x: x, rev: rev, err: err}
}

// rebuild makes a new engine from the whole state (at start, and when the
// event log no longer holds the events after the engine's revision).
func (r *reachEngine) rebuild() (*policy.Engine, uint64) {
	var objs []*fedmeshv1.Event
	var rev uint64
	r.fsm.View(func(st *store.State) {
		rev = st.Revision()
		st.ForEachObject(func(e *fedmeshv1.Event) bool {
			switch e.GetObject().(type) {
			case *fedmeshv1.Event_Cluster, *fedmeshv1.Event_Endpoint, *fedmeshv1.Event_Policy, *fedmeshv1.Event_ClusterNetworkPolicy:
				objs = append(objs, e)
			}
			return true
		})
	})
	// Nothing is compiled: Reach only explains, from the policies directly.
	eng := policy.NewEngine(policy.WithLocal(func(*fedmeshv1.Endpoint) bool { return false }))
	r.fedNP, r.fedCNP = map[policy.PolicyKey]*fedmeshv1.Policy{}, map[string]*fedmeshv1.ClusterNetworkPolicy{}
	for _, e := range objs {
		r.apply(eng, e)
	}
	eng.Recompute()
	return eng, rev
}

// catchUp applies one chunk of events after *rev. It reports whether the
// engine is now at the store's revision, and false for ok when the log was
// compacted past *rev.
func (r *reachEngine) catchUp(eng *policy.Engine, rev *uint64) (caughtUp, ok bool) {
	var batches []store.Batch
	var cur uint64
	r.fsm.View(func(st *store.State) {
		cur = st.Revision()
		batches, ok = st.Log().Since(*rev, engineEventChunk)
	})
	if !ok {
		return false, false
	}
	for _, b := range batches {
		for _, e := range b.Events {
			r.apply(eng, e)
		}
		*rev = b.Revision
	}
	if len(batches) > 0 {
		eng.Recompute() // drops the dirty set; nothing is local
	}
	return *rev >= cur, true
}

func (r *reachEngine) apply(eng *policy.Engine, e *fedmeshv1.Event) {
	// The agents feed their engines through the same policy.Apply, so a
	// policy update neither can compile leaves the previous version in
	// force in both: Reach explains what the dataplane enforces.
	if err := policy.ApplyEvent(eng, e); err != nil {
		r.log.Warn("policy update not compiled; the previous version stays in force", "err", err)
		return
	}
	r.shadow(e)
}

// reachService explains verdicts with the engine.
type reachService struct {
	fedmeshv1.UnimplementedReachServiceServer
	c *Core
}

func (s *reachService) Reach(ctx context.Context, req *fedmeshv1.ReachRequest) (*fedmeshv1.ReachResponse, error) {
	flow, family, err := reachFlow(req)
	if err != nil {
		return nil, err
	}
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	if family != 0 {
		// The engine checks that the address is the endpoint's, so a pod
		// readdressed between this read and its answer is refused, never
		// explained with another pod's address.
		s.c.view(func(st *store.State) {
			if err = targetOfFamily(field.NewPath("source"), &flow.Src, family, st.Endpoint); err == nil {
				err = targetOfFamily(field.NewPath("destination"), &flow.Dst, family, st.Endpoint)
			}
		})
		if err != nil {
			return nil, err
		}
	}
	var x policy.TieredExplanation
	var rev uint64
	var deniers []store.StagedKey
	if req.GetStaged() {
		x, deniers, rev, err = s.c.explainStaged(ctx, flow)
	} else {
		x, rev, err = s.c.reach.explain(ctx, flow, s.c.fsm.Revision())
	}
	switch {
	case errors.Is(err, policy.ErrUnknownEndpoint):
		return nil, status.Error(codes.NotFound, err.Error())
	case errors.Is(err, policy.ErrBadTarget):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		return nil, err
	}
	resp := reachResponse(x, rev)
	resp.Staged = req.GetStaged()
	for _, k := range deniers {
		resp.StagedDeniedBy = append(resp.StagedDeniedBy, k.API())
	}
	return resp, nil
}

// reachFlow validates a request and converts it to the compiler's flow,
// with the family (4, 6, or 0 for each endpoint's first address) its
// endpoint targets resolve to: the request's, else that of an ip target.
func reachFlow(req *fedmeshv1.ReachRequest) (policy.Flow, uint32, error) {
	var errs field.ErrorList
	src, srcErrs := reachTarget(field.NewPath("source"), req.GetSource())
	dst, dstErrs := reachTarget(field.NewPath("destination"), req.GetDestination())
	errs = append(append(errs, srcErrs...), dstErrs...)
	family := req.GetFamily()
	switch family {
	case 0:
		for _, t := range []policy.Target{src, dst} {
			if t.IP.IsValid() {
				family = ipFamily(t.IP)
				break
			}
		}
	case 4, 6:
		for _, side := range []struct {
			name string
			t    policy.Target
		}{{"source", src}, {"destination", dst}} {
			if side.t.IP.IsValid() && ipFamily(side.t.IP) != family {
				errs = append(errs, field.Invalid(field.NewPath(side.name, "ip"), side.t.IP.String(), fmt.Sprintf("is IPv%d, but family is %d", ipFamily(side.t.IP), family)))
			}
		}
	default:
		errs = append(errs, field.NotSupported(field.NewPath("family"), family, []string{"0", "4", "6"}))
	}
	p := req.GetProtocol()
	if _, known := fedmeshv1.Protocol_name[int32(p)]; !known {
		errs = append(errs, field.NotSupported(field.NewPath("protocol"), p.String(), []string{"TCP", "UDP", "SCTP", "ICMP"}))
	}
	isICMP := p == fedmeshv1.Protocol_PROTOCOL_ICMP
	if req.GetPort() > 65535 {
		errs = append(errs, field.Invalid(field.NewPath("port"), req.GetPort(), "must be a port number 0-65535 (ignored for ICMP)"))
	}
	if err := model.AsError(errs); err != nil {
		return policy.Flow{}, 0, err
	}
	proto := policy.ProtoFromAPI(p)
	if isICMP && (src.IP.Is6() || dst.IP.Is6() || family == 6) {
		proto = policy.ProtoICMPv6
	}
	port := uint16(req.GetPort())
	if isICMP {
		port = 0
	}
	return policy.Flow{Src: src, Dst: dst, Proto: proto, Port: port}, family, nil
}

func ipFamily(a netip.Addr) uint32 {
	if a.Is4() {
		return 4
	}
	return 6
}

// targetOfFamily gives an endpoint target its address of family, looked up
// with endpoint (a store read); an ip target is left as it is.
func targetOfFamily(p *field.Path, t *policy.Target, family uint32, endpoint func(cluster, namespace, name string) *fedmeshv1.Endpoint) error {
	if t.Endpoint == nil || t.IP.IsValid() {
		return nil
	}
	k := *t.Endpoint
	ep := endpoint(k.Cluster, k.Namespace, k.Name)
	if ep == nil {
		return status.Errorf(codes.NotFound, "%v %s", policy.ErrUnknownEndpoint, k)
	}
	for _, s := range ep.GetIps() {
		if a, err := netip.ParseAddr(s); err == nil && ipFamily(a) == family {
			t.IP = a
			return nil
		}
	}
	return model.AsError(field.ErrorList{field.Invalid(p.Child("endpoint"), k.String(),
		fmt.Sprintf("has no IPv%d address (it has %v); ask for the family it has", family, ep.GetIps()))})
}

func reachTarget(p *field.Path, t *fedmeshv1.ReachTarget) (policy.Target, field.ErrorList) {
	switch x := t.GetTarget().(type) {
	case *fedmeshv1.ReachTarget_Endpoint:
		ep := x.Endpoint
		ep2 := p.Child("endpoint")
		errs := model.ClusterName(ep2.Child("cluster"), ep.GetCluster())
		errs = append(errs, model.Namespace(ep2.Child("namespace"), ep.GetNamespace())...)
		if ep.GetName() == "" {
			errs = append(errs, field.Required(ep2.Child("name"), ""))
		}
		k := policy.EndpointKey{Cluster: ep.GetCluster(), Namespace: ep.GetNamespace(), Name: ep.GetName()}
		return policy.Target{Endpoint: &k}, errs
	case *fedmeshv1.ReachTarget_Ip:
		a, err := netip.ParseAddr(x.Ip)
		if err != nil || a.Zone() != "" {
			return policy.Target{}, field.ErrorList{field.Invalid(p.Child("ip"), x.Ip, "not an IP address")}
		}
		return policy.Target{IP: a.Unmap()}, nil
	default:
		return policy.Target{}, field.ErrorList{field.Required(p, "an endpoint or an ip")}
	}
}

func reachResponse(x policy.TieredExplanation, rev uint64) *fedmeshv1.ReachResponse {
	return &fedmeshv1.ReachResponse{
		Verdict:     verdict(x.Allowed),
		Egress:      directionVerdict(x.Egress),
		Ingress:     directionVerdict(x.Ingress),
		Source:      resolvedTarget(x.Src),
		Destination: resolvedTarget(x.Dst),
		Revision:    rev,
	}
}

func verdict(allowed bool) fedmeshv1.Verdict {
	if allowed {
		return fedmeshv1.Verdict_VERDICT_ALLOW
	}
	return fedmeshv1.Verdict_VERDICT_DENY
}

var reasons = map[policy.Reason]fedmeshv1.VerdictReason{
	policy.ReasonNotSelected:  fedmeshv1.VerdictReason_VERDICT_REASON_NOT_SELECTED,
	policy.ReasonRuleAllows:   fedmeshv1.VerdictReason_VERDICT_REASON_RULE_ALLOWS,
	policy.ReasonNoRuleAllows: fedmeshv1.VerdictReason_VERDICT_REASON_NO_RULE_ALLOWS,
	policy.ReasonNotEnforced:  fedmeshv1.VerdictReason_VERDICT_REASON_NOT_ENFORCED,
}

func policyType(d policy.Direction) fedmeshv1.PolicyType {
	if d == policy.Egress {
		return fedmeshv1.PolicyType_POLICY_TYPE_EGRESS
	}
	return fedmeshv1.PolicyType_POLICY_TYPE_INGRESS
}

func policyKey(k policy.PolicyKey) *fedmeshv1.PolicyKey {
	return &fedmeshv1.PolicyKey{Cluster: k.Cluster, Namespace: k.Namespace, Name: k.Name}
}

// directionVerdict describes one direction decided through the layers;
// rule and selecting_policies are the NetworkPolicy layer's view.
func directionVerdict(tv policy.TieredVerdict) *fedmeshv1.DirectionVerdict {
	d := tv.NetworkPolicy
	out := &fedmeshv1.DirectionVerdict{Verdict: verdict(tv.Allowed), Reason: reasons[d.Reason], Explanation: tv.String(), Layer: layers[tv.Layer]}
	switch {
	case tv.NotEnforced:
		out.Reason = fedmeshv1.VerdictReason_VERDICT_REASON_NOT_ENFORCED
	case tv.Layer == policy.LayerAdmin || tv.Layer == policy.LayerBaseline:
		out.Reason = fedmeshv1.VerdictReason_VERDICT_REASON_CLUSTER_POLICY
		out.TierRule = tierRuleRef(tv.Rule)
	}
	for _, p := range tv.Passed {
		out.Passed = append(out.Passed, tierRuleRef(p))
	}
	if d.Reason == policy.ReasonRuleAllows {
		kind := fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES
		if d.Rule.Federated {
			kind = fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED
		}
		out.Rule = &fedmeshv1.RuleRef{
			Policy:    policyKey(policy.PolicyKey{Cluster: d.Rule.Cluster, Namespace: d.Rule.Namespace, Name: d.Rule.Name}),
			Kind:      kind,
			Direction: policyType(d.Rule.Direction),
			Index:     uint32(d.Rule.Index),
		}
	}
	for _, k := range d.Selecting {
		out.SelectingPolicies = append(out.SelectingPolicies, policyKey(k))
	}
	return out
}

var layers = map[policy.Layer]fedmeshv1.PolicyLayer{
	policy.LayerAdmin:         fedmeshv1.PolicyLayer_POLICY_LAYER_ADMIN,
	policy.LayerNetworkPolicy: fedmeshv1.PolicyLayer_POLICY_LAYER_NETWORK_POLICY,
	policy.LayerBaseline:      fedmeshv1.PolicyLayer_POLICY_LAYER_BASELINE,
	policy.LayerDefault:       fedmeshv1.PolicyLayer_POLICY_LAYER_DEFAULT,
}

func tierRuleRef(r policy.TierRule) *fedmeshv1.TierRuleRef {
	return &fedmeshv1.TierRuleRef{
		Policy:    &fedmeshv1.ClusterPolicyKey{Cluster: r.Policy.Cluster, Name: r.Policy.Name},
		Tier:      string(r.Tier),
		Priority:  r.Priority,
		Direction: policyType(r.Direction),
		Index:     uint32(r.Index),
		Name:      r.Name,
		Action:    string(r.Action),
	}
}

func resolvedTarget(r policy.Resolved) *fedmeshv1.ResolvedTarget {
	out := &fedmeshv1.ResolvedTarget{Identity: r.Identity}
	if r.Endpoint != nil {
		out.Endpoint = &fedmeshv1.EndpointRef{Cluster: r.Endpoint.Cluster, Namespace: r.Endpoint.Namespace, Name: r.Endpoint.Name}
	}
	if r.IP.IsValid() {
		out.Ip = r.IP.String()
	}
	return out
}
