// Package bgp owns the node's BGP speaker: an embedded GoBGP v4 server
// (github.com/osrg/gobgp/v4/pkg/server, no gobgpd process) that advertises
// the node's pod CIDRs to its top-of-rack routers so pod IPs are routable
// inside a site with no overlay.
//
// # Shape
//
// Desired goes in: Resolve builds it from the node's cluster (its
// BGPSettings, as FromCluster always did), the node's labels, router ID
// and pod CIDRs, and the BGP peer objects that select the node with the
// filters they name (bgp/peering owns those objects' rules); SetPasswords
// fills in TCP-MD5 passwords from the files the peers reference, through a
// reader the caller passes. Effective applies the node's health to it;
// Diff compares it with what GoBGP holds and returns a minimal plan of
// Actions (start/stop, set the routing policy, add/update/delete peer,
// add/delete path). Resolve, Effective and Diff are pure.
//
// A node that no peer object selects resolves to exactly what FromCluster
// gives, so upgrading an agent resets no session; a peer object with a
// cluster-level peer's address replaces it, and with equal settings that
// too changes no session.
//
// # Routing policy
//
// The speaker advertises only the routes it originates (never one it
// learned: a node is no transit between its ToRs) and installs none in the
// node's FIB. Per peer, Desired.Policy adds BGPFilter rules (Calico
// semantics: the first matching rule of the route's family decides, no
// match accepts) on export and import, communities, large communities and
// local preference on what it sends, and which prefix classes it sends.
// The speaker compiles it into GoBGP policies on the global RIB, one
// statement per rule with a neighbor condition; a policy change re-runs
// the policy over what was exchanged (soft reset), never a session reset. Speaker is the thin loop that carries a plan
// out against GoBGP's API and reports per-peer Status, convertible to
// fedmeshv1.BGPPeerStatus with PeerStatus.ToProto. Consecutive path actions
// of one kind go to GoBGP as one AddPath or DeletePath call with native
// paths (no protobuf), and GoBGP packs the queued paths into few UPDATEs,
// so advertising a node's 10,000 prefixes is one management operation.
//
// Sessions: IPv4 and IPv6 unicast over MP-BGP, the family of each session
// following the peer's address (an IPv6 pod CIDR goes to IPv6 peers); eBGP
// when the peer ASN differs from the session's local ASN (the speaker's,
// or the session's own), iBGP (the node a route-reflector client of its
// ToR, or the ToR one of the node) when it is equal; optional TCP-MD5,
// eBGP multihop, hold and keepalive timers and graceful restart per peer.
// Changing a password resets the session (TCP-MD5 keys cannot change under
// a live connection): change it at the ToR and at the source together. A
// password comes from a file on the node (SetPasswords) or from a Secret
// in the node's cluster (SetSecretPasswords): that cluster's syncer reads
// the Secret and hands its value to the control-plane replicas, which keep
// it in memory (never in the Raft log) and stream it only to the agents
// of the nodes the peer selects. Either way a password that cannot be had
// now (a missing file, a Secret not pushed yet after a replica restart)
// keeps the last good one, so no session drops for it; a Secret changed
// to a new value resets the session with the new key.
//
// # Service addresses
//
// A peer whose advertisements list the SERVICE class receives the service
// addresses of the kinds it lists (load-balancer IPs and external IPs
// inside the CIDRs it lists, cluster IPs as the cluster's service CIDRs or
// one host route each), resolved per node from the cluster's
// ServiceAdvertisements, which the cluster's syncer writes from Services
// and EndpointSlices (resolveServices): with externalTrafficPolicy Local a
// node advertises a Service's /32 or /128 only while it has a ready
// backend of it, so the ToR holds one ECMP next hop per such node and
// withdraws the route with the last one; otherwise every node advertises
// it. The speaker's policy sends a kind's ranges to no other peer
// (cluster-level peers and peer objects without the class included).
//
// # Graceful restart (RFC 4724)
//
// With a non-zero restart time the speaker advertises the Graceful Restart
// capability with the forwarding-state bit for each family: the node keeps
// forwarding while the agent is down, because the kernel and eBPF state
// outlive it. A newly started Speaker sets the Restart State bit on its
// first sessions and defers its UPDATEs until the peers' End-of-RIB (or the
// deferral time), then sends its routes and End-of-RIB, so the ToR swaps
// stale routes for fresh ones without a gap. A process that dies or exits
// (crash, SIGKILL, upgrade) keeps its routes in the ToR's FIB for the
// restart time; cancelling Speaker.Run instead is a deliberate stop that
// withdraws every prefix by UPDATE, then sends CEASE.
//
// # Health-coupled advertisement (the contract)
//
// The agent calls Speaker.SetHealthy(false) when its dataplane is not
// enforcing a recent revision, and SetHealthy(true) once it is again. While
// unhealthy, with Desired.UnhealthyCommunity unset every prefix is
// withdrawn; with it set ("65000:666" in BGPSettings.unhealthy_community)
// every prefix stays advertised with that community added, and the ToR is
// expected to map the community to a lower preference (e.g. BIRD:
// `if (65000,666) ~ bgp_community then bgp_local_pref = 50;`, FRR: a
// route-map matching a community-list that sets local-preference), so
// traffic prefers healthy nodes but is not blackholed if every node of a
// prefix is unhealthy. Sessions stay up in both modes, so recovery is one
// UPDATE. The speaker starts healthy (WithInitialHealth changes that):
// after an agent restart the pinned dataplane still enforces, and starting
// unhealthy would withdraw the very routes graceful restart kept; an agent
// that cannot vouch for its dataplane at start calls SetHealthy(false)
// before its first Apply. Setting the same health twice changes nothing.
package bgp
