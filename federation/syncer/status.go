package syncer

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcslisters "sigs.k8s.io/mcs-api/pkg/client/listers/apis/v1beta1"

	"github.com/fedmesh/fedmesh/controlplane/watchclient"
)

// exportRef names one ServiceExport of the cluster.
type exportRef struct{ namespace, name string }

// skipEvent is a Kubernetes Event to record on a skipped object.
type skipEvent struct {
	obj             runtime.Object
	reason, message string
}

// reporter is the one goroutine that writes the syncer's reports into the
// member cluster: the conditions of its ServiceExports (Valid and Ready,
// which the publisher loop decides; Conflict, which the import watcher
// computes) and the Events on objects the syncer skips. Producers post
// values to its mailbox and never wait for the cluster's API; the mailbox
// merges what they post, so under churn only the newest conditions of each
// export are written, each at most once.
type reporter struct {
	mcs     mcsclient.Interface
	exports mcslisters.ServiceExportLister
	rec     record.EventRecorder
	log     *slog.Logger

	mu   sync.Mutex
	box  reportBox
	kick chan struct{}

	// Owned by run.
	own      map[exportRef]map[string]metav1.Condition // the publisher's, by type
	conflict map[exportRef]metav1.Condition
	dirty    map[exportRef]struct{}
}

// reportBox is what producers posted since the reporter last looked.
type reportBox struct {
	conds     map[exportRef]map[string]metav1.Condition
	forget    map[exportRef]struct{}
	conflicts map[exportRef]metav1.Condition // nil: no new set
	events    []skipEvent
}

// maxPendingEvents bounds the Events waiting for the reporter; Events are
// advice for `kubectl describe` (the metric counts every skip), so beyond
// the bound they are dropped with a log line rather than held without limit.
const maxPendingEvents = 1024

func newReporter(mcs mcsclient.Interface, exports mcslisters.ServiceExportLister, rec record.EventRecorder, log *slog.Logger) *reporter {
	return &reporter{
		mcs: mcs, exports: exports, rec: rec, log: log,
		kick:     make(chan struct{}, 1),
		own:      map[exportRef]map[string]metav1.Condition{},
		conflict: map[exportRef]metav1.Condition{},
		dirty:    map[exportRef]struct{}{},
	}
}

func (r *reporter) post(f func(b *reportBox)) {
	r.mu.Lock()
	f(&r.box)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// setConditions asks for conds (merged by type with those set before) on
// the ServiceExport ref. Called by the publisher loop.
func (r *reporter) setConditions(ref exportRef, conds ...metav1.Condition) {
	r.post(func(b *reportBox) {
		delete(b.forget, ref)
		if b.conds == nil {
			b.conds = map[exportRef]map[string]metav1.Condition{}
		}
		m := b.conds[ref]
		if m == nil {
			m = map[string]metav1.Condition{}
			b.conds[ref] = m
		}
		for _, c := range conds {
			m[c.Type] = c
		}
	})
}

// forget drops the publisher's conditions of ref: the ServiceExport is gone
// or out of the export scope. Called by the publisher loop.
func (r *reporter) forget(ref exportRef) {
	r.post(func(b *reportBox) {
		delete(b.conds, ref)
		if b.forget == nil {
			b.forget = map[exportRef]struct{}{}
		}
		b.forget[ref] = struct{}{}
	})
}

// setConflicts replaces the Conflict conditions of every export of this
// cluster the federation knows. Called by the import watcher.
func (r *reporter) setConflicts(cs map[exportRef]metav1.Condition) {
	r.post(func(b *reportBox) { b.conflicts = cs })
}

// event records a Warning Event on obj, which the syncer skipped. Called by
// the publisher loop.
func (r *reporter) event(obj runtime.Object, reason, message string) {
	r.warn(obj, "FedmeshSkipped"+reason, message)
}

// warn records a Warning Event with reason on obj. Called by the publisher
// loop.
func (r *reporter) warn(obj runtime.Object, reason, message string) {
	r.post(func(b *reportBox) {
		if len(b.events) >= maxPendingEvents {
			r.log.Warn("too many Events waiting; dropping one", "reason", reason, "detail", message)
			return
		}
		b.events = append(b.events, skipEvent{obj, reason, message})
	})
}

// run writes what was posted until ctx ends. A failed write is retried
// with backoff; a newer post for the same export replaces what it writes.
func (r *reporter) run(ctx context.Context) {
	backoff := watchclient.NewRetry(retryBase, retryMax, 0)
	again := time.NewTimer(time.Hour)
	again.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-again.C:
		}
		r.take()
		if failed := r.writeDirty(ctx); failed > 0 && ctx.Err() == nil {
			d := backoff.Next()
			r.log.Warn("update ServiceExport status failed; retrying", "exports", failed, "in", d)
			again.Reset(d)
		} else {
			backoff.Reset()
		}
	}
}

