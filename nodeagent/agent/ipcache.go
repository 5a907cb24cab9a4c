package agent

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// IPCacheIndex keeps the ipcache — every endpoint address of every
// cluster, as a host prefix, mapped to the endpoint's identity — current as
// clusters and endpoints change, at a cost proportional to the change, and
// hands out immutable versions of it (dataplane.IPCache) that share all
// but what changed. It skips, and reports, what would let one cluster speak
// for another's addresses:
//   - an address that does not parse, or an endpoint with no identity;
//   - an address outside its own cluster's pod CIDRs (that includes every
//     address of an endpoint whose cluster is unknown);
//   - an address two clusters claim (their pod CIDRs overlap, which the
//     control plane rejects, so only bad input gets here): neither wins, the
//     address stays out of the map (identity 0, "world").
//
// Two endpoints of one cluster with one address (a pod replaced before the
// old one's delete arrived) are not an error: the one changed last wins.
// The result depends only on the clusters and endpoints it holds, never on
// the order they came in.
//
// Each method returns the problems that appeared with that change; one that
// persists is reported once, not with every change. Pure; owned by the
// sync goroutine.
type IPCacheIndex struct {
	cidrs   map[string][]netip.Prefix // pod CIDRs by cluster
	cidrBad map[string][]BadInput
	// eps holds every endpoint by cluster, as last judged.
	eps   map[string]map[policy.EndpointKey]*Endpoint
	epBad map[policy.EndpointKey][]BadInput
	// The endpoints claiming an address: the first in claims, any others
	// (a pod replaced, or bad input) in moreClaims.
	claims     map[netip.Addr]*Endpoint
	moreClaims map[netip.Addr][]*Endpoint
	// conflicts are the addresses two clusters claim.
	conflicts map[netip.Addr]BadInput
	ipcache   *dataplane.IPCacheBuilder

	touched   []netip.Addr // scratch: addresses a change touched
	claimants []*Endpoint  // scratch: the claims on one address
}

// NewIPCacheIndex returns an empty index.
func NewIPCacheIndex() *IPCacheIndex {
	return &IPCacheIndex{
		cidrs: map[string][]netip.Prefix{}, cidrBad: map[string][]BadInput{},
		eps: map[string]map[policy.EndpointKey]*Endpoint{}, epBad: map[policy.EndpointKey][]BadInput{},
		claims: map[netip.Addr]*Endpoint{}, moreClaims: map[netip.Addr][]*Endpoint{},
		conflicts: map[netip.Addr]BadInput{},
		ipcache:   dataplane.NewIPCacheBuilder(dataplane.IPCache{}),
	}
}

// IPCache returns the ipcache now and whether it changed since the last
// call.
func (x *IPCacheIndex) IPCache() (dataplane.IPCache, bool) {
	changed := x.ipcache.Modified()
	return x.ipcache.IPCache(), changed
}

// Len is the number of ipcache entries.
func (x *IPCacheIndex) Len() int { return x.ipcache.Len() }

// UpsertCluster takes the cluster's pod CIDRs; when they changed, the
// cluster's endpoints are judged again. A CIDR that does not parse is
// reported and left out.
func (x *IPCacheIndex) UpsertCluster(c *fedmeshv1.Cluster) []BadInput {
	name := c.GetName()
	var cidrs []netip.Prefix
	var bad []BadInput
	for _, s := range c.GetPodCidrs() {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			bad = append(bad, BadInput{Reason: ReasonBadClusterCIDR, Object: "cluster/" + name, Detail: fmt.Sprintf("pod CIDR %q: %v", s, err)})
			continue
		}
		cidrs = append(cidrs, p.Masked())
	}
	fresh := freshBad(bad, x.cidrBad[name])
	setBad(x.cidrBad, name, bad)
	if old, known := x.cidrs[name]; known && slices.Equal(old, cidrs) {
		return fresh
	}
	x.cidrs[name] = cidrs
	return append(fresh, x.rejudge(name)...)
}

// DeleteCluster forgets the cluster: the addresses of its endpoints, if
// any are left, are outside every pod CIDR it has now.
func (x *IPCacheIndex) DeleteCluster(name string) []BadInput {
	if _, known := x.cidrs[name]; !known {
		return nil
	}
	delete(x.cidrs, name)
	delete(x.cidrBad, name)
	return x.rejudge(name)
}

func (x *IPCacheIndex) rejudge(cluster string) []BadInput {
	var fresh []BadInput
	for _, ep := range x.eps[cluster] {
		fresh = append(fresh, x.UpsertEndpoint(ep)...)
	}
	return fresh
}

// UpsertEndpoint claims the endpoint's addresses (and releases those its
// previous version claimed). The index keeps ep (never modified).
func (x *IPCacheIndex) UpsertEndpoint(ep *Endpoint) []BadInput {
	k := ep.Key
	x.release(k)
	var bad []BadInput
	if ep.Identity == 0 {
		bad = append(bad, BadInput{Reason: ReasonNoIdentity, Object: "endpoint/" + k.String(), Detail: "identity 0 (not assigned)"})
	} else {
		for _, s := range ep.BadAddrs {
			_, err := netip.ParseAddr(s)
			bad = append(bad, BadInput{Reason: ReasonBadIP, Object: "endpoint/" + k.String(), Detail: fmt.Sprintf("address %q: %v", s, err)})
		}
		for _, a := range ep.Addrs {
			if cidrs := x.cidrs[k.Cluster]; !inAny(a, cidrs) {
				bad = append(bad, BadInput{Reason: ReasonIPOutside, Object: "endpoint/" + k.String(),
					Detail: fmt.Sprintf("address %s is outside cluster %q's pod CIDRs %v", a, k.Cluster, cidrs)})
				continue
			}
			x.claim(a, ep)
		}
	}
	byKey := x.eps[k.Cluster]
	if byKey == nil {
		byKey = map[policy.EndpointKey]*Endpoint{}
		x.eps[k.Cluster] = byKey
	}
	byKey[k] = ep
	fresh := freshBad(bad, x.epBad[k])
	setBad(x.epBad, k, bad)
	return append(fresh, x.settle()...)
}

