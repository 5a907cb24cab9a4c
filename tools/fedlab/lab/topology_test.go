package lab

import (
	"net/netip"
	"testing"
)

func TestPlanIsDeterministicAndDisjoint(t *testing.T) {
	cfg := Config{Name: "fl", Clusters: 2, Nodes: 2, Pods: 3}
	a, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Plan(cfg)
	if len(a.Namespaces()) != 2+2*(1+2*(1+3)) {
		t.Fatalf("namespaces = %d", len(a.Namespaces()))
	}
	seenNS := map[string]bool{}
	for i, ns := range a.Namespaces() {
		if ns != b.Namespaces()[i] {
			t.Fatalf("plan not deterministic: %s vs %s", ns, b.Namespaces()[i])
		}
		if seenNS[ns] {
			t.Fatalf("namespace %s twice", ns)
		}
		seenNS[ns] = true
	}
	underlay := netip.MustParsePrefix("198.18.0.0/15")
	ips := map[netip.Addr]string{}
	names := map[string]bool{}
	for _, c := range a.Clusters {
		if !underlay.Contains(c.ToR.Addr.Addr()) || !underlay.Contains(c.RackAddr.Addr()) {
			t.Errorf("ToR %s outside the underlay", c.Name)
		}
		for _, n := range c.Nodes {
			if !underlay.Contains(n.Host.Addr.Addr()) {
				t.Errorf("node %s underlay %s outside 198.18.0.0/15", n.Name, n.Host.Addr)
			}
			if !c.PodCIDR.Contains(n.PodCIDR.Addr()) {
				t.Errorf("node %s pod CIDR %s outside cluster %s", n.Name, n.PodCIDR, c.PodCIDR)
			}
			for _, p := range n.Pods {
				if !n.PodCIDR.Contains(p.IP) {
					t.Errorf("pod %s IP %s outside node CIDR", p.Name, p.IP)
				}
				if prev, dup := ips[p.IP]; dup {
					t.Errorf("pod IP %s used by %s and %s", p.IP, prev, p.Name)
				}
				ips[p.IP] = p.Name
				if names[p.Name] {
					t.Errorf("pod name %s twice", p.Name)
				}
				names[p.Name] = true
				if len(p.HostVeth) > 15 || len(p.PodVeth) > 15 {
					t.Errorf("veth name too long: %s / %s", p.HostVeth, p.PodVeth)
				}
			}
		}
	}
	if a.Clusters[0].ToRKind != "bird" || a.Clusters[1].ToRKind != "frr" {
		t.Errorf("ToR kinds = %s, %s; want bird then frr", a.Clusters[0].ToRKind, a.Clusters[1].ToRKind)
	}
	if _, _, p, ok := a.Pod("cluster-b/demo/web-b1-1"); !ok || p.IP != netip.MustParseAddr("10.2.1.11") {
		t.Errorf("Pod lookup = %v %v", p, ok)
	}
}

func TestPlanRejectsBadSizes(t *testing.T) {
	for _, cfg := range []Config{
		{Name: "", Clusters: 1, Nodes: 1},
		{Name: "toolong", Clusters: 1, Nodes: 1},
		{Name: "fl", Clusters: 0, Nodes: 1},
		{Name: "fl", Clusters: 9, Nodes: 1},
		{Name: "fl", Clusters: 1, Nodes: 33},
		{Name: "fl", Clusters: 1, Nodes: 1, Pods: 33},
	} {
		if _, err := Plan(cfg); err == nil {
			t.Errorf("Plan(%+v) accepted", cfg)
		}
	}
}

func TestMaxSizedNamesFitInterfaceNames(t *testing.T) {
	top, err := Plan(Config{Name: "fedlab", Clusters: 8, Nodes: 32, Pods: 32})
	if err != nil {
		t.Fatal(err)
	}
	last := top.Clusters[7].Nodes[31].Pods[31]
	if len(last.HostVeth) > 15 || len(last.PodVeth) > 15 {
		t.Fatalf("veth names %q/%q exceed IFNAMSIZ", last.HostVeth, last.PodVeth)
	}
}
