package agent_test

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	"github.com/fedmesh/fedmesh/controlplane/inproc"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The agent's scenarios run against the real control plane: three
// replicas inside the test process (controlplane/inproc), or, for the
// scenarios about a replica process dying, three fedmesh-controlplane
// processes on loopback (controlplane/cptest, whose binary Main removes).
func TestMain(m *testing.M) { os.Exit(cptest.Main(m)) }

// fed is a real control plane the test writes the federation into, the way
// fedctl and the syncers do.
type fed struct {
	t *testing.T
	// cp is the in-process control plane (nil when procs runs instead).
	cp *inproc.Cluster
	// procs are replica processes, for the tests of process death.
	procs *cptest.Cluster
	// any returns a connection to the agreed leader, or to any live replica
	// while there is none.
	any func() (*grpc.ClientConn, error)
}

func startFed(t *testing.T, opts inproc.Options) *fed {
	t.Helper()
	cp := inproc.Start(t, opts)
	return &fed{t: t, cp: cp, any: func() (*grpc.ClientConn, error) {
		r, err := cp.Any()
		if err != nil {
			return nil, err
		}
		return r.Conn(), nil
	}}
}

// startFedProcesses runs the replicas as processes, which a test can
// SIGKILL.
func startFedProcesses(t *testing.T, opts cptest.Options) *fed {
	t.Helper()
	procs := cptest.Start(t, opts)
	return &fed{t: t, procs: procs, any: func() (*grpc.ClientConn, error) {
		r, err := procs.Any()
		if err != nil {
			return nil, err
		}
		return r.Conn(), nil
	}}
}

// call runs one request against the agreed leader (any live replica while
// there is none), retrying what a leader change or a restart makes fail:
// every write here is an idempotent upsert or delete. A request the
// control plane rejects is returned.
func (f *fed) call(what string, fn func(ctx context.Context, cc *grpc.ClientConn) error) error {
	f.t.Helper()
	return f.callTimeout(what, 5*time.Second, fn)
}

// callTimeout is call with attempts bounded by timeout.
func (f *fed) callTimeout(what string, timeout time.Duration, fn func(ctx context.Context, cc *grpc.ClientConn) error) error {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		cc, aerr := f.any()
		if aerr != nil {
			err = aerr
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			err = fn(ctx, cc)
			cancel()
			switch status.Code(err) {
			case codes.OK:
				return nil
			case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.Unknown:
			default:
				return err
			}
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("%s: control plane did not answer: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// write is call for a write that must succeed; it returns its revision.
func (f *fed) write(what string, fn func(ctx context.Context, cc *grpc.ClientConn) (uint64, error)) uint64 {
	f.t.Helper()
	var rev uint64
	err := f.call(what, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		rev, err = fn(ctx, cc)
		return err
	})
	if err != nil {
		f.t.Fatalf("%s: %v", what, err)
	}
	return rev
}

func (f *fed) registerCluster(c *fedmeshv1.Cluster) uint64 {
	f.t.Helper()
	return f.write("register cluster "+c.GetName(), func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewClusterServiceClient(cc).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: c})
		return r.GetRevision(), err
	})
}

func (f *fed) upsertErr(cluster string, eps ...*fedmeshv1.Endpoint) (uint64, error) {
	f.t.Helper()
	var rev uint64
	err := f.call("upsert endpoints", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := fedmeshv1.NewEndpointServiceClient(cc).UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: cluster, Endpoints: eps})
		rev = r.GetRevision()
		return err
	})
	return rev, err
}

func (f *fed) upsert(cluster string, eps ...*fedmeshv1.Endpoint) uint64 {
	f.t.Helper()
	rev, err := f.upsertErr(cluster, eps...)
	if err != nil {
		f.t.Fatalf("upsert endpoints of %s: %v", cluster, err)
	}
	return rev
}

func (f *fed) deleteEndpoint(ep *fedmeshv1.Endpoint) uint64 {
	f.t.Helper()
	return f.write("delete endpoint "+ep.GetName(), func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewEndpointServiceClient(cc).DeleteEndpoints(ctx, &fedmeshv1.DeleteEndpointsRequest{
			Cluster: ep.GetCluster(), Keys: []*fedmeshv1.EndpointKey{{Namespace: ep.GetNamespace(), Name: ep.GetName()}}})
		return r.GetRevision(), err
	})
}

func (f *fed) applyPolicy(p *fedmeshv1.Policy) uint64 {
	f.t.Helper()
	return f.write("apply policy "+p.GetName(), func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewPolicyServiceClient(cc).ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Cluster: p.GetCluster(), Policies: []*fedmeshv1.Policy{p}})
		return r.GetRevision(), err
	})
}

