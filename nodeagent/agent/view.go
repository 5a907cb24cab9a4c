package agent

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/watchclient"
	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/federation/services"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Errors View.Apply returns for a stream that cannot be followed; the agent
// restarts the watch from the view's revision on any of them.
var (
	// ErrStale is a message older than the revision the view is at.
	ErrStale = watchclient.ErrStale
	// ErrNoSnapshot is an events message before the first snapshot.
	ErrNoSnapshot = watchclient.ErrNoSnapshot
	// ErrBrokenSnapshot is a snapshot interrupted by another message type or
	// whose chunks disagree on the revision.
	ErrBrokenSnapshot = watchclient.ErrBrokenSnapshot
)

// Kinds the agent watches.
var watchedKinds = []fedmeshv1.ResourceKind{
	fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER,
	fedmeshv1.ResourceKind_RESOURCE_KIND_NODE,
	fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT,
	fedmeshv1.ResourceKind_RESOURCE_KIND_POLICY,
	fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER,
	fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER,
	fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER_NETWORK_POLICY,
	fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT,
}

// NodeKey names a node of a cluster.
type NodeKey struct {
	Cluster, Name string
}

// Change is one object put or deleted in the view: its kind, its key
// (the field matching Kind is set, on puts and deletes) and, on a put, the
// object. Endpoints and policies are named by the compiler's own keys.
type Change struct {
	Kind   fedmeshv1.ResourceKind
	Delete bool

	ClusterName string
	NodeKey     NodeKey
	EndpointKey policy.EndpointKey
	PolicyKey   policy.PolicyKey
	ImportKey   services.Key

	// Exactly one is set on a put, matching Kind (an endpoint put sets
	// both Endpoint and Compact).
	Cluster *fedmeshv1.Cluster
	Node    *fedmeshv1.Node
	// Endpoint is the proto as the watch brought it, for the compiler and
	// the flow directory, which keep what they need of it; Compact is what
	// the view, the ipcache index and the local endpoints keep.
	Endpoint *fedmeshv1.Endpoint
	Compact  *Endpoint
	Policy   *fedmeshv1.Policy
	// BGPName keys a BGP peer or filter (bgpview.go).
	BGPName   string
	BGPPeer   *fedmeshv1.BGPPeerConfig
	BGPFilter *fedmeshv1.BGPFilter
	// ClusterPolicyKey keys a ClusterNetworkPolicy (clusterpolicyview.go).
	ClusterPolicyKey policy.ClusterPolicyKey
	ClusterPolicy    *fedmeshv1.ClusterNetworkPolicy
	Import           *fedmeshv1.ServiceImport
	// StatusOnly marks a node put that changes nothing but the node's
	// reported status: nothing to enforce, and no reason to report at once
	// (reporting it would write another status, and so on forever).
	StatusOnly bool
}

// policyUpdate is the change in the compiler's form; policy.Apply ignores
// the kinds the compiler does not take (nodes).
func (c Change) policyUpdate() policy.Update {
	if c.Kind == policy.KindClusterPolicy {
		return c.clusterPolicyUpdate()
	}
	return policy.Update{Kind: c.Kind, Delete: c.Delete, ClusterName: c.ClusterName, EndpointKey: c.EndpointKey,
		PolicyKey: c.PolicyKey, Cluster: c.Cluster, Endpoint: c.Endpoint, Policy: c.Policy}
}

// objectKey names any object the view holds, whatever its kind.
type objectKey struct {
	kind                     fedmeshv1.ResourceKind
	cluster, namespace, name string
}

func (c Change) key() objectKey {
	switch c.Kind {
	case fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER:
		return objectKey{kind: c.Kind, name: c.ClusterName}
	case fedmeshv1.ResourceKind_RESOURCE_KIND_NODE:
		return objectKey{kind: c.Kind, cluster: c.NodeKey.Cluster, name: c.NodeKey.Name}
	case fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT:
		return objectKey{c.Kind, c.EndpointKey.Cluster, c.EndpointKey.Namespace, c.EndpointKey.Name}
	case fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER, fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER:
		return objectKey{kind: c.Kind, name: c.BGPName}
	case policy.KindClusterPolicy:
		return objectKey{kind: c.Kind, cluster: c.ClusterPolicyKey.Cluster, name: c.ClusterPolicyKey.Name}
	case fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT:
		return objectKey{kind: c.Kind, namespace: c.ImportKey.Namespace, name: c.ImportKey.Name}
	default:
		return objectKey{c.Kind, c.PolicyKey.Cluster, c.PolicyKey.Namespace, c.PolicyKey.Name}
	}
}

