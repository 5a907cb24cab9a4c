package syncer

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	stdmaps "maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ServiceAdvertisementOf is what the cluster's nodes need to advertise
// svc's addresses over BGP (bgp package): its cluster IPs, external IPs,
// LoadBalancer ingress IPs, externalTrafficPolicy, and the nodes that have
// a ready backend, from the EndpointSlices of the Service (those labelled
// kubernetes.io/service-name with its name, in its namespace). nil for a
// Service with no address to advertise (headless, ExternalName). Pure.
func ServiceAdvertisementOf(svc *corev1.Service, slices_ []*discoveryv1.EndpointSlice) *fedmeshv1.ServiceAdvertisement {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	a := &fedmeshv1.ServiceAdvertisement{Namespace: svc.Namespace, Name: svc.Name,
		ExternalIps:           slices.Clone(svc.Spec.ExternalIPs),
		ExternalTrafficPolicy: fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_CLUSTER}
	for _, ip := range svc.Spec.ClusterIPs {
		if ip != "" && ip != corev1.ClusterIPNone {
			a.ClusterIps = append(a.ClusterIps, ip)
		}
	}
	if len(a.ClusterIps) == 0 && svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		a.ClusterIps = []string{svc.Spec.ClusterIP}
	}
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if in.IP != "" {
			a.LoadBalancerIps = append(a.LoadBalancerIps, in.IP)
		}
	}
	if svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
		a.ExternalTrafficPolicy = fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL
	}
	if len(a.ClusterIps)+len(a.ExternalIps)+len(a.LoadBalancerIps) == 0 {
		return nil
	}
	for _, es := range slices_ {
		if es.Namespace != svc.Namespace || es.Labels[discoveryv1.LabelServiceName] != svc.Name {
			continue
		}
		for _, ep := range es.Endpoints {
			// Ready unset means ready (EndpointSlice API); a terminating
			// endpoint is not ready.
			if ep.NodeName == nil || *ep.NodeName == "" || (ep.Conditions.Ready != nil && !*ep.Conditions.Ready) {
				continue
			}
			a.ReadyNodes = append(a.ReadyNodes, *ep.NodeName)
		}
	}
	slices.Sort(a.ReadyNodes)
	a.ReadyNodes = slices.Compact(a.ReadyNodes)
	return a
}

// BGPSync hands the control plane what the cluster's nodes need for BGP
// beyond the generic sync: each Service's advertisement (addresses,
// traffic policy, nodes with a ready backend), and the values of the
// Secret keys that BGP peer passwords reference. Create one per cluster;
// Run until ctx ends.
//
// Secret values never go into the Raft log: they are pushed to every
// replica (PushBGPSecrets), which keeps them in memory; each push's answer
// names the keys wanted (those referenced by peers selecting a node of the
// cluster), and only those are read (get on each Secret: the chart grants
// get on the Secrets it is told of) and pushed, again every
// SecretInterval, so a restarted replica or leader is refilled.
type BGPSync struct {
	Cluster string
	Kube    kubernetes.Interface
	// Adverts writes advertisements (any replica: writes reach the leader).
	Adverts fedmeshv1.BGPServiceClient
	// Replicas are one client per control-plane replica, for secrets.
	Replicas       []fedmeshv1.BGPServiceClient
	Log            *slog.Logger
	SecretInterval time.Duration // default 10 s
	// Informers, when set, is the syncer's factory (Syncer.Informers): the
	// advertisements read its Service and EndpointSlice caches instead of
	// watching both resources a second time. Nil: BGPSync runs its own.
	Informers informers.SharedInformerFactory
}

// Run syncs until ctx ends.
func (b *BGPSync) Run(ctx context.Context) error {
	if b.Log == nil {
		b.Log = slog.New(slog.DiscardHandler)
	}
	if b.SecretInterval == 0 {
		b.SecretInterval = 10 * time.Second
	}
	f := b.Informers
	if f == nil {
		f = informers.NewSharedInformerFactory(b.Kube, 0)
		defer f.Shutdown() // a shared factory is its owner's to stop
	}
	svcs, eps := f.Core().V1().Services(), f.Discovery().V1().EndpointSlices()
	kick := make(chan struct{}, 1)
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify(kick) },
		UpdateFunc: func(any, any) { notify(kick) },
		DeleteFunc: func(any) { notify(kick) },
	}
	for _, inf := range []cache.SharedIndexInformer{svcs.Informer(), eps.Informer()} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("watch services for BGP: %w", err)
		}
	}
	f.Start(ctx.Done()) // starts only informers not yet started
	if !cache.WaitForCacheSync(ctx.Done(), svcs.Informer().HasSynced, eps.Informer().HasSynced) {
		return ctx.Err()
	}
	go b.secretsLoop(ctx)

	var sent map[string]*fedmeshv1.ServiceAdvertisement // nil: nothing sent yet, resync
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-retry.C:
		}
		want, err := b.adverts(svcs.Lister(), eps.Lister())
		if err != nil {
			b.Log.Error("list services for BGP advertisements", "err", err)
			retry.Reset(time.Second)
			continue
		}
		req := diffAdverts(b.Cluster, sent, want)
		if req == nil {
			continue
		}
		if _, err := b.Adverts.SyncServiceAdvertisements(ctx, req); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			b.Log.Error("sync service advertisements; retrying", "err", err)
			retry.Reset(time.Second)
			continue
		}
		sent = want
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (b *BGPSync) adverts(svcs corelisters.ServiceLister, eps discoverylisters.EndpointSliceLister) (map[string]*fedmeshv1.ServiceAdvertisement, error) {
	all, err := svcs.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	out := map[string]*fedmeshv1.ServiceAdvertisement{}
	for _, s := range all {
		sl, err := eps.EndpointSlices(s.Namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: s.Name}))
		if err != nil {
			return nil, err
		}
		if a := ServiceAdvertisementOf(s, sl); a != nil {
			out[s.Namespace+"/"+s.Name] = a
		}
	}
	return out, nil
}

