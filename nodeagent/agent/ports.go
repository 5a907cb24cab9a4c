package agent

import (
	"context"
	"net/netip"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/federation/services"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/dns"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Compiler turns the federation's clusters, endpoints and policies into the
// compiled rules of this node's local endpoints: federation/policy's
// incremental Engine, which implements it as it is — the same compiler the
// control plane's Reach runs, so what `fedctl reach` explains is what this
// node enforces. The IP->identity map is not its business: the agent keeps
// it (IPCacheIndex), where the bad-input checks live.
//
// Endpoints and policies are named by the policy package's keys; an
// endpoint's key in string form ("cluster/namespace/name") is its
// dataplane.Endpoint ID.
//
// Contract: only the sync goroutine calls it, one call at a time; no method
// may block or do I/O. Mutations only record what changed; Recompute
// compiles and returns the local endpoints whose rules changed since its
// last call, and Rules their rules as of then. Values it returns are never
// modified afterwards.
type Compiler interface {
	// The Updater's puts return an error for a policy it cannot compile;
	// the previous version of that policy, if any, stays in force.
	policy.Updater
	Recompute() policy.Changes
	Rules(k policy.EndpointKey) (*policy.Compiled, bool)
}

var _ Compiler = (*policy.Engine)(nil)

// Dataplane enforces the compiled policy of the node's local endpoints.
// nodeagent/dataplane's eBPF and in-memory implementations satisfy it as
// they are: the revision is the dataplane's own contract type, so nothing
// converts or copies it on the way.
//
// Contract: only the sync goroutine calls it, one call at a time. Calls may
// block on kernel I/O for a fraction of a second; they must not call back
// into the agent. Apply is all or nothing: on error the previous revision
// stays in force and the agent retries later. The agent never changes a
// revision it handed over (its IPCache is immutable; its Rules map is
// replaced, not edited, when rules change), so implementations may keep
// it. Attach of an already attached ID with the same interface is a no-op
// (a restarted agent re-attaches everything); Detach of an unknown ID is a
// no-op.
type Dataplane interface {
	Apply(ctx context.Context, rev *dataplane.Revision) error
	Attach(ctx context.Context, ep dataplane.Endpoint) error
	Detach(ctx context.Context, id string) error
}

// Services loads the node's service translation table
// (nodeagent/dataplane's ServiceTable, its own contract type): ClusterSetIP
// and port to the weighted backends the agent chose (federation/services).
//
// Contract: only the sync goroutine calls it, one call at a time, after
// every revision that changed imports or cluster/node liveness. It may
// block on kernel I/O; it must not call back into the agent. ApplyServices
// is all or nothing: on error the previous table stays in force, the agent
// does not report the revision as enforced and retries on the next tick.
// The agent never changes a table it handed over. A table that does not fit
// the translation's maps is applied with what fits (nil error);
// ServiceStatus then lists the truncated frontends, which the agent reports
// in its node status. ServiceStatus is called from the report goroutine.
type Services interface {
	ApplyServices(ctx context.Context, t *dataplane.ServiceTable) error
	ServiceStatus(ctx context.Context) (dataplane.ServiceStatus, error)
}

// DNS is the node-local resolver's view port (nodeagent/dns's Server
// implements it as it is): the agent hands it an immutable view of the
// imported services per revision that changed them (DNSView over the
// agent's catalog).
//
// Contract: only the sync goroutine calls SetView; it must not block (the
// resolver swaps an atomic pointer) and must not call back into the agent.
type DNS interface {
	SetView(v dns.View)
}

var _ DNS = (*dns.Server)(nil)

// ServiceDirectory is what the node-local DNS (nodeagent/dns) answers
// from: the agent's view of the clusterset's services at the revision it
// last computed — per namespace/name the ClusterSetIPs, whether headless,
// the ports (named ones for SRV) and the chosen backends with hostname and
// cluster (services.Catalog). *Agent implements it.
//
// Contract: ServiceCatalog may be called from any goroutine at any time;
// it never blocks and returns an immutable value (nil before the first
// synced revision) that the caller may keep.
type ServiceDirectory interface {
	ServiceCatalog() *services.Catalog
}

var _ ServiceDirectory = (*Agent)(nil)

// InterfaceResolver finds the host-side interface of a local endpoint from
// the kernel's route to its IP (NetlinkResolver).
//
// Contract: only the sync goroutine calls it. It does one netlink round
// trip; found is false (with a nil error) when no per-endpoint route exists
// yet, which is normal while the CNI sets the pod up.
type InterfaceResolver interface {
	Lookup(ctx context.Context, ip netip.Addr) (iface string, found bool, err error)
}

// WireGuardConfig is what the WireGuard port needs to compute the device's
// peers: the local node, every cluster (for their WireGuard settings) and
// the nodes of the other clusters, which are the peers.
type WireGuardConfig struct {
	Local    *fedmeshv1.Node
	Clusters []*fedmeshv1.Cluster
	Peers    []*fedmeshv1.Node
}

// WireGuard reconciles the node's WireGuard device (nodeagent/wireguard).
//
// Contract: Sync is called only by the sync goroutine, when the clusters or
// nodes changed and on the retry tick after a failure; it may block on
// netlink/UAPI I/O. PublicKey and Status may be called from the report
// goroutine at any time and must be safe for that.
type WireGuard interface {
	Sync(ctx context.Context, cfg WireGuardConfig) error
	PublicKey() string
	ListenPort() uint32
	Status(ctx context.Context) ([]*fedmeshv1.WireGuardPeerStatus, error)
}

// BGPConfig is what the BGP port needs: the cluster's settings, the router
// ID and the node's pod CIDRs, which are advertised; and to resolve the BGP
// peer objects (bgp.Resolve), the node's cluster and Node (their labels)
// and the peers and filters the control plane showed the node.
type BGPConfig struct {
	Settings *fedmeshv1.BGPSettings
	RouterID netip.Addr
	PodCIDRs []string
	Cluster  *fedmeshv1.Cluster
	Node     *fedmeshv1.Node
	Peers    []*fedmeshv1.BGPPeerConfig
	Filters  []*fedmeshv1.BGPFilter
}

// BGP reconciles the node's BGP speaker (bgp.Speaker).
//
// Contract: Apply and SetHealthy are called only by the sync goroutine;
// SetHealthy whenever readiness may have changed (it must be cheap when the
// health did not change). Status and Problems may be called from the
// report goroutine; Problems (what the last Apply could not resolve of
// the peers, reported in NodeStatus.bgp_problems) must not block. Calls
// may block briefly on the speaker's own loop.
type BGP interface {
	Apply(ctx context.Context, cfg BGPConfig) error
	SetHealthy(ctx context.Context, healthy bool) error
	Status(ctx context.Context) ([]*fedmeshv1.BGPPeerStatus, error)
	Problems() []string
}

// WatchStream is one open watch.
type WatchStream interface {
	// Recv blocks for the next message; an error ends the stream.
	Recv() (*fedmeshv1.WatchResponse, error)
}

// ControlPlane is the agent's client of the control plane (Client, over
// the generated gRPC clients, failing over between replicas).
//
// Contract: Watch is called only by the watch goroutine; RegisterNode and
// ReportNodeStatus only by the report goroutine; implementations must allow
// the two goroutines at once. A failed call or stream makes the next call
// try another replica. Calls honour ctx.
type ControlPlane interface {
	Watch(ctx context.Context, req *fedmeshv1.WatchRequest) (WatchStream, error)
	RegisterNode(ctx context.Context, n *fedmeshv1.Node) error
	ReportNodeStatus(ctx context.Context, cluster, node string, st *fedmeshv1.NodeStatus) error
}
