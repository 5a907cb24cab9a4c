package server

// Services at the edge: the stateless checks of the format-6 service
// commands and of what format 6 adds to exports (affinity, backends with
// node and readiness), and the gate that keeps those additions out of the
// log until every replica applies format 6.

import (
	"fmt"
	"net/netip"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func init() {
	validator(store.CmdConfigureServices, validateConfigureServices)
	validator(store.CmdSetLiveness, validateSetLiveness)
}

// validateExportServices is model.ValidateExportServices plus the fields
// of log format 6.
func validateExportServices(r *fedmeshv1.ExportServicesRequest) error {
	if err := model.ValidateExportServices(r); err != nil {
		return err
	}
	var errs field.ErrorList
	for i, x := range r.GetExports() {
		xp := field.NewPath("exports").Index(i)
		switch x.GetAffinity() {
		case fedmeshv1.Affinity_AFFINITY_UNSPECIFIED, fedmeshv1.Affinity_AFFINITY_NONE, fedmeshv1.Affinity_AFFINITY_LOCAL, fedmeshv1.Affinity_AFFINITY_REMOTE:
		default:
			errs = append(errs, field.NotSupported(xp.Child("affinity"), int32(x.GetAffinity()), []string{"none", "local", "remote"}))
		}
		ep := xp.Child("endpoints")
		if n := len(x.GetEndpoints()); n > model.MaxBackends {
			errs = append(errs, field.TooMany(ep, n, model.MaxBackends))
		}
		seen := map[netip.Addr]int{}
		for j, e := range x.GetEndpoints() {
			a, err := netip.ParseAddr(e.GetAddress())
			if err != nil {
				errs = append(errs, field.Invalid(ep.Index(j).Child("address"), e.GetAddress(), "not an IP address"))
				continue
			}
			if k, dup := seen[a]; dup {
				errs = append(errs, field.Duplicate(ep.Index(j).Child("address"), fmt.Sprintf("%s (also %s)", a, ep.Index(k))))
			}
			seen[a] = j
		}
	}
	return model.AsError(errs)
}

func validateConfigureServices(r *fedmeshv1.ConfigureServicesRequest) error {
	var errs field.ErrorList
	p := field.NewPath("clustersetCidrs")
	fams := map[bool]int{}
	for i, v := range r.GetClustersetCidrs() {
		pfx, err := netip.ParsePrefix(v)
		if err != nil {
			errs = append(errs, field.Invalid(p.Index(i), v, "not a CIDR"))
			continue
		}
		if pfx != pfx.Masked() {
			errs = append(errs, field.Invalid(p.Index(i), v, fmt.Sprintf("has host bits set; write %s", pfx.Masked())))
		}
		if j, dup := fams[pfx.Addr().Is4()]; dup {
			errs = append(errs, field.Invalid(p.Index(i), v, fmt.Sprintf("a second CIDR of its family (also %s); give at most one IPv4 and one IPv6", p.Index(j))))
		}
		fams[pfx.Addr().Is4()] = i
		if pfx.Addr().BitLen()-pfx.Bits() < 2 {
			errs = append(errs, field.Invalid(p.Index(i), v, "too small to hold ClusterSetIPs"))
		}
	}
	return model.AsError(errs)
}

func validateSetLiveness(r *fedmeshv1.SetLivenessRequest) error {
	var errs field.ErrorList
	for i, c := range r.GetClusters() {
		cp := field.NewPath("clusters").Index(i)
		errs = append(errs, model.ClusterName(cp.Child("cluster"), c.GetCluster())...)
		switch c.GetReachability() {
		// Unspecified: a cluster whose syncer never sent a heartbeat (not
		// judged) whose stale nodes changed.
		case fedmeshv1.Reachability_REACHABILITY_UNSPECIFIED, fedmeshv1.Reachability_REACHABILITY_REACHABLE, fedmeshv1.Reachability_REACHABILITY_UNREACHABLE:
		default:
			errs = append(errs, field.NotSupported(cp.Child("reachability"), c.GetReachability().String(), []string{"REACHABILITY_UNSPECIFIED", "REACHABILITY_REACHABLE", "REACHABILITY_UNREACHABLE"}))
		}
	}
	return model.AsError(errs)
}

// withClusterset returns req carrying this replica's clusterset CIDRs
// (whatever a client put there is replaced) once every replica applies
// log format 6, so the first export configures ClusterSetIPs in its own
// revision instead of a write of its own. Before that, none: an older
// replica would ignore them.
func (c *Core) withClusterset(req *fedmeshv1.ExportServicesRequest) *fedmeshv1.ExportServicesRequest {
	var want []string
	if c.appliesFormat(store.LogFormatServices) >= store.LogFormatServices {
		for _, p := range c.live.cfg.ClustersetCIDRs {
			want = append(want, p.String())
		}
	}
	if slices.Equal(req.GetClustersetCidrs(), want) {
		return req
	}
	out := proto.CloneOf(req)
	out.ClustersetCidrs = want
	return out
}

// checkExportsFormat refuses, as retryable, exports carrying what log
// format 6 adds (affinity, endpoint details) while some replica does not
// apply format 6 yet: such a replica would store them without aggregating
// them, and replicas would disagree on the imports. Dropping the fields
// instead would lose them for good (a syncer sends an export again only
// when it changes), so the syncer retries, as after any failed write,
// until the group has upgraded (moments, for a new group).
func (c *Core) checkExportsFormat(req *fedmeshv1.ExportServicesRequest) error {
	if c.appliesFormat(store.LogFormatServices) >= store.LogFormatServices {
		return nil
	}
	for _, x := range req.GetExports() {
		if x.GetAffinity() != fedmeshv1.Affinity_AFFINITY_UNSPECIFIED || len(x.GetEndpoints()) > 0 {
			return status.Errorf(codes.Unavailable, "export %s/%s carries affinity and endpoint details, which not every control-plane replica applies yet (log format %d); retry once the upgrade completes",
				x.GetNamespace(), x.GetName(), store.LogFormatServices)
		}
	}
	return nil
}
