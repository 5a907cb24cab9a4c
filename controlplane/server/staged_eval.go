package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Staged policies are evaluated by the Reach engine (reach.go), the
// compiler the agents run: the engine goroutine overlays the staged
// policies on the enforced ones it holds (a staged policy of an enforced
// key replaces it, as a promote with replace would), explains each flow
// with and without the overlay, and puts the enforced set back before it
// serves anything else. Explaining reads the policies directly (nothing
// is compiled on the control plane), so an overlay costs the policies'
// index updates, not a rebuild.

// stagedEval is a batch of flows to evaluate with overlay in force.
type stagedEval struct {
	overlay []*fedmeshv1.StagedPolicy
	flows   []policy.Flow
}

// stagedResult answers a stagedEval, per flow: the verdict without the
// overlay (base) and with it (staged); err is why a flow was not evaluated
// (a workload the federation no longer knows). overlayErr names a staged
// policy the compiler refused: it was left out of the overlay.
type stagedResult struct {
	base, staged []policy.TieredExplanation
	errs         []error
	overlayErr   error
}

// shadow records the federated policies the engine holds (see fedNP).
func (r *reachEngine) shadow(e *fedmeshv1.Event) {
	del := e.GetType() == fedmeshv1.EventType_EVENT_TYPE_DELETE
	if p := e.GetPolicy(); p != nil && p.GetCluster() == "" {
		k := policy.PolicyKey{Namespace: p.GetNamespace(), Name: p.GetName()}
		if del {
			delete(r.fedNP, k)
		} else {
			r.fedNP[k] = p
		}
	}
	if p := e.GetClusterNetworkPolicy(); p != nil && p.GetCluster() == "" {
		if del {
			delete(r.fedCNP, p.GetName())
		} else {
			r.fedCNP[p.GetName()] = p
		}
	}
}

func policyEvent(t fedmeshv1.EventType, sp *fedmeshv1.StagedPolicy) *fedmeshv1.Event {
	e := &fedmeshv1.Event{Type: t}
	switch x := sp.GetPolicy().(type) {
	case *fedmeshv1.StagedPolicy_NetworkPolicy:
		e.Object = &fedmeshv1.Event_Policy{Policy: x.NetworkPolicy}
	case *fedmeshv1.StagedPolicy_ClusterNetworkPolicy:
		e.Object = &fedmeshv1.Event_ClusterNetworkPolicy{ClusterNetworkPolicy: x.ClusterNetworkPolicy}
	}
	return e
}

// evalStaged runs on the engine goroutine only.
func (r *reachEngine) evalStaged(eng *policy.Engine, ev *stagedEval) *stagedResult {
	res := &stagedResult{base: make([]policy.TieredExplanation, len(ev.flows)), staged: make([]policy.TieredExplanation, len(ev.flows)), errs: make([]error, len(ev.flows))}
	for i, f := range ev.flows {
		res.base[i], res.errs[i] = eng.Tiers().Explain(eng, f)
	}
	var applied []*fedmeshv1.StagedPolicy
	for _, sp := range ev.overlay {
		if err := policy.ApplyEvent(eng, policyEvent(fedmeshv1.EventType_EVENT_TYPE_PUT, sp)); err != nil {
			res.overlayErr = errors.Join(res.overlayErr, fmt.Errorf("staged policy %s: %w", store.StagedKeyOf(sp), err))
			continue
		}
		applied = append(applied, sp)
	}
	for i, f := range ev.flows {
		if res.errs[i] == nil {
			res.staged[i], res.errs[i] = eng.Tiers().Explain(eng, f)
		}
	}
	// Put back exactly what the engine held.
	for _, sp := range applied {
		var back *fedmeshv1.Event
		switch x := sp.GetPolicy().(type) {
		case *fedmeshv1.StagedPolicy_NetworkPolicy:
			if old := r.fedNP[policy.PolicyKey{Namespace: x.NetworkPolicy.GetNamespace(), Name: x.NetworkPolicy.GetName()}]; old != nil {
				back = &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Object: &fedmeshv1.Event_Policy{Policy: old}}
			}
		case *fedmeshv1.StagedPolicy_ClusterNetworkPolicy:
			if old := r.fedCNP[x.ClusterNetworkPolicy.GetName()]; old != nil {
				back = &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Object: &fedmeshv1.Event_ClusterNetworkPolicy{ClusterNetworkPolicy: old}}
			}
		}
		if back == nil {
			back = policyEvent(fedmeshv1.EventType_EVENT_TYPE_DELETE, sp)
		}
		if err := policy.ApplyEvent(eng, back); err != nil {
			// What was in force compiled before; failing now means the
			// engine no longer matches the store: rebuild it.
			r.log.Error("restore enforced policy after a staged evaluation; rebuilding the engine", "policy", store.StagedKeyOf(sp), "err", err)
			r.stale = true
		}
	}
	eng.Recompute()
	return res
}

