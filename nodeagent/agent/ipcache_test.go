package agent

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// entries renders an ipcache as sorted "prefix=identity".
func entries(c dataplane.IPCache) []string {
	var out []string
	for p, id := range c.All() {
		out = append(out, fmt.Sprintf("%s=%d", p, id))
	}
	slices.Sort(out)
	return out
}

func reasons(bad []BadInput) []string {
	var out []string
	for _, b := range bad {
		out = append(out, b.Reason)
	}
	slices.Sort(out)
	return out
}

func TestIPCacheIndexSkipsWhatAClusterCannotClaim(t *testing.T) {
	tests := []struct {
		name      string
		clusters  []*fedmeshv1.Cluster
		endpoints []*fedmeshv1.Endpoint
		want      []string // "prefix=identity"
		bad       []string
	}{
		{
			name:      "every cluster's endpoints, v4 and v6",
			clusters:  []*fedmeshv1.Cluster{cluster("a", "10.0.0.0/16", "fd00:a::/64"), cluster("b", "10.1.0.0/16")},
			endpoints: []*fedmeshv1.Endpoint{ep("a", "ns", "x", "n1", 100, 1, "10.0.0.1", "fd00:a::1"), ep("b", "ns", "y", "m1", 200, 1, "10.1.0.1")},
			want:      []string{"10.0.0.1/32=100", "10.1.0.1/32=200", "fd00:a::1/128=100"},
		},
		{
			name:      "address outside its own cluster's CIDRs, even inside another's",
			clusters:  []*fedmeshv1.Cluster{cluster("a", "10.0.0.0/16"), cluster("b", "10.1.0.0/16")},
			endpoints: []*fedmeshv1.Endpoint{ep("a", "ns", "x", "n1", 100, 1, "10.1.0.9", "10.0.0.1"), ep("c", "ns", "z", "n1", 300, 1, "10.0.0.7")},
			want:      []string{"10.0.0.1/32=100"},
			bad:       []string{ReasonIPOutside, ReasonIPOutside},
		},
		{
			name:     "one address in two clusters (overlapping CIDRs): neither",
			clusters: []*fedmeshv1.Cluster{cluster("a", "10.0.0.0/16"), cluster("b", "10.0.0.0/8")},
			endpoints: []*fedmeshv1.Endpoint{ep("a", "ns", "x", "n1", 100, 1, "10.0.0.1"), ep("b", "ns", "y", "m1", 200, 1, "10.0.0.1"),
				ep("b", "ns", "w", "m1", 201, 1, "10.9.0.1")},
			want: []string{"10.9.0.1/32=201"},
			bad:  []string{ReasonDuplicateIP},
		},
		{
			name:      "one address twice in one cluster: the newest wins",
			clusters:  []*fedmeshv1.Cluster{cluster("a", "10.0.0.0/16")},
			endpoints: []*fedmeshv1.Endpoint{ep("a", "ns", "old", "n1", 100, 4, "10.0.0.1"), ep("a", "ns", "new", "n1", 101, 9, "10.0.0.1")},
			want:      []string{"10.0.0.1/32=101"},
		},
		{
			name:      "no identity, unparsable address, unparsable cluster CIDR",
			clusters:  []*fedmeshv1.Cluster{cluster("a", "10.0.0.0/16", "nope")},
			endpoints: []*fedmeshv1.Endpoint{ep("a", "ns", "x", "n1", 0, 1, "10.0.0.1"), ep("a", "ns", "y", "n1", 5, 1, "10.0.0.300", "10.0.0.2")},
			want:      []string{"10.0.0.2/32=5"},
			bad:       []string{ReasonBadClusterCIDR, ReasonBadIP, ReasonNoIdentity},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := NewIPCacheIndex()
			var reported []BadInput
			for _, c := range tt.clusters {
				reported = append(reported, x.UpsertCluster(c)...)
			}
			for _, e := range tt.endpoints {
				reported = append(reported, x.UpsertEndpoint(NewEndpoint(e))...)
			}
			got, changed := x.IPCache()
			if gs := entries(got); !slices.Equal(gs, tt.want) {
				t.Errorf("ipcache = %q, want %q", gs, tt.want)
			}
			if changed != (len(tt.want) > 0) {
				t.Errorf("changed = %v with %d entries", changed, len(tt.want))
			}
			if r := reasons(x.Bad()); !slices.Equal(r, tt.bad) {
				t.Errorf("bad = %q, want %q (%v)", r, tt.bad, x.Bad())
			}
			if r := reasons(reported); !slices.Equal(r, tt.bad) {
				t.Errorf("reported = %q, want each problem once: %q", r, tt.bad)
			}
		})
	}
}

