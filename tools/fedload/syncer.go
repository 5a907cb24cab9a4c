package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// simSyncer is one simulated cluster's syncer: its own principal
// (auth.Syncer), writing its cluster's objects through the real API.
type simSyncer struct {
	idx   int
	name  string
	p     Profile
	lay   layout
	conns []*grpc.ClientConn // replicas in this syncer's preferred order

	mu    sync.Mutex
	cur   int
	rng   *rand.Rand
	slots []epSlot
	gen   int
}

type epSlot struct {
	alive bool
	busy  bool // a write of this slot is in flight
	gen   int
	app   int
}

func newSyncer(f *federation, p Profile, lay layout, idx int) (*simSyncer, error) {
	s := &simSyncer{idx: idx, name: clusterName(idx), p: p, lay: lay, rng: rand.New(rand.NewPCG(uint64(idx), 7))}
	creds, err := f.clientCreds(auth.Syncer(s.name))
	if err != nil {
		return nil, err
	}
	addrs := f.voterAddrs()
	for i := range addrs {
		a := addrs[(idx+i)%len(addrs)]
		cc, err := grpc.NewClient(a, creds)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("dial %s as syncer %s: %w", a, s.name, err)
		}
		s.conns = append(s.conns, cc)
	}
	s.slots = make([]epSlot, 2*p.EndpointsPerCluster)
	for i := range p.EndpointsPerCluster {
		s.slots[i] = epSlot{alive: true, app: s.appFor(i, i)}
	}
	return s, nil
}

func clusterName(i int) string { return fmt.Sprintf("c%03d", i) }

func (s *simSyncer) close() {
	for _, cc := range s.conns {
		cc.Close()
	}
}

// appFor picks the k-th app of slot's namespace: apps a with a mod
// namespaces == slot's namespace, so identities per cluster stay bounded
// by IdentitiesPerCluster.
func (s *simSyncer) appFor(slot, k int) int {
	ns := slot % s.p.Namespaces
	per := max(1, s.p.IdentitiesPerCluster/s.p.Namespaces)
	return ns + s.p.Namespaces*(k%per)
}

func (s *simSyncer) endpoint(slot int, e epSlot) *fedmeshv1.Endpoint {
	return &fedmeshv1.Endpoint{
		Cluster: s.name, Namespace: fmt.Sprintf("ns-%d", slot%s.p.Namespaces), Name: fmt.Sprintf("pod-%d-%d", slot, e.gen),
		Ips:    []string{s.lay.endpointIP(s.idx, slot, s.p.AgentsPerCluster)},
		Labels: map[string]string{"app": fmt.Sprintf("app-%d", e.app)},
		Node:   fmt.Sprintf("n%d", slot%max(2, s.p.AgentsPerCluster*2)),
	}
}

// call runs one write against the preferred replica, moving on to the
// next one when a replica (not the request) failed.
func (s *simSyncer) call(ctx context.Context, fn func(context.Context, *grpc.ClientConn) (uint64, error)) (uint64, error) {
	var errs []error
	for range len(s.conns) + 1 {
		s.mu.Lock()
		i := s.cur
		s.mu.Unlock()
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		rev, err := fn(cctx, s.conns[i])
		cancel()
		if err == nil {
			return rev, nil
		}
		errs = append(errs, err)
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded:
			s.mu.Lock()
			if s.cur == i {
				s.cur = (i + 1) % len(s.conns)
			}
			s.mu.Unlock()
		default:
			return 0, errors.Join(errs...)
		}
		if ctx.Err() != nil {
			break
		}
	}
	return 0, errors.Join(errs...)
}

// register stores the cluster (as admin: registration is the admin's).
func registerCluster(ctx context.Context, admin *grpc.ClientConn, lay layout, idx int) error {
	c := &fedmeshv1.Cluster{Name: clusterName(idx), PodCidrs: []string{lay.clusterCIDR(idx)},
		Labels: map[string]string{"fedload": "true", "region": fmt.Sprintf("r%d", idx%4)}}
	var err error
	for range 50 {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = fedmeshv1.NewClusterServiceClient(admin).RegisterCluster(cctx, &fedmeshv1.RegisterClusterRequest{Cluster: c})
		cancel()
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("register cluster %s: %w", c.Name, err)
	}
	return nil
}

