package lab

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// PrintStatus writes what runs in the lab: processes, each ToR's learned
// pod routes, and the pods with their addresses.
func PrintStatus(ctx context.Context, w io.Writer, t *Topology, st *State) error {
	fmt.Fprintf(w, "lab %s: %d clusters\n\nprocesses:\n", t.Name, len(t.Clusters))
	for _, p := range st.Procs {
		state := "running"
		if !p.alive() {
			state = "EXITED (see " + p.Log + ")"
		}
		fmt.Fprintf(w, "  %-28s pid %-7d %s\n", p.Name, p.PID, state)
	}
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
			fmt.Fprintf(w, "  node %s underlay %s pods %s\n", nd.Name, nd.Host.Addr.Addr(), nd.PodCIDR)
			for _, p := range nd.Pods {
				fmt.Fprintf(w, "    pod %s/%s/%s %s\n", c.Name, p.Namespace, p.Name, p.IP)
			}
		}
	}
	return nil
}