// take moves the mailbox into the reporter's state and records the Events.
func (r *reporter) take() {
	r.mu.Lock()
	b := r.box
	r.box = reportBox{}
	r.mu.Unlock()
	for _, e := range b.events {
		r.rec.Event(e.obj, corev1.EventTypeWarning, e.reason, e.message)
	}
	for ref := range b.forget {
		delete(r.own, ref)
	}
	for ref, m := range b.conds {
		cur := r.own[ref]
		if cur == nil {
			cur = map[string]metav1.Condition{}
			r.own[ref] = cur
		}
		for t, c := range m {
			cur[t] = c
		}
		r.dirty[ref] = struct{}{}
	}
	if b.conflicts != nil {
		for ref, c := range b.conflicts {
			if old, ok := r.conflict[ref]; !ok || !sameCondition(old, c) {
				r.dirty[ref] = struct{}{}
			}
		}
		r.conflict = b.conflicts
	}
}

// writeDirty brings every dirty export's conditions to what the reporter
// holds and returns how many writes failed (those stay dirty).
func (r *reporter) writeDirty(ctx context.Context) (failed int) {
	for ref := range r.dirty {
		if ctx.Err() != nil {
			return failed
		}
		want := r.wanted(ref)
		se, err := r.exports.ServiceExports(ref.namespace).Get(ref.name)
		if err != nil || len(want) == 0 || conditionsHold(se.Status.Conditions, want) {
			// Gone (a later post marks it again if it comes back), nothing
			// to say, or already said.
			delete(r.dirty, ref)
			continue
		}
		if err := setExportConditions(ctx, r.mcs, ref.namespace, ref.name, want...); err != nil && !apierrors.IsNotFound(err) {
			r.log.Warn("update ServiceExport status", "namespace", ref.namespace, "name", ref.name, "err", err)
			failed++
			continue
		}
		delete(r.dirty, ref)
	}
	return failed
}

// wanted is every condition the reporter holds for ref, sorted by type.
func (r *reporter) wanted(ref exportRef) []metav1.Condition {
	var out []metav1.Condition
	for _, c := range r.own[ref] {
		out = append(out, c)
	}
	if c, ok := r.conflict[ref]; ok {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b metav1.Condition) int { return cmp.Compare(a.Type, b.Type) })
	return out
}

// setExportConditions merges conditions into a ServiceExport's status,
// retrying on write conflicts (someone else, a user or a tool, may write
// the status too).
func setExportConditions(ctx context.Context, mcs mcsclient.Interface, ns, name string, conds ...metav1.Condition) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := mcs.MulticlusterV1beta1().ServiceExports(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get ServiceExport %s/%s: %w", ns, name, err)
		}
		changed := false
		for _, c := range conds {
			c.ObservedGeneration = cur.Generation
			changed = apimeta.SetStatusCondition(&cur.Status.Conditions, c) || changed
		}
		if !changed {
			return nil
		}
		_, err = mcs.MulticlusterV1beta1().ServiceExports(ns).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

// conditionsHold reports whether conds already has each of want.
func conditionsHold(conds, want []metav1.Condition) bool {
	for _, c := range want {
		if !conditionIs(conds, c) {
			return false
		}
	}
	return true
}

// conditionIs reports whether conds already has c (type, status, reason and
// message), so unchanged conditions cause no write.
func conditionIs(conds []metav1.Condition, c metav1.Condition) bool {
	have := apimeta.FindStatusCondition(conds, c.Type)
	return have != nil && sameCondition(*have, c)
}

func sameCondition(a, b metav1.Condition) bool {
	return a.Type == b.Type && a.Status == b.Status && a.Reason == b.Reason && a.Message == b.Message
}

func grpcCode(err error) string {
	if st, ok := status.FromError(err); ok && st.Code() != codes.OK {
		return st.Code().String()
	}
	return ""
}
