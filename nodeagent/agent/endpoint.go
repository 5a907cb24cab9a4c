package agent

import (
	"net/netip"
	"slices"

	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Endpoint is what the agent keeps of an endpoint of the federation once
// its watch event is applied: its key, node, addresses, identity and
// revision, which is all the view (snapshot diffs), the ipcache index and
// the local endpoints' bookkeeping read. The watch's proto is handed to the
// compiler with the change and then dropped: the compiler keeps what its
// selectors need (label sets shared per group), so labels, named ports and
// metadata are not held a second time. At millions of endpoints the agent
// must not hold a proto per endpoint of the federation (test/scale's
// BenchmarkAgentSync: the proto alone was ~790 B of an endpoint's ~2 KB).
//
// The cluster, namespace and node names are interned (they repeat across
// thousands of endpoints). An Endpoint is immutable once built; the
// ipcache index tells claims apart by pointer, so every put builds a new
// one.
type Endpoint struct {
	Key  policy.EndpointKey
	Node string
	// Addrs are the addresses that parse, unmapped, in the proto's order;
	// BadAddrs the ones that do not (nil but for bad input), which the
	// ipcache index reports.
	Addrs    []netip.Addr
	BadAddrs []string
	Identity uint32
	// Revision is the revision of the endpoint's last change (0 when the
	// event did not say).
	Revision uint64
}

// NewEndpoint is the one conversion from the watch's proto; the result
// shares ep's strings (the view interns them in the proto first).
func NewEndpoint(ep *fedmeshv1.Endpoint) *Endpoint {
	e := &Endpoint{
		Key:      policy.EndpointKey{Cluster: ep.GetCluster(), Namespace: ep.GetNamespace(), Name: ep.GetName()},
		Node:     ep.GetNode(),
		Identity: ep.GetIdentity(),
		Revision: ep.GetMeta().GetRevision(),
	}
	if ips := ep.GetIps(); len(ips) > 0 {
		e.Addrs = make([]netip.Addr, 0, len(ips))
		for _, s := range ips {
			if a, err := netip.ParseAddr(s); err == nil {
				e.Addrs = append(e.Addrs, a.Unmap())
			} else {
				e.BadAddrs = append(e.BadAddrs, s)
			}
		}
	}
	return e
}

// interner hands out one copy of each name. Names of objects that are
// gone stay until the next sweep: the view sweeps (rebuilds it from the
// names its endpoints use) whenever it doubled since the last one or the
// endpoints halved, so it stays within about twice the names in use (plus
// sweepFloor) at an amortised O(1) per change.
// (unique.Make would not do: its handles are weak and a string does not
// hold one, so after a collection the same name got a new copy.)
type interner struct {
	m    map[string]string
	live int // names in use at the last sweep
}

// internEndpoint interns the proto's cluster, namespace and node names in
// place, so that whatever keeps them from the proto (the compact form, the
// compiler's endpoint keys) shares one copy. The agent owns the proto,
// decoded for it from the stream.
func (in *interner) internEndpoint(ep *fedmeshv1.Endpoint) {
	ep.Cluster, ep.Namespace, ep.Node = in.intern(ep.GetCluster()), in.intern(ep.GetNamespace()), in.intern(ep.GetNode())
}

// slimSnapshotChunk trims the endpoints of a snapshot chunk as it
// arrives, before the watch stages it with the rest of the snapshot until
// the last chunk: at millions of endpoints the staged protos are the
// initial sync's peak. Names are interned, equal label and namespace-label
// maps within the chunk share one map, and the metadata is cut to the
// revision, which is all the compact form and the compiler read of it.
// The agent owns these protos (decoded for it) and nothing modifies their
// maps afterwards.
func (in *interner) slimSnapshotChunk(evs []*fedmeshv1.Event) {
	sets := map[string]map[string]string{}
	metas := map[uint64]*fedmeshv1.ObjectMeta{}
	var buf []byte
	var keys []string
	share := func(m map[string]string) map[string]string {
		if len(m) == 0 {
			return m
		}
		keys = keys[:0]
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		buf = buf[:0]
		for _, k := range keys {
			buf = append(append(append(append(buf, k...), 0), m[k]...), 0)
		}
		if s, ok := sets[string(buf)]; ok {
			return s
		}
		sets[string(buf)] = m
		return m
	}
	for _, ev := range evs {
		ep := ev.GetEndpoint()
		if ep == nil {
			continue
		}
		in.internEndpoint(ep)
		ep.Labels, ep.NamespaceLabels = share(ep.Labels), share(ep.NamespaceLabels)
		if ep.Meta != nil {
			r := ep.Meta.GetRevision()
			if metas[r] == nil {
				metas[r] = &fedmeshv1.ObjectMeta{Revision: r}
			}
			ep.Meta = metas[r]
		}
	}
}

func (in *interner) intern(s string) string {
	if s == "" {
		return s
	}
	if c, ok := in.m[s]; ok {
		return c
	}
	if in.m == nil {
		in.m = map[string]string{}
	}
	in.m[s] = s
	return s
}

// sweepFloor is how many names the interner may hold before any sweep.
const sweepFloor = 1024

// needsSweep reports whether the interner grew past twice its names in use
// at the last sweep.
func (in *interner) needsSweep() bool { return len(in.m) > 2*in.live+sweepFloor }

// sweep keeps only the names keep is called with by each(keep).
func (in *interner) sweep(each func(keep func(string))) {
	old := in.m
	in.m = make(map[string]string, in.live)
	each(func(s string) {
		if c, ok := old[s]; ok {
			in.m[c] = c
		}
	})
	in.live = len(in.m)
}

// IsLocal reports whether the endpoint runs on this node.
func (e *Endpoint) IsLocal(cluster, node string) bool {
	return e.Key.Cluster == cluster && e.Node == node
}
