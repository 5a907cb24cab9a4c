package store

// Services, log format 6: ClusterSetIPs and liveness.
//
// ClusterSetIPs come from the clusterset CIDRs (at most one per IP family)
// that the leader commits from its flag (CmdConfigureServices). Once they
// are set, every ClusterSetIP import gets one VIP per CIDR, allocated in
// log order by federation/services.AllocateVIP, so every replica computes
// the same VIP and it is valid in every member cluster (the syncers write
// it into the ServiceImports' spec.ips; the agents translate it). An
// import keeps its VIPs while it exists and while they lie in the
// configured CIDRs; deleting the import frees them.
//
// Liveness (CmdSetLiveness) is what the leader observed and committed:
// a cluster's reachability (its syncer's heartbeats) and its stale nodes
// (their status reports stopped). It lives in the cluster's stored status,
// so watchers see it on the cluster's events, and it is copied into the
// imports' per-cluster entries for status. Only transitions are written.
//
// Until the first format-6 command, imports are exactly what older
// binaries computed (no VIPs, no per-cluster ports, no reachability): a log
// written by an older binary applies to the same state.

import (
	"fmt"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/services"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Command types of log format 6.
const (
	// CmdConfigureServices sets the clusterset CIDRs (proposed by the
	// leader from its flag; moves the revision: imports get VIPs).
	CmdConfigureServices CommandType = 30
	// CmdSetLiveness records cluster reachability and stale-node
	// transitions the leader observed (moves the revision: agents drop or
	// re-admit backends).
	CmdSetLiveness CommandType = 31
)

func init() {
	register(CmdConfigureServices, "ConfigureServices", false, (*State).applyConfigureServices)
	register(CmdSetLiveness, "SetLiveness", false, (*State).applySetLiveness)
	describe(CmdConfigureServices, func(r *fedmeshv1.ConfigureServicesRequest, name func(string)) (string, int) {
		for _, c := range r.GetClustersetCidrs() {
			name(c)
		}
		return "", len(r.GetClustersetCidrs())
	})
	describe(CmdSetLiveness, func(r *fedmeshv1.SetLivenessRequest, name func(string)) (string, int) {
		for _, c := range r.GetClusters()[:min(len(r.GetClusters()), auditMaxObjects)] {
			name(c.GetCluster() + "=" + c.GetReachability().String())
		}
		return "", len(r.GetClusters())
	})
}

// ClustersetCIDRs returns the committed clusterset CIDRs (nil before the
// leader configured them).
func (s *State) ClustersetCIDRs() []netip.Prefix { return slices.Clone(s.clusterset) }

func (s *State) applyConfigureServices(tx *txn, req *fedmeshv1.ConfigureServicesRequest) (*Result, error) {
	var cidrs []netip.Prefix
	var errs field.ErrorList
	p := field.NewPath("clustersetCidrs")
	for i, v := range req.GetClustersetCidrs() {
		pfx, err := netip.ParsePrefix(v)
		if err != nil {
			errs = append(errs, field.Invalid(p.Index(i), v, "not a CIDR"))
			continue
		}
		for _, n := range sortedKeys(s.clusters) {
			if msg := overlapsCluster(s.clusters[n].spec, pfx); msg != "" {
				errs = append(errs, field.Invalid(p.Index(i), v, msg))
			}
		}
		cidrs = append(cidrs, pfx.Masked())
	}
	if len(errs) > 0 {
		return nil, model.AsError(errs)
	}
	s.clusterset = cidrs
	for _, k := range sortedNsNames(s.imports) {
		s.recomputeImport(tx, k, nil)
	}
	return &Result{}, nil
}

// clustersetFrom parses CIDRs and reports whether they may serve as
// clusterset CIDRs now (none overlaps a registered cluster).
func (s *State) clustersetFrom(cidrs []string) ([]netip.Prefix, bool) {
	var out []netip.Prefix
	for _, v := range cidrs {
		pfx, err := netip.ParsePrefix(v)
		if err != nil {
			return nil, false
		}
		for _, n := range sortedKeys(s.clusters) {
			if overlapsCluster(s.clusters[n].spec, pfx) != "" {
				return nil, false
			}
		}
		out = append(out, pfx.Masked())
	}
	return out, true
}

// overlapsCluster says why pfx may not be a clusterset CIDR next to
// cluster c ("" when it may).
func overlapsCluster(c *fedmeshv1.Cluster, pfx netip.Prefix) string {
	for _, list := range [][]string{c.GetPodCidrs(), c.GetServiceCidrs()} {
		for _, v := range list {
			if o, err := netip.ParsePrefix(v); err == nil && o.Overlaps(pfx) {
				return fmt.Sprintf("overlaps %s of cluster %q; pick a clusterset CIDR no cluster uses", v, c.GetName())
			}
		}
	}
	return ""
}

// checkClusterset rejects a cluster whose CIDRs overlap the clusterset
// CIDRs (a VIP must never be a pod or service address somewhere).
func (s *State) checkClusterset(c *fedmeshv1.Cluster) error {
	var errs field.ErrorList
	for _, pfx := range s.clusterset {
		for i, v := range c.GetPodCidrs() {
			if o, err := netip.ParsePrefix(v); err == nil && o.Overlaps(pfx) {
				errs = append(errs, field.Invalid(field.NewPath("cluster", "podCIDRs").Index(i), v, fmt.Sprintf("overlaps the clusterset CIDR %s that ClusterSetIPs come from", pfx)))
			}
		}
		for i, v := range c.GetServiceCidrs() {
			if o, err := netip.ParsePrefix(v); err == nil && o.Overlaps(pfx) {
				errs = append(errs, field.Invalid(field.NewPath("cluster", "serviceCIDRs").Index(i), v, fmt.Sprintf("overlaps the clusterset CIDR %s that ClusterSetIPs come from", pfx)))
			}
		}
	}
	return model.AsError(errs)
}

// assignVIPs gives a ClusterSetIP import its VIPs: the old import's that
// still lie in a configured CIDR, and a new one from every CIDR it has
// none in. A CIDR with no free address leaves the import without a VIP of
// that family (reported by a condition).
func (s *State) assignVIPs(imp, old *fedmeshv1.ServiceImport) {
	if len(s.clusterset) == 0 || services.EffectiveType(imp.GetType()) != fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP {
		return
	}
	key := services.Key{Namespace: imp.GetNamespace(), Name: imp.GetName()}
	var inUse map[netip.Addr]bool
	for _, pfx := range s.clusterset {
		kept := false
		for _, v := range old.GetIps() {
			if a, err := netip.ParseAddr(v); err == nil && pfx.Contains(a) {
				imp.Ips = append(imp.Ips, a.String())
				kept = true
				break
			}
		}
		if kept {
			continue
		}
		if inUse == nil {
			inUse = s.vipsInUse()
		}
		a, ok := services.AllocateVIP(pfx, key, func(a netip.Addr) bool { return inUse[a] })
		if !ok {
			imp.Conditions = append(imp.Conditions, cond("ClusterSetIPAllocated", false, "CIDRExhausted",
				fmt.Sprintf("no free address in the clusterset CIDR %s; widen it (control plane flag) or remove imports", pfx)))
			continue
		}
		inUse[a] = true
		imp.Ips = append(imp.Ips, a.String())
	}
}

func (s *State) vipsInUse() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, imp := range s.imports {
		for _, v := range imp.GetIps() {
			if a, err := netip.ParseAddr(v); err == nil {
				out[a] = true
			}
		}
	}
	return out
}

