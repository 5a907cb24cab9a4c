package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// Memory is the in-memory dataplane: the same Tables and the same decision
// function as the kernel (decide.go mirrors bpf/fedmesh.c), conntrack and
// fragments included. Packets are fed with Process.
type Memory struct {
	resolve func(iface string) (uint32, error)
	clock   func() uint64
	wall    func() time.Time

	mu        sync.Mutex
	rev       *Revision
	tables    *memTables
	flows     *flowState
	attached  map[string]uint32 // ID -> ifindex
	byIdx     map[uint32]string
	ifaces    map[string]uint32
	rules     map[policy.RuleID]Counter
	epCounter map[uint32]map[EndpointCounterKey]Counter
	events    chan Event
	closed    bool
	// learned are the names behind flows.fqdn, re-rendered at every
	// change of rules or attachments.
	learned learnedNames
}

var _ Dataplane = (*Memory)(nil)

// MemoryOption configures a Memory dataplane.
type MemoryOption func(*Memory)

// WithIfindexResolver makes Attach resolve interface names with f (the
// default hands out made-up indexes per name).
func WithIfindexResolver(f func(iface string) (uint32, error)) MemoryOption {
	return func(m *Memory) { m.resolve = f }
}

// WithClock sets the monotonic clock (ns) conntrack timeouts use.
func WithClock(now func() uint64) MemoryOption { return func(m *Memory) { m.clock = now } }

// WithWallClock sets the wall clock Learn converts LearnedAddr.Expires
// with (default time.Now): Expires - wall() is added to the monotonic
// clock.
func WithWallClock(now func() time.Time) MemoryOption { return func(m *Memory) { m.wall = now } }

// WithTimeouts sets the conntrack timeouts (default DefaultTimeouts).
func WithTimeouts(t Timeouts) MemoryOption {
	return func(m *Memory) { m.flows = newFlowState(t) }
}

// NewMemory returns an empty in-memory dataplane.
func NewMemory(opts ...MemoryOption) *Memory {
	m := &Memory{
		flows: newFlowState(DefaultTimeouts), clock: monotonicNow, wall: time.Now, learned: learnedNames{},
		attached: map[string]uint32{}, byIdx: map[uint32]string{}, ifaces: map[string]uint32{},
		rules: map[policy.RuleID]Counter{}, epCounter: map[uint32]map[EndpointCounterKey]Counter{},
		events: make(chan Event, 1024),
	}
	m.resolve = func(iface string) (uint32, error) {
		if i, ok := m.ifaces[iface]; ok {
			return i, nil
		}
		i := uint32(len(m.ifaces) + 100)
		m.ifaces[iface] = i
		return i, nil
	}
	for _, o := range opts {
		o(m)
	}
	return m
}

func (m *Memory) render() error {
	if m.rev == nil {
		return nil
	}
	var prev map[uint32][]nameSlot
	if m.tables != nil {
		prev = m.tables.t.NameSlots
	}
	t, err := render(m.rev, m.attached, prev)
	if err != nil {
		return err
	}
	m.tables = indexTables(t)
	m.rules = map[policy.RuleID]Counter{}
	m.renderLearned()
	return nil
}

// renderLearned rewrites fm_fqdn's twin from the learned names.
func (m *Memory) renderLearned() {
	m.learned.sweep(m.clock())
	var slots map[uint32][]nameSlot
	if m.tables != nil {
		slots = m.tables.t.NameSlots
	}
	m.flows.fqdn = m.learned.entries(m.attached, slots)
}

// Learn implements Dataplane.
func (m *Memory) Learn(ctx context.Context, addrs []LearnedAddr) error {
	if err := validateLearned(addrs); err != nil {
		return fmt.Errorf("learn addresses: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("learn addresses: %w", errLearnedClosed)
	}
	now, wall := m.clock(), m.wall()
	for _, a := range addrs {
		if !m.learned.learn(a, now, wall) || m.tables == nil {
			continue
		}
		// Only this endpoint and address's entry changes.
		idx, ok := m.attached[a.Endpoint]
		slots := m.tables.t.NameSlots[idx]
		if !ok || slots == nil {
			continue
		}
		addr := a.Addr.Unmap()
		if v, ok := entry(m.learned[a.Endpoint][addr], slots); ok {
			m.flows.fqdn[fqdnKey{Ifindex: idx, IP: mapped(addr)}] = v
		}
	}
	return nil
}

// Forget implements Dataplane.
func (m *Memory) Forget(ctx context.Context, endpoint string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.learned[endpoint]; ok {
		delete(m.learned, endpoint)
		m.renderLearned()
	}
	return nil
}

// Apply implements Dataplane.
func (m *Memory) Apply(ctx context.Context, rev *Revision) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.rev
	m.rev = rev
	if err := m.render(); err != nil {
		m.rev = old
		return fmt.Errorf("apply revision %d: %w", rev.Number, err)
	}
	return nil
}

