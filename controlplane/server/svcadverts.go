package server

import (
	"context"
	"fmt"
	"net/netip"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// maxAdvertIPs bounds the addresses of one advertisement (a Service has
// at most two cluster IPs; external and LB IPs are few).
const maxAdvertIPs = 64

func init() {
	validator(store.CmdSyncServiceAdvertisements, validateSyncServiceAdvertisements)
}

// validateSyncServiceAdvertisements is the edge's stateless check: names,
// addresses, the policy, node names; that the cluster exists is the FSM's.
func validateSyncServiceAdvertisements(r *fedmeshv1.SyncServiceAdvertisementsRequest) error {
	errs := model.ClusterName(field.NewPath("cluster"), r.GetCluster())
	seen := map[string]int{}
	pp := field.NewPath("puts")
	for i, a := range r.GetPuts() {
		p := pp.Index(i)
		if c := a.GetCluster(); c != "" && c != r.GetCluster() {
			errs = append(errs, field.Invalid(p.Child("cluster"), c, "must be empty or the request's cluster"))
		}
		errs = append(errs, nsAndName(p, a.GetNamespace(), a.GetName())...)
		k := a.GetNamespace() + "/" + a.GetName()
		if j, dup := seen[k]; dup {
			errs = append(errs, field.Duplicate(p, fmt.Sprintf("%s (puts[%d])", k, j)))
		}
		seen[k] = i
		for _, ips := range []struct {
			name string
			v    []string
		}{{"clusterIps", a.GetClusterIps()}, {"externalIps", a.GetExternalIps()}, {"loadBalancerIps", a.GetLoadBalancerIps()}} {
			if len(ips.v) > maxAdvertIPs {
				errs = append(errs, field.TooMany(p.Child(ips.name), len(ips.v), maxAdvertIPs))
				continue
			}
			for j, s := range ips.v {
				if ip, err := netip.ParseAddr(s); err != nil || ip.Zone() != "" {
					errs = append(errs, field.Invalid(p.Child(ips.name).Index(j), s, "not an IPv4 or IPv6 address"))
				}
			}
		}
		if t := a.GetExternalTrafficPolicy(); fedmeshv1.ServiceTrafficPolicy_name[int32(t)] == "" {
			errs = append(errs, field.NotSupported(p.Child("externalTrafficPolicy"), t.String(), []string{"SERVICE_TRAFFIC_POLICY_CLUSTER", "SERVICE_TRAFFIC_POLICY_LOCAL"}))
		}
		for j, n := range a.GetReadyNodes() {
			for _, msg := range validation.IsDNS1123Subdomain(n) {
				errs = append(errs, field.Invalid(p.Child("readyNodes").Index(j), n, msg))
			}
		}
	}
	for i, d := range r.GetDeletes() {
		errs = append(errs, nsAndName(field.NewPath("deletes").Index(i), d.GetNamespace(), d.GetName())...)
	}
	return model.AsError(errs)
}

func nsAndName(p *field.Path, ns, name string) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Label(ns) {
		errs = append(errs, field.Invalid(p.Child("namespace"), ns, msg))
	}
	for _, msg := range validation.IsDNS1123Subdomain(name) {
		errs = append(errs, field.Invalid(p.Child("name"), name, msg))
	}
	return errs
}

// advertsWritable refuses advertisement writes until every replica applies
// log format 7.
func (c *Core) advertsWritable() error {
	return advertWritesAt(c.appliesFormat(store.LogFormatServiceAdvertisements))
}

// advertWritesAt decides for the oldest log format of the configuration.
// Pure, for tests.
func advertWritesAt(f uint32) error {
	if f < store.LogFormatServiceAdvertisements {
		return status.Errorf(codes.FailedPrecondition,
			"not every control-plane replica applies service advertisements yet (log format %d, need %d): finish upgrading the replicas, then retry",
			f, store.LogFormatServiceAdvertisements)
	}
	return nil
}

func (s *bgpService) SyncServiceAdvertisements(ctx context.Context, req *fedmeshv1.SyncServiceAdvertisementsRequest) (*fedmeshv1.SyncServiceAdvertisementsResponse, error) {
	if err := s.c.advertsWritable(); err != nil {
		return nil, err
	}
	return propose(ctx, s.c, store.CmdSyncServiceAdvertisements, req, func(r *store.Result) *fedmeshv1.SyncServiceAdvertisementsResponse {
		return &fedmeshv1.SyncServiceAdvertisementsResponse{Revision: r.Revision}
	})
}

// mayReadAdverts: an admin (or no authentication), and the cluster's own
// syncer and agents (the authorization table admits only those; this is
// the same rule, kept here for an unauthenticated test server).
func mayReadAdverts(ctx context.Context, cluster string) error {
	p, ok := auth.PrincipalFrom(ctx)
	if !ok || p.Kind == auth.KindAdmin || p.Cluster == cluster && (p.Kind == auth.KindSyncer || p.Kind == auth.KindNode) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "%s may not read the service advertisements of cluster %q", p, cluster)
}

func (s *bgpService) ListServiceAdvertisements(ctx context.Context, req *fedmeshv1.ListServiceAdvertisementsRequest) (*fedmeshv1.ListServiceAdvertisementsResponse, error) {
	if err := mayReadAdverts(ctx, req.GetCluster()); err != nil {
		return nil, err
	}
	if err := s.c.beforeRead(ctx); err != nil {
		return nil, err
	}
	resp := &fedmeshv1.ListServiceAdvertisementsResponse{}
	s.c.view(func(st *store.State) {
		resp.Advertisements, resp.Revision = st.ServiceAdvertisements(req.GetCluster()), st.Revision()
	})
	return resp, nil
}

// WatchServiceAdvertisements sends the cluster's whole set at the start
// and again whenever its revision moves: level-triggered, so a watcher
// that reconnects (to any replica) just gets the current set.
func (s *bgpService) WatchServiceAdvertisements(req *fedmeshv1.WatchServiceAdvertisementsRequest, stream fedmeshv1.BGPService_WatchServiceAdvertisementsServer) error {
	ctx := stream.Context()
	if err := mayReadAdverts(ctx, req.GetCluster()); err != nil {
		return err
	}
	sent := uint64(0)
	first := true
	for {
		changed := s.c.fsm.Changed()
		var resp *fedmeshv1.WatchServiceAdvertisementsResponse
		s.c.view(func(st *store.State) {
			if rev := st.ServiceAdvertisementsRevision(req.GetCluster()); first || rev > sent {
				resp = &fedmeshv1.WatchServiceAdvertisementsResponse{Advertisements: st.ServiceAdvertisements(req.GetCluster()), Revision: st.Revision()}
				sent, first = rev, false
			}
		})
		if resp != nil {
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}
