// Package store owns the control plane's replicated state: the Raft FSM that
// decodes committed log entries into changes of clusters, nodes, endpoints,
// service exports (and the imports derived from them, with their
// ClusterSetIPs), cluster reachability and stale nodes (clusterset.go),
// policies, BGP peers and filters (bgppeers.go) and ClusterNetworkPolicies
// (clusterpolicies.go); the numeric security identities; the
// global revision; the bounded event log watchers read from; versioned
// snapshots; and the leader's cache of payloads it decoded before
// proposing them (Predecoded).
//
// Everything here is pure: no network, no clock, no randomness in what is
// applied. The time a command carries is stamped by the replica that
// proposes it, before it enters the log, so every replica that applies the
// same log computes the same state, the same revisions and the same
// identities. The FSM checks only invariants that depend on the state;
// syntax is checked once, at the edge, before a command is proposed
// (testdata/golden holds entries every version must apply alike).
package store
