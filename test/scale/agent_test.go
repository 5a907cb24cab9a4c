package scale

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

var agentHeapProfile = flag.String("agent-heap-profile", "", "BenchmarkAgentSync: write a heap profile of the synced agent (after a GC) to this file, and one after the churn to this file + \".churn\" (go tool pprof -sample_index=alloc_space -base FILE FILE.churn: what the churn allocated)")

// fedFed is a federation shaped as tools/fedload writes it and a replica
// serves it: clusters of endpoints with one "app" label each (identities
// per cluster distinct label sets over 5 namespaces), two nodes per cluster,
// ten NetworkPolicies per cluster, and the metadata a replica stamps on
// every object (revisions, the writer's principal, the commit time).
type fedFed struct {
	clusters, perCluster, identities int
}

const fedNamespaces = 5

func (f fedFed) clusterName(c int) string { return fmt.Sprintf("c%03d", c) }

// addr is endpoint slot s of cluster c: 10.c.x.y, one /16 per cluster.
func (f fedFed) addr(c, s int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(c), byte(s >> 8), byte(s)})
}

func (f fedFed) endpoint(c, s, gen, app int, rev uint64, node string) *fedmeshv1.Endpoint {
	name := f.clusterName(c)
	return &fedmeshv1.Endpoint{
		Cluster: name, Namespace: fmt.Sprintf("ns-%d", s%fedNamespaces), Name: fmt.Sprintf("pod-%d-%d", s, gen),
		Ips:      []string{f.addr(c, s).String()},
		Labels:   map[string]string{"app": fmt.Sprintf("app-%d", app)},
		Node:     node,
		Identity: uint32(1000 + c*f.identities + app),
		Meta: &fedmeshv1.ObjectMeta{Revision: rev, CreateRevision: rev, UpdatedBy: "spiffe://fedmesh/cluster/" + name + "/syncer",
			UpdateTime: timestamppb.New(time.Unix(1_800_000_000, int64(rev)))},
	}
}

// serviceImport is the import of svc-k as a replica derives it from
// fedload's exports: every cluster exports it with 3 backends (gen moves
// cluster c's).
func (f fedFed) serviceImport(k, c0, gen int, rev uint64) *fedmeshv1.ServiceImport {
	imp := &fedmeshv1.ServiceImport{Namespace: fmt.Sprintf("ns-%d", k%fedNamespaces), Name: fmt.Sprintf("svc-%d", k),
		Type:  fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP,
		Ports: []*fedmeshv1.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}},
		Ips:   []string{fmt.Sprintf("240.0.0.%d", k+1)}, Meta: &fedmeshv1.ObjectMeta{Revision: rev}}
	for c := range f.clusters {
		cb := &fedmeshv1.ClusterBackends{Cluster: f.clusterName(c), Ports: imp.Ports}
		first := k * 3
		if c == c0 {
			first += gen
		}
		for n := range 3 {
			a := f.addr(c, (first+n)%f.perCluster).String()
			cb.Addresses = append(cb.Addresses, a)
			cb.Endpoints = append(cb.Endpoints, &fedmeshv1.ServiceBackend{Address: a, Node: "n0", Ready: true})
		}
		imp.Clusters = append(imp.Clusters, cb)
	}
	return imp
}

// app is the label set of slot s: identities spread over the namespaces
// (fedload's appFor).
func (f fedFed) app(s int) int { return s % f.identities }

