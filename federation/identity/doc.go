// Package identity owns fedmesh's security identities: what a numeric
// identity stands for (Key: a cluster, a namespace and the pod labels that
// count), which pod label keys count (Relevance), the reserved identities
// (world, host, remote-node, unknown), and a deterministic, reference-counted
// allocator of numbers that the control plane's FSM embeds so every replica
// assigns the same numbers.
//
// # Selectors see every label; identities carry the labels that matter
//
// Policies select pods by all of their labels, exactly as Kubernetes does:
// the control plane stores every label of every pod and namespace, and the
// policy compiler and Reach match selectors against those full sets. A
// numeric identity exists only so the dataplane can tell peers apart by
// address, so it must distinguish every two pods some selector tells apart,
// and nothing more. The rule:
//
//	A pod label key counts for identity when the default filter keeps it,
//	or when some stored policy, anywhere in the federation, selects on that
//	key: in its pod selector (the pods it applies to) or in a peer's pod
//	selector, in matchLabels or in a matchExpressions requirement of any
//	operator.
//
// The default filter (DefaultExcluded) drops controller bookkeeping that
// differs between the pods of one workload or between two rollouts of it —
// pod-template-hash, controller-revision-hash, pod-template-generation,
// statefulset.kubernetes.io/pod-name, apps.kubernetes.io/pod-index,
// controller-uid, batch.kubernetes.io/controller-uid,
// batch.kubernetes.io/job-completion-index — and every key under the
// reserved fedmesh.io/ prefix. Counting those by default would give every
// ReplicaSet generation (or every StatefulSet replica) an identity of its
// own and churn every peer's policy maps on every deploy; while no policy
// looks at them, no policy can tell their values apart either, so leaving
// them out changes no verdict.
//
// Namespace selectors need no identity labels: they match the namespace's
// labels, which are the same for every pod of the namespace, and every
// identity already carries the namespace. Cluster selectors likewise match
// the cluster, which every identity carries.
//
// # Splitting and merging
//
// The FSM keeps a Relevance: for each filtered key, how many stored policies
// select on it. When a command makes a filtered key count (the first policy
// selecting on it is stored), the identities of the endpoints carrying it
// split in that same command's revision; when the last such policy goes,
// the identities that then differ only in keys that no longer count merge
// back, also in the same revision. Both are one operation,
// Allocator.Rekey: every endpoint of the affected identities gets the
// identity of its new Key. Which number each new Key gets is decided from
// the replicated state alone, so every replica agrees:
//
//   - a Key that another, unaffected identity already stands for keeps that
//     identity;
//   - otherwise an old number stays with the Key that holds most of its
//     endpoints (ties: the lower number, then the lower Key), so the largest
//     part of a split, and the largest part of a merge, keep their number
//     and their peers' dataplane entries stay valid;
//   - every other Key gets a fresh number from the cursor, in Key order.
//
// Merging eagerly, rather than keeping split identities after their policy
// is gone, keeps the invariant that makes restore and replication simple:
// an identity is a function of its Key, so the numbers a snapshot records
// can be checked against (and, for a state an older binary wrote, rebuilt
// from) the endpoints and policies alone. It also keeps the identity count
// bounded by the policies that exist now, not by every policy that ever
// existed. Agents and Reach see a split or a merge as what it is: endpoints
// whose identity changed, in one revision with the policy that caused it.
//
// A design with no relevance at all — every label counts — would be as
// exact but not compact (a rollout of 1,000 pods would mint identities and
// churn every node's maps); a design that counts only the default filter's
// keys would be compact but wrong for a policy on a filtered key (Cilium's
// "identity-relevant labels" limitation), which is what this package
// replaces.
//
// # Reserved prefix
//
// A pod cannot claim another cluster's or namespace's identity: Key keeps
// the cluster and namespace in fields of their own, set from where the pod
// runs, never from labels. A pod label under fedmesh.io/ is an ordinary
// label to selectors (a policy selecting on it sees it); it only starts in
// the default filter, so it counts for identity once a policy selects on it.
//
// # Stability
//
// DefaultExcluded and the rule above are part of the replicated state
// machine: replicas of different versions apply the same log, so a change
// to either must come with a new log format that every replica publishes
// before any leader writes an entry that depends on it. The test
// TestDefaultFilterIsFrozen fails when the list changes.
//
// Nothing here does I/O or reads clocks; the allocator and the relevance are
// plain values with no locking (their owner, the FSM, serialises calls).
package identity
