package syncer

import (
	"cmp"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Kind is a kind of object the syncer publishes.
type Kind uint8

// Kinds the syncer publishes.
const (
	KindEndpoint Kind = iota + 1
	KindPolicy
	KindExport
	// KindClusterPolicy is a ClusterNetworkPolicy (cluster-scoped: its key
	// has no namespace), published only while the cluster serves the CRD.
	KindClusterPolicy
)

func (k Kind) String() string {
	switch k {
	case KindEndpoint:
		return "endpoint"
	case KindPolicy:
		return "policy"
	case KindExport:
		return "export"
	case KindClusterPolicy:
		return "clusterpolicy"
	}
	return "unknown"
}

// Key names one published object of the cluster.
type Key struct {
	Kind            Kind
	Namespace, Name string
}

func cmpKey(a, b Key) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// Batches are the writes one flush sends, in this order: upserts first (so
// a renamed object is never absent), then deletes.
type Batches struct {
	Endpoints      []*fedmeshv1.UpsertEndpointsRequest
	EndpointDelete []*fedmeshv1.DeleteEndpointsRequest
	Policies       []*fedmeshv1.ApplyPoliciesRequest
	PolicyDelete   []*fedmeshv1.PolicyKey
	Exports        []*fedmeshv1.ExportServicesRequest
	Unexports      []*fedmeshv1.UnexportServiceRequest
	// ClusterPolicies and ClusterPolicyDelete carry ClusterNetworkPolicies.
	ClusterPolicies     []*fedmeshv1.ApplyClusterPoliciesRequest
	ClusterPolicyDelete []*fedmeshv1.ClusterPolicyKey
}

// Empty reports whether there is nothing to send.
func (b *Batches) Empty() bool {
	return len(b.Endpoints)+len(b.EndpointDelete)+len(b.Policies)+len(b.PolicyDelete)+len(b.Exports)+len(b.Unexports)+
		len(b.ClusterPolicies)+len(b.ClusterPolicyDelete) == 0
}

// Published is what the control plane holds of this cluster, as far as the
// syncer knows: the value last sent for each key. It is owned by the
// publisher loop.
type Published map[Key]proto.Message

// Changes are what the batches of a plan change in Published once they
// commit: the new value of each key, nil for a delete.
type Changes map[Key]proto.Message

// Apply records committed changes.
func (p Published) Apply(c Changes) {
	for k, v := range c {
		if v == nil {
			delete(p, k)
		} else {
			p[k] = v
		}
	}
}

// PlanIncremental compares the desired value of each changed key (nil: the
// object is gone or skipped) with what was published and returns the
// batches that bring the control plane to the desired state, plus what
// they change in pub once they commit. Unchanged objects are not resent.
// Its cost is proportional to the changed keys, not to pub.
func PlanIncremental(cluster string, pub Published, desired map[Key]proto.Message, batchSize int) (Batches, Changes) {
	next := Changes{}
	keys := make([]Key, 0, len(desired))
	for k := range desired {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, cmpKey)
	var eps []*fedmeshv1.Endpoint
	var epDel []*fedmeshv1.EndpointKey
	var pols []*fedmeshv1.Policy
	var xs []*fedmeshv1.ServiceExport
	var cps []*fedmeshv1.ClusterNetworkPolicy
	var b Batches
	for _, k := range keys {
		want := desired[k]
		have, had := pub[k]
		switch {
		case want == nil && !had:
			continue
		case want == nil:
			next[k] = nil
			switch k.Kind {
			case KindEndpoint:
				epDel = append(epDel, &fedmeshv1.EndpointKey{Namespace: k.Namespace, Name: k.Name})
			case KindPolicy:
				b.PolicyDelete = append(b.PolicyDelete, &fedmeshv1.PolicyKey{Cluster: cluster, Namespace: k.Namespace, Name: k.Name})
			case KindExport:
				b.Unexports = append(b.Unexports, &fedmeshv1.UnexportServiceRequest{Cluster: cluster, Namespace: k.Namespace, Name: k.Name})
			case KindClusterPolicy:
				b.ClusterPolicyDelete = append(b.ClusterPolicyDelete, &fedmeshv1.ClusterPolicyKey{Cluster: cluster, Name: k.Name})
			}
			continue
		case had && proto.Equal(have, want):
			continue
		}
		next[k] = want
		switch v := want.(type) {
		case *fedmeshv1.Endpoint:
			eps = append(eps, v)
		case *fedmeshv1.Policy:
			pols = append(pols, v)
		case *fedmeshv1.ServiceExport:
			xs = append(xs, v)
		case *fedmeshv1.ClusterNetworkPolicy:
			cps = append(cps, v)
		}
	}
	for _, c := range chunks(cps, batchSize) {
		b.ClusterPolicies = append(b.ClusterPolicies, &fedmeshv1.ApplyClusterPoliciesRequest{Cluster: cluster, Policies: c})
	}
	for _, c := range chunks(eps, batchSize) {
		b.Endpoints = append(b.Endpoints, &fedmeshv1.UpsertEndpointsRequest{Cluster: cluster, Endpoints: c})
	}
	for _, c := range chunks(epDel, batchSize) {
		b.EndpointDelete = append(b.EndpointDelete, &fedmeshv1.DeleteEndpointsRequest{Cluster: cluster, Keys: c})
	}
	for _, c := range chunks(pols, batchSize) {
		b.Policies = append(b.Policies, &fedmeshv1.ApplyPoliciesRequest{Cluster: cluster, Policies: c})
	}
	for _, c := range chunks(xs, batchSize) {
		b.Exports = append(b.Exports, &fedmeshv1.ExportServicesRequest{Cluster: cluster, Exports: c})
	}
	return b, next
}

// PlanResync returns the batches of a full resync with generation gen: every
// desired object of every kind, in chunks, the last chunk of each kind
// marked final (an empty final batch when the cluster has none of a kind),
// so the control plane deletes whatever the cluster no longer has.
// ClusterNetworkPolicies are left out: PlanClusterPolicyResync plans them,
// for a cluster that serves their CRD.
func PlanResync(cluster string, desired Published, gen uint64, batchSize int) Batches {
	keys := make([]Key, 0, len(desired))
	for k := range desired {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, cmpKey)
	var eps []*fedmeshv1.Endpoint
	var pols []*fedmeshv1.Policy
	var xs []*fedmeshv1.ServiceExport
	for _, k := range keys {
		switch v := desired[k].(type) {
		case *fedmeshv1.Endpoint:
			eps = append(eps, v)
		case *fedmeshv1.Policy:
			pols = append(pols, v)
		case *fedmeshv1.ServiceExport:
			xs = append(xs, v)
		}
	}
	marker := func(i, n int) *fedmeshv1.ResyncMarker {
		return &fedmeshv1.ResyncMarker{Generation: gen, Final: i == n-1}
	}
	var b Batches
	ec := chunksOrOne(eps, batchSize)
	for i, c := range ec {
		b.Endpoints = append(b.Endpoints, &fedmeshv1.UpsertEndpointsRequest{Cluster: cluster, Endpoints: c, Resync: marker(i, len(ec))})
	}
	pc := chunksOrOne(pols, batchSize)
	for i, c := range pc {
		b.Policies = append(b.Policies, &fedmeshv1.ApplyPoliciesRequest{Cluster: cluster, Policies: c, Resync: marker(i, len(pc))})
	}
	xc := chunksOrOne(xs, batchSize)
	for i, c := range xc {
		b.Exports = append(b.Exports, &fedmeshv1.ExportServicesRequest{Cluster: cluster, Exports: c, Resync: marker(i, len(xc))})
	}
	return b
}

func chunks[T any](xs []T, n int) [][]T {
	if n <= 0 || n > model.MaxBatch {
		n = model.MaxBatch
	}
	var out [][]T
	for len(xs) > 0 {
		m := min(n, len(xs))
		out = append(out, xs[:m:m])
		xs = xs[m:]
	}
	return out
}

func chunksOrOne[T any](xs []T, n int) [][]T {
	if c := chunks(xs, n); len(c) > 0 {
		return c
	}
	return [][]T{nil}
}
