package auth

import (
	"fmt"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// flowRead admits the federation's principals to the flow API; what each
// may see is narrowed by FlowScope, since flows are not objects with one
// owner but records touching up to two clusters.
func flowRead(p Principal, m string, _ any) error {
	switch p.Kind {
	case KindAdmin, KindSyncer, KindNode:
		return nil
	}
	return deny(p, m, "replicas do not read flows")
}

// uiSession admits the people who read flows in a browser: admins and a
// cluster's syncer principal (its page then shows that cluster's flows).
// Node agents and replicas have no use for a browser session.
func uiSession(p Principal, m string, _ any) error {
	switch p.Kind {
	case KindAdmin, KindSyncer:
		return nil
	}
	return deny(p, m, "only admins and cluster principals open service-graph sessions")
}

// shipFlows admits only node agents, and each batch only for the agent's
// own node: a node certificate ships its own node's flows, nobody else's.
// The stream itself is admitted before its first message (req nil).
func shipFlows(p Principal, m string, req any) error {
	if p.Kind != KindNode {
		return deny(p, m, "only a node agent ships flows")
	}
	if req == nil {
		return nil
	}
	r, ok := req.(*fedmeshv1.ShipFlowsRequest)
	if !ok {
		return deny(p, m, fmt.Sprintf("request of type %T is not the RPC's", req))
	}
	if r.GetCluster() != p.Cluster || r.GetNode() != p.Node {
		return deny(p, m, fmt.Sprintf("flows of node %q of cluster %q are not the agent's own node %q of cluster %q", r.GetNode(), r.GetCluster(), p.Node, p.Cluster))
	}
	return nil
}

// FlowScope is the cluster whose flows p may read: "" for an admin (all
// flows), the principal's own cluster for a syncer or node agent (flows
// with either end, or the reporting node, in it).
func FlowScope(p Principal) string {
	if p.Kind == KindAdmin {
		return ""
	}
	return p.Cluster
}
