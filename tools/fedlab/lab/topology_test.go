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
	if len(a.Namespaces()) != 3+2*(1+2*(1+3)) {
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
	ula := netip.MustParsePrefix("fd00::/8")
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
			if !c.RackAddr6.Contains(n.Host.Addr6.Addr()) || n.Host.Gateway6 != c.RackAddr6.Addr() || n.Host.Addr6.Addr() == n.Host.Gateway6 {
				t.Errorf("node %s rack v6 %s (gateway %s) not beside ToR %s", n.Name, n.Host.Addr6, n.Host.Gateway6, c.RackAddr6)
			}
			for fam, cidr := range c.PodCIDRs() {
				ncidr := n.PodCIDRs()[fam]
				if !cidr.IsValid() || !cidr.Contains(ncidr.Addr()) || ncidr.Bits() <= cidr.Bits() {
					t.Errorf("node %s pod CIDR %s outside cluster %s", n.Name, ncidr, cidr)
				}
			}
			if !ula.Contains(c.PodCIDR6.Addr()) || !c.PodCIDR6.Addr().Is6() || !c.PodCIDR.Addr().Is4() {
				t.Errorf("cluster %s pod CIDRs %v: want IPv4 then ULA IPv6", c.Name, c.PodCIDRs())
			}
			for _, p := range n.Pods {
				for fam, ip := range p.IPs() {
					if !n.PodCIDRs()[fam].Contains(ip) || ip == n.PodCIDRs()[fam].Addr() {
						t.Errorf("pod %s IP %s outside node CIDR %s", p.Name, ip, n.PodCIDRs()[fam])
					}
					if prev, dup := ips[ip]; dup {
						t.Errorf("pod IP %s used by %s and %s", ip, prev, p.Name)
					}
					ips[ip] = p.Name
				}
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
	if _, _, p, ok := a.Pod("cluster-b/demo/web-b1-1"); !ok || p.IP != netip.MustParseAddr("10.2.1.11") || p.IP6 != netip.MustParseAddr("fd00:10:2:1::b") {
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