func (f *fed) deletePolicy(p *fedmeshv1.Policy) uint64 {
	f.t.Helper()
	return f.write("delete policy "+p.GetName(), func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewPolicyServiceClient(cc).DeletePolicy(ctx, &fedmeshv1.DeletePolicyRequest{
			Key: &fedmeshv1.PolicyKey{Cluster: p.GetCluster(), Namespace: p.GetNamespace(), Name: p.GetName()}})
		return r.GetRevision(), err
	})
}

// identities maps endpoint names of cluster to the identities the control
// plane allocated.
func (f *fed) identities(cluster string) map[string]uint32 {
	f.t.Helper()
	out := map[string]uint32{}
	err := f.call("list endpoints", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := fedmeshv1.NewEndpointServiceClient(cc).ListEndpoints(ctx, &fedmeshv1.ListEndpointsRequest{Cluster: cluster})
		for _, e := range r.GetEndpoints() {
			out[e.GetName()] = e.GetIdentity()
		}
		return err
	})
	if err != nil {
		f.t.Fatalf("list endpoints of %s: %v", cluster, err)
	}
	return out
}

// node reads this node as the control plane holds it (status included).
func (f *fed) node() (*fedmeshv1.Node, error) {
	var n *fedmeshv1.Node
	err := f.call("get node", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := fedmeshv1.NewNodeServiceClient(cc).GetNode(ctx, &fedmeshv1.GetNodeRequest{Cluster: myClust, Name: self})
		n = r.GetNode()
		return err
	})
	return n, err
}

// waitEnforced asks the control plane whether every node of cluster a
// enforces rev (NodeService.WaitEnforced, what `fedctl --wait` uses).
func (f *fed) waitEnforced(rev uint64, timeout time.Duration) *fedmeshv1.WaitEnforcedResponse {
	f.t.Helper()
	var resp *fedmeshv1.WaitEnforcedResponse
	err := f.callTimeout("wait enforced", timeout+5*time.Second, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = fedmeshv1.NewNodeServiceClient(cc).WaitEnforced(ctx, &fedmeshv1.WaitEnforcedRequest{
			Revision: rev, Clusters: []string{myClust}, Timeout: durationpb.New(timeout)})
		return err
	})
	if err != nil {
		f.t.Fatalf("wait enforced %d: %v", rev, err)
	}
	return resp
}

// seed registers clusters a and b and the endpoints: the server on this
// node, two pods of a on another node, one pod of b. It returns the
// identities the control plane gave them, by endpoint name.
func (f *fed) seed() map[string]uint32 {
	f.t.Helper()
	f.registerCluster(clusterObj("a", "10.0.0.0/16"))
	f.registerCluster(clusterObj("b", "10.1.0.0/16"))
	f.upsert("a", server, client, other)
	f.upsert("b", remote)
	ids := f.identities("a")
	for k, v := range f.identities("b") {
		ids[k] = v
	}
	for _, n := range []string{"server", "client", "other", "remote"} {
		if ids[n] == 0 {
			f.t.Fatalf("endpoint %s has no identity: %v", n, ids)
		}
	}
	return ids
}

// waitRegistered waits until the agent registered its node: WaitEnforced
// over no node at all would answer yes at once.
func (f *fed) waitRegistered() {
	f.t.Helper()
	eventually(f.t, "the node registered", func() bool {
		n, err := f.node()
		return err == nil && n != nil
	})
}

// logRecorder is an slog handler that keeps the agent's log records, so
// tests can see what the agent did (which revision it resumed from).
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

// count is how many records carry msg.
func (l *logRecorder) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(slices.DeleteFunc(slices.Clone(l.recs), func(r slog.Record) bool { return r.Message != msg }))
}

// uints returns attribute key of every record with msg, in order.
func (l *logRecorder) uints(msg, key string) []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []uint64
	for _, r := range l.recs {
		if r.Message != msg {
			continue
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == key {
				out = append(out, a.Value.Uint64())
			}
			return true
		})
	}
	return out
}

func (f *fed) exportService(cluster, ns, name string) uint64 {
	f.t.Helper()
	return f.write("export service "+name, func(ctx context.Context, cc *grpc.ClientConn) (uint64, error) {
		r, err := fedmeshv1.NewMultiClusterServiceClient(cc).ExportServices(ctx, &fedmeshv1.ExportServicesRequest{Cluster: cluster,
			Exports: []*fedmeshv1.ServiceExport{{Cluster: cluster, Namespace: ns, Name: name, Type: fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP,
				Ports: []*fedmeshv1.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, Protocol: fedmeshv1.Protocol_PROTOCOL_TCP}}}}})
		return r.GetRevision(), err
	})
}
