package agent

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/nodeagent/dns"
	"github.com/fedmesh/fedmesh/nodeagent/flows"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// DNS visibility: every query the node's resolver answered leaves the node
// as a fedmesh.v1.DNSRecord on the flow shipper's streams (so over the
// node's mTLS identity, to every replica, bounded and counted like flows),
// and every address a local pod received in an answer names that pod's
// later connections to it in their flow records (NameCache). The resolver's
// own metrics (queries, refusals, latency) are nodeagent/dns's; this file
// counts only what it adds: the cache's bounds.

// DNSSink receives encoded fedmesh.v1.DNSRecords; OfferDNS must not block
// (FlowShipper queues or drops and counts).
type DNSSink interface {
	OfferDNS(rec []byte)
}

// DNSLog is the agent's dns.Recorder.
//
// Contract: Record is called by the resolver's handling goroutines, many
// at once; it never blocks (the cache takes a short lock, the sink drops
// when full).
type DNSLog struct {
	Cluster, Node string
	// Sink ships the records; nil keeps them on the node (names only).
	Sink DNSSink
	// Names learns the answers of local pods; nil learns nothing.
	Names *NameCache
}

// Record implements dns.Recorder.
func (l *DNSLog) Record(rec dns.Record) {
	if l.Names != nil && rec.Pod != "" && rec.Rcode == mdns.RcodeSuccess {
		name := strings.TrimSuffix(rec.Name, ".")
		for _, a := range chainAnswers(rec.Name, rec.Answers) {
			l.Names.Learn(rec.Pod, a.Addr, name, time.Duration(a.TTL)*time.Second)
		}
	}
	if l.Sink == nil {
		return
	}
	b, err := proto.Marshal(DNSRecordProto(rec))
	if err != nil {
		return // a message of plain strings and numbers always encodes
	}
	l.Sink.OfferDNS(b)
}

// maxChain bounds the CNAME hops chainAnswers follows.
const maxChain = 16

// chainAnswers are the A and AAAA answers that give qname an address: its
// own, or those at the end of its CNAME chain, as policy by name counts
// them; each with the smallest TTL on its way. Records for other names in
// the section name nothing.
func chainAnswers(qname string, answers []dns.Answer) []dns.Answer {
	var out []dns.Answer
	cur, ttl := strings.ToLower(qname), uint32(1<<32-1)
	for hop := 0; hop <= maxChain; hop++ {
		next := ""
		for _, a := range answers {
			if !strings.EqualFold(a.Name, cur) {
				continue
			}
			switch {
			case a.Addr.IsValid() && (a.Type == mdns.TypeA || a.Type == mdns.TypeAAAA):
				a.TTL = min(a.TTL, ttl)
				out = append(out, a)
			case a.Type == mdns.TypeCNAME && next == "":
				next, ttl = strings.ToLower(a.Target), min(ttl, a.TTL)
			}
		}
		if len(out) > 0 || next == "" {
			return out
		}
		cur = next
	}
	return out
}

// DNSVerdict maps the resolver's policy verdict (dns.Record.Verdict, one
// of dns.Verdict*) to the API's; anything else, an empty word included, is
// UNSPECIFIED.
func DNSVerdict(word string) fedmeshv1.DNSPolicyVerdict {
	switch word {
	case dns.VerdictAllowed:
		return fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ALLOWED
	case dns.VerdictRefused:
		return fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_REFUSED
	case dns.VerdictDenied:
		return fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_DENIED
	case dns.VerdictUnpoliced:
		return fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_UNPOLICED
	case dns.VerdictError:
		return fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ERROR
	}
	return fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_UNSPECIFIED
}

// DNSRecordProto is rec as the control plane stores it (cluster and node
// are the shipping batch's).
func DNSRecordProto(rec dns.Record) *fedmeshv1.DNSRecord {
	out := &fedmeshv1.DNSRecord{
		Time: timestamppb.New(rec.Time), Name: rec.Name, Type: typeName(rec.Type), Rcode: rcodeName(rec.Rcode),
		Ttl: rec.TTL, Latency: durationpb.New(rec.Latency), Source: rec.Source.String(), Upstream: rec.Upstream,
		Transport: rec.Transport.String(), Truncated: rec.Truncated,
		Verdict: DNSVerdict(rec.Verdict), Learned: uint32(max(rec.Learned, 0)),
	}
	if rec.Client.IsValid() {
		out.ClientIp, out.ClientPort = rec.Client.Addr().Unmap().String(), uint32(rec.Client.Port())
	}
	out.Namespace, out.Pod = splitPod(rec.Pod)
	if rec.Err != nil {
		out.Error = rec.Err.Error()
	}
	for _, a := range rec.Answers {
		pa := &fedmeshv1.DNSAnswer{Name: a.Name, Type: typeName(a.Type), Ttl: a.TTL, Target: a.Target}
		if a.Addr.IsValid() {
			pa.Addr = a.Addr.Unmap().String()
		}
		out.Answers = append(out.Answers, pa)
	}
	return out
}

// splitPod reads an endpoint ID, "cluster/namespace/name", into its
// namespace and name (the cluster is the node's).
func splitPod(id string) (namespace, name string) {
	if id == "" {
		return "", ""
	}
	parts := strings.Split(id, "/")
	if len(parts) < 2 {
		return "", id
	}
	return parts[len(parts)-2], parts[len(parts)-1]
}

func typeName(t uint16) string {
	if s, ok := mdns.TypeToString[t]; ok {
		return s
	}
	return "TYPE" + strconv.Itoa(int(t))
}

func rcodeName(rc int) string {
	if s, ok := mdns.RcodeToString[rc]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(rc)
}