// Object names the changed object for logs: "endpoint/a/ns/x".
func (c Change) Object() string {
	switch c.Kind {
	case fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER:
		return "cluster/" + c.ClusterName
	case fedmeshv1.ResourceKind_RESOURCE_KIND_NODE:
		return "node/" + c.NodeKey.Cluster + "/" + c.NodeKey.Name
	case fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT:
		return "endpoint/" + c.EndpointKey.String()
	case fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER, fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER:
		return bgpObject(c)
	case policy.KindClusterPolicy:
		return "clusternetworkpolicy/" + c.ClusterPolicyKey.String()
	case fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT:
		return "serviceimport/" + c.ImportKey.String()
	default:
		return "policy/" + c.PolicyKey.String()
	}
}

// BadInput is an object or message the agent skipped.
type BadInput struct {
	// Reason is a short metric label ("unknown_kind", "ip_outside_cluster").
	Reason string
	// Object names what was skipped, for the log.
	Object string
	Detail string
}

// Bad-input reasons (metric label values).
const (
	ReasonUnknownKind     = "unknown_kind"
	ReasonUnknownEvent    = "unknown_event_type"
	ReasonUnknownMessage  = "unknown_message_type"
	ReasonMissingKey      = "missing_key"
	ReasonBadIP           = "bad_ip"
	ReasonIPOutside       = "ip_outside_cluster_cidrs"
	ReasonDuplicateIP     = "duplicate_ip"
	ReasonNoIdentity      = "no_identity"
	ReasonPolicyCompile   = "policy_compile"
	ReasonBadClusterCIDR  = "bad_cluster_cidr"
	ReasonWireGuardConfig = "wireguard_config"
	ReasonBGPConfig       = "bgp_config"
)

// View is the agent's copy of the objects it watches, at one revision.
// It is pure (no I/O, no clock) and owned by the sync goroutine.
type View struct {
	// follow is the view's position in the stream (revision, snapshot
	// chunks so far) and checks the stream's order.
	follow watchclient.Follower

	Clusters map[string]*fedmeshv1.Cluster
	Nodes    map[NodeKey]*fedmeshv1.Node
	// Endpoints are every endpoint of the federation in compact form.
	Endpoints map[policy.EndpointKey]*Endpoint
	Policies  map[policy.PolicyKey]*fedmeshv1.Policy
	// BGP peers (only those selecting this node) and filters, by name.
	BGPPeers   map[string]*fedmeshv1.BGPPeerConfig
	BGPFilters map[string]*fedmeshv1.BGPFilter
	// ClusterPolicies are the ClusterNetworkPolicies, both tiers.
	ClusterPolicies map[policy.ClusterPolicyKey]*fedmeshv1.ClusterNetworkPolicy
	// Imports are the service imports in this cluster's import scope.
	Imports map[services.Key]*fedmeshv1.ServiceImport

	// names interns the endpoints' cluster, namespace and node names;
	// sweptAt is how many endpoints the view held at its last sweep.
	names   interner
	sweptAt int
}

// NewView returns an empty view at revision 0.
func NewView() *View {
	return &View{
		Clusters:   map[string]*fedmeshv1.Cluster{},
		Nodes:      map[NodeKey]*fedmeshv1.Node{},
		Endpoints:  map[policy.EndpointKey]*Endpoint{},
		Policies:   map[policy.PolicyKey]*fedmeshv1.Policy{},
		BGPPeers:   map[string]*fedmeshv1.BGPPeerConfig{},
		BGPFilters: map[string]*fedmeshv1.BGPFilter{},

		ClusterPolicies: map[policy.ClusterPolicyKey]*fedmeshv1.ClusterNetworkPolicy{},
		Imports:         map[services.Key]*fedmeshv1.ServiceImport{},
	}
}