// evaluate asks the engine goroutine for ev at revision minRev or later.
func (r *reachEngine) evaluate(ctx context.Context, ev *stagedEval, minRev uint64) (*stagedResult, uint64, error) {
	req := &explainReq{staged: ev, minRev: minRev, reply: make(chan explainResp, 1)}
	select {
	case r.reqs <- req:
	case <-ctx.Done():
		return nil, 0, status.FromContextError(ctx.Err()).Err()
	}
	select {
	case resp := <-req.reply:
		return resp.staged, resp.rev, nil
	case <-ctx.Done():
		return nil, 0, status.FromContextError(ctx.Err()).Err()
	}
}

// flowTarget is a recorded workload as the compiler's target: the
// endpoint when the record names a pod, else its address.
func flowTarget(w *fedmeshv1.Workload) policy.Target {
	if w.GetPod() != "" {
		return policy.Target{Endpoint: &policy.EndpointKey{Cluster: w.GetCluster(), Namespace: w.GetNamespace(), Name: w.GetPod()}}
	}
	a, err := netip.ParseAddr(w.GetIp())
	if err != nil {
		return policy.Target{}
	}
	return policy.Target{IP: a.Unmap()}
}

// compilerFlow converts a recorded flow for the compiler.
func compilerFlow(f *fedmeshv1.Flow) policy.Flow {
	proto := uint8(f.GetProtocol())
	port := uint16(f.GetDestination().GetPort())
	if proto == policy.ProtoICMP || proto == policy.ProtoICMPv6 {
		port = 0
	}
	fl := policy.Flow{Src: flowTarget(f.GetSource()), Dst: flowTarget(f.GetDestination()), Proto: proto, Port: port}
	// The name the source resolved the destination from decides domainNames
	// rules, as the agent's learned addresses do in the dataplane.
	if n := f.GetDnsName(); n != "" {
		fl.DstNames = []string{n}
	}
	return fl
}

// stagedDeniers names the staged policies that decide x's denial: a
// staged ClusterNetworkPolicy's Deny rule, or staged NetworkPolicies
// selecting a side none of whose rules allows the flow.
func stagedDeniers(x policy.TieredExplanation, staged map[store.StagedKey]bool) []store.StagedKey {
	var out []store.StagedKey
	seen := map[store.StagedKey]bool{}
	add := func(k store.StagedKey) {
		if staged[k] && !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	for _, tv := range []policy.TieredVerdict{x.Egress, x.Ingress} {
		switch {
		case tv.Allowed:
		case tv.Layer == policy.LayerAdmin || tv.Layer == policy.LayerBaseline:
			if tv.Rule.Policy.Cluster == "" {
				add(store.StagedKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY, Name: tv.Rule.Policy.Name})
			}
		case tv.Layer == policy.LayerNetworkPolicy:
			for _, k := range tv.NetworkPolicy.Selecting {
				if k.Cluster == "" {
					add(store.StagedKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_NETWORK_POLICY, Namespace: k.Namespace, Name: k.Name})
				}
			}
		}
	}
	return out
}

func explanationString(x policy.TieredExplanation) string {
	return x.Egress.String() + "; " + x.Ingress.String()
}

// explainStaged explains f with every staged policy in force (Reach with
// staged set), naming the staged policies among the deciders of a
// denial. A staged policy the compiler refuses fails it: an answer without
// it would claim to be what promoting them all does.
func (c *Core) explainStaged(ctx context.Context, f policy.Flow) (policy.TieredExplanation, []store.StagedKey, uint64, error) {
	overlay, keys, rev := c.stagedOverlay()
	res, rev, err := c.reach.evaluate(ctx, &stagedEval{overlay: overlay, flows: []policy.Flow{f}}, rev)
	if err != nil {
		return policy.TieredExplanation{}, nil, 0, err
	}
	if res.overlayErr != nil {
		return policy.TieredExplanation{}, nil, 0, status.Errorf(codes.FailedPrecondition, "reach with staged policies: %v", res.overlayErr)
	}
	if res.errs[0] != nil {
		return policy.TieredExplanation{}, nil, 0, res.errs[0]
	}
	return res.staged[0], stagedDeniers(res.staged[0], keys), rev, nil
}

// stagedOverlay reads the staged policies, their keys and the revision
// they were read at.
func (c *Core) stagedOverlay() ([]*fedmeshv1.StagedPolicy, map[store.StagedKey]bool, uint64) {
	var overlay []*fedmeshv1.StagedPolicy
	var rev uint64
	c.view(func(st *store.State) {
		overlay, rev = st.StagedPolicies(fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_UNSPECIFIED), st.Revision()
	})
	keys := make(map[store.StagedKey]bool, len(overlay))
	for _, sp := range overlay {
		keys[store.StagedKeyOf(sp)] = true
	}
	return overlay, keys, rev
}

