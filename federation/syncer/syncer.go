// Package syncer owns what one member cluster and the federation exchange:
// client-go informers on the cluster's API publish its pods (endpoints),
// NetworkPolicies and ClusterNetworkPolicies (the cluster's policies; the
// latter when the cluster serves their CRD) and exported services to the
// control plane, with a full resync (with a generation) at start and after
// every failed write; and imported services are written back into the
// cluster as MCS API ServiceImports and EndpointSlices, plus, for a
// ClusterSetIP import, a derived Service that holds its VIP.
//
// # Shape
//
// Deciding is pure: the mapping from Kubernetes objects to API objects
// (mapping.go), the decision about each changed object — its desired value,
// why it is skipped, its ServiceExport conditions (decide.go) — the batch
// planning (plan.go) and, on the import side, the desired MCS objects and
// the writes that get the cluster there (imports.go). Syncer is the loop
// around them, with three goroutines: the publisher loop owns what was
// published and the only write stream to the control plane; the import
// watcher follows the control plane's watch and writes imports
// (importwriter.go); the reporter (status.go) is the only writer of
// ServiceExport status and Events, which the other two post to it as
// values.
//
// # Batching
//
// Writes are batched adaptively, with at most one write in flight: a change
// goes out at once when no write is in flight, and the changes that arrive
// while one is share the next write. Under churn the writes follow each
// other back to back, each carrying what arrived during the one before, so
// a change waits at most about two write round trips and the batch size
// grows with the load instead of with a timer. Config.MaxDelay (the
// --max-delay flag) may hold changes longer to make writes fewer and larger.
package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcsinformers "sigs.k8s.io/mcs-api/pkg/client/informers/externalversions"
	mcslisters "sigs.k8s.io/mcs-api/pkg/client/listers/apis/v1beta1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/fedmesh/fedmesh/controlplane/watchclient"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Config is what a Syncer needs. Cluster, REST and ControlPlane are
// required.
type Config struct {
	// Cluster is this cluster's name in the federation.
	Cluster string
	// REST reaches the member cluster's API.
	REST *rest.Config
	// ControlPlane is the federation.
	ControlPlane ControlPlane
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// Registerer for the syncer's metrics; none registered when nil.
	Registerer prometheus.Registerer
	// MaxDelay is how long the syncer may hold a change to batch it with
	// later ones: a write starts once the oldest unsent change is MaxDelay
	// old and no write is in flight. Zero, the default, writes at once;
	// changes that arrive during a write always share the next one. Under
	// steady churn a positive MaxDelay spaces writes at least MaxDelay
	// apart, trading up to MaxDelay of latency for fewer, larger writes.
	MaxDelay time.Duration
	// BatchSize is the most objects per write (default and at most
	// model.MaxBatch).
	BatchSize int
	// Now is the clock (time.Now when nil); resync generations come from it
	// so they grow across restarts of the syncer.
	Now func() time.Time
	// ClusterSpec, when set, is used instead of asking the control plane
	// for the cluster's registration (export scope, pod CIDRs).
	ClusterSpec *fedmeshv1.Cluster
	// DiscoveryInterval is how often the syncer of a cluster that does not
	// serve the ClusterNetworkPolicy CRD looks for it again (default 30s),
	// so a CRD installed after the syncer started is synced without a
	// restart.
	DiscoveryInterval time.Duration
}

