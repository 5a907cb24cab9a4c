package lab

import (
	"fmt"
	"strings"
)

// The ToRs are real routers: BIRD 2 for odd clusters, FRR for even ones, so
// both kinds of ToR users are shown. Each peers eBGP with every node of its
// rack, accepts only prefixes inside its cluster's pod CIDR, and installs
// what it learns into its namespace's kernel FIB, so pod IPs are routable
// inside the site with no overlay. Both families: an IPv4 session per node
// carries its IPv4 pod prefix, an IPv6 session (rack addresses) its IPv6
// one, as the agent's speaker sends each prefix on the session of its family.

// BIRDConfig renders bird.conf for cluster c's ToR.
func BIRDConfig(c Cluster, logPath string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# fedlab ToR of %s (BIRD 2)
router id %s;
log "%s" all;
protocol device { }
protocol direct { ipv4; ipv6; interface "rack"; }
protocol kernel {
  ipv4 { import none; export where source = RTS_BGP; };
  merge paths on;
}
protocol kernel {
  ipv6 { import none; export where source = RTS_BGP; };
  merge paths on;
}
filter pods_only {
  if net ~ [ %s{%d,32} ] then accept;
  reject;
}
filter pods6_only {
  if net ~ [ %s{%d,128} ] then accept;
  reject;
}
template bgp node {
  local %s as %d;
  hold time 9;
  keepalive time 3;
  graceful restart on;
  debug { states, events };
  ipv4 { import filter pods_only; export none; };
}
template bgp node6 {
  local %s as %d;
  hold time 9;
  keepalive time 3;
  graceful restart on;
  debug { states, events };
  ipv6 { import filter pods6_only; export none; };
}
`, c.Name, c.ToR.Addr.Addr(), logPath, c.PodCIDR, c.PodCIDR.Bits(), c.PodCIDR6, c.PodCIDR6.Bits(),
		c.RackAddr.Addr(), c.ToRASN, c.RackAddr6.Addr(), c.ToRASN)
	for i, n := range c.Nodes {
		fmt.Fprintf(&b, "protocol bgp node%d from node { neighbor %s as %d; }\n", i+1, n.Host.Addr.Addr(), c.ASN)
		fmt.Fprintf(&b, "protocol bgp node%dv6 from node6 { neighbor %s as %d; }\n", i+1, n.Host.Addr6.Addr(), c.ASN)
	}
	return b.String()
}

// FRRConfig renders frr.conf for cluster c's ToR (zebra + bgpd).
func FRRConfig(c Cluster, logPath string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `! fedlab ToR of %s (FRR)
frr defaults traditional
hostname %s
log file %s
!
ip prefix-list PODS seq 10 permit %s le 32
ipv6 prefix-list PODS6 seq 10 permit %s le 128
!
router bgp %d
 bgp router-id %s
 no bgp ebgp-requires-policy
 bgp graceful-restart
 timers bgp 3 9
`, c.Name, c.ToR.NS, logPath, c.PodCIDR, c.PodCIDR6, c.ToRASN, c.ToR.Addr.Addr())
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, " neighbor %s remote-as %d\n", n.Host.Addr.Addr(), c.ASN)
		fmt.Fprintf(&b, " neighbor %s remote-as %d\n", n.Host.Addr6.Addr(), c.ASN)
	}
	b.WriteString(" address-family ipv4 unicast\n")
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "  neighbor %s activate\n  neighbor %s prefix-list PODS in\n", n.Host.Addr.Addr(), n.Host.Addr.Addr())
		// The IPv6 session carries IPv6 only.
		fmt.Fprintf(&b, "  no neighbor %s activate\n", n.Host.Addr6.Addr())
	}
	b.WriteString(" exit-address-family\n address-family ipv6 unicast\n")
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "  neighbor %s activate\n  neighbor %s prefix-list PODS6 in\n", n.Host.Addr6.Addr(), n.Host.Addr6.Addr())
	}
	b.WriteString(" exit-address-family\n!\n")
	return b.String()
}