// load writes the cluster's initial endpoints, services and policies and
// returns the newest revision.
func (s *simSyncer) load(ctx context.Context) (uint64, error) {
	var last uint64
	var batch []*fedmeshv1.Endpoint
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		req := &fedmeshv1.UpsertEndpointsRequest{Cluster: s.name, Endpoints: batch}
		rev, err := s.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
			r, err := fedmeshv1.NewEndpointServiceClient(cc).UpsertEndpoints(ctx, req)
			return r.GetRevision(), err
		})
		if err != nil {
			return fmt.Errorf("load endpoints of %s: %w", s.name, err)
		}
		last, batch = max(last, rev), nil
		return nil
	}
	for i, sl := range s.slots {
		if !sl.alive {
			continue
		}
		batch = append(batch, s.endpoint(i, sl))
		if len(batch) == s.p.LoadBatch {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	if err := flush(); err != nil {
		return 0, err
	}
	for k := range s.p.ServicesPerCluster {
		rev, err := s.export(ctx, k)
		if err != nil {
			return 0, err
		}
		last = max(last, rev)
	}
	for k := range s.p.PoliciesPerCluster {
		rev, err := s.policy(ctx, k, 0)
		if err != nil {
			return 0, err
		}
		last = max(last, rev)
	}
	return last, nil
}

func (s *simSyncer) export(ctx context.Context, k int) (uint64, error) {
	s.mu.Lock()
	s.gen++
	var backends []string
	first := s.rng.IntN(s.p.EndpointsPerCluster)
	for n := range min(3, s.p.EndpointsPerCluster) {
		slot := (first + n) % s.p.EndpointsPerCluster
		backends = append(backends, s.lay.endpointIP(s.idx, slot, s.p.AgentsPerCluster))
	}
	s.mu.Unlock()
	req := &fedmeshv1.ExportServicesRequest{Cluster: s.name, Exports: []*fedmeshv1.ServiceExport{{
		Namespace: fmt.Sprintf("ns-%d", k%s.p.Namespaces), Name: fmt.Sprintf("svc-%d", k),
		Type:     fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP,
		Ports:    []*fedmeshv1.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}},
		Backends: backends,
	}}}
	rev, err := s.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewMultiClusterServiceClient(cc).ExportServices(ctx, req)
		return r.GetRevision(), err
	})
	if err != nil {
		return 0, fmt.Errorf("export service svc-%d of %s: %w", k, s.name, err)
	}
	return rev, nil
}

func (s *simSyncer) policy(ctx context.Context, k, gen int) (uint64, error) {
	ns := k % s.p.Namespaces
	app := func(j int) *fedmeshv1.LabelSelector {
		return &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", s.appFor(ns, j))}}
	}
	p := &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: s.name, Namespace: fmt.Sprintf("ns-%d", ns), Name: fmt.Sprintf("np-%d", k),
		Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: app(k), Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{
			From:  []*fedmeshv1.NetworkPolicyPeer{{PodSelector: app(k + 1)}},
			Ports: []*fedmeshv1.NetworkPolicyPort{{Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: &fedmeshv1.NetworkPolicyPort_Number{Number: uint32(8000 + gen%1000)}}},
		}}}}
	req := &fedmeshv1.ApplyPoliciesRequest{Cluster: s.name, Policies: []*fedmeshv1.Policy{p}}
	rev, err := s.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewPolicyServiceClient(cc).ApplyPolicies(ctx, req)
		return r.GetRevision(), err
	})
	if err != nil {
		return 0, fmt.Errorf("apply policy np-%d of %s: %w", k, s.name, err)
	}
	return rev, nil
}

// changeKind names what one change did.
type changeKind int

const (
	changeEndpointCreate changeKind = iota
	changeEndpointDelete
	changeRelabel
	changeService
	changePolicy
)

func (k changeKind) endpoint() bool { return k <= changeRelabel }

