package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"

	"github.com/spf13/cobra"

	"github.com/fedmesh/fedmesh/nodeagent/flows"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// flowsCmd follows the verdict events of the agents: it asks the control
// plane for the nodes, then reads each agent's /flows stream (on its
// underlay address and metrics port).
func flowsCmd(g *globals) *cobra.Command {
	var cluster, verdict string
	var follow bool
	var port int
	cmd := &cobra.Command{
		Use:   "flows",
		Short: "Show the verdicts the agents' dataplanes report (new flows allowed or denied)",
		Example: `  fedctl flows --verdict deny
  fedctl flows --cluster cluster-b --follow`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dial()
			if err != nil {
				return err
			}
			lctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			resp, err := c.nodes.ListNodes(lctx, &fedmeshv1.ListNodesRequest{Cluster: cluster})
			cancel()
			c.cc.Close()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if !follow {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, g.timeout)
				defer cancel()
			}
			out := make(chan flows.Flow, 64)
			var wg sync.WaitGroup
			for _, n := range resp.GetNodes() {
				url := fmt.Sprintf("http://%s/flows?follow=%t&verdict=%s", net.JoinHostPort(n.GetUnderlayIp(), strconv.Itoa(port)), follow, verdict)
				wg.Go(func() {
					if err := readFlows(ctx, url, out); err != nil {
						fmt.Fprintf(g.errOut, "flows of %s/%s: %v\n", n.GetCluster(), n.GetName(), err)
					}
				})
			}
			go func() { wg.Wait(); close(out) }()
			fmt.Fprintln(g.out, "TIME          NODE                        DIR      SOURCE -> DESTINATION                        VERDICT  REASON")
			for f := range out {
				fmt.Fprintf(g.out, "%-13s %-27s %-8s %-44s %-8s %s\n", f.Time.Local().Format("15:04:05.000"), f.Cluster+"/"+f.Node, f.Direction,
					flowTuple(f), f.Verdict, flowReason(f))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "only this cluster's nodes")
	cmd.Flags().StringVar(&verdict, "verdict", "", "only allow or deny")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep streaming new flows")
	cmd.Flags().IntVar(&port, "agent-port", 9464, "port of the agents' metrics server (their --metrics-addr)")
	return cmd
}

func readFlows(ctx context.Context, url string, out chan<- flows.Flow) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: 0}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var f flows.Flow
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return fmt.Errorf("decode flow: %w", err)
		}
		select {
		case out <- f:
		case <-ctx.Done():
			return nil
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return sc.Err()
}

// flowTuple is "SRC:PORT -> DST:PORT proto", without ports for ICMP,
// which has none.
func flowTuple(f flows.Flow) string {
	if p := protoWord(f.Proto); p == "icmp" {
		return fmt.Sprintf("%s -> %s %s", f.Src, f.Dst, p)
	}
	return fmt.Sprintf("%s:%d -> %s:%d %s", f.Src, f.SrcPort, f.Dst, f.DstPort, protoWord(f.Proto))
}

// protoWord names an IP protocol number as fedctl's flags spell it.
func protoWord(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 132:
		return "sctp"
	case 1, 58:
		return "icmp"
	}
	return "proto " + strconv.Itoa(int(p))
}

func flowReason(f flows.Flow) string {
	if f.Rule != 0 {
		return fmt.Sprintf("%s (rule %d)", f.Reason, f.Rule)
	}
	return f.Reason
}
