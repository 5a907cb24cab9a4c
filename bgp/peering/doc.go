// Package peering owns the rules of the BGP API objects (BGPPeerConfig,
// BGPFilter) that need no BGP implementation: their stateless validation,
// which the control plane's edge runs once before a write is proposed;
// which nodes a peer selects, asked by the control plane (reads, watch,
// status) and by the agent (its own peers) alike; and the values both
// parse them into: communities, large communities and filter rules with
// their matching semantics (Calico BGPFilter's). Pure: no GoBGP, no I/O,
// so the control plane links it without a BGP speaker.
package peering