// Syncer publishes one cluster to the federation. Create with New, run with
// Run.
type Syncer struct {
	cfg     Config
	kube    kubernetes.Interface
	mcs     mcsclient.Interface
	log     *slog.Logger
	metrics *metrics
	bcast   record.EventBroadcaster
	// reporter is the only writer of ServiceExport status and Events.
	reporter *reporter

	factory    informers.SharedInformerFactory
	mcsFactory mcsinformers.SharedInformerFactory
	pods       corelisters.PodLister
	nss        corelisters.NamespaceLister
	svcs       corelisters.ServiceLister
	slices     discoverylisters.EndpointSliceLister
	netpols    networkinglisters.NetworkPolicyLister
	exports    mcslisters.ServiceExportLister
	synced     []cache.InformerSynced
	// cnp is the ClusterNetworkPolicy informer, set by Run when the
	// cluster serves the CRD (clusterpolicy.go); nil otherwise.
	cnp *clusterPolicies

	mu      sync.Mutex
	pending map[Key]struct{}
	// pendingSince is when the oldest change in pending arrived.
	pendingSince time.Time
	kick         chan struct{}
	// respec tells the publisher loop that this cluster's registration
	// changed (the import watcher sees it); the loop answers with a full
	// resync, since the export scope may have changed.
	respec chan struct{}

	// Owned by the publisher loop.
	spec      *fedmeshv1.Cluster
	published Published
	lastSkip  map[Key]string
	lastWarn  map[Key]string // message of the last Warn reported per key
	lastGen   uint64

	statusMu   sync.Mutex
	lastCommit time.Time
	commits    chan uint64 // optional observer of committed revisions (tests, benchmarks)
}

// Kubernetes label on an EndpointSlice naming its Service.
const serviceNameLabel = discoveryv1.LabelServiceName

// New builds a Syncer and its informers; nothing runs until Run.
func New(cfg Config) (*Syncer, error) {
	if cfg.REST == nil || cfg.ControlPlane == nil {
		return nil, errors.New("new syncer: REST and ControlPlane are required")
	}
	if errs := model.ClusterName(nil, cfg.Cluster); len(errs) > 0 {
		return nil, fmt.Errorf("new syncer: cluster name: %w", errs.ToAggregate())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxDelay < 0 {
		return nil, fmt.Errorf("new syncer: max delay %s is negative; use 0 to write at once", cfg.MaxDelay)
	}
	if cfg.BatchSize <= 0 || cfg.BatchSize > model.MaxBatch {
		cfg.BatchSize = model.MaxBatch
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DiscoveryInterval <= 0 {
		cfg.DiscoveryInterval = 30 * time.Second
	}
	kube, err := kubernetes.NewForConfig(cfg.REST)
	if err != nil {
		return nil, fmt.Errorf("new syncer: kubernetes client: %w", err)
	}
	mcs, err := mcsclient.NewForConfig(cfg.REST)
	if err != nil {
		return nil, fmt.Errorf("new syncer: MCS client: %w", err)
	}
	s := &Syncer{
		cfg:       cfg,
		kube:      kube,
		mcs:       mcs,
		log:       cfg.Logger.With("cluster", cfg.Cluster),
		metrics:   newMetrics(cfg.Registerer),
		pending:   map[Key]struct{}{},
		kick:      make(chan struct{}, 1),
		respec:    make(chan struct{}, 1),
		published: Published{},
		lastSkip:  map[Key]string{},
		lastWarn:  map[Key]string{},
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("new syncer: %w", err)
	}
	if err := mcsv1beta1.Install(scheme); err != nil {
		return nil, fmt.Errorf("new syncer: %w", err)
	}
	// Events on ClusterNetworkPolicies (a policy the federation rejects).
	if err := cnpv1.Install(scheme); err != nil {
		return nil, fmt.Errorf("new syncer: %w", err)
	}
	s.bcast = record.NewBroadcaster()
	rec := s.bcast.NewRecorder(scheme, corev1.EventSource{Component: "fedmesh-syncer"})

	s.factory = informers.NewSharedInformerFactory(s.kube, 0)
	s.mcsFactory = mcsinformers.NewSharedInformerFactory(s.mcs, 0)
	podInf := s.factory.Core().V1().Pods()
	nsInf := s.factory.Core().V1().Namespaces()
	svcInf := s.factory.Core().V1().Services()
	sliceInf := s.factory.Discovery().V1().EndpointSlices()
	npInf := s.factory.Networking().V1().NetworkPolicies()
	seInf := s.mcsFactory.Multicluster().V1beta1().ServiceExports()
	s.pods, s.nss, s.svcs, s.slices, s.netpols, s.exports = podInf.Lister(), nsInf.Lister(), svcInf.Lister(), sliceInf.Lister(), npInf.Lister(), seInf.Lister()
	s.reporter = newReporter(s.mcs, s.exports, rec, s.log)

	add := func(inf cache.SharedIndexInformer, keys func(obj any) []Key) error {
		_, err := inf.AddEventHandler(s.handler(keys))
		s.synced = append(s.synced, inf.HasSynced)
		return err
	}
	errs := []error{
		add(podInf.Informer(), func(o any) []Key { return objKey(KindEndpoint, o) }),
		add(npInf.Informer(), func(o any) []Key { return objKey(KindPolicy, o) }),
		add(svcInf.Informer(), func(o any) []Key { return objKey(KindExport, o) }),
		add(seInf.Informer(), func(o any) []Key { return objKey(KindExport, o) }),
		add(sliceInf.Informer(), func(o any) []Key {
			es, ok := o.(*discoveryv1.EndpointSlice)
			if !ok || es.Labels[serviceNameLabel] == "" {
				return nil
			}
			return []Key{{Kind: KindExport, Namespace: es.Namespace, Name: es.Labels[serviceNameLabel]}}
		}),
		// A namespace's labels are part of each of its pods' endpoints.
		add(nsInf.Informer(), func(o any) []Key {
			ns, ok := o.(*corev1.Namespace)
			if !ok {
				return nil
			}
			pods, _ := s.pods.Pods(ns.Name).List(labels.Everything())
			keys := make([]Key, 0, len(pods))
			for _, p := range pods {
				keys = append(keys, Key{Kind: KindEndpoint, Namespace: p.Namespace, Name: p.Name})
			}
			return keys
		}),
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("new syncer: add event handlers: %w", err)
	}
	return s, nil
}

// handler enqueues the keys of every object an informer adds, updates or
// deletes.
// Informers is the syncer's informer factory, for other parts of the
// syncer process (BGPSync) to read the same caches instead of watching the
// same resources again. Run starts and stops it.
func (s *Syncer) Informers() informers.SharedInformerFactory { return s.factory }

func (s *Syncer) handler(keys func(obj any) []Key) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.enqueue(keys(o)...) },
		UpdateFunc: func(_, o any) { s.enqueue(keys(o)...) },
		DeleteFunc: func(o any) {
			if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			s.enqueue(keys(o)...)
		},
	}
}

