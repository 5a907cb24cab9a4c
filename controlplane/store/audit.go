package store

import (
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The audit log records who made every committed write that moves the
// revision, and when: the principal and the leader's time an entry's audit
// header carries (log format 2), the revision, the operation and the
// objects the write named. It is part of the replicated state — appended
// by Apply from the log alone and carried by snapshots — so every replica
// holds the same records, however it caught up. Internal commands (node
// status reports, member records, join tokens) move no revision and are
// not recorded; nor are commands the state refused.
//
// It is bounded by count, per class of principal: each class keeps its
// newest auditRecordsPerClass records. A single bound would let the
// syncers' endpoint churn (hundreds of writes a second in a large
// federation) push an admin's policy change out within seconds; per class,
// an admin's changes stay for the admin's own last auditRecordsPerClass
// writes. The classes and the bound decide what every replica keeps, so
// they must not change without a new log format.
const auditRecordsPerClass = 2048

// auditMaxObjects bounds the object names one record keeps.
const auditMaxObjects = 8

// auditClass is a kind of principal, by the shape of its SPIFFE ID (see
// controlplane/auth.Principal).
type auditClass uint8

const (
	auditAdmin auditClass = iota
	auditSyncer
	auditNode
	auditOther // replicas, unauthenticated writes, anything else
	auditClasses
)

func classOf(principal string) auditClass {
	const prefix = "spiffe://fedmesh/"
	rest, ok := strings.CutPrefix(principal, prefix)
	switch {
	case !ok:
		return auditOther
	case rest == "admin":
		return auditAdmin
	case strings.HasPrefix(rest, "cluster/") && strings.HasSuffix(rest, "/syncer") && strings.Count(rest, "/") == 2:
		return auditSyncer
	case strings.HasPrefix(rest, "cluster/") && strings.Count(rest, "/") == 3 && strings.Split(rest, "/")[2] == "node":
		return auditNode
	}
	return auditOther
}

// auditRing is one class's newest records, oldest first from head.
type auditRing struct {
	recs []*fedmeshv1.AuditRecord
	head int
}

func (r *auditRing) add(rec *fedmeshv1.AuditRecord) {
	if len(r.recs) < auditRecordsPerClass {
		r.recs = append(r.recs, rec)
		return
	}
	r.recs[r.head] = rec
	r.head = (r.head + 1) % len(r.recs)
}

func (r *auditRing) each(fn func(*fedmeshv1.AuditRecord)) {
	for i := range r.recs {
		fn(r.recs[(r.head+i)%len(r.recs)])
	}
}

// AuditLog is the audit log (see above). Stored records are never mutated.
// Not safe for concurrent use: the FSM guards it.
type AuditLog struct {
	rings [auditClasses]auditRing
}

// clone copies the log (records are shared: never mutated).
func (l *AuditLog) clone() *AuditLog {
	c := &AuditLog{}
	for i := range l.rings {
		c.rings[i] = auditRing{recs: slices.Clone(l.rings[i].recs), head: l.rings[i].head}
	}
	return c
}

func (l *AuditLog) add(rec *fedmeshv1.AuditRecord) { l.rings[classOf(rec.GetPrincipal())].add(rec) }

// Len is the number of records held.
func (l *AuditLog) Len() int {
	n := 0
	for i := range l.rings {
		n += len(l.rings[i].recs)
	}
	return n
}

// Records returns the records keep accepts, oldest (lowest revision) first.
func (l *AuditLog) Records(keep func(*fedmeshv1.AuditRecord) bool) []*fedmeshv1.AuditRecord {
	var out []*fedmeshv1.AuditRecord
	for i := range l.rings {
		l.rings[i].each(func(r *fedmeshv1.AuditRecord) {
			if keep == nil || keep(r) {
				out = append(out, r)
			}
		})
	}
	slices.SortFunc(out, func(a, b *fedmeshv1.AuditRecord) int {
		switch {
		case a.GetRevision() < b.GetRevision():
			return -1
		case a.GetRevision() > b.GetRevision():
			return 1
		}
		return 0
	})
	return out
}

// Audit is the audit log (read-only for callers).
func (s *State) Audit() *AuditLog { return s.audit }

// recordAudit appends the record of command c, applied at tx.rev with
// result res.
func (s *State) recordAudit(c Command, tx *txn, res *Result) {
	rec := &fedmeshv1.AuditRecord{Revision: tx.rev, Time: unixNanoToTimestamp(tx.time), Principal: c.Principal,
		Operation: c.Type.String(), Deleted: res.Deleted}
	if describe := handlers[c.Type].describe; describe != nil {
		var objs []string
		rec.Cluster, objs = describe(c.Payload)
		rec.ObjectCount = uint32(len(objs))
		rec.Objects = objs[:min(len(objs), auditMaxObjects)]
	}
	s.audit.add(rec)
}

// Object names of the commands, for audit records: the target cluster and
// namespace/name (name alone for cluster-wide objects).

func nsNameOf(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

// registerDescriptions runs after every command type is registered.
func registerDescriptions() {
	describe(CmdRegisterCluster, func(r *fedmeshv1.RegisterClusterRequest) (string, []string) {
		return r.GetCluster().GetName(), []string{r.GetCluster().GetName()}
	})
	describe(CmdDeleteCluster, func(r *fedmeshv1.DeleteClusterRequest) (string, []string) { return r.GetName(), []string{r.GetName()} })
	describe(CmdRegisterNode, func(r *fedmeshv1.RegisterNodeRequest) (string, []string) {
		return r.GetNode().GetCluster(), []string{r.GetNode().GetName()}
	})
	describe(CmdDeleteNode, func(r *fedmeshv1.DeleteNodeRequest) (string, []string) { return r.GetCluster(), []string{r.GetName()} })
	describe(CmdReportNodeStatus, func(r *fedmeshv1.ReportNodeStatusRequest) (string, []string) {
		return r.GetCluster(), []string{r.GetName()}
	})
	describe(CmdUpsertEndpoints, func(r *fedmeshv1.UpsertEndpointsRequest) (string, []string) {
		var out []string
		for _, e := range r.GetEndpoints() {
			out = append(out, nsNameOf(e.GetNamespace(), e.GetName()))
		}
		return r.GetCluster(), out
	})
	describe(CmdDeleteEndpoints, func(r *fedmeshv1.DeleteEndpointsRequest) (string, []string) {
		var out []string
		for _, k := range r.GetKeys() {
			out = append(out, nsNameOf(k.GetNamespace(), k.GetName()))
		}
		return r.GetCluster(), out
	})
	describe(CmdExportServices, func(r *fedmeshv1.ExportServicesRequest) (string, []string) {
		var out []string
		for _, x := range r.GetExports() {
			out = append(out, nsNameOf(x.GetNamespace(), x.GetName()))
		}
		return r.GetCluster(), out
	})
	describe(CmdUnexportService, func(r *fedmeshv1.UnexportServiceRequest) (string, []string) {
		return r.GetCluster(), []string{nsNameOf(r.GetNamespace(), r.GetName())}
	})
	describe(CmdApplyPolicies, func(r *fedmeshv1.ApplyPoliciesRequest) (string, []string) {
		var out []string
		for _, p := range r.GetPolicies() {
			out = append(out, nsNameOf(p.GetNamespace(), p.GetName()))
		}
		return r.GetCluster(), out
	})
	describe(CmdDeletePolicy, func(r *fedmeshv1.DeletePolicyRequest) (string, []string) {
		return r.GetKey().GetCluster(), []string{nsNameOf(r.GetKey().GetNamespace(), r.GetKey().GetName())}
	})
}

// describe registers how audit records name the objects of command type t.
func describe[P proto.Message](t CommandType, fn func(P) (cluster string, objects []string)) {
	h, ok := handlers[t]
	if !ok || h.describe != nil {
		panic("store: audit description of an unregistered command type, or a second one")
	}
	h.describe = func(p proto.Message) (string, []string) { return fn(p.(P)) }
	handlers[t] = h
}
