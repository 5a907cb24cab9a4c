package syncer

import (
	"context"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/cache"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	cnpinformers "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions"
	cnplisters "sigs.k8s.io/network-policy-api/pkg/client/listers/apis/v1alpha2"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ClusterNetworkPolicies (policy.networking.k8s.io/v1alpha2) are synced
// only from a cluster that serves their CRD: Run asks discovery at start
// and, while the cluster does not, every Config.DiscoveryInterval (a CRD
// installed later starts the informer and a full resync); a cluster
// without the CRD gets no informer and no error. Removing the CRD deletes
// its policies first, which the running informer publishes as deletes. Its full
// resyncs still send one empty final ClusterNetworkPolicy batch, so the
// policies of a cluster whose CRD was removed do not survive as ghosts; a
// control plane that does not take them yet (older than log format 5)
// refuses that batch, which is then no error. Unlike the MCS CRDs, the
// syncer never installs this one: the cluster's operators choose the
// policy API.

// clusterPolicyResource is the CRD's plural.
const clusterPolicyResource = "clusternetworkpolicies"

// servesClusterPolicies reports whether the cluster serves the
// ClusterNetworkPolicy API. A discovery error other than "not found" is
// returned: the syncer must not decide "absent" (and resync the cluster's
// policies away) on a flaky answer.
func servesClusterPolicies(d discovery.DiscoveryInterface) (bool, error) {
	rl, err := d.ServerResourcesForGroupVersion(cnpv1.GroupVersion.String())
	if err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("discover %s: %w", cnpv1.GroupVersion, err)
	}
	for _, r := range rl.APIResources {
		if r.Name == clusterPolicyResource {
			return true, nil
		}
	}
	return false, nil
}

// clusterPolicies is the syncer's ClusterNetworkPolicy informer, made by
// startClusterPolicies when the cluster serves the CRD; nil otherwise.
type clusterPolicies struct {
	factory cnpinformers.SharedInformerFactory
	lister  cnplisters.ClusterNetworkPolicyLister
}

// startClusterPolicies starts the informer when the cluster serves the
// CRD and returns its HasSynced, or nil when it does not.
func (s *Syncer) startClusterPolicies(ctx context.Context) (cache.InformerSynced, error) {
	ok, err := servesClusterPolicies(s.kube.Discovery())
	if err != nil || !ok {
		return nil, err
	}
	client, err := cnpclient.NewForConfig(s.cfg.REST)
	if err != nil {
		return nil, fmt.Errorf("ClusterNetworkPolicy client: %w", err)
	}
	f := cnpinformers.NewSharedInformerFactory(client, 0)
	inf := f.Policy().V1alpha2().ClusterNetworkPolicies()
	if _, err := inf.Informer().AddEventHandler(s.handler(func(o any) []Key { return objKey(KindClusterPolicy, o) })); err != nil {
		return nil, fmt.Errorf("watch ClusterNetworkPolicies: %w", err)
	}
	s.cnp = &clusterPolicies{factory: f, lister: inf.Lister()}
	f.Start(ctx.Done())
	return inf.Informer().HasSynced, nil
}

func (c *clusterPolicies) shutdown() {
	if c != nil {
		c.factory.Shutdown()
	}
}

// get returns the named policy from the cache, or nil.
func (c *clusterPolicies) get(name string) *cnpv1.ClusterNetworkPolicy {
	if c == nil {
		return nil
	}
	p, _ := c.lister.Get(name)
	return p
}

// keys lists every policy of the cache.
func (c *clusterPolicies) keys() []Key {
	if c == nil {
		return nil
	}
	ps, _ := c.lister.List(labels.Everything())
	out := make([]Key, 0, len(ps))
	for _, p := range ps {
		out = append(out, Key{Kind: KindClusterPolicy, Name: p.Name})
	}
	return out
}

// clusterPolicyFromK8s maps a policy of the cluster to the synced API
// object, checked as the control plane's edge checks it. A policy that
// fails is skipped whole (an Event on it, the skipped metric), never
// published in part: the federation then holds no version of it, as for a
// NetworkPolicy it rejects.
func clusterPolicyFromK8s(cluster string, cnp *cnpv1.ClusterNetworkPolicy) (*fedmeshv1.ClusterNetworkPolicy, error) {
	if errs := model.ValidateClusterNetworkPolicy(nil, cnp.Name, &cnp.Spec); len(errs) > 0 {
		return nil, skip("Invalid", "the federation rejects ClusterNetworkPolicy %s: %v", cnp.Name, errs.ToAggregate())
	}
	p, err := model.ClusterPolicyFromK8s(cluster, cnp)
	if err != nil {
		return nil, skip("Invalid", "the federation cannot carry ClusterNetworkPolicy %s: %v", cnp.Name, err)
	}
	return p, nil
}

// PlanClusterPolicyResync returns the ClusterNetworkPolicy batches of a
// full resync with generation gen: every desired policy in chunks, the last
// marked final (an empty final batch when there is none), so the control
// plane deletes the policies the cluster no longer has.
func PlanClusterPolicyResync(cluster string, desired Published, gen uint64, batchSize int) []*fedmeshv1.ApplyClusterPoliciesRequest {
	var ps []*fedmeshv1.ClusterNetworkPolicy
	keys := make([]Key, 0)
	for k := range desired {
		if k.Kind == KindClusterPolicy {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, cmpKey)
	for _, k := range keys {
		ps = append(ps, desired[k].(*fedmeshv1.ClusterNetworkPolicy))
	}
	cs := chunksOrOne(ps, batchSize)
	out := make([]*fedmeshv1.ApplyClusterPoliciesRequest, 0, len(cs))
	for i, c := range cs {
		out = append(out, &fedmeshv1.ApplyClusterPoliciesRequest{Cluster: cluster, Policies: c,
			Resync: &fedmeshv1.ResyncMarker{Generation: gen, Final: i == len(cs)-1}})
	}
	return out
}

// clearClusterPolicies is the full resync of a cluster without the CRD:
// an empty final batch deletes what the federation still holds of it. A
// control plane without ClusterNetworkPolicies (an older replica refuses
// the command, an older binary the RPC) has nothing to clear.
func (s *Syncer) clearClusterPolicies(ctx context.Context, gen uint64) error {
	_, err := s.cfg.ControlPlane.ApplyClusterPolicies(ctx, &fedmeshv1.ApplyClusterPoliciesRequest{Cluster: s.cfg.Cluster,
		Resync: &fedmeshv1.ResyncMarker{Generation: gen, Final: true}})
	switch status.Code(err) {
	case codes.OK:
		s.metrics.batches.WithLabelValues("clusterpolicies", "apply").Inc()
		return nil
	case codes.FailedPrecondition, codes.Unimplemented, codes.PermissionDenied:
		s.log.Debug("the control plane takes no ClusterNetworkPolicies; none to clear", "err", err)
		return nil
	}
	return fmt.Errorf("clear ClusterNetworkPolicies (the cluster serves none): %w", err)
}

// discoverClusterPolicies starts the informer once the cluster serves the
// CRD and waits for its cache; false while it does not. Called by the
// publisher loop.
func (s *Syncer) discoverClusterPolicies(ctx context.Context) (bool, error) {
	synced, err := s.startClusterPolicies(ctx)
	if err != nil || synced == nil {
		return false, err
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced) {
		return false, fmt.Errorf("ClusterNetworkPolicy informer did not sync: %w", context.Cause(ctx))
	}
	s.log.Info("the cluster serves ClusterNetworkPolicy now; syncing them")
	return true, nil
}