// appendShippedDNS appends one encoded DNSRecord as an element of
// ShipFlowsRequest.dns (field 5).
func appendShippedDNS(b, rec []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(b, 5, protowire.BytesType), rec)
}

// NameCacheConfig bounds a NameCache; zero fields take the defaults.
type NameCacheConfig struct {
	// PerPod is the most addresses remembered for one pod (1024); beyond
	// it the entry expiring first makes room.
	PerPod int
	// Total is the most addresses remembered on the node (65536); beyond
	// it the pod holding the most gives one up.
	Total int
	// MinTTL is how long an answer names connections at least (10s), so
	// an answer with TTL 0 still names the connection the pod opens
	// right after it; MaxTTL is the most (1h).
	MinTTL, MaxTTL time.Duration
	// Now is the clock (time.Now).
	Now func() time.Time
}

// NameCache remembers, per local pod, which name each address it received
// in a DNS answer was resolved from, until the answer's TTL (clamped to
// [MinTTL, MaxTTL]) ends. It names flows only: policy by name is decided by
// the dataplane's own learned state, never by this cache.
//
// Contract: Learn is called by the resolver's goroutines, Name by the flow
// reader's, Sweep by Run's; all take one short lock and never block
// otherwise.
type NameCache struct {
	cfg NameCacheConfig

	mu    sync.RWMutex
	pods  map[string]map[netip.Addr]nameEntry
	total int

	mEvicted *prometheus.CounterVec
}

type nameEntry struct {
	name    string
	expires time.Time
}

// NewNameCache returns an empty cache; its counter
// fedmesh_agent_dns_names_evicted_total{reason} goes on reg when set.
func NewNameCache(cfg NameCacheConfig, reg prometheus.Registerer) *NameCache {
	if cfg.PerPod <= 0 {
		cfg.PerPod = 1024
	}
	if cfg.Total <= 0 {
		cfg.Total = 65536
	}
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = 10 * time.Second
	}
	if cfg.MaxTTL < cfg.MinTTL {
		cfg.MaxTTL = max(cfg.MinTTL, time.Hour)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &NameCache{cfg: cfg, pods: map[string]map[netip.Addr]nameEntry{},
		mEvicted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_agent_dns_names_evicted_total",
			Help: "Address->name entries of the flow naming cache given up before their TTL ended, by reason (pod: the pod's bound; node: the node's)."}, []string{"reason"})}
	if reg != nil {
		reg.MustRegister(c.mEvicted)
	}
	return c
}

// Learn remembers that pod received addr in an answer for name with ttl.
// A later answer replaces an earlier one for the same address.
func (c *NameCache) Learn(pod string, addr netip.Addr, name string, ttl time.Duration) {
	now := c.cfg.Now()
	e := nameEntry{name: name, expires: now.Add(min(max(ttl, c.cfg.MinTTL), c.cfg.MaxTTL))}
	addr = addr.Unmap()
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.pods[pod]
	if m == nil {
		m = map[netip.Addr]nameEntry{}
		c.pods[pod] = m
	}
	if _, ok := m[addr]; ok {
		m[addr] = e
		return
	}
	if len(m) >= c.cfg.PerPod {
		c.evictOne(m, now, "pod")
	}
	if c.total >= c.cfg.Total {
		big := m
		for _, pm := range c.pods {
			if len(pm) > len(big) {
				big = pm
			}
		}
		c.evictOne(big, now, "node")
	}
	m[addr] = e
	c.total++
}

// evictOne removes m's expired entries, or else the one expiring first.
func (c *NameCache) evictOne(m map[netip.Addr]nameEntry, now time.Time, reason string) {
	var first netip.Addr
	var firstExp time.Time
	expired := 0
	for a, e := range m {
		if !e.expires.After(now) {
			delete(m, a)
			expired++
			continue
		}
		if !first.IsValid() || e.expires.Before(firstExp) {
			first, firstExp = a, e.expires
		}
	}
	c.total -= expired
	if expired == 0 && first.IsValid() {
		delete(m, first)
		c.total--
		c.mEvicted.WithLabelValues(reason).Inc()
	}
}

// Name implements flows.Names: the name pod resolved addr from, "" when
// none is known or its TTL had ended at the given time.
func (c *NameCache) Name(pod string, addr netip.Addr, at time.Time) string {
	c.mu.RLock()
	e, ok := c.pods[pod][addr]
	c.mu.RUnlock()
	if !ok || !e.expires.After(at) {
		return ""
	}
	return e.name
}

// Len is how many addresses the cache holds.
func (c *NameCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.total
}

// Forget drops what pod learned (the pod is gone).
func (c *NameCache) Forget(pod string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total -= len(c.pods[pod])
	delete(c.pods, pod)
}

// Retain drops what every pod outside local resolved: a deleted pod's
// names must not name the flows of the next pod given its address.
func (c *NameCache) Retain(local func(pod string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for pod, m := range c.pods {
		if !local(pod) {
			c.total -= len(m)
			delete(c.pods, pod)
		}
	}
}

// Sweep drops every expired entry and the pods left with none.
func (c *NameCache) Sweep() {
	now := c.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for pod, m := range c.pods {
		for a, e := range m {
			if !e.expires.After(now) {
				delete(m, a)
				c.total--
			}
		}
		if len(m) == 0 {
			delete(c.pods, pod)
		}
	}
}

// Run sweeps every interval until ctx ends.
func (c *NameCache) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.Sweep()
		}
	}
}

var (
	_ dns.Recorder = (*DNSLog)(nil)
	_ flows.Names  = (*NameCache)(nil)
	_ DNSSink      = (*FlowShipper)(nil)
)