// Revision is the revision of the last applied message.
func (v *View) Revision() uint64 { return v.follow.Revision() }

// Synced reports whether a complete snapshot has been applied, i.e. the
// view is a faithful copy at Revision.
func (v *View) Synced() bool { return v.follow.Synced() }

// ResetStream drops a half-received snapshot; the watch goroutine calls it
// (through the sync goroutine) whenever it opens a new stream.
func (v *View) ResetStream() { v.follow.ResetStream() }

// Apply applies one watch message. It returns the object changes (a
// completed snapshot becomes the diff against the previous state, so the
// compiler sees only what changed) and the objects it skipped. An error
// means the stream cannot be followed; the view is unchanged by the
// failing message and the caller must restart the watch from Revision.
func (v *View) Apply(resp *fedmeshv1.WatchResponse) ([]Change, []BadInput, error) {
	if resp.GetType() == fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT {
		v.names.slimSnapshotChunk(resp.GetEvents())
	}
	u, err := v.follow.Apply(resp)
	if err != nil {
		return nil, nil, err
	}
	defer v.sweepNames()
	switch u.Kind {
	case watchclient.UpdateSnapshot:
		return v.applySnapshot(u.Events)
	case watchclient.UpdateEvents:
		var changes []Change
		var bad []BadInput
		for _, ev := range u.Events {
			ch, b, ok := v.decodeEvent(ev)
			if !ok {
				bad = append(bad, b)
				continue
			}
			ch.StatusOnly = v.statusOnly(ch)
			v.put(ch)
			changes = append(changes, ch)
		}
		return changes, bad, nil
	case watchclient.UpdateUnknown:
		return nil, []BadInput{{Reason: ReasonUnknownMessage, Object: "watch message",
			Detail: fmt.Sprintf("type %v at revision %d", resp.GetType(), resp.GetRevision())}}, nil
	}
	return nil, nil, nil
}

// applySnapshot replaces the view with a complete snapshot's objects (in
// stream order: a later event for an object wins) and returns the diff.
func (v *View) applySnapshot(evs []*fedmeshv1.Event) ([]Change, []BadInput, error) {
	// One slice in stream order, a later event for an object taking the
	// earlier one's place, and a map of positions; the slice becomes the
	// diff. (At ~300 B a Change, a map of Changes would add a gigabyte to
	// the peak of an initial sync of millions of endpoints.)
	objs := make([]Change, 0, len(evs))
	at := make(map[objectKey]int, len(evs))
	var bad []BadInput
	for _, ev := range evs {
		ch, b, ok := v.decodeEvent(ev)
		if !ok {
			bad = append(bad, b)
			continue
		}
		k := ch.key()
		if i, seen := at[k]; seen {
			objs[i] = ch // a delete stays as the object's absence
			continue
		}
		at[k] = len(objs)
		objs = append(objs, ch)
	}
	return v.replace(objs, at), bad, nil
}

// sweepNames drops interned names no endpoint uses any more: when the
// interner doubled since the last sweep, or the endpoints halved. Either
// takes as many changes as the sweep's walk over the endpoints costs.
func (v *View) sweepNames() {
	shrank := len(v.Endpoints) < v.sweptAt/2 && len(v.names.m) > sweepFloor
	if !v.names.needsSweep() && !shrank {
		return
	}
	v.names.sweep(func(keep func(string)) {
		for k, e := range v.Endpoints {
			keep(k.Cluster)
			keep(k.Namespace)
			keep(e.Node)
		}
	})
	v.sweptAt = len(v.Endpoints)
}

