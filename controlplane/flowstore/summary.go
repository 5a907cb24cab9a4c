package flowstore

import (
	"cmp"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// edgeKey is one summary edge between workload bases: a pod whatever its
// address family, an address outside the federation by itself, unless
// the flow to it carries the name it was resolved from: then the name
// (dst 0), whatever its addresses.
type edgeKey struct {
	src, dst uint32
	name     uint32 // string table; 0: not a named destination
	port     uint16
	proto    uint8
}

type edge struct {
	key             edgeKey
	src, dst        uint32 // a workload entry of each base, to name it
	allowed, denied uint64
	windows         map[int64]*fedmeshv1.FlowWindowCount
	deniedBy        map[uint32]struct{} // decisions
	// A named edge's destination is the address of its newest flow
	// (dstT); addrs are the workload entries of all its addresses.
	dstT  int64
	addrs map[uint32]struct{}
}

// Summarize aggregates the flows matching q within scope per source
// workload -> destination workload:port, counting allowed and denied flows
// per window. A destination outside the federation that its flows name
// (Flow.dns_name) is one destination per name, whatever addresses the
// name resolved to; a workload destination never takes a name.
func (s *Store) Summarize(q Summary, sc Scope) []*fedmeshv1.FlowEdge {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := s.compile(q.Filter, q.Since, q.Until, sc)
	edges := map[edgeKey]*edge{}
	// outside[id]: the workload entry is an address outside the
	// federation, which its flows may name (a bool per entry, not a
	// pointer chase per record), built at the first named flow.
	var outside []bool
	since := q.Since.UnixNano()
	width := int64(q.Window)
	for _, qu := range s.queues {
		qu.backward(func(r *record) bool {
			if r.t < m.since {
				return false
			}
			if !m.match(r) {
				return true
			}
			k := edgeKey{src: s.bases[r.src], dst: s.bases[r.dst], port: r.dstPort, proto: r.proto}
			if r.dns != 0 {
				if outside == nil {
					outside = make([]bool, len(s.workloads.vals))
					for i, w := range s.workloads.vals {
						outside[i] = i != 0 && w.GetCluster() == ""
					}
				}
				if outside[r.dst] {
					k.dst, k.name = 0, r.dns
				}
			}
			e := edges[k]
			if e == nil {
				e = &edge{key: k, src: r.src, dst: r.dst, dstT: r.t,
					windows: map[int64]*fedmeshv1.FlowWindowCount{}, deniedBy: map[uint32]struct{}{}}
				edges[k] = e
			}
			if k.name != 0 {
				if e.addrs == nil {
					e.addrs = map[uint32]struct{}{}
				}
				e.addrs[r.dst] = struct{}{}
				// Newest first per node queue, nodes in map order: the
				// newest flow wins, the lower address on a tie.
				if r.t > e.dstT || r.t == e.dstT && s.workloads.vals[r.dst].GetIp() < s.workloads.vals[e.dst].GetIp() {
					e.dst, e.dstT = r.dst, r.t
				}
			}
			w := (r.t - since) / width
			wc := e.windows[w]
			if wc == nil {
				wc = &fedmeshv1.FlowWindowCount{Start: timestamppb.New(time.Unix(0, since+w*width))}
				e.windows[w] = wc
			}
			if fedmeshv1.Verdict(r.verdict) == fedmeshv1.Verdict_VERDICT_DENY {
				e.denied++
				wc.Denied++
				e.deniedBy[r.decision] = struct{}{}
			} else {
				e.allowed++
				wc.Allowed++
			}
			return true
		})
	}
	out := make([]*fedmeshv1.FlowEdge, 0, len(edges))
	for _, e := range edges {
		side := func(id uint32, port uint16) *fedmeshv1.Workload {
			w := s.workloads.vals[id]
			out := &fedmeshv1.Workload{Cluster: w.GetCluster(), Namespace: w.GetNamespace(), Pod: w.GetPod(), Labels: w.GetLabels(), Identity: w.GetIdentity(), Port: uint32(port)}
			if w.GetCluster() == "" {
				out.Ip = w.GetIp()
			}
			return out
		}
		fe := &fedmeshv1.FlowEdge{
			Source:      side(e.src, 0),
			Destination: side(e.dst, e.key.port),
			Protocol:    uint32(e.key.proto), Allowed: e.allowed, Denied: e.denied,
		}
		if e.key.name != 0 {
			fe.DnsName = s.strs.vals[e.key.name]
			fe.DnsAddresses = make([]string, 0, len(e.addrs))
			for id := range e.addrs {
				fe.DnsAddresses = append(fe.DnsAddresses, s.workloads.vals[id].GetIp())
			}
			slices.Sort(fe.DnsAddresses)
			// Entries of one address may differ (identity): list it once.
			fe.DnsAddresses = slices.Compact(fe.DnsAddresses)
		}
		ws := make([]int64, 0, len(e.windows))
		for w := range e.windows {
			ws = append(ws, w)
		}
		slices.Sort(ws)
		for _, w := range ws {
			fe.Windows = append(fe.Windows, e.windows[w])
		}
		seen := map[string]bool{}
		for d := range e.deniedBy {
			for _, k := range s.decisions.vals[d].GetSelectedBy() {
				if ks := k.GetCluster() + "/" + k.GetNamespace() + "/" + k.GetName(); !seen[ks] {
					seen[ks] = true
					fe.DeniedBy = append(fe.DeniedBy, k)
				}
			}
		}
		slices.SortFunc(fe.DeniedBy, func(a, b *fedmeshv1.PolicyKey) int {
			return cmp.Or(cmp.Compare(a.GetCluster(), b.GetCluster()), cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
		})
		out = append(out, fe)
	}
	slices.SortFunc(out, func(a, b *fedmeshv1.FlowEdge) int {
		return cmp.Or(compareWorkload(a.GetSource(), b.GetSource()), cmp.Compare(a.GetDnsName(), b.GetDnsName()), compareWorkload(a.GetDestination(), b.GetDestination()),
			cmp.Compare(a.GetDestination().GetPort(), b.GetDestination().GetPort()), cmp.Compare(a.GetProtocol(), b.GetProtocol()))
	})
	return out
}

func compareWorkload(a, b *fedmeshv1.Workload) int {
	return cmp.Or(cmp.Compare(a.GetCluster(), b.GetCluster()), cmp.Compare(a.GetNamespace(), b.GetNamespace()),
		cmp.Compare(a.GetPod(), b.GetPod()), cmp.Compare(a.GetIp(), b.GetIp()))
}
