package policy

import (
	"errors"
	"fmt"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Update is one change of the engine's inputs: a put or delete of a
// cluster, an endpoint or a policy. It is the single event→engine form:
// the node agent (from its view's changes) and the control plane's Reach
// (from the watch events) both hand their changes to Apply as Updates, so
// the two cannot drift apart.
type Update struct {
	Kind   fedmeshv1.ResourceKind
	Delete bool

	// The key of the object, matching Kind; a delete carries only this.
	ClusterName string
	EndpointKey EndpointKey
	PolicyKey   PolicyKey
	// ClusterPolicyKey names a ClusterNetworkPolicy (synced or federated).
	ClusterPolicyKey ClusterPolicyKey

	// On a put, exactly one is set, matching Kind.
	Cluster  *fedmeshv1.Cluster
	Endpoint *fedmeshv1.Endpoint
	Policy   *fedmeshv1.Policy
	// ClusterPolicy is set on a put of a ClusterNetworkPolicy; Kind is
	// then KindClusterPolicy.
	ClusterPolicy *ClusterPolicy
	// Err is why a put's object could not be converted (a ClusterPolicy
	// whose spec does not decode); Apply reports it as the compiler's
	// rejection, with the same failure rule.
	Err error
}

// KindClusterPolicy is the Update kind of a ClusterNetworkPolicy.
const KindClusterPolicy = fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER_NETWORK_POLICY

// Updater is what Apply feeds: *Engine, and any wrapper of it with the same
// contract (nodeagent/agent's Compiler). The caller serialises calls.
type Updater interface {
	UpsertCluster(c *fedmeshv1.Cluster)
	DeleteCluster(name string)
	UpsertEndpoint(ep *fedmeshv1.Endpoint)
	DeleteEndpoint(k EndpointKey)
	UpsertPolicy(p *fedmeshv1.Policy) error
	DeletePolicy(k PolicyKey)
	UpsertClusterPolicy(p *ClusterPolicy) error
	DeleteClusterPolicy(k ClusterPolicyKey)
}

var _ Updater = (*Engine)(nil)

// ErrPolicyRejected marks a policy update the compiler cannot compile.
var ErrPolicyRejected = errors.New("policy update rejected")

// RejectedPolicyError is the error Apply returns for a policy put it could
// not compile. errors.Is(err, ErrPolicyRejected) holds.
type RejectedPolicyError struct {
	// Key names a rejected NetworkPolicy or federated policy; ClusterKey a
	// rejected ClusterNetworkPolicy (then Key is zero).
	Key        PolicyKey
	ClusterKey ClusterPolicyKey
	Err        error
}

func (e *RejectedPolicyError) Error() string {
	name := e.Key.String()
	if e.ClusterKey != (ClusterPolicyKey{}) {
		name = "cluster network policy " + e.ClusterKey.String()
	}
	return fmt.Sprintf("compile policy %s: %v; the previous version, if any, stays in force", name, e.Err)
}

func (e *RejectedPolicyError) Unwrap() []error { return []error{ErrPolicyRejected, e.Err} }

// Apply hands one update to the engine.
//
// Failure rule: a policy put the compiler cannot compile changes nothing —
// the previous version of that policy, if any, stays in force (and so does
// its absence) — and Apply returns a *RejectedPolicyError for the caller to
// report. The agent keeps enforcing what it enforced, and Reach explains
// exactly that; dropping the old version instead would open what the
// dataplane still closes (or the reverse). The API edge rejects what the
// compiler cannot take, so this only happens across versions. "Previous"
// is what this engine was fed: an engine built afresh from a snapshot (an
// agent's first sync, Reach's rebuild) has none, so a rejected policy is
// absent from it, alike in the agent and in Reach.
func Apply(u Updater, up Update) error {
	switch up.Kind {
	case fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER:
		if up.Delete {
			u.DeleteCluster(up.ClusterName)
		} else {
			u.UpsertCluster(up.Cluster)
		}
	case fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT:
		if up.Delete {
			u.DeleteEndpoint(up.EndpointKey)
		} else {
			u.UpsertEndpoint(up.Endpoint)
		}
	case fedmeshv1.ResourceKind_RESOURCE_KIND_POLICY:
		if up.Delete {
			u.DeletePolicy(up.PolicyKey)
		} else if err := u.UpsertPolicy(up.Policy); err != nil {
			return &RejectedPolicyError{Key: up.PolicyKey, Err: err}
		}
	case KindClusterPolicy:
		if up.Delete {
			u.DeleteClusterPolicy(up.ClusterPolicyKey)
		} else if up.Err != nil {
			return &RejectedPolicyError{ClusterKey: up.ClusterPolicyKey, Err: up.Err}
		} else if up.ClusterPolicy == nil {
			return &RejectedPolicyError{ClusterKey: up.ClusterPolicyKey, Err: errors.New("the update carries no policy")}
		} else if err := u.UpsertClusterPolicy(up.ClusterPolicy); err != nil {
			return &RejectedPolicyError{ClusterKey: up.ClusterPolicyKey, Err: err}
		}
	}
	return nil
}

// UpdateFromEvent decodes a watch event into an Update. It returns false
// for an event that carries nothing the engine takes (a node, a service,
// an unknown type or object).
func UpdateFromEvent(ev *fedmeshv1.Event) (Update, bool) {
	var up Update
	switch ev.GetType() {
	case fedmeshv1.EventType_EVENT_TYPE_PUT:
	case fedmeshv1.EventType_EVENT_TYPE_DELETE:
		up.Delete = true
	default:
		return Update{}, false
	}
	switch o := ev.GetObject().(type) {
	case *fedmeshv1.Event_Cluster:
		up.Kind, up.ClusterName = fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER, o.Cluster.GetName()
		if !up.Delete {
			up.Cluster = o.Cluster
		}
	case *fedmeshv1.Event_Endpoint:
		x := o.Endpoint
		up.Kind = fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT
		up.EndpointKey = EndpointKey{Cluster: x.GetCluster(), Namespace: x.GetNamespace(), Name: x.GetName()}
		if !up.Delete {
			up.Endpoint = x
		}
	case *fedmeshv1.Event_Policy:
		p := o.Policy
		up.Kind = fedmeshv1.ResourceKind_RESOURCE_KIND_POLICY
		up.PolicyKey = PolicyKey{Cluster: p.GetCluster(), Namespace: p.GetNamespace(), Name: p.GetName()}
		if !up.Delete {
			up.Policy = p
		}
	case *fedmeshv1.Event_ClusterNetworkPolicy:
		p := o.ClusterNetworkPolicy
		up.Kind = KindClusterPolicy
		up.ClusterPolicyKey = ClusterPolicyKey{Cluster: p.GetCluster(), Name: p.GetName()}
		if !up.Delete {
			// A spec that does not decode is the compiler's rejection
			// (Apply's failure rule), not an event to skip: skipping
			// would diverge from an engine that rejected it.
			up.ClusterPolicy, up.Err = ClusterPolicyFromProto(p)
		}
	default:
		return Update{}, false
	}
	return up, true
}

// ApplyEvent is UpdateFromEvent then Apply; an event the engine does not
// take is ignored.
func ApplyEvent(u Updater, ev *fedmeshv1.Event) error {
	up, ok := UpdateFromEvent(ev)
	if !ok {
		return nil
	}
	return Apply(u, up)
}