// DeleteEndpoint releases the endpoint's addresses.
func (x *IPCacheIndex) DeleteEndpoint(k policy.EndpointKey) []BadInput {
	x.release(k)
	if byKey := x.eps[k.Cluster]; byKey != nil {
		delete(byKey, k)
		if len(byKey) == 0 {
			delete(x.eps, k.Cluster)
		}
	}
	delete(x.epBad, k)
	return x.settle()
}

// claim adds ep's claim on a (once) and marks a touched.
func (x *IPCacheIndex) claim(a netip.Addr, ep *Endpoint) {
	switch first := x.claims[a]; {
	case first == nil:
		x.claims[a] = ep
	case first == ep || slices.Contains(x.moreClaims[a], ep):
		return
	default:
		x.moreClaims[a] = append(x.moreClaims[a], ep)
	}
	x.touched = append(x.touched, a)
}

// release withdraws the claims of the endpoint's version in the index and
// marks their addresses touched.
func (x *IPCacheIndex) release(k policy.EndpointKey) {
	old := x.eps[k.Cluster][k]
	if old == nil {
		return
	}
	for _, a := range old.Addrs {
		more := x.moreClaims[a]
		switch {
		case x.claims[a] == old && len(more) > 0:
			x.claims[a] = more[0]
			x.setMore(a, slices.Delete(more, 0, 1))
		case x.claims[a] == old:
			delete(x.claims, a)
		case slices.Contains(more, old):
			x.setMore(a, slices.DeleteFunc(more, func(e *Endpoint) bool { return e == old }))
		default:
			continue
		}
		x.touched = append(x.touched, a)
	}
}

func (x *IPCacheIndex) setMore(a netip.Addr, more []*Endpoint) {
	if len(more) == 0 {
		delete(x.moreClaims, a)
		return
	}
	x.moreClaims[a] = more
}

// settle decides the ipcache entry of each touched address from its
// claims.
func (x *IPCacheIndex) settle() []BadInput {
	var fresh []BadInput
	for _, a := range x.touched {
		p := netip.PrefixFrom(a, a.BitLen())
		first := x.claims[a]
		if first == nil {
			delete(x.conflicts, a)
			x.ipcache.Delete(p)
			continue
		}
		cl := append(append(x.claimants[:0], first), x.moreClaims[a]...)
		x.claimants = cl
		// The lowest key, and the lowest of another cluster: a conflict.
		lo, other := cl[0], (*Endpoint)(nil)
		for _, e := range cl[1:] {
			if compareEndpoints(e, lo) < 0 {
				lo = e
			}
		}
		for _, e := range cl {
			if e.Key.Cluster != lo.Key.Cluster && (other == nil || compareEndpoints(e, other) < 0) {
				other = e
			}
		}
		if other != nil {
			x.ipcache.Delete(p)
			b := BadInput{Reason: ReasonDuplicateIP, Object: "endpoint/" + other.Key.String(),
				Detail: fmt.Sprintf("address %s is also claimed by endpoint %s of another cluster; left out of the ipcache", a, lo.Key)}
			if x.conflicts[a] != b {
				x.conflicts[a] = b
				fresh = append(fresh, b)
			}
			continue
		}
		delete(x.conflicts, a)
		win := cl[0]
		for _, e := range cl[1:] {
			if r, w := e.Revision, win.Revision; r > w || (r == w && compareEndpoints(e, win) > 0) {
				win = e
			}
		}
		x.ipcache.Set(p, win.Identity)
	}
	x.touched = x.touched[:0]
	clear(x.claimants) // holds no endpoint past the change
	return fresh
}

// Bad returns every problem the index holds now, sorted.
func (x *IPCacheIndex) Bad() []BadInput {
	var out []BadInput
	for _, bs := range x.cidrBad {
		out = append(out, bs...)
	}
	for _, bs := range x.epBad {
		out = append(out, bs...)
	}
	for _, b := range x.conflicts {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b BadInput) int {
		return cmp.Or(strings.Compare(a.Reason, b.Reason), strings.Compare(a.Object, b.Object), strings.Compare(a.Detail, b.Detail))
	})
	return out
}

func compareEndpoints(a, b *Endpoint) int {
	return compareEndpointKeys(a.Key, b.Key)
}

// freshBad is what of bad was not in old.
func freshBad(bad, old []BadInput) []BadInput {
	var fresh []BadInput
	for _, b := range bad {
		if !slices.Contains(old, b) {
			fresh = append(fresh, b)
		}
	}
	return fresh
}

func setBad[K comparable](m map[K][]BadInput, k K, bad []BadInput) {
	if len(bad) == 0 {
		delete(m, k)
		return
	}
	m[k] = bad
}

func inAny(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
