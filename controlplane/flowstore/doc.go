// Package flowstore owns the control plane's flow history: a bounded
// in-memory store of the attributed verdicts node agents ship, the query
// language over it (filters, time ranges, follow) and the per-workload
// summary. It is a role of every control-plane replica and never touches
// the Raft log: each replica keeps what the agents ship to it (agents ship
// to every replica, so any replica answers for the whole federation).
//
// # Bounds
//
//   - Count: at most Config.Capacity flows. Each reporting node owns a
//     queue. While there is room any node adds; once the store is full, a
//     node holding more than its fair share (Capacity divided by the nodes
//     holding flows) evicts its own oldest flow to add one, and a node
//     under its share takes the room from the node holding the most. So a
//     node that floods the store pushes out its own history, never the
//     share of another node.
//   - Age: flows older than Config.MaxAge are evicted on every add of their
//     node and by Run's sweep.
//   - Rate: a node sending faster than Config.NodeRate flows/s (burst
//     Config.NodeBurst) has the excess refused and counted, so one node
//     cannot monopolize the store's lock either.
//   - Memory: records are fixed-size (56 bytes, no pointers: nothing for
//     the garbage collector to scan); workloads at their addresses,
//     policies and decisions are interned once in tables that the sweep
//     rebuilds from the live records when they outgrow them (about 64 bytes
//     of heap per stored flow in BenchmarkGetFlows1M).
//
// # DNS names in flows and the summary
//
// An agent names the destination of an egress flow by the name its pod
// resolved it from (Flow.dns_name). The summary counts a destination
// outside the federation by that name, whatever addresses the name
// resolved to (FlowEdge.dns_name, dns_addresses); a workload destination
// is always the workload, and flows without a name count per address.
// Filter.DNSName matches the name as a domainNames peer does
// (policy.MatchDomainName), in queries, the summary and follow alike.
//
// Every loss is counted: evictions (count and age), refusals over the rate,
// flows the agents report they lost before shipping, and flows a lagging
// follower missed. Status returns the counts; Collectors exports them.
//
// # DNS query records
//
// DNSStore (dns.go) keeps the DNS queries the agents' resolvers answered,
// shipped with their flows: the same bounds (count with the same per-node
// fair share, age, per-node rate), every loss counted the same way, the
// same Scope (a cluster's principals read the queries of their cluster's
// pods), filters validated once at the edge (ParseDNSQuery) and follow.
//
// # Concurrency
//
// A Store is safe for concurrent use: adds take its write lock, queries its
// read lock (a filtered scan of 1M flows holds it for a few milliseconds).
// Followers receive flows on a buffered channel from Add's goroutine, which
// never blocks on them.
package flowstore