func objKey(kind Kind, o any) []Key {
	m, err := cache.MetaNamespaceKeyFunc(o)
	if err != nil {
		return nil
	}
	ns, name, _ := cache.SplitMetaNamespaceKey(m)
	return []Key{{Kind: kind, Namespace: ns, Name: name}}
}

// enqueue is called from informer goroutines.
func (s *Syncer) enqueue(keys ...Key) {
	if len(keys) == 0 {
		return
	}
	s.mu.Lock()
	if len(s.pending) == 0 {
		s.pendingSince = time.Now()
	}
	for _, k := range keys {
		s.pending[k] = struct{}{}
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Syncer) takePending() map[Key]struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pending
	s.pending = map[Key]struct{}{}
	return p
}

// Run starts the informers, waits for their caches, does a full resync and
// then publishes changes until ctx ends. It also writes imported services
// back into the cluster. It returns only when ctx ends, or when the
// informers cannot sync.
func (s *Syncer) Run(ctx context.Context) error {
	if err := EnsureCRDs(ctx, s.cfg.REST); err != nil {
		return err
	}
	s.bcast.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.kube.CoreV1().Events("")})
	defer s.bcast.Shutdown()
	s.factory.Start(ctx.Done())
	s.mcsFactory.Start(ctx.Done())
	defer s.factory.Shutdown()
	defer s.mcsFactory.Shutdown()
	synced := s.synced
	cnpSynced, err := s.startClusterPolicies(ctx)
	if err != nil {
		return fmt.Errorf("run syncer: %w", err)
	}
	defer func() { s.cnp.shutdown() }()
	// Without the CRD, look for it again now and then (clusterpolicy.go).
	var discover <-chan time.Time
	if cnpSynced != nil {
		synced = append(synced[:len(synced):len(synced)], cnpSynced)
	} else {
		s.log.Info("the cluster does not serve ClusterNetworkPolicy; not syncing them until it does", "api", cnpv1.GroupVersion.String())
		t := time.NewTicker(s.cfg.DiscoveryInterval)
		defer t.Stop()
		discover = t.C
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("run syncer: informer caches did not sync: %w", context.Cause(ctx))
	}
	s.log.Info("informers synced; starting full resync")

	var wg sync.WaitGroup
	resynced := make(chan struct{})
	wg.Go(func() { s.runImports(ctx) })
	wg.Go(func() { s.reporter.run(ctx) })
	wg.Go(func() { s.heartbeatLoop(ctx, resynced) })
	defer wg.Wait()

	retry := watchclient.NewRetry(retryBase, retryMax, 0)
	needResync := true
	for {
		if needResync {
			if err := s.resync(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				d := retry.Next()
				s.log.Warn("full resync failed; retrying", "err", err, "in", d)
				s.metrics.sendErrors.Inc()
				if !watchclient.Sleep(ctx, d) {
					return nil
				}
				continue
			}
			retry.Reset()
			needResync = false
			select {
			case <-resynced:
			default:
				close(resynced)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.respec:
			needResync = true
			continue
		case <-discover:
			switch found, err := s.discoverClusterPolicies(ctx); {
			case err != nil:
				s.log.Warn("look for the ClusterNetworkPolicy CRD", "err", err)
			case found:
				// Its policies are published by a full resync, like
				// everything at start.
				discover, needResync = nil, true
			}
			continue
		case <-s.kick:
		}
		if !s.hold(ctx) {
			return nil
		}
		// The write is synchronous: this loop is the one write in flight,
		// and what arrives meanwhile waits in pending for the next.
		if err := s.flush(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// After a failed write we cannot know what committed; a full
			// resync with a new generation makes the control plane exact.
			s.log.Warn("publish failed; full resync follows", "err", err)
			s.metrics.sendErrors.Inc()
			needResync = true
			if !watchclient.Sleep(ctx, retry.Next()) {
				return nil
			}
		}
	}
}