func TestIPCacheIndexReportsAProblemOnceWhileItLasts(t *testing.T) {
	x := NewIPCacheIndex()
	x.UpsertCluster(cluster("a", "10.0.0.0/16"))
	x.UpsertCluster(cluster("b", "10.0.0.0/8"))
	steps := []struct {
		name string
		do   func() []BadInput
		want []string
	}{
		{"an address outside", func() []BadInput { return x.UpsertEndpoint(NewEndpoint(ep("a", "ns", "x", "n1", 100, 1, "10.5.0.1"))) }, []string{ReasonIPOutside}},
		{"the same endpoint again, still outside", func() []BadInput { return x.UpsertEndpoint(NewEndpoint(ep("a", "ns", "x", "n1", 100, 2, "10.5.0.1"))) }, nil},
		{"fixed", func() []BadInput { return x.UpsertEndpoint(NewEndpoint(ep("a", "ns", "x", "n1", 100, 3, "10.0.0.1"))) }, nil},
		{"another cluster claims its address", func() []BadInput { return x.UpsertEndpoint(NewEndpoint(ep("b", "ns", "y", "m1", 200, 4, "10.0.0.1"))) }, []string{ReasonDuplicateIP}},
		{"an unrelated change of the claimant", func() []BadInput { return x.UpsertEndpoint(NewEndpoint(ep("b", "ns", "y", "m1", 201, 5, "10.0.0.1"))) }, nil},
		{"the claimant leaves", func() []BadInput {
			return x.DeleteEndpoint(policy.EndpointKey{Cluster: "b", Namespace: "ns", Name: "y"})
		}, nil},
		{"and comes back", func() []BadInput { return x.UpsertEndpoint(NewEndpoint(ep("b", "ns", "y", "m1", 200, 6, "10.0.0.1"))) }, []string{ReasonDuplicateIP}},
		{"its cluster shrinks away from the address", func() []BadInput { return x.UpsertCluster(cluster("b", "10.9.0.0/16")) }, []string{ReasonIPOutside}},
		{"its cluster's labels change, CIDRs do not", func() []BadInput {
			c := cluster("b", "10.9.0.0/16")
			c.Labels["x"] = "y"
			return x.UpsertCluster(c)
		}, nil},
	}
	for _, s := range steps {
		if got := reasons(s.do()); !slices.Equal(got, s.want) {
			t.Errorf("%s: reported %q, want %q", s.name, got, s.want)
		}
	}
	got, _ := x.IPCache()
	if gs := entries(got); !slices.Equal(gs, []string{"10.0.0.1/32=100"}) {
		t.Errorf("ipcache = %q, want a/x's address only", gs)
	}
}

