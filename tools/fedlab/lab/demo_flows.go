package lab

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// flows plays the flow-visibility step: the flows the agents shipped to the
// control plane summarised per workload pair, the service-graph page's
// sign-in link, and the policy recommended for namespace demo from the
// observed traffic, replayed against the flows with the agents' compiler.
func (d *Demo) flows(ctx context.Context, b Cluster, api Pod) error {
	d.say("Flows: every agent ships its dataplane's verdicts, attributed to the deciding policy, to the control plane over mTLS")
	// Shipping is asynchronous: wait until the summary shows a denied flow.
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var out string
	err := waitFor(wctx, "a denied flow in the summary", func() error {
		var err error
		out, err = d.Lab.Fedctl(wctx, "flows", "summary", "--namespace", "demo", "--since", "15m")
		if err == nil && !strings.Contains(out, "api-local-web-only") {
			err = fmt.Errorf("no flow denied by the demo's policy yet")
		}
		return err
	})
	if err != nil {
		return err
	}
	d.say("fedctl flows shows the drop, as the eBPF dataplane of %s reported it, with the policy that decided it", api.Name)
	list, err := d.Lab.Fedctl(ctx, "flows", "--verdict", "deny", "--cluster", b.Name)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.Out, "$ fedctl flows --verdict deny --cluster %s\n%s", b.Name, indent(list))
	d.say("fedctl flows summary: who talks to whom, allowed and denied per source -> destination:port")
	fmt.Fprintf(d.Out, "$ fedctl flows summary --namespace demo --since 15m\n%s", indent(out))
	d.say("The service graph: each replica serves it over HTTPS; fedctl prints a one-time sign-in link")
	if _, err := d.fedctl(ctx, "flows", "ui"); err != nil {
		return err
	}
	fmt.Fprintf(d.Out, "    (the page is reachable inside the lab's management namespace: sudo nsenter --net=/var/run/netns/%s chromium --no-sandbox --ignore-certificate-errors <link>)\n", d.Lab.Topo.Mgmt.NS)
	d.say("Policy recommended from the observed traffic of namespace demo in %s, and its replay against the recorded flows", d.Lab.Topo.Clusters[0].Name)
	rec, err := d.Lab.Fedctl(ctx, "policy", "recommend", "--namespace", "demo", "--cluster", d.Lab.Topo.Clusters[0].Name, "--since", "15m")
	if err != nil {
		return err
	}
	fmt.Fprint(d.Out, indent(firstLines(rec, 40)))
	if _, err := d.fedctl(ctx, "policy", "recommend", "--namespace", "demo", "--cluster", d.Lab.Topo.Clusters[0].Name, "--since", "15m", "--check"); err != nil {
		return err
	}
	return nil
}

// firstLines keeps the first n lines of s, saying how many it left out.
func firstLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) <= n {
		return s
	}
	return strings.Join(lines[:n], "") + fmt.Sprintf("... (%d more lines)\n", len(lines)-n)
}