// snapshot encodes the federation as a replica's snapshot chunks (1,000
// objects each). The agent's node, c000/agent-0, runs 20 of c000's pods.
func (f fedFed) snapshot() [][]byte {
	var evs []*fedmeshv1.Event
	put := func(rev uint64, o any) {
		ev := &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Revision: rev}
		switch o := o.(type) {
		case *fedmeshv1.Cluster:
			ev.Object = &fedmeshv1.Event_Cluster{Cluster: o}
		case *fedmeshv1.Endpoint:
			ev.Object = &fedmeshv1.Event_Endpoint{Endpoint: o}
		case *fedmeshv1.Policy:
			ev.Object = &fedmeshv1.Event_Policy{Policy: o}
		case *fedmeshv1.ServiceImport:
			ev.Object = &fedmeshv1.Event_ServiceImport{ServiceImport: o}
		}
		evs = append(evs, ev)
	}
	for c := range f.clusters {
		put(1, &fedmeshv1.Cluster{Name: f.clusterName(c), PodCidrs: []string{fmt.Sprintf("10.%d.0.0/16", c)},
			Labels: map[string]string{"region": fmt.Sprintf("r%d", c%4)}, Meta: &fedmeshv1.ObjectMeta{Revision: 1}})
	}
	for c := range f.clusters {
		for s := range f.perCluster {
			node := fmt.Sprintf("n%d", s%2)
			if c == 0 && s < 20 {
				node = "agent-0"
			}
			put(2, f.endpoint(c, s, 0, f.app(s), 2, node))
		}
		for k := range 10 {
			ns := k % fedNamespaces
			sel := func(j int) *fedmeshv1.LabelSelector {
				return &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", (ns+fedNamespaces*j)%f.identities)}}
			}
			put(3, &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: f.clusterName(c),
				Namespace: fmt.Sprintf("ns-%d", ns), Name: fmt.Sprintf("np-%d", k), Meta: &fedmeshv1.ObjectMeta{Revision: 3},
				Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: sel(k), Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{
					From:  []*fedmeshv1.NetworkPolicyPeer{{PodSelector: sel(k + 1)}},
					Ports: []*fedmeshv1.NetworkPolicyPort{{Protocol: fedmeshv1.Protocol_PROTOCOL_TCP, Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 8080}}},
				}}}})
		}
	}
	for k := range 10 {
		put(3, f.serviceImport(k, 0, 0, 3))
	}
	var chunks [][]byte
	for len(evs) > 0 {
		n := min(len(evs), 1000)
		b, err := proto.Marshal(&fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT,
			Revision: 3, Events: evs[:n], More: n < len(evs)})
		if err != nil {
			panic(err)
		}
		chunks = append(chunks, b)
		evs = evs[n:]
	}
	return chunks
}

// wireControlPlane is the agent's ControlPlane port serving encoded watch
// messages, decoded afresh on every Recv as gRPC does (the agent then owns
// the only copy), and recording the enforced revisions the agent reports.
type wireControlPlane struct {
	msgs chan []byte

	mu       sync.Mutex
	enforced uint64
	changed  chan struct{} // closed and replaced on every report
}

func newWireControlPlane() *wireControlPlane {
	return &wireControlPlane{msgs: make(chan []byte, 64), changed: make(chan struct{})}
}

type wireStream struct {
	ctx  context.Context
	msgs chan []byte
}

func (s wireStream) Recv() (*fedmeshv1.WatchResponse, error) {
	select {
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	case b := <-s.msgs:
		m := &fedmeshv1.WatchResponse{}
		return m, proto.Unmarshal(b, m)
	}
}

func (w *wireControlPlane) Watch(ctx context.Context, _ *fedmeshv1.WatchRequest) (agent.WatchStream, error) {
	return wireStream{ctx: ctx, msgs: w.msgs}, nil
}

func (w *wireControlPlane) RegisterNode(context.Context, *fedmeshv1.Node) error { return nil }

func (w *wireControlPlane) ReportNodeStatus(_ context.Context, _, _ string, st *fedmeshv1.NodeStatus) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if r := st.GetEnforcedRevision(); r > w.enforced {
		w.enforced = r
		close(w.changed)
		w.changed = make(chan struct{})
	}
	return nil
}

// waitEnforced waits until the agent reported rev.
func (w *wireControlPlane) waitEnforced(ctx context.Context, rev uint64) error {
	for {
		w.mu.Lock()
		got, ch := w.enforced, w.changed
		w.mu.Unlock()
		if got >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("agent reported revision %d, want %d: %w", got, rev, ctx.Err())
		}
	}
}

func encodeEvents(rev uint64, evs ...*fedmeshv1.Event) []byte {
	b, err := proto.Marshal(&fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS, Revision: rev, Events: evs})
	if err != nil {
		panic(err)
	}
	return b
}