// rebuild is the ipcache computed from scratch with the rules
// IPCacheIndex documents: the oracle the incremental index must match.
func rebuild(clusters map[string]*fedmeshv1.Cluster, endpoints map[policy.EndpointKey]*fedmeshv1.Endpoint) []string {
	type claim struct {
		key      policy.EndpointKey
		identity uint32
		rev      uint64
		conflict bool
	}
	claims := map[netip.Addr]*claim{}
	for k, e := range endpoints {
		var cidrs []netip.Prefix
		for _, s := range clusters[k.Cluster].GetPodCidrs() {
			if p, err := netip.ParsePrefix(s); err == nil {
				cidrs = append(cidrs, p)
			}
		}
		if e.GetIdentity() == 0 {
			continue
		}
		for _, s := range e.GetIps() {
			a, err := netip.ParseAddr(s)
			if err != nil || !inAny(a.Unmap(), cidrs) {
				continue
			}
			a = a.Unmap()
			c := claims[a]
			switch {
			case c == nil:
				claims[a] = &claim{key: k, identity: e.GetIdentity(), rev: e.GetMeta().GetRevision()}
			case c.key.Cluster != k.Cluster:
				c.conflict = true
			case e.GetMeta().GetRevision() > c.rev || (e.GetMeta().GetRevision() == c.rev && compareEndpointKeys(k, c.key) > 0):
				c.key, c.identity, c.rev = k, e.GetIdentity(), e.GetMeta().GetRevision()
			}
		}
	}
	var out []string
	for a, c := range claims {
		if !c.conflict {
			out = append(out, fmt.Sprintf("%s=%d", netip.PrefixFrom(a, a.BitLen()), c.identity))
		}
	}
	slices.Sort(out)
	return out
}

// TestIPCacheIndexMatchesAFullRebuild applies random changes (pods
// created, moved, relabelled, deleted; clusters resized) one at a time and
// compares the index after each with a computation from scratch, and its
// problems with those of a fresh index fed the final state.
func TestIPCacheIndexMatchesAFullRebuild(t *testing.T) {
	for seed := range uint64(5) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 7))
			clusterCIDRs := [][]string{{"10.0.0.0/24"}, {"10.0.0.0/23"}, {"10.0.1.0/24", "fd00::/120"}, {"bad"}, {}}
			names := []string{"a", "b", "c"}
			x := NewIPCacheIndex()
			clusters := map[string]*fedmeshv1.Cluster{}
			endpoints := map[policy.EndpointKey]*fedmeshv1.Endpoint{}
			addr := func() string {
				if r.IntN(5) == 0 {
					return fmt.Sprintf("fd00::%x", r.IntN(8))
				}
				if r.IntN(20) == 0 {
					return "nope"
				}
				return fmt.Sprintf("10.0.%d.%d", r.IntN(2), r.IntN(8))
			}
			for i := range 2000 {
				rev := uint64(i + 1)
				switch n := r.IntN(20); {
				case n == 0:
					name := names[r.IntN(len(names))]
					c := cluster(name, clusterCIDRs[r.IntN(len(clusterCIDRs))]...)
					clusters[name] = c
					x.UpsertCluster(c)
				case n == 1:
					name := names[r.IntN(len(names))]
					delete(clusters, name)
					x.DeleteCluster(name)
				case n < 6:
					k := policy.EndpointKey{Cluster: names[r.IntN(len(names))], Namespace: "ns", Name: fmt.Sprintf("p%d", r.IntN(12))}
					delete(endpoints, k)
					x.DeleteEndpoint(k)
				default:
					k := policy.EndpointKey{Cluster: names[r.IntN(len(names))], Namespace: "ns", Name: fmt.Sprintf("p%d", r.IntN(12))}
					ips := []string{addr()}
					if r.IntN(4) == 0 {
						ips = append(ips, addr())
					}
					e := ep(k.Cluster, k.Namespace, k.Name, "n1", uint32(r.IntN(4)), rev, ips...)
					endpoints[k] = e
					x.UpsertEndpoint(NewEndpoint(e))
				}
				got, _ := x.IPCache()
				if gs, want := entries(got), rebuild(clusters, endpoints); !slices.Equal(gs, want) {
					t.Fatalf("change %d: ipcache = %q, want %q", i, gs, want)
				}
			}
			fresh := NewIPCacheIndex()
			for _, name := range slices.Sorted(maps.Keys(clusters)) {
				fresh.UpsertCluster(clusters[name])
			}
			for _, k := range slices.SortedFunc(maps.Keys(endpoints), compareEndpointKeys) {
				fresh.UpsertEndpoint(NewEndpoint(endpoints[k]))
			}
			if got, want := x.Bad(), fresh.Bad(); !slices.Equal(got, want) {
				t.Errorf("problems after the changes differ from a fresh index's:\n got %v\nwant %v", got, want)
			}
		})
	}
}