// replace swaps in the snapshot's objects (objs, at: see applySnapshot;
// deletes in objs mark absent objects) and returns the diff, reusing objs.
func (v *View) replace(objs []Change, at map[objectKey]int) []Change {
	var dels []Change
	del := func(ch Change) {
		if i, ok := at[ch.key()]; !ok || objs[i].Delete {
			ch.Delete = true
			v.put(ch)
			dels = append(dels, ch)
		}
	}
	for k := range v.Endpoints {
		del(Change{Kind: fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT, EndpointKey: k})
	}
	for k := range v.Policies {
		del(Change{Kind: fedmeshv1.ResourceKind_RESOURCE_KIND_POLICY, PolicyKey: k})
	}
	for k := range v.Nodes {
		del(Change{Kind: fedmeshv1.ResourceKind_RESOURCE_KIND_NODE, NodeKey: k})
	}
	for name := range v.Clusters {
		del(Change{Kind: fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER, ClusterName: name})
	}
	v.eachBGP(del)
	v.eachClusterPolicy(del)
	for k := range v.Imports {
		del(Change{Kind: fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT, ImportKey: k})
	}
	changes := objs[:0]
	for _, ch := range objs {
		if ch.Delete || v.same(ch) {
			continue
		}
		v.put(ch)
		changes = append(changes, ch)
	}
	clear(objs[len(changes):]) // holds no object past the diff
	// sortChanges puts the deletes first, so a compiler sees an IP leave
	// before another claims it.
	changes = append(changes, dels...)
	sortChanges(changes)
	return changes
}

// same reports whether a put carries what the view already holds.
func (v *View) same(ch Change) bool {
	var old, cur proto.Message
	var oldMeta, curMeta *fedmeshv1.ObjectMeta
	switch ch.Kind {
	case fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER:
		o := v.Clusters[ch.ClusterName]
		if o == nil {
			return false
		}
		old, cur, oldMeta, curMeta = o, ch.Cluster, o.GetMeta(), ch.Cluster.GetMeta()
	case fedmeshv1.ResourceKind_RESOURCE_KIND_NODE:
		o := v.Nodes[ch.NodeKey]
		if o == nil {
			return false
		}
		old, cur, oldMeta, curMeta = o, ch.Node, o.GetMeta(), ch.Node.GetMeta()
	case fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT:
		// The view keeps no labels to compare, so an endpoint without a
		// revision counts as changed: the compiler and the ipcache index
		// then find nothing to do.
		o := v.Endpoints[ch.EndpointKey]
		return o != nil && o.Revision != 0 && o.Revision == ch.Compact.Revision
	case fedmeshv1.ResourceKind_RESOURCE_KIND_POLICY:
		o := v.Policies[ch.PolicyKey]
		if o == nil {
			return false
		}
		old, cur, oldMeta, curMeta = o, ch.Policy, o.GetMeta(), ch.Policy.GetMeta()
	case fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER, fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER:
		return v.sameBGP(ch)
	case policy.KindClusterPolicy:
		return v.sameClusterPolicy(ch)
	case fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT:
		o := v.Imports[ch.ImportKey]
		if o == nil {
			return false
		}
		old, cur, oldMeta, curMeta = o, ch.Import, o.GetMeta(), ch.Import.GetMeta()
	}
	// The control plane stamps every change with a new revision, so equal
	// non-zero revisions mean equal objects; compare in full otherwise.
	// Node status reports bump a node's revision too, which is harmless:
	// it only means one more WireGuard sync.
	if r := oldMeta.GetRevision(); r != 0 && r == curMeta.GetRevision() {
		return true
	}
	return proto.Equal(old, cur)
}

// statusOnly reports whether ch is a node put that differs from the view's
// copy in status and revisions only.
func (v *View) statusOnly(ch Change) bool {
	if ch.Kind != fedmeshv1.ResourceKind_RESOURCE_KIND_NODE || ch.Delete {
		return false
	}
	old := v.Nodes[ch.NodeKey]
	if old == nil {
		return false
	}
	a, b := proto.CloneOf(old), proto.CloneOf(ch.Node)
	a.Status, a.Meta, b.Status, b.Meta = nil, nil, nil, nil
	return proto.Equal(a, b)
}

