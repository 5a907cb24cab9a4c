// Package agent owns the node agent's sync loop: it watches the control
// plane (any replica of a list, failing over between them), keeps a
// revisioned view of the federation, computes what this node enforces — the
// IP->identity map of every cluster, the compiled policy of the node's local
// endpoints, its WireGuard peers and its BGP config — and hands one whole
// revision at a time to the dataplane, then reports the revision it enforces
// so writes can wait for it. It also keeps the node's view of the
// clusterset's services: per revision a services.Catalog (what the
// node-local DNS answers, Agent.ServiceCatalog) and the ClusterSetIP
// translation table it hands the Services port (services.go); a revision
// is reported enforced only once that table is loaded too.
//
// # Shape
//
// View (view.go) is pure: watch messages in, object changes out, with
// snapshot staging, duplicate and stale-message detection. IPCacheIndex
// (ipcache.go) and the node-state functions (state.go) are pure. Agent
// (agent.go) is the thin loop: one goroutine (the sync goroutine) owns the
// view, the compiler, the ipcache index and every call into the dataplane,
// WireGuard and BGP ports; a watch goroutine only moves messages from the
// network to the sync goroutine; a report goroutine only sends status. The
// packages it drives are reached through small interfaces defined here
// (ports.go), each documenting its caller and goroutine. Where a package's
// own types are the contract, the port uses them and the package implements
// it as it is: nodeagent/dataplane (dataplane.Revision, whose IPCache
// versions the index hands out without copying) and federation/policy (its
// Engine is the Compiler; its EndpointKey and PolicyKey name endpoints and
// policies in the view and the agent, and an EndpointKey's string form is
// the dataplane's endpoint ID). The
// adapters for WireGuard and BGP, which compute those packages' desired
// state, live in ./adapters.
//
// # Behaviour
//
//   - Coalescing: the sync goroutine drains every message waiting for it and
//     feeds all of them to the view and the compiler, then programs the
//     dataplane once, at the newest revision. Under churn it applies the
//     newest revision, never each intermediate one.
//   - Incremental: a revision costs what it changed. The ipcache index
//     updates the entries of the endpoints that changed, and the revision
//     shares everything else with the previous one; nothing on the way to
//     the dataplane copies or walks the ipcache
//     (TestIncrementalApplyCostDoesNotGrowWithTheIPCache).
//   - Disconnected: the last applied revision stays in force (the agent
//     never applies an empty or partial state); the watch reconnects with
//     jittered exponential backoff to the next replica and resumes from the
//     view's revision; the server answers with a snapshot when that revision
//     was compacted, which the view turns into a diff.
//   - Restart: nothing is applied before the first complete snapshot, so a
//     dataplane that adopted pinned state keeps enforcing it until then.
//   - Bad input (unknown kinds, an endpoint IP outside its cluster's pod
//     CIDRs, one IP claimed by two clusters, a policy that does not compile)
//     is logged once, counted in fedmesh_agent_bad_input_total and skipped;
//     it never blocks later revisions.
//   - Health: ready means enforcing a revision no older than ReadyLag behind
//     the newest revision seen. Readiness feeds the BGP port
//     (health-coupled advertisement) and /readyz.
package agent
