package agent_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	cpserver "github.com/fedmesh/fedmesh/controlplane/server"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/dns"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// svcRecorder is the Services port: it keeps the last table it accepted,
// can be told to fail, and loads what it accepts into the translation's
// in-memory twin, whose capacity limits a test can set (ServiceStatus is
// the twin's).
type svcRecorder struct {
	mu   sync.Mutex
	last *dataplane.ServiceTable
	fail error
	tr   *dataplane.SockLBMemory
}

func newSvcRecorder() *svcRecorder {
	return &svcRecorder{tr: dataplane.NewSockLBMemory(dataplane.ServiceLimits{}, rand.Uint32)}
}

func (s *svcRecorder) ApplyServices(ctx context.Context, t *dataplane.ServiceTable) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	if err := s.tr.ApplyServices(ctx, t); err != nil {
		return err
	}
	s.last = t
	return nil
}

func (s *svcRecorder) ServiceStatus(ctx context.Context) (dataplane.ServiceStatus, error) {
	s.mu.Lock()
	tr := s.tr
	s.mu.Unlock()
	return tr.ServiceStatus(ctx)
}

// setLimits swaps in an empty twin with these limits; the agent's next
// table loads into it.
func (s *svcRecorder) setLimits(lim dataplane.ServiceLimits) {
	s.mu.Lock()
	s.tr = dataplane.NewSockLBMemory(lim, rand.Uint32)
	s.mu.Unlock()
}

func (s *svcRecorder) table() *dataplane.ServiceTable {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func (s *svcRecorder) setFail(err error) {
	s.mu.Lock()
	s.fail = err
	s.mu.Unlock()
}

// dnsRecorder is the DNS port: it keeps the last view.
type dnsRecorder struct {
	mu   sync.Mutex
	last dns.View
}

func (d *dnsRecorder) SetView(v dns.View) {
	d.mu.Lock()
	d.last = v
	d.mu.Unlock()
}

func (d *dnsRecorder) view() dns.View {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

func (f *fed) exportRedis(cluster string, eps ...*fedmeshv1.ServiceBackend) uint64 {
	f.t.Helper()
	var ready []string
	for _, e := range eps {
		if e.GetReady() {
			ready = append(ready, e.GetAddress())
		}
	}
	return f.write("export redis of "+cluster, func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewMultiClusterServiceClient(cc).ExportServices(ctx, &fedmeshv1.ExportServicesRequest{Cluster: cluster,
			Exports: []*fedmeshv1.ServiceExport{{Namespace: "demo", Name: "redis", Affinity: fedmeshv1.Affinity_AFFINITY_LOCAL,
				Ports:    []*fedmeshv1.ServicePort{{Name: "redis", Port: 6379, Protocol: fedmeshv1.Protocol_PROTOCOL_TCP}},
				Backends: ready, Endpoints: eps}}})
		return r.GetRevision(), err
	})
}

// End to end on three replicas: the agent of a node in cluster a loads a
// translation of redis's ClusterSetIP to its own cluster's backend (local
// affinity), fails over to b's when a's backend is not ready, publishes
// the catalog for DNS, and does not report a revision enforced while the
// Services port refuses its table.
func TestAgentTranslatesClusterSetIPsWithAffinityAndFailover(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.seed()
	h := startAgent(t, f.cp.Addrs(), nil)
	f.waitRegistered()
	f.exportRedis("b", &fedmeshv1.ServiceBackend{Address: "10.1.0.20", Node: "m1", Ready: true})
	f.exportRedis("a", &fedmeshv1.ServiceBackend{Address: "10.0.0.10", Node: self, Ready: true})

	backendsOf := func() (netip.Addr, []string) {
		t := h.svc.table()
		if t == nil {
			return netip.Addr{}, nil
		}
		for _, fe := range t.Frontends {
			if fe.Key.VIP.Is4() && fe.Key.Port == 6379 && fe.Name == "redis" {
				var out []string
				for _, b := range fe.Backends {
					out = append(out, b.Addr.String()+"@"+b.Cluster)
				}
				return fe.Key.VIP, out
			}
		}
		return netip.Addr{}, nil
	}
	same := func(got []string, want ...string) bool {
		if len(got) != len(want) {
			return false
		}
		for i := range got {
			if got[i] != want[i] {
				return false
			}
		}
		return true
	}
	eventually(t, "the ClusterSetIP translates to a's own backend (local affinity)", func() bool {
		vip, bs := backendsOf()
		return vip.IsValid() && cpserver.DefaultClustersetCIDRs[0].Contains(vip) && same(bs, "10.0.0.10@a")
	})
	cat := h.a.ServiceCatalog()
	if s, ok := cat.Lookup("demo", "redis"); !ok || len(s.IPs) != 2 || len(s.Ports) != 1 || s.Ports[0].Port != 6379 {
		t.Errorf("catalog entry = %+v, %v; want both ClusterSetIPs and port 6379", s, ok)
	}
	if v := h.dns.view(); v == nil {
		t.Error("the DNS port got no view")
	} else if r, ok := v.LookupService("demo", "redis"); !ok || len(r.ClusterSetIPs) != 1 || !r.ClusterSetIPs[0].Is4() || r.Headless {
		// Only IPv4 backends are exported: DNS answers the IPv4 VIP alone
		// (an AAAA answer would send IPv6-first clients to a VIP with no
		// backend), while the catalog and the translation keep both.
		t.Errorf("DNS view of redis = %+v, %v; want its IPv4 ClusterSetIP only", r, ok)
	}

	rev := f.exportRedis("a", &fedmeshv1.ServiceBackend{Address: "10.0.0.10", Node: self, Ready: false})
	eventually(t, "failover to b's backend", func() bool { _, bs := backendsOf(); return same(bs, "10.1.0.20@b") })
	eventually(t, "the failover revision enforced", enforcedAt(h, rev))

	h.svc.setFail(errors.New("service map full"))
	rev = f.exportRedis("a", &fedmeshv1.ServiceBackend{Address: "10.0.0.10", Node: self, Ready: true})
	eventually(t, "the agent saw the revision", func() bool {
		return testutil.ToFloat64(mustGauge(t, h.a, "fedmesh_agent_seen_revision")) >= float64(rev)
	})
	time.Sleep(200 * time.Millisecond) // ten ticks: ten retries refused
	if got, _ := h.a.Enforced(); got >= rev {
		t.Fatalf("revision %d reported enforced while the Services port refuses its table (enforced %d)", rev, got)
	}
	if _, bs := backendsOf(); !same(bs, "10.1.0.20@b") {
		t.Errorf("table changed although the port refused it: %v", bs)
	}
	h.svc.setFail(nil)
	eventually(t, "the retried table enforced", enforcedAt(h, rev))
	if _, bs := backendsOf(); !same(bs, "10.0.0.10@a") {
		t.Errorf("after the retry: %v, want a's backend again", bs)
	}

	// Cluster loss: while b's syncer heartbeats, b serves the failover;
	// when the heartbeats stop, b is withdrawn within the timeout (the
	// frontend stays, empty: connections fail rather than reach b); when
	// they resume, b is re-admitted.
	f.exportRedis("a", &fedmeshv1.ServiceBackend{Address: "10.0.0.10", Node: self, Ready: false})
	eventually(t, "failover to b again", func() bool { _, bs := backendsOf(); return same(bs, "10.1.0.20@b") })
	beat := func() {
		_ = f.call("heartbeat b", func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := fedmeshv1.NewClusterServiceClient(cc).Heartbeat(ctx, &fedmeshv1.HeartbeatRequest{Cluster: "b"})
			return err
		})
	}
	beating := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-beating:
				return
			case <-time.After(200 * time.Millisecond):
				beat()
			}
		}
	}()
	eventually(t, "b judged reachable", func() bool {
		var c *fedmeshv1.Cluster
		_ = f.call("get b", func(ctx context.Context, cc *grpc.ClientConn) error {
			r, err := fedmeshv1.NewClusterServiceClient(cc).GetCluster(ctx, &fedmeshv1.GetClusterRequest{Name: "b"})
			c = r.GetCluster()
			return err
		})
		return c.GetStatus().GetReachability() == fedmeshv1.Reachability_REACHABILITY_REACHABLE
	})
	close(beating)
	<-done
	lost := time.Now()
	eventually(t, "b's backend withdrawn once b is silent", func() bool { vip, bs := backendsOf(); return vip.IsValid() && len(bs) == 0 })
	if d := time.Since(lost); d > cpserver.DefaultClusterTimeout+3*time.Second {
		t.Errorf("b withdrawn %v after its last heartbeat; the timeout is %v", d, cpserver.DefaultClusterTimeout)
	}
	beat()
	eventually(t, "b re-admitted by its next heartbeat", func() bool { _, bs := backendsOf(); return same(bs, "10.1.0.20@b") })
}

