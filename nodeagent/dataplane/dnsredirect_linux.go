package dataplane

import (
	"context"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// dnsValC is struct dns_val (bpf/sock_lb.c).
type dnsValC struct {
	Addr     [16]byte
	Port     [2]byte // network order
	Pad      uint16
	SkipMark uint32
	Pad2     uint32
}

// SetDNSRedirect implements DNSRedirector: fm_dns_redir is made to hold
// exactly r's entries (new and changed ones written, stale ones deleted;
// each entry switches in one map update). The map is pinned with the
// service maps, so the redirect outlives the agent: a restarted agent sets
// it again (idempotent), and an agent started without a redirect clears it.
func (s *SockLB) SetDNSRedirect(ctx context.Context, r DNSRedirect) error {
	want, err := r.entries()
	if err != nil {
		return fmt.Errorf("set DNS redirect: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("set DNS redirect: translation closed")
	}
	m := s.coll.Maps["fm_dns_redir"]
	var stale []svcKeyC
	var k svcKeyC
	var v dnsValC
	it := m.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[fromSvcKey(k)]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pinned DNS redirect: %w", err)
	}
	for _, key := range sortedDNSKeys(want) {
		t := want[key]
		val := dnsValC{Addr: addrBytes(t.To.Addr()), Port: [2]byte{byte(t.To.Port() >> 8), byte(t.To.Port())}, SkipMark: t.SkipMark}
		if err := m.Put(toSvcKey(key), val); err != nil {
			return fmt.Errorf("set DNS redirect of %s:%d/%d to %s: %w", key.VIP, key.Port, key.Protocol, t.To, err)
		}
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			key := fromSvcKey(k)
			return fmt.Errorf("remove DNS redirect of %s:%d/%d: %w", key.VIP, key.Port, key.Protocol, err)
		}
	}
	if len(want) > 0 || len(stale) > 0 {
		s.log.Info("DNS redirect set", "cluster_dns", r.ClusterDNS, "resolvers", r.Resolvers, "skip_mark", r.SkipMark,
			"entries", len(want), "removed", len(stale))
	}
	return nil
}

// dnsRedirectEntries reads back what fm_dns_redir holds (tests, status).
func (s *SockLB) dnsRedirectEntries() (map[ServiceKey]dnsTarget, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[ServiceKey]dnsTarget{}
	var k svcKeyC
	var v dnsValC
	it := s.coll.Maps["fm_dns_redir"].Iterate()
	for it.Next(&k, &v) {
		be := fromBeVal(beValC{Addr: v.Addr, Port: v.Port}, k.Family == familyV4)
		out[fromSvcKey(k)] = dnsTarget{To: netipAddrPort(be), SkipMark: v.SkipMark}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read DNS redirect: %w", err)
	}
	return out, nil
}
