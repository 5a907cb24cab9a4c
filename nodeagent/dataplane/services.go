package dataplane

import (
	"cmp"
	"net/netip"
	"slices"
)

// Service translation contract: what the agent hands the dataplane so a
// connection to a ClusterSetIP reaches a backend of the aggregated service.
//
// The agent computes a ServiceTable per control-plane revision (backend
// choice, affinity, cluster and node liveness: federation/services) and the
// dataplane only loads it: the table is a plain, deterministic value, and
// every backend it lists is to be used with its weight. Headless imports are
// never in it (they are DNS only), nor are services without a ClusterSetIP.
//
// An implementation offers it as
//
//	ApplyServices(ctx context.Context, t *ServiceTable) error
//
// (nodeagent/agent's Services port): called only by the agent's sync
// goroutine, all or nothing (on error the previous table stays in force and
// the agent retries), may block on kernel I/O; once it returns nil every new
// connection is translated by t, so the agent may report t.Revision as
// enforced.

// ServiceKey is one translated frontend: a ClusterSetIP, a service port and
// its IP protocol.
type ServiceKey struct {
	// VIP is the ClusterSetIP (IPv4 or IPv6; a dual-stack import has one
	// key per family and port).
	VIP netip.Addr
	// Port is the service port (1..65535).
	Port uint16
	// Protocol is the IP protocol number: 6 (TCP), 17 (UDP) or 132 (SCTP).
	Protocol uint8
}

// ServiceBackend is one destination a frontend translates to.
type ServiceBackend struct {
	// Addr is the backend's pod IP, of the same family as the VIP.
	Addr netip.Addr
	// Port is the backend's target port (the exporting cluster's
	// targetPort; the service port when the cluster gave none).
	Port uint16
	// Weight is the backend's share of new connections relative to the
	// other backends of the same frontend (> 0). Backends of a cluster
	// weigh the same; the agent scales weights so a cluster's share is
	// proportional to its ready backends under the affinity in force.
	Weight uint32
	// Cluster and Node say where the backend runs (for counters, flow
	// logs and status; the translation does not read them).
	Cluster, Node string
}

// ServiceFrontend is a frontend and the backends it translates to.
type ServiceFrontend struct {
	Key ServiceKey
	// Namespace and Name of the ServiceImport (for counters and status).
	Namespace, Name string
	// Backends sorted by Addr then Port. Empty means the service has no
	// usable backend now: new connections to the frontend must fail at
	// once (reject), never go to a withdrawn backend.
	Backends []ServiceBackend
}

// ServiceTable is every translated frontend at one control-plane revision,
// the contract between the agent, which builds one per revision, and the
// dataplane implementations. It is applied whole or not at all; the caller
// never changes a table it handed over, so implementations may keep it.
type ServiceTable struct {
	// Revision of the control plane the table was computed at.
	Revision uint64
	// Frontends sorted by Key (SortFrontends); one entry per key.
	Frontends []ServiceFrontend
}

// CompareServiceKeys orders keys by address, port, then protocol.
func CompareServiceKeys(a, b ServiceKey) int {
	return cmp.Or(a.VIP.Compare(b.VIP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
}

// SortFrontends puts frontends and each frontend's backends in the table's
// canonical order, so equal tables compare equal.
func SortFrontends(fs []ServiceFrontend) {
	slices.SortFunc(fs, func(a, b ServiceFrontend) int { return CompareServiceKeys(a.Key, b.Key) })
	for i := range fs {
		slices.SortFunc(fs[i].Backends, func(a, b ServiceBackend) int {
			return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
		})
	}
}
