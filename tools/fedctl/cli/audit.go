package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// auditCmd reads the control plane's audit log (AuditService, admins only).
func auditCmd(g *globals) *cobra.Command {
	var since, principal string
	var limit uint32
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show who made the committed writes, and when (admins only)",
		Long: `Show the control plane's audit log: every committed write with its revision,
the time the leader committed it, the principal that made it (the SPIFFE ID of
its client certificate) and the objects it named, oldest first. Every replica
holds the same log; it keeps the newest writes of each kind of principal
(admin, syncers, node agents), so the syncers' churn does not push an admin's
change out. Only admins may read it.`,
		Example: `  fedctl audit --since 1h
  fedctl audit --since 2026-12-06T10:00:00Z --principal spiffe://fedmesh/admin`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &fedmeshv1.ListAuditRecordsRequest{Principal: principal, Limit: limit}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				req.Since = timestamppb.New(t)
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := fedmeshv1.NewAuditServiceClient(c.cc).ListAuditRecords(ctx, req)
				if err != nil {
					return err
				}
				t := &table{header: []string{"REVISION", "TIME", "PRINCIPAL", "OPERATION", "CLUSTER", "OBJECTS"}}
				var objs []proto.Message
				for _, r := range resp.GetRecords() {
					t.add(strconv.FormatUint(r.GetRevision(), 10), r.GetTime().AsTime().UTC().Format(time.RFC3339Nano),
						orDash(r.GetPrincipal()), r.GetOperation(), orDash(r.GetCluster()), auditObjects(r))
					objs = append(objs, r)
				}
				return g.print(t, objs...)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&since, "since", "", "only writes since a duration ago (90m, 24h) or an RFC 3339 time (2026-12-06T10:00:00Z)")
	f.StringVar(&principal, "principal", "", "only writes of this principal (its SPIFFE ID, e.g. spiffe://fedmesh/cluster/east/syncer)")
	f.Uint32Var(&limit, "limit", 0, "only the newest N matching writes (0: all the log holds)")
	return cmd
}

// parseSince reads --since: a positive duration before now, or an RFC 3339
// time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--since %q: a duration must be positive (how long ago)", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want a duration (90m, 24h) or an RFC 3339 time (2026-12-06T10:00:00Z)", s)
	}
	return t, nil
}

// auditObjects lists a record's objects, saying how many it left out.
func auditObjects(r *fedmeshv1.AuditRecord) string {
	s := orDash(strings.Join(r.GetObjects(), ","))
	if more := int(r.GetObjectCount()) - len(r.GetObjects()); more > 0 {
		s += fmt.Sprintf(" (+%d more)", more)
	}
	if r.GetDeleted() > 0 {
		s += fmt.Sprintf(" (resync deleted %d)", r.GetDeleted())
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