// stagedFlows evaluates flows with every staged policy in force and
// returns copies carrying Flow.staged (the stored records are shared and
// never mutated). With nothing staged it returns flows as they are.
func (c *Core) stagedFlows(ctx context.Context, flows []*fedmeshv1.Flow) ([]*fedmeshv1.Flow, error) {
	if len(flows) == 0 {
		return flows, nil
	}
	overlay, keys, rev := c.stagedOverlay()
	if len(overlay) == 0 {
		return flows, nil
	}
	ev := &stagedEval{overlay: overlay, flows: make([]policy.Flow, len(flows))}
	for i, f := range flows {
		ev.flows[i] = compilerFlow(f)
	}
	res, _, err := c.reach.evaluate(ctx, ev, rev)
	if err != nil {
		return nil, err
	}
	if res.overlayErr != nil {
		c.r.log.Warn("staged policy not compiled; flows are evaluated without it", "err", res.overlayErr)
	}
	out := make([]*fedmeshv1.Flow, len(flows))
	for i, f := range flows {
		if res.errs[i] != nil {
			out[i] = f
			continue
		}
		cp := proto.CloneOf(f)
		x := res.staged[i]
		sv := &fedmeshv1.StagedFlowVerdict{Verdict: verdict(x.Allowed), Explanation: explanationString(x)}
		for _, k := range stagedDeniers(x, keys) {
			sv.DeniedBy = append(sv.DeniedBy, k.API())
		}
		cp.Staged = sv
		out[i] = cp
	}
	return out, nil
}

// stagedEvalChunk bounds the flows one request to the engine goroutine
// evaluates, so Reach requests are served between the chunks of a large
// preview.
const stagedEvalChunk = 4096

// previewStaged evaluates flows with one staged policy in force, a chunk
// per engine request; rev is the revision of the last chunk's answer.
func (c *Core) previewStaged(ctx context.Context, sp *fedmeshv1.StagedPolicy, flows []*fedmeshv1.Flow, minRev uint64) (*stagedResult, uint64, error) {
	pf := make([]policy.Flow, len(flows))
	for i, f := range flows {
		pf[i] = compilerFlow(f)
	}
	res, rev, err := c.evalChunks(ctx, []*fedmeshv1.StagedPolicy{sp}, pf, minRev)
	if err != nil {
		return nil, 0, err
	}
	if res.overlayErr != nil {
		return nil, 0, status.Errorf(codes.FailedPrecondition, "preview: %v", res.overlayErr)
	}
	return res, rev, nil
}

// evalChunks evaluates flows with overlay in force, a chunk per engine
// request, so Reach answers in between; rev is the revision of the last
// chunk's answer.
func (c *Core) evalChunks(ctx context.Context, overlay []*fedmeshv1.StagedPolicy, flows []policy.Flow, minRev uint64) (*stagedResult, uint64, error) {
	out := &stagedResult{}
	rev := minRev
	for start := 0; start < len(flows); start += stagedEvalChunk {
		ev := &stagedEval{overlay: overlay, flows: flows[start:min(start+stagedEvalChunk, len(flows))]}
		res, r, err := c.reach.evaluate(ctx, ev, minRev)
		if err != nil {
			return nil, 0, err
		}
		out.base, out.staged, out.errs = append(out.base, res.base...), append(out.staged, res.staged...), append(out.errs, res.errs...)
		if out.overlayErr == nil {
			out.overlayErr = res.overlayErr
		}
		rev = r
	}
	return out, rev, nil
}

// stagedSummary counts, per edge, the flows the staged policies would deny
// were they enforced: one evaluation per edge, as its flows share the
// workloads, protocol and port that decide a verdict. With nothing staged
// the edges are left as they are.
func (c *Core) stagedSummary(ctx context.Context, edges []*fedmeshv1.FlowEdge) error {
	if len(edges) == 0 {
		return nil
	}
	overlay, keys, rev := c.stagedOverlay()
	if len(overlay) == 0 {
		return nil
	}
	flows := make([]policy.Flow, len(edges))
	for i, e := range edges {
		flows[i] = compilerFlow(&fedmeshv1.Flow{Source: e.GetSource(), Destination: e.GetDestination(), Protocol: e.GetProtocol(), DnsName: e.GetDnsName()})
	}
	res, _, err := c.evalChunks(ctx, overlay, flows, rev)
	if err != nil {
		return err
	}
	if res.overlayErr != nil {
		c.r.log.Warn("staged policy not compiled; the flow summary is evaluated without it", "err", res.overlayErr)
	}
	for i, e := range edges {
		if res.errs[i] != nil {
			continue
		}
		ks := stagedDeniers(res.staged[i], keys)
		if len(ks) == 0 {
			continue
		}
		e.StagedDenied = e.GetAllowed() + e.GetDenied()
		for _, k := range ks {
			e.StagedDeniedBy = append(e.StagedDeniedBy, k.API())
		}
	}
	return nil
}