// servicesV6 reports whether imports carry what log format 6 adds.
func (s *State) servicesV6() bool {
	if len(s.clusterset) > 0 {
		return true
	}
	for _, ce := range s.clusters {
		if ce.spec.GetStatus() != nil {
			return true
		}
	}
	return false
}

// decorateImport adds what log format 6 adds to a derived import: VIPs and
// each exporting cluster's reachability; before it, it strips the
// per-cluster ports that older binaries did not compute.
func (s *State) decorateImport(imp, old *fedmeshv1.ServiceImport) {
	if !s.servicesV6() {
		for _, cb := range imp.GetClusters() {
			cb.Ports = nil
		}
		return
	}
	for _, cb := range imp.GetClusters() {
		if ce := s.clusters[cb.GetCluster()]; ce != nil {
			cb.Reachability = ce.spec.GetStatus().GetReachability()
		}
	}
	s.assignVIPs(imp, old)
}

func (s *State) applySetLiveness(tx *txn, req *fedmeshv1.SetLivenessRequest) (*Result, error) {
	for i, cl := range req.GetClusters() {
		if s.clusters[cl.GetCluster()] == nil {
			return nil, clusterNotFound(field.NewPath("clusters").Index(i).Child("cluster"), cl.GetCluster())
		}
	}
	for _, cl := range req.GetClusters() {
		ce := s.clusters[cl.GetCluster()]
		st := ce.spec.GetStatus()
		stale := slices.Clone(cl.GetStaleNodes())
		slices.Sort(stale)
		stale = slices.Compact(stale)
		if st.GetReachability() == cl.GetReachability() && slices.Equal(st.GetStaleNodes(), stale) {
			continue
		}
		c := proto.CloneOf(ce.spec)
		c.Status = &fedmeshv1.ClusterStatus{Reachability: cl.GetReachability(), StaleNodes: stale, ReachabilityTime: st.GetReachabilityTime()}
		if st.GetReachability() != cl.GetReachability() {
			c.Status.ReachabilityTime = tx.updateTime()
		}
		c.Meta = tx.meta(ce.spec.GetMeta())
		ce.spec = c
		tx.putCluster(c)
		for _, k := range s.importsExportedBy(cl.GetCluster()) {
			s.recomputeImport(tx, k, nil)
		}
	}
	return &Result{}, nil
}

// importsExportedBy lists the imports cluster contributes to, sorted.
func (s *State) importsExportedBy(cluster string) []nsName {
	return sortedNsNames(s.exports[cluster])
}

// livenessOf is the part of a stored cluster status that survives a
// re-registration (the rest is computed on read).
func livenessOf(st *fedmeshv1.ClusterStatus) *fedmeshv1.ClusterStatus {
	if st.GetReachability() == fedmeshv1.Reachability_REACHABILITY_UNSPECIFIED && len(st.GetStaleNodes()) == 0 {
		return nil
	}
	return &fedmeshv1.ClusterStatus{Reachability: st.GetReachability(), ReachabilityTime: st.GetReachabilityTime(), StaleNodes: st.GetStaleNodes()}
}
