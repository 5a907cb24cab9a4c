package store

import (
	"net/netip"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Reads return stored objects: callers must not modify them.

func unixNanoToTimestamp(n int64) *timestamppb.Timestamp {
	return timestamppb.New(time.Unix(0, n).UTC())
}

// Cluster returns a cluster with its status, or nil.
func (s *State) Cluster(name string) *fedmeshv1.Cluster {
	ce := s.clusters[name]
	if ce == nil {
		return nil
	}
	return s.clusterView(ce)
}

// ClusterSpec returns the stored spec of a cluster (no status), or nil.
func (s *State) ClusterSpec(name string) *fedmeshv1.Cluster {
	if ce := s.clusters[name]; ce != nil {
		return ce.spec
	}
	return nil
}

// Clusters lists clusters matching sel (nil matches all), sorted by name.
func (s *State) Clusters(sel *fedmeshv1.LabelSelector) ([]*fedmeshv1.Cluster, error) {
	match := labels.Everything()
	if sel != nil {
		var err error
		if match, err = metav1.LabelSelectorAsSelector(model.SelectorToK8s(sel)); err != nil {
			return nil, err
		}
	}
	var out []*fedmeshv1.Cluster
	for _, n := range sortedKeys(s.clusters) {
		ce := s.clusters[n]
		if match.Matches(labels.Set(ce.spec.GetLabels())) {
			out = append(out, s.clusterView(ce))
		}
	}
	return out, nil
}

// Node returns one node, or nil.
func (s *State) Node(cluster, name string) *fedmeshv1.Node { return s.nodes[cluster][name] }

// Nodes lists nodes, of one cluster or all, sorted by cluster and name.
func (s *State) Nodes(cluster string) []*fedmeshv1.Node {
	var out []*fedmeshv1.Node
	for _, c := range sortedKeys(s.nodes) {
		if cluster != "" && c != cluster {
			continue
		}
		for _, n := range sortedKeys(s.nodes[c]) {
			out = append(out, s.nodes[c][n])
		}
	}
	return out
}

// Endpoints lists endpoints filtered by cluster, namespace and node (empty
// means any), sorted by cluster, namespace, name.
func (s *State) Endpoints(cluster, namespace, node string) []*fedmeshv1.Endpoint {
	var out []*fedmeshv1.Endpoint
	for _, c := range sortedKeys(s.endpoints) {
		if cluster != "" && c != cluster {
			continue
		}
		for _, k := range sortedNsNames(s.endpoints[c]) {
			e := s.endpoints[c][k].ep
			if (namespace == "" || k.ns == namespace) && (node == "" || e.GetNode() == node) {
				out = append(out, e)
			}
		}
	}
	return out
}

// EndpointCount is the number of endpoints stored.
func (s *State) EndpointCount() int {
	n := 0
	for _, m := range s.endpoints {
		n += len(m)
	}
	return n
}

// EndpointByIP returns the endpoint owning an address, or nil.
func (s *State) EndpointByIP(a netip.Addr) *fedmeshv1.Endpoint {
	if e := s.ipOwner.get(a); e != nil {
		return e.ep
	}
	return nil
}

// Endpoint returns one endpoint, or nil.
func (s *State) Endpoint(cluster, namespace, name string) *fedmeshv1.Endpoint {
	if e := s.endpoints[cluster][nsName{namespace, name}]; e != nil {
		return e.ep
	}
	return nil
}

// Exports lists exports, of one cluster or all, sorted by cluster,
// namespace, name.
func (s *State) Exports(cluster string) []*fedmeshv1.ServiceExport {
	var out []*fedmeshv1.ServiceExport
	for _, c := range sortedKeys(s.exports) {
		if cluster != "" && c != cluster {
			continue
		}
		for _, k := range sortedNsNames(s.exports[c]) {
			out = append(out, s.exports[c][k].x)
		}
	}
	return out
}

// Imports lists the imports a cluster sees through its import scope (all
// when cluster is empty), sorted by namespace, name.
func (s *State) Imports(cluster string) []*fedmeshv1.ServiceImport {
	var scope *fedmeshv1.NamespaceScope
	if cluster != "" {
		ce := s.clusters[cluster]
		if ce == nil {
			return nil
		}
		scope = ce.spec.GetImports()
	}
	var out []*fedmeshv1.ServiceImport
	for _, k := range sortedNsNames(s.imports) {
		if model.InScope(scope, k.ns) {
			out = append(out, s.imports[k])
		}
	}
	return out
}

// Policy returns one policy, or nil.
func (s *State) Policy(k *fedmeshv1.PolicyKey) *fedmeshv1.Policy {
	if e := s.policies[k.GetCluster()][nsName{k.GetNamespace(), k.GetName()}]; e != nil {
		return e.p
	}
	return nil
}

// Policies lists policies filtered by kind, owner cluster and namespace,
// sorted by cluster, namespace, name.
func (s *State) Policies(kind fedmeshv1.PolicyKind, cluster, namespace string) []*fedmeshv1.Policy {
	var out []*fedmeshv1.Policy
	for _, c := range sortedKeys(s.policies) {
		if cluster != "" && c != cluster {
			continue
		}
		for _, k := range sortedNsNames(s.policies[c]) {
			p := s.policies[c][k].p
			if (namespace == "" || k.ns == namespace) && (kind == fedmeshv1.PolicyKind_POLICY_KIND_UNSPECIFIED || p.GetKind() == kind) {
				out = append(out, p)
			}
		}
	}
	return out
}

// Members returns the replicas' published addresses by Raft ID.
func (s *State) Members() map[string]*fedmeshv1.Member {
	out := make(map[string]*fedmeshv1.Member, len(s.members))
	for k, v := range s.members {
		out[k] = v
	}
	return out
}

// ForEachObject calls fn with a PUT event at the current revision for every
// object, kind by kind in a fixed order, until fn returns false. Watchers
// build their snapshots with it.
func (s *State) ForEachObject(fn func(*fedmeshv1.Event) bool) {
	put := func(set func(e *fedmeshv1.Event)) bool {
		e := &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Revision: s.rev}
		set(e)
		return fn(e)
	}
	for _, n := range sortedKeys(s.clusters) {
		c := s.clusters[n].spec
		if !put(func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Cluster{Cluster: c} }) {
			return
		}
	}
	for _, n := range s.Nodes("") {
		if !put(func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Node{Node: n} }) {
			return
		}
	}
	for _, x := range s.Endpoints("", "", "") {
		if !put(func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Endpoint{Endpoint: x} }) {
			return
		}
	}
	for _, x := range s.Exports("") {
		if !put(func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_ServiceExport{ServiceExport: x} }) {
			return
		}
	}
	for _, x := range s.Imports("") {
		if !put(func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_ServiceImport{ServiceImport: x} }) {
			return
		}
	}
	for _, x := range s.Policies(fedmeshv1.PolicyKind_POLICY_KIND_UNSPECIFIED, "", "") {
		if !put(func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Policy{Policy: x} }) {
			return
		}
	}
	if !s.forEachBGP(put) {
		return
	}
	s.forEachClusterPolicy(put)
}