// A service with more backends than the translation's maps hold is served
// with those that fit and reported in the node's status, naming the
// service; once it fits again the report clears.
func TestAgentReportsServicesTheTranslationTruncates(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.seed()
	h := startAgent(t, f.cp.Addrs(), nil)
	h.svc.setLimits(dataplane.ServiceLimits{BackendsPerFrontend: 2})
	f.waitRegistered()

	problems := func() []string {
		n, err := f.node()
		if err != nil {
			return nil
		}
		return n.GetStatus().GetServiceProblems()
	}
	backends := func(n int) []*fedmeshv1.ServiceBackend {
		var out []*fedmeshv1.ServiceBackend
		for i := range n {
			out = append(out, &fedmeshv1.ServiceBackend{Address: fmt.Sprintf("10.0.0.%d", 10+i), Node: self, Ready: true})
		}
		return out
	}

	rev := f.exportRedis("a", backends(3)...)
	eventually(t, "three backends enforced", enforcedAt(h, rev))
	eventually(t, "the truncated redis frontend in the node status", func() bool {
		ps := problems()
		return len(ps) == 1 && strings.Contains(ps[0], "demo/redis") && strings.Contains(ps[0], ":6379/TCP") &&
			strings.Contains(ps[0], "2 of 3 backends loaded") && strings.Contains(ps[0], dataplane.TruncPerFrontend)
	})
	if tb := h.svc.table(); tb == nil || !slices.ContainsFunc(tb.Frontends, func(fe dataplane.ServiceFrontend) bool { return len(fe.Backends) == 3 }) {
		t.Fatalf("the agent's table lists %v; want the import's three backends (the translation truncates, not the agent)", tb)
	}

	rev = f.exportRedis("a", backends(2)...)
	eventually(t, "two backends enforced", enforcedAt(h, rev))
	eventually(t, "no service problem once redis fits", func() bool { return len(problems()) == 0 })
}
