package server

import (
	"context"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// auditService serves the store's audit log from this replica's state
// (every replica holds the same records; linearizable reads work as for
// every read). Authorization (admins only) is the Guard's.
type auditService struct {
	fedmeshv1.UnimplementedAuditServiceServer
	c *Core
}

func (a *auditService) ListAuditRecords(ctx context.Context, req *fedmeshv1.ListAuditRecordsRequest) (*fedmeshv1.ListAuditRecordsResponse, error) {
	var since time.Time
	if s := req.GetSince(); s != nil {
		if err := s.CheckValid(); err != nil {
			return nil, model.AsError(field.ErrorList{field.Invalid(field.NewPath("since"), s.String(), "not a valid timestamp")})
		}
		since = s.AsTime()
	}
	if err := a.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.ListAuditRecordsResponse{}
	a.c.view(func(st *store.State) {
		resp.Revision = st.Revision()
		resp.Records = st.Audit().Records(func(r *fedmeshv1.AuditRecord) bool {
			return (since.IsZero() || !r.GetTime().AsTime().Before(since)) && (req.GetPrincipal() == "" || r.GetPrincipal() == req.GetPrincipal())
		})
	})
	if n := int(req.GetLimit()); n > 0 && len(resp.Records) > n {
		resp.Records = resp.Records[len(resp.Records)-n:]
	}
	return resp, nil
}
