package store

import (
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func dualCluster(name string, cidrs ...string) Command {
	return Command{Type: CmdRegisterCluster, Payload: &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{
		Name: name, PodCidrs: cidrs, Labels: map[string]string{"site": name},
	}}}
}

func dualNode(cluster, name string, cidrs ...string) Command {
	return Command{Type: CmdRegisterNode, Payload: &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{
		Cluster: cluster, Name: name, UnderlayIp: "198.18.0.1", PodCidrs: cidrs,
	}}}
}

func dualEp(ns, name string, labels map[string]string, ips ...string) *fedmeshv1.Endpoint {
	return &fedmeshv1.Endpoint{Namespace: ns, Name: name, Ips: ips, Labels: labels, Node: "n1"}
}

// dualState holds two dual-stack clusters, a dual-stack node and a pod with
// both addresses.
func dualState(t *testing.T) *State {
	s := NewState(1000)
	apply(t, s,
		dualCluster("a", "10.1.0.0/16", "fd00:1::/48"),
		dualCluster("b", "10.2.0.0/16", "fd00:2::/48"),
		dualNode("a", "n1", "10.1.1.0/24", "fd00:1:0:1::/64"),
		upsert("a", 0, false, dualEp("x", "p", map[string]string{"app": "x"}, "10.1.1.1", "fd00:1:0:1::1")),
	)
	return s
}

func TestDualStackStateChecksRejectNamingTheFieldAndChangeNothing(t *testing.T) {
	tests := []struct {
		name   string
		cmd    Command
		field  string
		reason string
	}{
		{"v6 pod CIDR overlapping another cluster's", dualCluster("c", "10.3.0.0/16", "fd00:1:0:8::/64"), "cluster.podCIDRs[1]", `overlaps pod CIDR fd00:1::/48 of cluster "a"`},
		{"v6 pod CIDR holding another cluster's", dualCluster("c", "10.3.0.0/16", "fd00::/16"), "cluster.podCIDRs[1]", `of cluster "b"`},
		{"re-registration dropping the v6 range a pod holds", dualCluster("a", "10.1.0.0/16"), "cluster.podCIDRs", ""},
		{"node v6 prefix outside the cluster's v6 CIDR", dualNode("a", "n2", "10.1.2.0/24", "fd00:2:0:2::/64"), "node.podCIDRs[1]", `not inside the IPv6 pod CIDR fd00:1::/48 of cluster "a"`},
		{"node v6 prefix wider than the cluster's v6 CIDR", dualNode("a", "n2", "10.1.2.0/24", "fd00::/32"), "node.podCIDRs[1]", "IPv6 pod CIDR fd00:1::/48"},
		{"node v4 prefix outside while its v6 is inside", dualNode("a", "n2", "10.2.2.0/24", "fd00:1:0:2::/64"), "node.podCIDRs[0]", "IPv4 pod CIDR 10.1.0.0/16"},
		{"pod v6 address outside the cluster's v6 CIDR", upsert("a", 0, false, dualEp("x", "q", nil, "10.1.1.2", "fd00:2::2")), "endpoints[0].ips[1]", "IPv6 pod CIDR fd00:1::/48"},
		{"pod v6 address owned by another pod", upsert("a", 0, false, dualEp("x", "q", nil, "10.1.1.2", "fd00:1:0:1::1")), "endpoints[0].ips[1]", "already used by endpoint x/p"},
		{"pod v6 address inside no cluster", upsert("b", 0, false, dualEp("x", "q", nil, "10.2.1.2", "fd00:3::2")), "endpoints[0].ips[1]", "IPv6 pod CIDR fd00:2::/48"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := dualState(t)
			before := dump(s)
			res := applyEncoded(t, s, tt.cmd)
			if status.Code(res.Err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", res.Err)
			}
			var got []string
			found := false
			for _, fe := range model.FieldErrors(res.Err) {
				got = append(got, fe.Field+": "+fe.Detail)
				if fe.Field == tt.field && strings.Contains(fe.Detail, tt.reason) {
					found = true
				}
			}
			if !found {
				t.Fatalf("want %s saying %q; got %v", tt.field, tt.reason, got)
			}
			if after := dump(s); after != before {
				t.Fatalf("rejected command changed the state:\n%s\n---\n%s", before, after)
			}
		})
	}
}

func TestBothAddressesOfAPodMapToItsOneIdentity(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.1.1.1"), netip.MustParseAddr("fd00:1:0:1::1")
	steps := []struct {
		name         string
		cmd          Command // zero: the state as dualState builds it
		want4, want6 string  // identity key owning each address, "" for no owner
	}{
		{"both addresses stored under one identity", Command{}, "a/x{app=x}", "a/x{app=x}"},
		{"a label change moves both addresses to the new identity",
			upsert("a", 0, false, dualEp("x", "p", map[string]string{"app": "y"}, "10.1.1.1", "fd00:1:0:1::1")), "a/x{app=y}", "a/x{app=y}"},
		{"a v6 address given up is forgotten, the v4 one kept",
			upsert("a", 0, false, dualEp("x", "p", map[string]string{"app": "y"}, "10.1.1.1")), "a/x{app=y}", ""},
		{"the v6 address back again",
			upsert("a", 0, false, dualEp("x", "p", map[string]string{"app": "y"}, "10.1.1.1", "fd00:1:0:1::1")), "a/x{app=y}", "a/x{app=y}"},
		{"deleting the pod frees both",
			Command{Type: CmdDeleteEndpoints, Payload: &fedmeshv1.DeleteEndpointsRequest{Cluster: "a", Keys: []*fedmeshv1.EndpointKey{{Namespace: "x", Name: "p"}}}}, "", ""},
	}
	s := dualState(t)
	owner := func(a netip.Addr) (string, uint32) {
		e := s.EndpointByIP(a)
		if e == nil {
			return "", 0
		}
		key, ok := s.ids.Lookup(e.GetIdentity())
		if !ok {
			t.Fatalf("endpoint %s/%s holds identity %d the allocator does not know", e.GetNamespace(), e.GetName(), e.GetIdentity())
		}
		return key.String(), e.GetIdentity()
	}
	for i, st := range steps {
		if i > 0 {
			apply(t, s, st.cmd)
		}
		app4, id4 := owner(v4)
		app6, id6 := owner(v6)
		if app4 != st.want4 || app6 != st.want6 {
			t.Fatalf("%s: v4 owned by identity %q, v6 by %q; want %q, %q", st.name, app4, app6, st.want4, st.want6)
		}
		if st.want4 != "" && st.want6 != "" && id4 != id6 {
			t.Fatalf("%s: the pod's addresses map to identities %d and %d", st.name, id4, id6)
		}
	}
}