// Attach implements Dataplane.
func (m *Memory) Attach(ctx context.Context, ep Endpoint) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	idx, err := m.resolve(ep.Interface)
	if err != nil {
		return fmt.Errorf("attach endpoint %s: find interface %s: %w", ep.ID, ep.Interface, err)
	}
	if old, ok := m.attached[ep.ID]; ok && old == idx {
		return nil
	}
	m.attached[ep.ID] = idx
	m.byIdx[idx] = ep.ID
	if err := m.render(); err != nil {
		delete(m.attached, ep.ID)
		delete(m.byIdx, idx)
		return fmt.Errorf("attach endpoint %s: %w", ep.ID, err)
	}
	return nil
}

// Detach implements Dataplane.
func (m *Memory) Detach(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	idx, ok := m.attached[id]
	if !ok {
		return nil
	}
	delete(m.attached, id)
	delete(m.byIdx, idx)
	delete(m.epCounter, idx)
	return m.render()
}

// Process judges one Ethernet frame seen on the host veth of endpoint id:
// dir Egress is a frame leaving the pod, Ingress one entering it.
func (m *Memory) Process(id string, dir policy.Direction, frame []byte) (Verdict, Reason, policy.RuleID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	idx, ok := m.attached[id]
	if !ok {
		return Deny, ReasonDenyNoEndpoint, 0, fmt.Errorf("process frame for %s: %w", id, ErrUnknownEndpoint)
	}
	d := m.decideLocked(idx, dir, frame)
	return d.reason.Verdict(), d.reason, policy.RuleID(d.rule), nil
}

func (m *Memory) decideLocked(idx uint32, dir policy.Direction, f []byte) decision {
	d := decide(frame(f), idx, uint8(dir), m.tables, m.flows, m.clock())
	if m.epCounter[idx] == nil {
		m.epCounter[idx] = map[EndpointCounterKey]Counter{}
	}
	k := EndpointCounterKey{Direction: dir, Reason: d.reason}
	c := m.epCounter[idx][k]
	c.Packets++
	c.Bytes += uint64(len(f))
	m.epCounter[idx][k] = c
	if d.rule != 0 {
		c := m.rules[policy.RuleID(d.rule)]
		c.Packets++
		c.Bytes += uint64(len(f))
		m.rules[policy.RuleID(d.rule)] = c
	}
	if d.eventWorthy && !m.closed {
		ev := Event{EndpointID: m.byIdx[idx], Direction: dir, Proto: d.p.t.proto,
			Src: netip.AddrFrom16(d.p.t.src).Unmap(), Dst: netip.AddrFrom16(d.p.t.dst).Unmap(),
			SrcPort: d.p.t.sport, DstPort: d.p.t.dport, Verdict: d.reason.Verdict(), Reason: d.reason,
			Rule: policy.RuleID(d.rule), MonotonicTimestamp: m.clock()}
		ev.SrcIdentity, ev.DstIdentity = d.epID, d.peerID
		if dir == policy.Ingress {
			ev.SrcIdentity, ev.DstIdentity = d.peerID, d.epID
		}
		select {
		case m.events <- ev:
		default:
		}
	}
	return d
}

// Counters implements Dataplane.
func (m *Memory) Counters(ctx context.Context) (Counters, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := Counters{Rules: map[policy.RuleID]Counter{}, Endpoints: map[string]map[EndpointCounterKey]Counter{}}
	if m.rev != nil {
		c.Revision = m.rev.Number
	}
	for r, v := range m.rules {
		c.Rules[r] = v
	}
	for idx, per := range m.epCounter {
		id, ok := m.byIdx[idx]
		if !ok {
			continue
		}
		c.Endpoints[id] = map[EndpointCounterKey]Counter{}
		for k, v := range per {
			c.Endpoints[id][k] = v
		}
	}
	return c, nil
}

// Events implements Dataplane. Unlike the kernel, Memory does not rate-limit.
func (m *Memory) Events() <-chan Event { return m.events }

// Close implements Dataplane.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	close(m.events)
	return nil
}
