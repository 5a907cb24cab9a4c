// Package dns owns the node agent's DNS component: a node-local resolver
// that answers the federation's `clusterset.local` names (MCS API,
// KEP-1645) from the agent's own view of imported services and forwards
// every other name to the cluster's DNS.
//
// # Names
//
// For a ServiceImport svc in namespace ns (zone clusterset.local by
// default):
//
//	<svc>.<ns>.svc.clusterset.local                     A/AAAA: the ClusterSetIPs;
//	                                                    headless: every ready backend's address
//	<hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local A/AAAA: one backend of a headless service
//	_<port>._<proto>.<svc>.<ns>.svc.clusterset.local    SRV: one record per named port (ClusterSetIP)
//	                                                    or per backend (headless)
//
// A headless backend without a hostname is named by its address with dashes
// ("10-1-2-3"; IPv6 in full, "fd00-0000-…-0009", so that no label starts
// with a dash), as Kubernetes DNS does, so every SRV target resolves. A
// headless SRV record carries the backend cluster's target port, since
// clients connect to the backend directly.
//
// An unknown name inside the zone is NXDOMAIN, a known name without records
// of the asked type is NODATA; both carry the zone's SOA in the authority
// section, whose minimum is the negative TTL. Names that can own children
// (the apex, svc, a namespace, a cluster label, _proto) answer NODATA, never
// NXDOMAIN, because a resolver may cut off everything below an NXDOMAIN
// (RFC 8020) and this package cannot list namespaces. Answers carry a short
// TTL (Config.TTL) so that a withdrawn backend leaves caches quickly.
//
// # Shape
//
// Deciding is pure: Zone.Answer turns a question and a View into a
// response, with no I/O and no clock. The View is the seam with the agent:
// the agent's sync goroutine builds an immutable snapshot per revision
// (NewServices does that from plain ServiceRecords) and hands it over with
// Server.SetView; every query reads the snapshot in force when it arrived.
//
// Server is the thin loop around it: it owns a UDP socket and a TCP
// listener per listen address (one address, or one per IP family on a
// dual-stack or IPv6 node: Config.Listen, ParseListen) and hands every
// request from any of them as raw bytes to one pipeline (Server.Handle),
// with one set of hooks, recorder, metrics and limits:
//
//	decode and validate -> Hook.Query -> zone or upstream -> Hook.Release -> size for the transport -> Record
//
// The pipeline is written for the transparent proxy and DNS policy that
// come later (policy by name, DNS logs): every query is a Query value that
// carries the client's address and transport. Hooks join at two points:
// Query, between "query received" and "resolved" (a name policy denies
// there, before the name leaks upstream), and Release, between "answer
// known" and "answer released to the client" (a dataplane that must hold an
// answer's addresses before the pod connects holds the answer there). Every
// answered query ends in one Record (client, pod, name, type, rcode,
// answers with their TTLs, latency, who answered, upstream) handed to a
// Recorder. The sockets are the resolver's own (not miekg/dns's server), so
// that Handle sees the raw bytes and a redirected socket can later join.
//
// # Policy by DNS name
//
// The package decides no policy; it carries what a policy hook decided.
// The agent's hook (nodeagent/agent.NamePolicy) sets Query.Verdict
// (VerdictAllowed, VerdictRefused, VerdictDenied, VerdictUnpoliced,
// VerdictError) and Query.Learned in its Query and Release, and the Record
// carries them with the client's pod, for DNS logs and the flow pipeline.
// ChainAddrs is the one reading of an answer that a policy learns from:
// the A and AAAA addresses that the queried name reaches through its CNAME
// chain (MaxChain hops; loops end the chain), each with the smallest TTL
// on its way; records of names off the chain give nothing. Upstream
// answers pass the Release hooks after they decoded and matched the
// question and before they are sized for the client, so whatever the hook
// saw is what the client gets, at most truncated.
//
// # Bad input
//
// A datagram or TCP message without a full DNS header, or with QR set (a
// response sent to a resolver), is dropped: any answer could be used for
// reflection. Everything else that does not decode, carries other than one
// question, more than one OPT record, or is larger than MaxQuerySize is
// answered FORMERR; another opcode NOTIMP; an EDNS version other than 0
// BADVERS; zone transfers REFUSED. Upstream answers that do not decode, do
// not match the question or do not arrive in time become SERVFAIL, as does
// an answer that, packed for the client, would not decode (miekg/dns reads
// some records it cannot write back the same way). Nothing a
// client or the upstream sends stops the resolver; every case is counted.
//
// # Forwarding
//
// A query outside the zone is sent to the upstream over the transport it
// arrived on, with a fresh message ID, the client's EDNS0 OPT record (its
// UDP size capped at MaxUDPSize) and nothing added when the client sent
// none. A truncated UDP answer is passed on truncated, so the client
// retries over TCP, which is forwarded over TCP. Own answers larger than
// the client's UDP size are truncated the same way. Without an upstream
// (Config.Upstream empty) only the zone is answered and every other name is
// REFUSED at once, so a client moves on instead of timing out.
//
// # Metrics
//
// On the registry in Deps: fedmesh_dns_queries_total{type,rcode,source},
// fedmesh_dns_query_seconds{source}, fedmesh_dns_upstream_seconds{transport},
// fedmesh_dns_upstream_timeouts_total{transport},
// fedmesh_dns_upstream_errors_total{reason},
// fedmesh_dns_bad_requests_total{rcode,reason} (FORMERR and the like),
// fedmesh_dns_dropped_total{reason}, fedmesh_dns_truncated_total{source}
// and, for queries a policy hook decided, fedmesh_dns_verdicts_total{verdict}
// (refusals by name policy are verdict="refused").
//
// # Wiring
//
// The agent owns the View: per revision it builds one (NewServices, or an
// adapter over its own catalog that satisfies View without copying) and
// calls SetView from its sync goroutine; Run serves until the agent's
// context ends. Pods use the Config.Listen address of their family as
// their nameserver (or keep the cluster DNS address, which the agent's
// transparent redirect sends to it).
package dns