// hold waits until the oldest pending change is MaxDelay old; false when
// ctx ended.
func (s *Syncer) hold(ctx context.Context) bool {
	if s.cfg.MaxDelay <= 0 {
		return true
	}
	s.mu.Lock()
	wait := time.Until(s.pendingSince.Add(s.cfg.MaxDelay))
	s.mu.Unlock()
	if wait <= 0 {
		return true
	}
	return watchclient.Sleep(ctx, wait)
}

// loadSpec fetches this cluster's registration (export scope, pod CIDRs).
func (s *Syncer) loadSpec(ctx context.Context) error {
	if s.cfg.ClusterSpec != nil {
		s.spec = s.cfg.ClusterSpec
		return nil
	}
	c, err := s.cfg.ControlPlane.GetCluster(ctx, s.cfg.Cluster)
	if err != nil {
		return fmt.Errorf("get cluster %q from the control plane (register it with `fedctl cluster register`): %w", s.cfg.Cluster, err)
	}
	s.spec = c
	return nil
}

// inputs looks up, in the informer caches, the objects the decision about
// k reads.
func (s *Syncer) inputs(k Key) Inputs {
	var in Inputs
	switch k.Kind {
	case KindEndpoint:
		in.Pod, _ = s.pods.Pods(k.Namespace).Get(k.Name)
		in.Namespace, _ = s.nss.Get(k.Namespace)
	case KindPolicy:
		in.Policy, _ = s.netpols.NetworkPolicies(k.Namespace).Get(k.Name)
	case KindExport:
		in.Export, _ = s.exports.ServiceExports(k.Namespace).Get(k.Name)
		if in.Export != nil {
			in.Service, _ = s.svcs.Services(k.Namespace).Get(k.Name)
			in.Slices, _ = s.slices.EndpointSlices(k.Namespace).List(labels.SelectorFromSet(labels.Set{serviceNameLabel: k.Name}))
		}
	case KindClusterPolicy:
		in.ClusterPolicy = s.cnp.get(k.Name)
	}
	return in
}