func (v *View) put(ch Change) {
	switch ch.Kind {
	case fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER:
		if ch.Delete {
			delete(v.Clusters, ch.ClusterName)
		} else {
			v.Clusters[ch.ClusterName] = ch.Cluster
		}
	case fedmeshv1.ResourceKind_RESOURCE_KIND_NODE:
		if ch.Delete {
			delete(v.Nodes, ch.NodeKey)
		} else {
			v.Nodes[ch.NodeKey] = ch.Node
		}
	case fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT:
		if ch.Delete {
			delete(v.Endpoints, ch.EndpointKey)
		} else {
			v.Endpoints[ch.EndpointKey] = ch.Compact
		}
	case fedmeshv1.ResourceKind_RESOURCE_KIND_POLICY:
		if ch.Delete {
			delete(v.Policies, ch.PolicyKey)
		} else {
			v.Policies[ch.PolicyKey] = ch.Policy
		}
	case fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER, fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER:
		v.putBGP(ch)
	case policy.KindClusterPolicy:
		v.putClusterPolicy(ch)
	case fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT:
		if ch.Delete {
			delete(v.Imports, ch.ImportKey)
		} else {
			v.Imports[ch.ImportKey] = ch.Import
		}
	}
}

// decodeEvent turns an event into a Change; ok is false for an event the
// agent cannot use (an object kind it does not know, from a newer server,
// or one it did not ask for), described by bad. An endpoint put gets its
// compact form here, the one place it is made.
func (v *View) decodeEvent(ev *fedmeshv1.Event) (ch Change, bad BadInput, ok bool) {
	switch ev.GetType() {
	case fedmeshv1.EventType_EVENT_TYPE_PUT:
	case fedmeshv1.EventType_EVENT_TYPE_DELETE:
		ch.Delete = true
	default:
		return ch, BadInput{Reason: ReasonUnknownEvent, Object: "event",
			Detail: fmt.Sprintf("type %v at revision %d", ev.GetType(), ev.GetRevision())}, false
	}
	put := !ch.Delete
	switch o := ev.GetObject().(type) {
	case *fedmeshv1.Event_Cluster:
		ch.Kind, ch.ClusterName = fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER, o.Cluster.GetName()
		if put {
			ch.Cluster = o.Cluster
		}
	case *fedmeshv1.Event_Node:
		ch.Kind = fedmeshv1.ResourceKind_RESOURCE_KIND_NODE
		ch.NodeKey = NodeKey{Cluster: o.Node.GetCluster(), Name: o.Node.GetName()}
		if put {
			ch.Node = o.Node
		}
	case *fedmeshv1.Event_Endpoint:
		ch.Kind = fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT
		if put {
			v.names.internEndpoint(o.Endpoint)
			ch.Endpoint, ch.Compact = o.Endpoint, NewEndpoint(o.Endpoint)
			ch.EndpointKey = ch.Compact.Key
		} else {
			ch.EndpointKey = policy.EndpointKey{Cluster: o.Endpoint.GetCluster(), Namespace: o.Endpoint.GetNamespace(), Name: o.Endpoint.GetName()}
		}
	case *fedmeshv1.Event_Policy:
		ch.Kind = fedmeshv1.ResourceKind_RESOURCE_KIND_POLICY
		ch.PolicyKey = policy.PolicyKey{Cluster: o.Policy.GetCluster(), Namespace: o.Policy.GetNamespace(), Name: o.Policy.GetName()}
		if put {
			ch.Policy = o.Policy
		}
	case *fedmeshv1.Event_ServiceImport:
		ch.Kind = fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT
		ch.ImportKey = services.Key{Namespace: o.ServiceImport.GetNamespace(), Name: o.ServiceImport.GetName()}
		if put {
			ch.Import = o.ServiceImport
		}
	default:
		if decodeBGPEvent(ev, &ch) || decodeClusterPolicyEvent(ev, &ch) {
			break
		}
		// Service exports are not asked for; a nil or unknown oneof
		// is a kind this agent does not know.
		return ch, BadInput{Reason: ReasonUnknownKind, Object: "event",
			Detail: fmt.Sprintf("object %T at revision %d", ev.GetObject(), ev.GetRevision())}, false
	}
	if ch.key().name == "" {
		return ch, BadInput{Reason: ReasonMissingKey, Object: ch.Kind.String(),
			Detail: fmt.Sprintf("no name at revision %d", ev.GetRevision())}, false
	}
	return ch, BadInput{}, true
}
