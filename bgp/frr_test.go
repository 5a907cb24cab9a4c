package bgp

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// frrToR is an iBGP ToR (same ASN as the node) reflecting the node's routes
// (the node is a route-reflector client) and mapping the unhealthy
// community to a lower local preference, as the package doc asks of a ToR.
func frrToR() string {
	nb := func(addr string) string {
		return fmt.Sprintf(" neighbor %s remote-as %d\n neighbor %s timers 3 9\n neighbor %s timers connect 1\n", addr, nodeASN, addr, addr)
	}
	af := func(family, addr string) string {
		return fmt.Sprintf(" address-family %s unicast\n  neighbor %s activate\n  neighbor %s route-reflector-client\n  neighbor %s route-map FROM-NODE in\n exit-address-family\n",
			family, addr, addr, addr)
	}
	return "hostname tor\n!\nrouter bgp " + fmt.Sprint(nodeASN) + "\n bgp router-id 198.18.0.1\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n bgp graceful-restart\n" +
		nb(nodeV4) + nb(nodeV6) + af("ipv4", nodeV4) + af("ipv6", nodeV6) +
		"!\nbgp community-list standard UNHEALTHY permit 65000:666\n!\nroute-map FROM-NODE permit 10\n match community UNHEALTHY\n set local-preference 50\n!\nroute-map FROM-NODE permit 20\n!\n"
}

func frrRoute(f *frr, family, prefix string) string {
	out, _ := f.vtysh(fmt.Sprintf("show bgp %s unicast %s", family, prefix))
	return out
}

func TestFRRLearnsPodCIDRsOverIBGPAndDeprefersWhenUnhealthy(t *testing.T) {
	l := newLab(t)
	f := startFRR(t, l.tor, frrToR())
	d := nodeDesired("")
	for i := range d.Peers {
		d.Peers[i].ASN = nodeASN // iBGP: the node is the ToR's route-reflector client
	}
	unhealthy := Community(65000<<16 | 666)
	d.UnhealthyCommunity = &unhealthy
	sp := startSpeaker(t, l.node, d)

	eventually(t, 30*time.Second, "iBGP sessions established", established(sp, t, torV4, torV6))
	for _, c := range []struct{ family, prefix string }{{"ipv4", podCIDR4}, {"ipv6", podCIDR6}} {
		eventually(t, 10*time.Second, "FRR holds "+c.prefix, func() string {
			if out := frrRoute(f, c.family, c.prefix); !strings.Contains(out, "best") {
				return out
			}
			return ""
		})
		eventually(t, 10*time.Second, "ToR FIB holds "+c.prefix, fibHas(t, l.tor, c.prefix, true))
	}
	eventually(t, 10*time.Second, "pod reachable over IPv4", pingable(l.host, podV4))
	eventually(t, 10*time.Second, "pod reachable over IPv6", pingable(l.host, podV6))

	if r := sp.call(t, "healthy", false); r.Error != "" || r.Actions != 2 {
		t.Fatalf("set unhealthy: %+v", r)
	}
	eventually(t, 10*time.Second, "FRR sees the unhealthy community and de-prefers", func() string {
		out := frrRoute(f, "ipv4", podCIDR4)
		if !strings.Contains(out, "65000:666") || !strings.Contains(out, "localpref 50") {
			return out
		}
		return ""
	})
	// De-preferred, not withdrawn: the pod stays reachable.
	if err := l.host.ping(podV4); err != nil {
		t.Fatalf("pod unreachable while de-preferred: %v", err)
	}
	if out := frrRoute(f, "ipv6", podCIDR6); !strings.Contains(out, "65000:666") {
		t.Errorf("IPv6 route lacks the community: %s", out)
	}

	if r := sp.call(t, "healthy", true); r.Error != "" || r.Actions != 2 {
		t.Fatalf("set healthy: %+v", r)
	}
	eventually(t, 10*time.Second, "community removed when healthy", func() string {
		out := frrRoute(f, "ipv4", podCIDR4)
		if strings.Contains(out, "65000:666") || !strings.Contains(out, "best") {
			return out
		}
		return ""
	})
	st, _ := statusOf(sp.status(t), torV6)
	if st.State != StateEstablished || st.PrefixesSent != 1 || st.ASN != nodeASN {
		t.Errorf("status of %s = %+v", torV6, st)
	}
}
