package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// simAgent is one simulated node: the agent's real sync loop (watch, view,
// policy compiler, ipcache, enforced-revision reports) over the in-memory
// dataplane, with its own node principal. The probe around its
// control-plane port records what it receives and reports.
type simAgent struct {
	slow    time.Duration // taken over every watch message
	cluster int
	node    string
	client  *agent.Client
	agent   *agent.Agent
	replica string // the replica its watch went to last

	// Counted by the watch goroutine.
	events, endpointEvents, nodeEvents, snapshotEvents, messages atomic.Int64

	mu      sync.Mutex
	reports []report // successful status reports, in order
}

type report struct {
	rev uint64
	at  time.Time
}

func newSimAgent(f *federation, p Profile, lay layout, cluster, idx, order int) (*simAgent, error) {
	name := clusterName(cluster)
	node := fmt.Sprintf("agent-%d", idx)
	creds, err := f.clientCreds(auth.Node(name, node))
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{creds}
	if p.AgentRecvWindow > 0 {
		opts = append(opts, grpc.WithInitialWindowSize(p.AgentRecvWindow), grpc.WithInitialConnWindowSize(p.AgentRecvWindow))
	}
	cl, err := agent.NewClient(f.agentAddrs(order), opts...)
	if err != nil {
		return nil, err
	}
	s := &simAgent{cluster: cluster, node: node, client: cl}
	a, err := agent.New(agent.Config{
		Cluster: name, Node: node, DataplaneName: "memory",
		UnderlayIP:        netip.AddrFrom4([4]byte{198, 18, byte(cluster), byte(idx)}),
		PodCIDRs:          []string{lay.nodeCIDR(cluster, idx)},
		MinReportInterval: p.MinReportInterval,
	}, agent.Deps{
		ControlPlane: &probe{inner: cl, a: s},
		Dataplane:    dataplane.NewMemory(),
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry:     prometheus.NewRegistry(),
		Seed:         uint64(cluster)<<16 | uint64(idx) + 1,
	})
	if err != nil {
		cl.Close()
		return nil, err
	}
	s.agent = a
	return s, nil
}

// firstReportAtLeast returns when the agent first reported a revision of
// at least rev.
func (s *simAgent) firstReportAtLeast(rev uint64) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, _ := slices.BinarySearchFunc(s.reports, rev, func(r report, rev uint64) int {
		switch {
		case r.rev < rev:
			return -1
		case r.rev > rev:
			return 1
		}
		return 0
	})
	if i == len(s.reports) {
		return time.Time{}, false
	}
	return s.reports[i].at, true
}

func (s *simAgent) reported() (uint64, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reports) == 0 {
		return 0, 0
	}
	return s.reports[len(s.reports)-1].rev, len(s.reports)
}

// probe is the agent's ControlPlane port as the real client, recording
// what passes.
type probe struct {
	inner *agent.Client
	a     *simAgent
}

func (p *probe) Watch(ctx context.Context, req *fedmeshv1.WatchRequest) (agent.WatchStream, error) {
	st, err := p.inner.Watch(ctx, req)
	if err != nil {
		return nil, err
	}
	p.a.mu.Lock()
	p.a.replica = p.inner.Current()
	p.a.mu.Unlock()
	return &probeStream{s: st, a: p.a}, nil
}

func (p *probe) RegisterNode(ctx context.Context, n *fedmeshv1.Node) error {
	return p.inner.RegisterNode(ctx, n)
}

func (p *probe) ReportNodeStatus(ctx context.Context, cluster, node string, st *fedmeshv1.NodeStatus) error {
	if err := p.inner.ReportNodeStatus(ctx, cluster, node, st); err != nil {
		return err
	}
	now := time.Now()
	p.a.mu.Lock()
	// Reports are monotone in revision; keep them sorted for the search.
	if n := len(p.a.reports); n == 0 || p.a.reports[n-1].rev <= st.GetEnforcedRevision() {
		p.a.reports = append(p.a.reports, report{rev: st.GetEnforcedRevision(), at: now})
	}
	p.a.mu.Unlock()
	return nil
}

type probeStream struct {
	s agent.WatchStream
	a *simAgent
}

func (p *probeStream) Recv() (*fedmeshv1.WatchResponse, error) {
	m, err := p.s.Recv()
	if err != nil {
		return nil, err
	}
	if p.a.slow > 0 {
		time.Sleep(p.a.slow)
	}
	p.a.messages.Add(1)
	if m.GetType() == fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT {
		p.a.snapshotEvents.Add(int64(len(m.GetEvents())))
		return m, nil
	}
	p.a.events.Add(int64(len(m.GetEvents())))
	for _, e := range m.GetEvents() {
		switch e.GetObject().(type) {
		case *fedmeshv1.Event_Endpoint:
			p.a.endpointEvents.Add(1)
		case *fedmeshv1.Event_Node:
			p.a.nodeEvents.Add(1)
		}
	}
	return m, nil
}
