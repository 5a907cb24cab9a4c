package syncer

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/fedmesh/fedmesh/federation/services"
)

// setExportValid reports on a ServiceExport whether its Service can be
// exported (MCS condition Valid).
func (s *Syncer) setExportValid(ctx context.Context, se *mcsv1beta1.ServiceExport, err error) {
	c := metav1.Condition{Type: services.CondValid, Status: metav1.ConditionTrue, Reason: string(mcsv1beta1.ServiceExportReasonValid), Message: "the Service is exported to the federation"}
	if err != nil {
		reason, msg := "Invalid", err.Error()
		if sk, ok := IsSkip(err); ok {
			reason, msg = sk.Reason, sk.Message
		}
		c = metav1.Condition{Type: services.CondValid, Status: metav1.ConditionFalse, Reason: reason, Message: msg}
		if !conditionIs(se.Status.Conditions, c) {
			// The export is no longer published: not Ready either.
			s.writeExportConditions(ctx, se, c, metav1.Condition{Type: services.CondReady, Status: metav1.ConditionFalse, Reason: string(mcsv1beta1.ServiceExportReasonFailed), Message: msg})
		}
		return
	}
	if !conditionIs(se.Status.Conditions, c) {
		s.writeExportConditions(ctx, se, c)
	}
}

// setReady marks every published export Ready once the control plane has
// committed it.
func (s *Syncer) setReady(ctx context.Context) {
	ready := metav1.Condition{Type: services.CondReady, Status: metav1.ConditionTrue, Reason: string(mcsv1beta1.ServiceExportReasonExported), Message: "the federation has committed the export"}
	for k := range s.published {
		if k.Kind != KindExport {
			continue
		}
		se, err := s.exports.ServiceExports(k.Namespace).Get(k.Name)
		if err != nil || conditionIs(se.Status.Conditions, ready) {
			continue
		}
		s.writeExportConditions(ctx, se, ready)
	}
}

func (s *Syncer) writeExportConditions(ctx context.Context, se *mcsv1beta1.ServiceExport, conds ...metav1.Condition) {
	if err := setExportConditions(ctx, s.mcs, se.Namespace, se.Name, conds...); err != nil {
		s.log.Warn("update ServiceExport status", "namespace", se.Namespace, "name", se.Name, "err", err)
	}
}

// setExportConditions merges conditions into a ServiceExport's status,
// retrying on write conflicts (the publisher and the import watcher both
// write conditions, of different types).
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

// conditionIs reports whether conds already has c (type, status, reason and
// message), so unchanged conditions cause no write.
func conditionIs(conds []metav1.Condition, c metav1.Condition) bool {
	have := apimeta.FindStatusCondition(conds, c.Type)
	return have != nil && have.Status == c.Status && have.Reason == c.Reason && have.Message == c.Message
}

func grpcCode(err error) string {
	if st, ok := status.FromError(err); ok && st.Code() != codes.OK {
		return st.Code().String()
	}
	return ""
}
