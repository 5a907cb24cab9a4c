// Package agent owns the node agent's sync loop: it watches the control
// plane (any replica of a list, failing over between them), keeps a
// revisioned view of the federation, computes what this node enforces — the
// IP->identity map of every cluster, the compiled policy of the node's local
// endpoints, its WireGuard peers and its BGP config — and hands one whole
// revision at a time to the dataplane, then reports the revision it enforces
// so writes can wait for it.
//
// # Shape
//
// View (view.go) is pure: watch messages in, object changes out, with
// snapshot staging, duplicate and stale-message detection. The node-state
// functions (state.go) are pure. Agent (agent.go) is the thin loop: one
// goroutine (the sync goroutine) owns the view, the compiler and every call
// into the dataplane, WireGuard and BGP ports; a watch goroutine only moves
// messages from the network to the sync goroutine; a report goroutine only
// sends status. The packages it drives are reached through small interfaces
// defined here (ports.go), each documenting its caller and goroutine, so the
// agent does not change when they do; adapters to the real packages live
// with the binary (nodeagent/cmd/fedmesh-agent) except the policy compiler
// adapter (compiler.go), whose package is the contract itself.
//
// # Behaviour
//
//   - Coalescing: the sync goroutine drains every message waiting for it and
//     feeds all of them to the view and the compiler, then programs the
//     dataplane once, at the newest revision. Under churn it applies the
//     newest revision, never each intermediate one.
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