// decide decides about every key (Decide, from the informer caches) and
// acts on what is not a write to the control plane: skips are counted,
// logged and, once per reason, posted as Events; export conditions are
// posted to the reporter. It returns the desired value of each key.
// Called by the publisher loop only.
func (s *Syncer) decide(keys []Key) (map[Key]proto.Message, []Decision) {
	desired := make(map[Key]proto.Message, len(keys))
	ds := make([]Decision, 0, len(keys))
	for _, k := range keys {
		d := Decide(s.cfg.Cluster, s.spec, k, s.inputs(k))
		desired[k] = d.Value
		ds = append(ds, d)
		s.noteSkip(d)
		if k.Kind == KindExport {
			ref := exportRef{k.Namespace, k.Name}
			if d.ExportConditions != nil {
				s.reporter.setConditions(ref, d.ExportConditions...)
			} else {
				s.reporter.forget(ref)
			}
		}
	}
	return desired, ds
}

// noteSkip reports a skipped object once per reason: a metric, a log line
// and a Kubernetes Event on the object, so `kubectl describe` shows why.
func (s *Syncer) noteSkip(d Decision) {
	s.noteWarn(d)
	if d.Skip == nil {
		delete(s.lastSkip, d.Key)
		return
	}
	if s.lastSkip[d.Key] == d.Skip.Reason {
		return
	}
	s.lastSkip[d.Key] = d.Skip.Reason
	s.metrics.skipped.WithLabelValues(d.Key.Kind.String(), d.Skip.Reason).Inc()
	s.log.Info("not published", "kind", d.Key.Kind, "namespace", d.Key.Namespace, "name", d.Key.Name, "reason", d.Skip.Reason, "detail", d.Skip.Message)
	if d.Object != nil {
		s.reporter.event(d.Object, d.Skip.Reason, d.Skip.Message)
	}
}

// noteWarn reports a problem of a published object once per reason.
func (s *Syncer) noteWarn(d Decision) {
	if d.Warn == nil {
		delete(s.lastWarn, d.Key)
		return
	}
	if s.lastWarn[d.Key] == d.Warn.Message {
		return
	}
	s.lastWarn[d.Key] = d.Warn.Message
	s.log.Info("published with a problem", "kind", d.Key.Kind, "namespace", d.Key.Namespace, "name", d.Key.Name, "reason", d.Warn.Reason, "detail", d.Warn.Message)
	if d.Object != nil {
		s.reporter.warn(d.Object, "Fedmesh"+d.Warn.Reason, d.Warn.Message)
	}
}

// committed marks the exports among ds that the control plane now holds
// Ready.
func (s *Syncer) committed(ds []Decision) {
	for _, d := range ds {
		if d.Key.Kind == KindExport && d.Value != nil {
			s.reporter.setConditions(exportRef{d.Key.Namespace, d.Key.Name}, readyCondition())
		}
	}
}

// allKeys lists every object the informers hold that the syncer publishes.
func (s *Syncer) allKeys() []Key {
	var keys []Key
	pods, _ := s.pods.List(labels.Everything())
	for _, p := range pods {
		keys = append(keys, Key{KindEndpoint, p.Namespace, p.Name})
	}
	nps, _ := s.netpols.List(labels.Everything())
	for _, p := range nps {
		keys = append(keys, Key{KindPolicy, p.Namespace, p.Name})
	}
	ses, _ := s.exports.List(labels.Everything())
	for _, x := range ses {
		keys = append(keys, Key{KindExport, x.Namespace, x.Name})
	}
	return append(keys, s.cnp.keys()...)
}

// nextGeneration is a resync generation above every earlier one, also
// across restarts of the syncer: the clock in nanoseconds.
func (s *Syncer) nextGeneration() uint64 {
	g := uint64(s.cfg.Now().UnixNano())
	if g <= s.lastGen {
		g = s.lastGen + 1
	}
	s.lastGen = g
	return g
}