// BenchmarkAgentSync runs the agent's real sync loop (watch, view, policy
// compiler, ipcache index, reports) on the in-memory dataplane against a
// fedload-shaped federation of 200 clusters x 1,000 endpoints (and its 10
// service imports, each with 3 backends in every cluster) served as
// wire-encoded snapshot chunks, then under fedload's churn mix of endpoint
// changes one revision at a time, as the agents of a fedload run see them, then
// under service changes (one cluster's backends of an import). It
// reports the agent's live heap per endpoint after the sync (Go heap after
// a GC, the encoded snapshot excluded), its peak during the sync (sampled,
// garbage not yet collected included), the sync's wall time, and the heap
// bytes and objects the agent allocates per endpoint event and per service
// change (the garbage its collector pays for under churn).
// -agent-heap-profile writes heap profiles of the synced agent.
func BenchmarkAgentSync(b *testing.B) {
	f := fedFed{clusters: 200, perCluster: entries / 200, identities: 25}
	chunks := f.snapshot()
	const churnEvents = 20_000
	churn := make([][]byte, churnEvents)
	for i := range churn {
		// Fedload's endpoint mix: a pod of another cluster replaced by a
		// new one at its address (create and delete), or relabelled.
		rev := uint64(4 + i)
		c, s := 1+i%(f.clusters-1), (i*7919)%f.perCluster
		var ev *fedmeshv1.Event
		switch i % 3 {
		case 0:
			ev = &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_DELETE, Revision: rev,
				Object: &fedmeshv1.Event_Endpoint{Endpoint: f.endpoint(c, s, 0, f.app(s), rev, "n0")}}
		case 1:
			ev = &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Revision: rev,
				Object: &fedmeshv1.Event_Endpoint{Endpoint: f.endpoint(c, s, 0, f.app(s), rev, "n0")}}
		default:
			ev = &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Revision: rev,
				Object: &fedmeshv1.Event_Endpoint{Endpoint: f.endpoint(c, s, 0, (f.app(s)+1)%f.identities, rev, "n0")}}
		}
		churn[i] = encodeEvents(rev, ev)
	}
	// Then service changes: one cluster's backends of one import move, and
	// the replica sends the whole import again.
	const importEvents = 2_000
	imports := make([][]byte, importEvents)
	for i := range imports {
		rev := uint64(4 + churnEvents + i)
		imports[i] = encodeEvents(rev, &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Revision: rev,
			Object: &fedmeshv1.Event_ServiceImport{ServiceImport: f.serviceImport(i%10, i%f.clusters, 1+i, rev)}})
	}
	for b.Loop() {
		before := liveHeap()
		cp := newWireControlPlane()
		a, err := agent.New(agent.Config{Cluster: "c000", Node: "agent-0", DataplaneName: "memory", MinReportInterval: -1},
			agent.Deps{ControlPlane: cp, Dataplane: dataplane.NewMemory(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		done := make(chan error, 1)
		start := time.Now()
		peak := sampleHeapPeak()
		go func() { done <- a.Run(ctx) }()
		for _, c := range chunks {
			cp.msgs <- c
		}
		if err := cp.waitEnforced(ctx, 3); err != nil {
			b.Fatal(err)
		}
		sync := time.Since(start)
		top := peak()
		live := liveHeap() - before
		if *agentHeapProfile != "" {
			if err := writeHeapProfile(*agentHeapProfile); err != nil {
				b.Fatal(err)
			}
		}

		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		// One revision at a time, each enforced before the next comes, as
		// fedload's spread-out changes reach an agent: nothing coalesces.
		for i, c := range churn {
			cp.msgs <- c
			if err := cp.waitEnforced(ctx, uint64(4+i)); err != nil {
				b.Fatal(err)
			}
		}
		runtime.ReadMemStats(&m1)
		var m2 runtime.MemStats
		for i, c := range imports {
			cp.msgs <- c
			if err := cp.waitEnforced(ctx, uint64(4+churnEvents+i)); err != nil {
				b.Fatal(err)
			}
		}
		runtime.ReadMemStats(&m2)
		if *agentHeapProfile != "" {
			if err := writeHeapProfile(*agentHeapProfile + ".churn"); err != nil {
				b.Fatal(err)
			}
		}
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			b.Fatal(err)
		}
		b.ReportMetric(float64(live)/entries, "B/endpoint")
		b.ReportMetric(float64(max(top, before)-before)/entries, "B/endpoint-peak")
		b.ReportMetric(sync.Seconds(), "s/sync")
		b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/churnEvents, "B/event")
		b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/churnEvents, "allocs/event")
		b.ReportMetric(float64(m2.TotalAlloc-m1.TotalAlloc)/importEvents, "B/import-event")
		runtime.KeepAlive(a)
	}
}

// sampleHeapPeak samples the heap's object bytes (live and not yet
// collected) every 5 ms until the returned function is called, which
// returns the highest.
func sampleHeapPeak() func() uint64 {
	stop, done := make(chan struct{}), make(chan uint64)
	go func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		var top uint64
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			top = max(top, s[0].Value.Uint64())
			select {
			case <-stop:
				done <- top
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(stop); return <-done }
}

func writeHeapProfile(path string) error {
	runtime.GC()
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create heap profile: %w", err)
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}
