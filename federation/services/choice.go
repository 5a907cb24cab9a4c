package services

// Backend choice: which backends a node of an importing cluster translates
// a ClusterSetIP to, from the import, the importing cluster and the
// liveness of clusters and nodes. Pure: the agent calls it per revision and
// hands the result to the dataplane; fedctl and the control plane can call
// it to explain a choice.
//
// Rules:
//   - A backend counts when it is ready (EndpointSlice ready condition; an
//     export that lists only ready addresses counts them all), its cluster
//     is not unreachable and its node is not stale.
//   - none (the MCS default): every counting backend of every cluster.
//   - local: the importing cluster's counting backends; when it has none,
//     failover to every other cluster's (spread as none does).
//   - remote: the other clusters' counting backends; when they have none,
//     the importing cluster's own.
//   - Every chosen backend weighs 1, so a cluster's share of new
//     connections is proportional to its ready backend count.

import (
	"cmp"
	"net/netip"
	"slices"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// NodeKey names a node of a cluster.
type NodeKey struct{ Cluster, Node string }

// Liveness is what the control plane committed about clusters and nodes.
type Liveness struct {
	// Unreachable clusters (their syncer went silent).
	Unreachable map[string]bool
	// Stale nodes (they stopped reporting).
	Stale map[NodeKey]bool
}

// LivenessOf reads liveness from the clusters' status.
func LivenessOf(clusters []*fedmeshv1.Cluster) Liveness {
	l := Liveness{Unreachable: map[string]bool{}, Stale: map[NodeKey]bool{}}
	for _, c := range clusters {
		if c.GetStatus().GetReachability() == fedmeshv1.Reachability_REACHABILITY_UNREACHABLE {
			l.Unreachable[c.GetName()] = true
		}
		for _, n := range c.GetStatus().GetStaleNodes() {
			l.Stale[NodeKey{c.GetName(), n}] = true
		}
	}
	return l
}

// Chosen is one backend of a choice.
type Chosen struct {
	Addr          netip.Addr
	Cluster, Node string
	Hostname      string
	Weight        uint32
}

// Choice is the backend set of an import for one importing cluster.
type Choice struct {
	Affinity fedmeshv1.Affinity
	// Backends sorted by address.
	Backends []Chosen
	// FailedOver says the affinity's preferred side had no counting
	// backend and the other side serves.
	FailedOver bool
	// Withdrawn lists exporting clusters left out because they are
	// unreachable, sorted.
	Withdrawn []string
}

// Choose returns the backends a node of cluster importer translates imp to.
func Choose(imp *fedmeshv1.ServiceImport, importer string, live Liveness) Choice {
	ch := Choice{Affinity: EffectiveAffinity(imp.GetAffinity())}
	var own, other []Chosen
	for _, cb := range imp.GetClusters() {
		c := cb.GetCluster()
		if live.Unreachable[c] {
			ch.Withdrawn = append(ch.Withdrawn, c)
			continue
		}
		for _, b := range ReadyBackends(cb) {
			if live.Stale[NodeKey{c, b.Node}] {
				continue
			}
			if c == importer {
				own = append(own, b)
			} else {
				other = append(other, b)
			}
		}
	}
	switch ch.Affinity {
	case fedmeshv1.Affinity_AFFINITY_LOCAL:
		ch.Backends = own
		if len(own) == 0 && len(other) > 0 {
			ch.Backends, ch.FailedOver = other, true
		}
	case fedmeshv1.Affinity_AFFINITY_REMOTE:
		ch.Backends = other
		if len(other) == 0 && len(own) > 0 {
			ch.Backends, ch.FailedOver = own, true
		}
	default:
		ch.Backends = append(own, other...)
	}
	slices.SortFunc(ch.Backends, func(a, b Chosen) int { return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Cluster, b.Cluster)) })
	slices.Sort(ch.Withdrawn)
	return ch
}

// ReadyBackends lists a cluster's ready backends, each of weight 1: its
// endpoints marked ready, or, for an export that carries no endpoint
// details (older syncers), its ready addresses.
func ReadyBackends(cb *fedmeshv1.ClusterBackends) []Chosen {
	var out []Chosen
	if len(cb.GetEndpoints()) == 0 {
		for _, a := range cb.GetAddresses() {
			if ip, err := netip.ParseAddr(a); err == nil {
				out = append(out, Chosen{Addr: ip, Cluster: cb.GetCluster(), Weight: 1})
			}
		}
		return out
	}
	for _, e := range cb.GetEndpoints() {
		ip, err := netip.ParseAddr(e.GetAddress())
		if err != nil || !e.GetReady() {
			continue
		}
		out = append(out, Chosen{Addr: ip, Cluster: cb.GetCluster(), Node: e.GetNode(), Hostname: e.GetHostname(), Weight: 1})
	}
	return out
}

// EffectiveAffinity resolves UNSPECIFIED to none, the MCS default.
func EffectiveAffinity(a fedmeshv1.Affinity) fedmeshv1.Affinity {
	if a == fedmeshv1.Affinity_AFFINITY_UNSPECIFIED {
		return fedmeshv1.Affinity_AFFINITY_NONE
	}
	return a
}

// TargetPort is the port cluster's backends listen on for the import's
// port p: the cluster's own target where it differs, else p's.
func TargetPort(imp *fedmeshv1.ServiceImport, cluster string, p *fedmeshv1.ServicePort) uint32 {
	for _, cb := range imp.GetClusters() {
		if cb.GetCluster() != cluster {
			continue
		}
		for _, cp := range cb.GetPorts() {
			if cp.GetName() == p.GetName() {
				return targetOf(cp)
			}
		}
	}
	return targetOf(p)
}