// diffAdverts is the write that turns sent into want: a full replace when
// nothing was sent yet, else the changed puts and the deletes; nil when
// equal. Pure.
func diffAdverts(cluster string, sent, want map[string]*fedmeshv1.ServiceAdvertisement) *fedmeshv1.SyncServiceAdvertisementsRequest {
	req := &fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: cluster, Replace: sent == nil}
	for _, k := range slices.Sorted(stdmaps.Keys(want)) {
		if old, ok := sent[k]; !ok || !proto.Equal(old, want[k]) {
			req.Puts = append(req.Puts, want[k])
		}
	}
	for _, k := range slices.Sorted(stdmaps.Keys(sent)) {
		if _, ok := want[k]; !ok {
			ns, name, _ := strings.Cut(k, "/")
			req.Deletes = append(req.Deletes, &fedmeshv1.ServiceAdvertisementKey{Namespace: ns, Name: name})
		}
	}
	if !req.Replace && len(req.Puts) == 0 && len(req.Deletes) == 0 {
		return nil
	}
	return req
}

// secretsLoop pushes the wanted Secret values to every replica every
// SecretInterval, and again at once when a replica wants other keys.
func (b *BGPSync) secretsLoop(ctx context.Context) {
	wanted := map[secretRefKey]*fedmeshv1.BGPSecretKeyRef{}
	for {
		vals := b.readSecrets(ctx, wanted)
		next := map[secretRefKey]*fedmeshv1.BGPSecretKeyRef{}
		failed := false
		for i, r := range b.Replicas {
			resp, err := r.PushBGPSecrets(ctx, &fedmeshv1.PushBGPSecretsRequest{Cluster: b.Cluster, Secrets: vals})
			if err != nil {
				if ctx.Err() == nil {
					b.Log.Warn("push BGP secrets to a replica; retrying", "replica", i, "err", err)
				}
				failed = true
				continue
			}
			for _, ref := range resp.GetWanted() {
				next[secretRefKey{ref.GetNamespace(), ref.GetName(), ref.GetKey()}] = ref
			}
		}
		// The replicas want other keys (a peer changed): read and push
		// those at once. After a failed push keep the keys known so far.
		grew := false
		for k, v := range next {
			if wanted[k] == nil {
				grew = true
			}
			if failed {
				wanted[k] = v
			}
		}
		if !failed && (grew || len(next) != len(wanted)) {
			wanted = next
		}
		if grew {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(b.SecretInterval):
		}
	}
}

type secretRefKey struct{ ns, name, key string }

// readSecrets gets each wanted key; one that cannot be read carries why.
func (b *BGPSync) readSecrets(ctx context.Context, wanted map[secretRefKey]*fedmeshv1.BGPSecretKeyRef) []*fedmeshv1.BGPSecretValue {
	var out []*fedmeshv1.BGPSecretValue
	for _, k := range slices.SortedFunc(stdmaps.Keys(wanted), func(a, b secretRefKey) int {
		return strings.Compare(a.ns+"/"+a.name+"/"+a.key, b.ns+"/"+b.name+"/"+b.key)
	}) {
		ref := wanted[k]
		v := &fedmeshv1.BGPSecretValue{Ref: ref}
		s, err := b.Kube.CoreV1().Secrets(k.ns).Get(ctx, k.name, metav1.GetOptions{})
		switch {
		case err != nil:
			v.Error = fmt.Sprintf("cluster %s's syncer cannot read Secret %s/%s: %v (grant it get on that Secret: the chart's syncer.bgpPasswordSecrets)", b.Cluster, k.ns, k.name, err)
		case s.Data[k.key] == nil:
			v.Error = fmt.Sprintf("Secret %s/%s has no key %s", k.ns, k.name, k.key)
		default:
			v.Value = bytes.TrimRight(s.Data[k.key], "\r\n")
		}
		out = append(out, v)
	}
	return out
}