func (s *Syncer) resync(ctx context.Context) error {
	if err := s.loadSpec(ctx); err != nil {
		return err
	}
	s.takePending() // everything is recomputed below
	all, ds := s.decide(s.allKeys())
	desired := Published{}
	for k, v := range all {
		if v != nil {
			desired[k] = v
		}
	}
	gen := s.nextGeneration()
	b := PlanResync(s.cfg.Cluster, desired, gen, s.cfg.BatchSize)
	if s.cnp != nil {
		b.ClusterPolicies = PlanClusterPolicyResync(s.cfg.Cluster, desired, gen, s.cfg.BatchSize)
	}
	start := time.Now()
	if err := s.send(ctx, b); err != nil {
		return fmt.Errorf("full resync generation %d: %w", gen, err)
	}
	if s.cnp == nil {
		if err := s.clearClusterPolicies(ctx, gen); err != nil {
			return fmt.Errorf("full resync generation %d: %w", gen, err)
		}
	}
	s.published = desired
	s.metrics.resyncs.Inc()
	s.committed(ds)
	s.log.Info("full resync done", "generation", gen, "objects", len(desired), "took", time.Since(start))
	return nil
}

func (s *Syncer) flush(ctx context.Context) error {
	pend := s.takePending()
	if len(pend) == 0 {
		return nil
	}
	keys := make([]Key, 0, len(pend))
	for k := range pend {
		keys = append(keys, k)
	}
	desired, ds := s.decide(keys)
	b, next := PlanIncremental(s.cfg.Cluster, s.published, desired, s.cfg.BatchSize)
	if !b.Empty() {
		if err := s.send(ctx, b); err != nil {
			return err
		}
	}
	s.published.Apply(next)
	s.committed(ds)
	return nil
}

// send writes batches in order; the first error stops it.
func (s *Syncer) send(ctx context.Context, b Batches) error {
	cp := s.cfg.ControlPlane
	var rev uint64
	note := func(kind, op string, r uint64, err error) error {
		if err != nil {
			return fmt.Errorf("%s %s: %w", op, kind, err)
		}
		s.metrics.batches.WithLabelValues(kind, op).Inc()
		rev = max(rev, r)
		return nil
	}
	for _, r := range b.Endpoints {
		rv, err := cp.UpsertEndpoints(ctx, r)
		if err := note("endpoints", "upsert", rv, err); err != nil {
			return err
		}
	}
	for _, r := range b.Policies {
		rv, err := cp.ApplyPolicies(ctx, r)
		if err := note("policies", "apply", rv, err); err != nil {
			return err
		}
	}
	for _, r := range b.ClusterPolicies {
		rv, err := cp.ApplyClusterPolicies(ctx, r)
		if err := note("clusterpolicies", "apply", rv, err); err != nil {
			return err
		}
	}
	for _, r := range b.Exports {
		rv, err := cp.ExportServices(ctx, r)
		if err := note("exports", "export", rv, err); err != nil {
			return err
		}
	}
	for _, r := range b.EndpointDelete {
		rv, err := cp.DeleteEndpoints(ctx, r)
		if err := note("endpoints", "delete", rv, err); err != nil {
			return err
		}
	}
	for _, k := range b.PolicyDelete {
		rv, err := cp.DeletePolicy(ctx, k)
		if err != nil && isNotFound(err) {
			err = nil
		}
		if err := note("policies", "delete", rv, err); err != nil {
			return err
		}
	}
	for _, k := range b.ClusterPolicyDelete {
		rv, err := cp.DeleteClusterPolicy(ctx, k)
		if err != nil && isNotFound(err) {
			err = nil
		}
		if err := note("clusterpolicies", "delete", rv, err); err != nil {
			return err
		}
	}
	for _, r := range b.Unexports {
		rv, err := cp.UnexportService(ctx, r)
		if err != nil && isNotFound(err) {
			err = nil
		}
		if err := note("exports", "unexport", rv, err); err != nil {
			return err
		}
	}
	s.statusMu.Lock()
	s.lastCommit = time.Now()
	c := s.commits
	s.statusMu.Unlock()
	if c != nil && rev > 0 {
		select {
		case c <- rev:
		default:
		}
	}
	return nil
}

// Bounds of the syncer's retries (writes, status, watch reconnects).
const (
	retryBase = 200 * time.Millisecond
	retryMax  = 10 * time.Second
)

func isNotFound(err error) bool {
	return apierrors.IsNotFound(err) || grpcCode(err) == "NotFound"
}