// change makes one change of the profile's mix and returns its revision.
func (s *simSyncer) change(ctx context.Context) (changeKind, uint64, error) {
	m := s.p.Mix
	total := m.EndpointChurn + m.Relabel + m.Service + m.Policy
	s.mu.Lock()
	x := s.rng.Float64() * total
	s.mu.Unlock()
	switch {
	case x < m.EndpointChurn:
		return s.churn(ctx)
	case x < m.EndpointChurn+m.Relabel:
		rev, err := s.relabel(ctx)
		return changeRelabel, rev, err
	case x < m.EndpointChurn+m.Relabel+m.Service:
		s.mu.Lock()
		k := s.rng.IntN(max(1, s.p.ServicesPerCluster))
		s.mu.Unlock()
		rev, err := s.export(ctx, k)
		return changeService, rev, err
	default:
		s.mu.Lock()
		k := s.rng.IntN(max(1, s.p.PoliciesPerCluster))
		s.gen++
		gen := s.gen
		s.mu.Unlock()
		rev, err := s.policy(ctx, k, gen)
		return changePolicy, rev, err
	}
}

// churn deletes a live pod or creates one in a free slot (the state is
// decided under the lock before the write, as a syncer's informer cache
// would be).
func (s *simSyncer) churn(ctx context.Context) (changeKind, uint64, error) {
	s.mu.Lock()
	slot, ok := s.pickSlot(func(epSlot) bool { return true })
	if !ok {
		s.mu.Unlock()
		return changeEndpointCreate, 0, errAllBusy
	}
	sl := s.slots[slot]
	var req any
	kind := changeEndpointCreate
	if sl.alive {
		kind = changeEndpointDelete
		ep := s.endpoint(slot, sl)
		req = &fedmeshv1.DeleteEndpointsRequest{Cluster: s.name, Keys: []*fedmeshv1.EndpointKey{{Namespace: ep.Namespace, Name: ep.Name}}}
		s.slots[slot].alive = false
	} else {
		sl = epSlot{alive: true, gen: sl.gen + 1, app: s.appFor(slot, s.rng.IntN(s.p.IdentitiesPerCluster))}
		s.slots[slot] = sl
		req = &fedmeshv1.UpsertEndpointsRequest{Cluster: s.name, Endpoints: []*fedmeshv1.Endpoint{s.endpoint(slot, sl)}}
	}
	s.slots[slot].busy = true
	s.mu.Unlock()
	defer s.release(slot)
	rev, err := s.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		c := fedmeshv1.NewEndpointServiceClient(cc)
		if d, ok := req.(*fedmeshv1.DeleteEndpointsRequest); ok {
			r, err := c.DeleteEndpoints(ctx, d)
			return r.GetRevision(), err
		}
		r, err := c.UpsertEndpoints(ctx, req.(*fedmeshv1.UpsertEndpointsRequest))
		return r.GetRevision(), err
	})
	return kind, rev, err
}

// errAllBusy: every slot tried had a write in flight (a syncer's writes of
// one pod are ordered).
var errAllBusy = errors.New("no idle endpoint slot found")

// pickSlot picks a random slot with no write in flight that ok accepts.
// The caller holds mu.
func (s *simSyncer) pickSlot(ok func(epSlot) bool) (int, bool) {
	for range 32 {
		i := s.rng.IntN(len(s.slots))
		if sl := s.slots[i]; !sl.busy && ok(sl) {
			return i, true
		}
	}
	return 0, false
}

func (s *simSyncer) release(slot int) {
	s.mu.Lock()
	s.slots[slot].busy = false
	s.mu.Unlock()
}

func (s *simSyncer) relabel(ctx context.Context) (uint64, error) {
	s.mu.Lock()
	ok := false
	var slot int
	if s.p.HotEndpoints > 0 {
		for range 32 {
			if slot = s.rng.IntN(s.p.HotEndpoints); !s.slots[slot].busy && s.slots[slot].alive {
				ok = true
				break
			}
		}
	} else {
		slot, ok = s.pickSlot(func(sl epSlot) bool { return sl.alive })
	}
	if !ok {
		s.mu.Unlock()
		return 0, errAllBusy
	}
	sl := s.slots[slot]
	sl.app = s.appFor(slot, s.rng.IntN(s.p.IdentitiesPerCluster))
	sl.busy = true
	s.slots[slot] = sl
	ep := s.endpoint(slot, sl)
	s.mu.Unlock()
	defer s.release(slot)
	req := &fedmeshv1.UpsertEndpointsRequest{Cluster: s.name, Endpoints: []*fedmeshv1.Endpoint{ep}}
	return s.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewEndpointServiceClient(cc).UpsertEndpoints(ctx, req)
		return r.GetRevision(), err
	})
}
