package lab

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// PrintStatus writes what runs in the lab: processes, every node's enforced
// revision, BGP sessions and WireGuard handshakes (as its agent reports
// them), each ToR's learned pod routes, the pods with their addresses, and
// the outside's names.
func (l *Lab) PrintStatus(ctx context.Context, w io.Writer) error {
	t, st := l.Topo, l.State
	fmt.Fprintf(w, "lab %s: %d clusters\n\nprocesses:\n", t.Name, len(t.Clusters))
	for _, p := range st.Procs {
		state := "running"
		if !p.alive() {
			state = "EXITED (see " + p.Log + ")"
		}
		fmt.Fprintf(w, "  %-28s pid %-7d %s\n", p.Name, p.PID, state)
	}
	l.printNodes(ctx, w)
	for _, c := range t.Clusters {
		routes, err := ToRRoutes(ctx, c)
		if err != nil {
			return fmt.Errorf("read routes of %s: %w", c.ToR.NS, err)
		}
		fmt.Fprintf(w, "\n%s (ToR %s, %s, AS %d; nodes AS %d) pod routes learned over BGP:\n", c.Name, c.ToR.NS, c.ToRKind, c.ToRASN, c.ASN)
		n := 0
		for _, line := range strings.Split(routes, "\n") {
			if strings.Contains(line, "proto bird") || strings.Contains(line, "proto bgp") {
				fmt.Fprintf(w, "  %s\n", line)
				n++
			}
		}
		if n == 0 {
			fmt.Fprintln(w, "  (none yet)")
		}
		for _, nd := range c.Nodes {
			fmt.Fprintf(w, "  node %s underlay %s rack %s pods %s %s\n", nd.Name, nd.Host.Addr.Addr(), nd.Host.Addr6.Addr(), nd.PodCIDR, nd.PodCIDR6)
			for _, p := range nd.Pods {
				fmt.Fprintf(w, "    pod %s/%s/%s %s %s\n", c.Name, p.Namespace, p.Name, p.IP, p.IP6)
			}
		}
	}
	o := t.Outside
	fmt.Fprintf(w, "\noutside (%s, %s %s): unbound on %s and %s, authoritative for %s; servers tcp/udp %d, http %d on every name's address:\n",
		o.NS, o.Addr.Addr(), o.Addr6.Addr(), OutsideDNS, OutsideDNS6, OutsideZone, OutsideTCPPort, OutsideHTTPPort)
	for _, n := range OutsideNames {
		switch {
		case n.CNAME != "":
			fmt.Fprintf(w, "  %-32s %4ds CNAME %s.%s\n", n.FQDN(), n.TTL, n.CNAME, OutsideZone)
		default:
			fmt.Fprintf(w, "  %-32s %4ds %s %s\n", n.FQDN(), n.TTL, n.A, n.AAAA)
		}
	}
	fmt.Fprintf(w, "  pods ask the cluster DNS address %s (redirected to their agent's resolver) or %s\n", ClusterDNS[0], NodeDNS)
	return nil
}

func (l *Lab) printNodes(ctx context.Context, w io.Writer) {
	fmt.Fprintf(w, "\nnodes (as their agents report to the control plane):\n")
	cc, err := l.Dial()
	if err != nil {
		fmt.Fprintf(w, "  control plane unreachable: %v\n", err)
		return
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := fedmeshv1.NewNodeServiceClient(cc).ListNodes(ctx, &fedmeshv1.ListNodesRequest{})
	if err != nil {
		fmt.Fprintf(w, "  control plane unreachable: %v\n", err)
		return
	}
	fmt.Fprintf(w, "  store revision %d\n", resp.GetRevision())
	for _, n := range resp.GetNodes() {
		st := n.GetStatus()
		var bgp []string
		for _, p := range st.GetBgpPeers() {
			bgp = append(bgp, fmt.Sprintf("%s %s", p.GetAddress(), strings.ToLower(strings.TrimPrefix(p.GetState().String(), "BGP_SESSION_STATE_"))))
		}
		hs := 0
		for _, p := range st.GetWireguardPeers() {
			if p.GetLastHandshakeTime() != nil {
				hs++
			}
		}
		fmt.Fprintf(w, "  %-28s enforced %-6d ready %-5t bgp [%s] wireguard %d/%d handshaken\n",
			n.GetCluster()+"/"+n.GetName(), st.GetEnforcedRevision(), st.GetReady(), strings.Join(bgp, ", "), hs, len(st.GetWireguardPeers()))
	}
}
