package syncer

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/fedmesh/fedmesh/controlplane/watchclient"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The I/O half of imports: ImportWriter carries out the plan the pure half
// (imports.go) computes, and the import watcher is the loop around both.

// ImportWriter applies desired MCS objects to a cluster. It is used by one
// goroutine (the import watcher); every method blocks on API calls.
type ImportWriter struct {
	Kube kubernetes.Interface
	MCS  mcsclient.Interface
}

// Apply makes the cluster's syncer-owned ServiceImports, derived Services
// and EndpointSlices equal to the desired ones (PlanImportWrites): creates,
// updates, and deletes what is no longer wanted. A ClusterSetIP import gets
// its derived Service (owned by the ServiceImport, so the garbage collector
// removes it with the import too); spec.ips are the federation's
// ClusterSetIPs when the control plane allocated them (the same VIP in every
// member cluster, translated by the node agents), else the Service's
// ClusterIPs. It carries on past a failed object and returns every error joined.
func (w *ImportWriter) Apply(ctx context.Context, sis []*mcsv1beta1.ServiceImport, ess []*discoveryv1.EndpointSlice) error {
	have, err := w.list(ctx)
	if err != nil {
		return err
	}
	return w.Write(ctx, PlanImportWrites(have, sis, ess))
}

// list reads what the syncer owns in the cluster.
func (w *ImportWriter) list(ctx context.Context) (ClusterImports, error) {
	sel := metav1.ListOptions{LabelSelector: ManagedByLabel + "=" + ManagedByValue}
	var have ClusterImports
	sis, err := w.MCS.MulticlusterV1beta1().ServiceImports(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return have, fmt.Errorf("list ServiceImports: %w", err)
	}
	svcs, err := w.Kube.CoreV1().Services(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return have, fmt.Errorf("list derived Services: %w", err)
	}
	ess, err := w.Kube.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return have, fmt.Errorf("list EndpointSlices: %w", err)
	}
	for i := range sis.Items {
		have.Imports = append(have.Imports, &sis.Items[i])
	}
	for i := range svcs.Items {
		have.Services = append(have.Services, &svcs.Items[i])
	}
	for i := range ess.Items {
		have.Slices = append(have.Slices, &ess.Items[i])
	}
	return have, nil
}

// Write carries out a plan in its order.
func (w *ImportWriter) Write(ctx context.Context, p ImportWrites) error {
	var errs []error
	for _, iw := range p.Imports {
		errs = append(errs, w.applyImport(ctx, iw))
	}
	for _, x := range p.DeleteImports {
		err := w.MCS.MulticlusterV1beta1().ServiceImports(x.Namespace).Delete(ctx, x.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete ServiceImport %s/%s: %w", x.Namespace, x.Name, err))
		}
	}
	for _, x := range p.DeleteServices {
		err := w.Kube.CoreV1().Services(x.Namespace).Delete(ctx, x.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete derived Service %s/%s: %w", x.Namespace, x.Name, err))
		}
	}
	for _, sw := range p.Slices {
		es := sw.Want
		c := w.Kube.DiscoveryV1().EndpointSlices(es.Namespace)
		var err error
		switch sw.Op {
		case SliceCreate:
			_, err = c.Create(ctx, es, metav1.CreateOptions{})
		case SliceReplace:
			if err = c.Delete(ctx, es.Name, metav1.DeleteOptions{}); err == nil || apierrors.IsNotFound(err) {
				_, err = c.Create(ctx, es, metav1.CreateOptions{})
			}
		case SliceUpdate:
			up := sw.Have.DeepCopy()
			up.Endpoints, up.Ports, up.Labels = es.Endpoints, es.Ports, es.Labels
			_, err = c.Update(ctx, up, metav1.UpdateOptions{})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("write EndpointSlice %s/%s: %w", es.Namespace, es.Name, err))
		}
	}
	for _, x := range p.DeleteSlices {
		err := w.Kube.DiscoveryV1().EndpointSlices(x.Namespace).Delete(ctx, x.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete EndpointSlice %s/%s: %w", x.Namespace, x.Name, err))
		}
	}
	return errors.Join(errs...)
}

// applyImport writes one ServiceImport and, for a ClusterSetIP import, its
// derived Service, then puts the Service's ClusterIPs into spec.ips. The
// ServiceImport is created first: the Service's owner reference needs its
// UID. Each step is skipped when the cluster already has its result.
func (w *ImportWriter) applyImport(ctx context.Context, iw ImportWrite) error {
	c := w.MCS.MulticlusterV1beta1().ServiceImports(iw.Want.Namespace)
	key := iw.Want.Namespace + "/" + iw.Want.Name
	want := iw.Want.DeepCopy()
	have := iw.Have
	var err error
	if have == nil {
		have, err = c.Create(ctx, want, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create ServiceImport %s: %w", key, err)
		}
	}
	var svcErr error
	if iw.Derived != nil {
		// The derived Service backs the slices (kube-proxy, where one
		// runs); its ClusterIPs are the import's VIPs only when the
		// federation has allocated no ClusterSetIPs.
		federated := len(want.Spec.IPs) > 0
		var ips []string
		ips, svcErr = w.applyDerived(ctx, have, withOwner(iw.Derived, have), iw.HaveDerived)
		switch {
		case federated:
		case svcErr != nil:
			// Keep the VIP the import had: the Service is still there.
			want.Spec.IPs = have.Spec.IPs
		default:
			want.Spec.IPs = ips
		}
	}
	if !importSpecCurrent(have, want) {
		up := have.DeepCopy()
		up.Spec, up.Labels, up.Annotations = want.Spec, want.Labels, importAnnotations(have, want)
		if have, err = c.Update(ctx, up, metav1.UpdateOptions{}); err != nil {
			return errors.Join(svcErr, fmt.Errorf("update ServiceImport %s: %w", key, err))
		}
	}
	if svcErr != nil {
		return svcErr
	}
	if importStatusCurrent(have, want) {
		return nil
	}
	up := have.DeepCopy()
	up.Status.Clusters = want.Status.Clusters
	up.Status.EndpointSliceObjects = mcsv1beta1.EndpointSliceObjectsPresent
	ready := importReady()
	ready.ObservedGeneration = up.Generation
	apimeta.SetStatusCondition(&up.Status.Conditions, ready)
	if _, err := c.UpdateStatus(ctx, up, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update ServiceImport %s status: %w", key, err)
	}
	return nil
}

