package inproc

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// ErrPartitioned is what a Raft RPC across a cut or dropping link returns
// to the replica that sent it.
var ErrPartitioned = errors.New("raft message lost by the test network")

// Network sits between the replicas' Raft transports (the real TCP
// transports on loopback) and decides, per directed link, whether a
// message arrives, is lost or waits. A new Network is healthy.
//
// A message from A to B is a Raft RPC A sends to B or A's answer to an RPC
// of B's. Faults are decided when the sender hands a message over: messages
// already in flight when a fault is set still arrive.
//
// Leader forwarding and the client API run over gRPC and are not affected:
// a replica cut off from Raft still answers reads and refuses writes as it
// would in a real partition once it has lost its leader.
//
// Safe for concurrent use; every method may be called while the replicas
// run.
type Network struct {
	mu    sync.Mutex
	rng   *rand.Rand
	links map[link]linkFault
	lost  map[link]int
}

type link struct{ from, to string }

type linkFault struct {
	cut   bool
	drop  float64
	delay time.Duration
}

func (f linkFault) healthy() bool { return !f.cut && f.drop == 0 && f.delay == 0 }

// NewNetwork returns a healthy network. Its random message loss (Drop)
// draws from seed; which messages meet the draws still depends on timing,
// so a seed narrows a failure down rather than replaying it.
func NewNetwork(seed uint64) *Network {
	return &Network{rng: rand.New(rand.NewPCG(seed, 0x5eed)), links: map[link]linkFault{}, lost: map[link]int{}}
}

// Cut loses every message from one replica to another, one way: from's
// requests to to never arrive, and to's requests to from are handled by
// from but its answers never reach to. Cut both directions (or use
// Partition) for a symmetric split.
func (n *Network) Cut(from, to string) { n.update(from, to, func(f *linkFault) { f.cut = true }) }

// Drop loses each message from one replica to another with probability
// fraction (0 stops dropping).
func (n *Network) Drop(from, to string, fraction float64) {
	if fraction < 0 || fraction > 1 {
		panic(fmt.Sprintf("inproc: drop fraction %v outside [0, 1]", fraction))
	}
	n.update(from, to, func(f *linkFault) { f.drop = fraction })
}

// Delay holds every message from one replica to another for d before it
// is delivered (0 stops delaying).
func (n *Network) Delay(from, to string, d time.Duration) {
	n.update(from, to, func(f *linkFault) { f.delay = d })
}

// Partition splits the replicas into groups that cannot reach each other
// in either direction; links inside a group are left as they are.
func (n *Network) Partition(groups ...[]string) {
	for i, g := range groups {
		for _, h := range groups[i+1:] {
			for _, a := range g {
				for _, b := range h {
					n.Cut(a, b)
					n.Cut(b, a)
				}
			}
		}
	}
}

// Isolate cuts id off from every replica of peers, both ways.
func (n *Network) Isolate(id string, peers []string) {
	for _, p := range peers {
		if p != id {
			n.Cut(id, p)
			n.Cut(p, id)
		}
	}
}

// Heal restores every link: no cut, loss or delay.
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.links)
}

// Connected reports whether messages flow both ways between a and b
// (possibly delayed or sometimes lost, never cut).
func (n *Network) Connected(a, b string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return a == b || (!n.links[link{a, b}].cut && !n.links[link{b, a}].cut)
}

// Lost is how many messages from one replica to another the network lost.
func (n *Network) Lost(from, to string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lost[link{from, to}]
}

func (n *Network) update(from, to string, fn func(*linkFault)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := link{from, to}
	f := n.links[k]
	fn(&f)
	if f.healthy() {
		delete(n.links, k)
		return
	}
	n.links[k] = f
}

// pass decides one message: whether it arrives, and after how long.
func (n *Network) pass(from, to string) (time.Duration, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := link{from, to}
	f, ok := n.links[k]
	if !ok {
		return 0, true
	}
	if f.cut || (f.drop > 0 && n.rng.Float64() < f.drop) {
		n.lost[k]++
		return 0, false
	}
	return f.delay, true
}

// healthyBetween reports whether both directions are fault-free, the only
// case where the transport lets Raft pipeline (a pipeline's answers arrive
// asynchronously, where the network could not lose or hold them).
func (n *Network) healthyBetween(a, b string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ab := n.links[link{a, b}]
	_, ba := n.links[link{b, a}]
	return !ab && !ba
}

// transport wraps one replica's Raft transport. Every outgoing RPC passes
// the network twice: the request (self → target) and the answer (target →
// self). Incoming RPCs need no check: the sender's own wrapper decided.
type transport struct {
	raft.Transport
	self string
	net  *Network
}

var (
	_ raft.Transport   = (*transport)(nil)
	_ raft.WithClose   = (*transport)(nil)
	_ raft.WithPreVote = (*transport)(nil)
)

// Wrap returns a function for server.Config.WrapRaftTransport that puts
// replica self's transport behind the network.
func (n *Network) Wrap(self string) func(raft.Transport) raft.Transport {
	return func(inner raft.Transport) raft.Transport {
		return &transport{Transport: inner, self: self, net: n}
	}
}

// roundTrip sends one RPC to target through the network.
func (t *transport) roundTrip(target raft.ServerID, send func() error) error {
	to := string(target)
	d, ok := t.net.pass(t.self, to)
	if !ok {
		return fmt.Errorf("%s -> %s: %w", t.self, to, ErrPartitioned)
	}
	time.Sleep(d)
	if err := send(); err != nil {
		return err
	}
	d, ok = t.net.pass(to, t.self)
	if !ok {
		return fmt.Errorf("answer %s -> %s: %w", to, t.self, ErrPartitioned)
	}
	time.Sleep(d)
	return nil
}

func (t *transport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	return t.roundTrip(id, func() error { return t.Transport.AppendEntries(id, target, args, resp) })
}

func (t *transport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return t.roundTrip(id, func() error { return t.Transport.RequestVote(id, target, args, resp) })
}

func (t *transport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	pv, ok := t.Transport.(raft.WithPreVote)
	if !ok {
		return errors.New("wrapped raft transport does not support pre-vote")
	}
	return t.roundTrip(id, func() error { return pv.RequestPreVote(id, target, args, resp) })
}

func (t *transport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	return t.roundTrip(id, func() error { return t.Transport.InstallSnapshot(id, target, args, resp, data) })
}

func (t *transport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return t.roundTrip(id, func() error { return t.Transport.TimeoutNow(id, target, args, resp) })
}

// AppendEntriesPipeline pipelines only over a fault-free link; otherwise
// Raft replicates with AppendEntries, which the network controls fully.
// A pipeline checks the link on every send, so a fault set later stops it
// and Raft falls back the same way.
func (t *transport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	if !t.net.healthyBetween(t.self, string(id)) {
		return nil, raft.ErrPipelineReplicationNotSupported
	}
	p, err := t.Transport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	return &pipeline{AppendPipeline: p, t: t, to: string(id)}, nil
}

func (t *transport) Close() error {
	if c, ok := t.Transport.(raft.WithClose); ok {
		return c.Close()
	}
	return nil
}

type pipeline struct {
	raft.AppendPipeline
	t  *transport
	to string
}

func (p *pipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	if !p.t.net.healthyBetween(p.t.self, p.to) {
		return nil, fmt.Errorf("%s -> %s: link faulted, leaving pipeline mode: %w", p.t.self, p.to, ErrPartitioned)
	}
	return p.AppendPipeline.AppendEntries(args, resp)
}
