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
	rec := &fedmeshv1.AuditRecord{Revision: tx.rev, Time: tx.updateTime(), Principal: c.Principal,
		Operation: c.Type.String(), Deleted: res.Deleted}
	if describe := handlers[c.Type].describe; describe != nil {
		var n int
		rec.Cluster, n = describe(c.Payload, func(obj string) {
			if len(rec.Objects) < auditMaxObjects {
				rec.Objects = append(rec.Objects, obj)
			}
		})
		rec.ObjectCount = uint32(n)
	}
	s.audit.add(rec)
}

// Object names of the commands, for audit records: the target cluster and
// namespace/name (name alone for cluster-wide objects), each passed to
// name; the count of objects is returned (a batch may name thousands: the
// record keeps the first few).

func nsNameOf(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

// registerDescriptions runs after every command type is registered.
func registerDescriptions() {
	describe(CmdRegisterCluster, func(r *fedmeshv1.RegisterClusterRequest, name func(string)) (string, int) {
		name(r.GetCluster().GetName())
		return r.GetCluster().GetName(), 1
	})
	describe(CmdDeleteCluster, func(r *fedmeshv1.DeleteClusterRequest, name func(string)) (string, int) {
		name(r.GetName())
		return r.GetName(), 1
	})
	describe(CmdRegisterNode, func(r *fedmeshv1.RegisterNodeRequest, name func(string)) (string, int) {
		name(r.GetNode().GetName())
		return r.GetNode().GetCluster(), 1
	})
	describe(CmdDeleteNode, func(r *fedmeshv1.DeleteNodeRequest, name func(string)) (string, int) {
		name(r.GetName())
		return r.GetCluster(), 1
	})
	describe(CmdReportNodeStatus, func(r *fedmeshv1.ReportNodeStatusRequest, name func(string)) (string, int) {
		name(r.GetName())
		return r.GetCluster(), 1
	})
	upsertEndpoints := func(r *fedmeshv1.UpsertEndpointsRequest, name func(string)) (string, int) {
		for _, e := range r.GetEndpoints()[:min(len(r.GetEndpoints()), auditMaxObjects)] {
			name(nsNameOf(e.GetNamespace(), e.GetName()))
		}
		return r.GetCluster(), len(r.GetEndpoints())
	}
	describe(CmdUpsertEndpoints, upsertEndpoints)
	describe(CmdUpsertEndpointsFull, upsertEndpoints)
	describe(CmdDeleteEndpoints, func(r *fedmeshv1.DeleteEndpointsRequest, name func(string)) (string, int) {
		for _, k := range r.GetKeys()[:min(len(r.GetKeys()), auditMaxObjects)] {
			name(nsNameOf(k.GetNamespace(), k.GetName()))
		}
		return r.GetCluster(), len(r.GetKeys())
	})
	describe(CmdExportServices, func(r *fedmeshv1.ExportServicesRequest, name func(string)) (string, int) {
		for _, x := range r.GetExports()[:min(len(r.GetExports()), auditMaxObjects)] {
			name(nsNameOf(x.GetNamespace(), x.GetName()))
		}
		return r.GetCluster(), len(r.GetExports())
	})
	describe(CmdUnexportService, func(r *fedmeshv1.UnexportServiceRequest, name func(string)) (string, int) {
		name(nsNameOf(r.GetNamespace(), r.GetName()))
		return r.GetCluster(), 1
	})
	describe(CmdApplyPolicies, func(r *fedmeshv1.ApplyPoliciesRequest, name func(string)) (string, int) {
		for _, p := range r.GetPolicies()[:min(len(r.GetPolicies()), auditMaxObjects)] {
			name(nsNameOf(p.GetNamespace(), p.GetName()))
		}
		return r.GetCluster(), len(r.GetPolicies())
	})
	describe(CmdDeletePolicy, func(r *fedmeshv1.DeletePolicyRequest, name func(string)) (string, int) {
		name(nsNameOf(r.GetKey().GetNamespace(), r.GetKey().GetName()))
		return r.GetKey().GetCluster(), 1
	})
}

// describe registers how audit records name the objects of command type t.
func describe[P proto.Message](t CommandType, fn func(p P, name func(string)) (cluster string, count int)) {
	h, ok := handlers[t]
	if !ok || h.describe != nil {
		panic("store: audit description of an unregistered command type, or a second one")
	}
	h.describe = func(p proto.Message, name func(string)) (string, int) { return fn(p.(P), name) }
	handlers[t] = h
}