// applyDerived creates or updates the derived Service want (owned by si)
// and returns its ClusterIPs. have is the syncer's Service of that name,
// if any; a Service of that name the syncer does not manage is left alone.
func (w *ImportWriter) applyDerived(ctx context.Context, si *mcsv1beta1.ServiceImport, want, have *corev1.Service) ([]string, error) {
	c := w.Kube.CoreV1().Services(want.Namespace)
	key := want.Namespace + "/" + want.Name
	var err error
	switch {
	case have == nil:
		have, err = c.Create(ctx, want, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create derived Service %s of ServiceImport %s: a Service of that name exists that the syncer does not manage (no label %s=%s); delete it so the import gets its VIP", key, si.Name, ManagedByLabel, ManagedByValue)
		}
		if err != nil {
			return nil, fmt.Errorf("create derived Service %s of ServiceImport %s: %w", key, si.Name, err)
		}
	case !derivedCurrent(have, want):
		up := have.DeepCopy()
		up.Spec.Ports, up.Labels, up.OwnerReferences = want.Spec.Ports, want.Labels, want.OwnerReferences
		if have, err = c.Update(ctx, up, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("update derived Service %s of ServiceImport %s: %w", key, si.Name, err)
		}
	}
	return clusterIPs(have), nil
}

// Kinds the import watcher follows.
var importKinds = []fedmeshv1.ResourceKind{
	fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER,
	fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_EXPORT,
	fedmeshv1.ResourceKind_RESOURCE_KIND_SERVICE_IMPORT,
}

// runImports is the import watcher: it follows the federation's services
// (watchclient: resume from its revision, snapshots, stale and broken
// stream detection, reconnects) and writes this cluster's imports, until
// ctx ends. It drains every message waiting before it writes, so under
// churn it writes the newest state once, not every intermediate one.
func (s *Syncer) runImports(ctx context.Context) {
	watch := watchclient.New(watchclient.Config{
		Open: func(ctx context.Context, from uint64) (watchclient.Stream, error) {
			return s.cfg.ControlPlane.Watch(ctx, &fedmeshv1.WatchRequest{FromRevision: from, Kinds: importKinds})
		},
		BackoffBase: retryBase, BackoffMax: retryMax,
		Logger: s.log.With("watch", "services"),
	})
	var wg sync.WaitGroup
	wg.Go(func() { watch.Run(ctx) })
	defer wg.Wait()

	w := &ImportWriter{Kube: s.kube, MCS: s.mcs}
	st := NewImportState()
	var follow watchclient.Follower
	var exportScope *fedmeshv1.NamespaceScope
	discarding := false // the stream failed; skip until the next one
	for {
		var batch []watchclient.Item
		select {
		case <-ctx.Done():
			return
		case it := <-watch.Items():
			batch = append(batch, it)
		}
	drain:
		for {
			select {
			case it := <-watch.Items():
				batch = append(batch, it)
			default:
				break drain
			}
		}
		changed := false
		for _, it := range batch {
			if it.NewStream {
				follow.ResetStream()
				discarding = false
				continue
			}
			if discarding {
				continue
			}
			u, err := follow.Apply(it.Resp)
			if err != nil {
				s.log.Warn("restarting the services watch: stream cannot be followed", "from_revision", follow.Revision(), "err", err)
				discarding = true
				watch.Resync(follow.Revision())
				continue
			}
			switch u.Kind {
			case watchclient.UpdateSnapshot:
				st = NewImportState()
				fallthrough
			case watchclient.UpdateEvents:
				for _, ev := range u.Events {
					st.Apply(s.cfg.Cluster, ev)
				}
				changed = true
			}
		}
		if !changed || !follow.Synced() {
			continue
		}
		if !proto.Equal(st.Self.GetExports(), exportScope) {
			exportScope = st.Self.GetExports()
			if st.Self != nil && s.cfg.ClusterSpec == nil {
				select {
				case s.respec <- struct{}{}:
				default:
				}
			}
		}
		s.reconcileImports(ctx, w, st)
	}
}

func (s *Syncer) reconcileImports(ctx context.Context, w *ImportWriter, st *ImportState) {
	nsExists := func(ns string) bool { _, err := s.nss.Get(ns); return err == nil }
	sis, ess := DesiredImports(s.cfg.Cluster, st, nsExists)
	if err := w.Apply(ctx, sis, ess); err != nil {
		s.log.Warn("write imported services", "err", err)
	}
	s.metrics.imports.Set(float64(len(sis)))
	conflicts := map[exportRef]metav1.Condition{}
	for k, c := range ExportConflicts(s.cfg.Cluster, st) {
		conflicts[exportRef{k.Namespace, k.Name}] = conflictCondition(c)
	}
	s.reporter.setConflicts(conflicts)
}
