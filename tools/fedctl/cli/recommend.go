package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/federation/recommend"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// policyRecommendCmd writes the policies that allow exactly the traffic a
// namespace was seen to take (federation/recommend), from the FlowService,
// and replays the flows against them with the policy compiler.
func policyRecommendCmd(g *globals) *cobra.Command {
	var (
		namespace, cluster, since string
		includeDenied, check      bool
	)
	cmd := &cobra.Command{
		Use:   "recommend",
		Short: "Policies that allow exactly a namespace's observed traffic and isolate it otherwise",
		Long: `Reads the namespace's flows from the FlowService and writes FederatedNetworkPolicies
(fedctl policy apply -f) that allow exactly the observed traffic, by workload labels
and destination ports, and isolate the namespace in both directions otherwise:
one policy per workload, one isolating the namespace per cluster. Peers are named
as narrowly as fedmesh selects them: workload labels, namespace by name, cluster by
fedmesh.io/cluster-name, an outside address as itself.

--check replays the flows against the recommendation alone with the compiler the
agents run: every observed flow must be allowed, and every flow between the
namespace's workloads and their peers on the observed ports that was not observed
must be denied. It exits non-zero otherwise.`,
		Example: `  fedctl policy recommend --namespace demo --since 1h -o yaml > demo-isolation.yaml
  fedctl policy recommend --namespace demo --cluster cluster-a --check`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if namespace == "" {
				return errors.New("--namespace is required: the namespace to isolate")
			}
			ff := flowFlags{cluster: cluster, namespace: namespace, since: since}
			if !includeDenied {
				ff.verdict = "allow"
			}
			filter, from, until, err := ff.request(time.Now())
			if err != nil {
				return err
			}
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.cc.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			observed, err := recommendFlows(ctx, fedmeshv1.NewFlowServiceClient(c.cc), &fedmeshv1.GetFlowsRequest{Filter: filter, Since: from, Until: until, Limit: 100000})
			if err != nil {
				return err
			}
			eps, err := c.eps.ListEndpoints(ctx, &fedmeshv1.ListEndpointsRequest{})
			if err != nil {
				return err
			}
			var known []recommend.Workload
			for _, ep := range eps.GetEndpoints() {
				known = append(known, workloadOfEndpoint(ep))
			}
			res, err := recommend.Recommend(observed, recommend.Options{Namespace: namespace, Cluster: cluster, Known: known})
			if err != nil {
				return err
			}
			for _, f := range res.Unexpressible {
				fmt.Fprintf(g.errOut, "not expressible as a NetworkPolicy rule (left out): %s/%s -> %s/%s protocol %d\n",
					f.Src.Namespace, f.Src.Name, f.Dst.Namespace, f.Dst.Name, f.Proto)
			}
			if check {
				cl, err := c.clusters.ListClusters(ctx, &fedmeshv1.ListClustersRequest{})
				if err != nil {
					return err
				}
				return replayRecommendation(g.out, namespace, cluster, observed, res, cl.GetClusters(), eps.GetEndpoints())
			}
			for _, p := range res.Policies {
				b, err := yaml.Marshal(p)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.out, "---\n%s", b)
			}
			if len(observed) == 0 {
				fmt.Fprintf(g.errOut, "no flows of namespace %s in the range: the recommendation isolates it completely\n", namespace)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&namespace, "namespace", "n", "", "namespace to isolate (required)")
	f.StringVar(&cluster, "cluster", "", "only this cluster's pods of the namespace (default: every cluster seen)")
	f.StringVar(&since, "since", "1h", "flows of this long ago up to now (or an RFC 3339 time)")
	f.BoolVar(&includeDenied, "include-denied", false, "also allow flows that were denied when observed (default: only allowed ones)")
	f.BoolVar(&check, "check", false, "replay the flows against the recommendation and report instead of printing it")
	return cmd
}

func recommendFlows(ctx context.Context, c fedmeshv1.FlowServiceClient, req *fedmeshv1.GetFlowsRequest) ([]recommend.Flow, error) {
	stream, err := c.GetFlows(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []recommend.Flow
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		for _, f := range m.GetFlows() {
			out = append(out, recommend.Flow{Src: workloadOfFlow(f.GetSource()), Dst: workloadOfFlow(f.GetDestination()),
				Proto: uint8(f.GetProtocol()), Port: uint16(f.GetDestination().GetPort())})
		}
	}
}

func workloadOfFlow(w *fedmeshv1.Workload) recommend.Workload {
	ip, _ := netip.ParseAddr(w.GetIp())
	return recommend.Workload{Cluster: w.GetCluster(), Namespace: w.GetNamespace(), Name: w.GetPod(), Labels: w.GetLabels(), IP: ip}
}

func workloadOfEndpoint(ep *fedmeshv1.Endpoint) recommend.Workload {
	w := recommend.Workload{Cluster: ep.GetCluster(), Namespace: ep.GetNamespace(), Name: ep.GetName(), Labels: ep.GetLabels()}
	if len(ep.GetIps()) > 0 {
		w.IP, _ = netip.ParseAddr(ep.GetIps()[0])
	}
	return w
}

// replayRecommendation decides every observed flow, and every unobserved
// flow between the namespace's workloads and the peers they were seen
// with on the ports they were seen on, against the recommendation alone.
func replayRecommendation(w io.Writer, namespace, cluster string, observed []recommend.Flow, res recommend.Result,
	clusters []*fedmeshv1.Cluster, eps []*fedmeshv1.Endpoint) error {
	e := policy.NewEngine()
	for _, c := range clusters {
		e.UpsertCluster(c)
	}
	for _, ep := range eps {
		e.UpsertEndpoint(ep)
	}
	for _, m := range res.Policies {
		if err := e.UpsertPolicy(model.PolicyFromFederated(m)); err != nil {
			return fmt.Errorf("compile recommended policy %s: %w", m.Name, err)
		}
	}
	target := func(x recommend.Workload) policy.Target {
		if x.External() {
			return policy.Target{IP: x.IP}
		}
		return policy.Target{Endpoint: &policy.EndpointKey{Cluster: x.Cluster, Namespace: x.Namespace, Name: x.Name}}
	}
	decide := func(f recommend.Flow) (bool, error) {
		x, err := e.Explain(policy.Flow{Src: target(f.Src), Dst: target(f.Dst), Proto: f.Proto, Port: f.Port})
		return x.Allowed, err
	}
	key := func(f recommend.Flow) string {
		side := func(x recommend.Workload) string {
			if x.External() {
				return x.IP.String()
			}
			return x.Cluster + "/" + x.Namespace + "/" + x.Name
		}
		return fmt.Sprint(side(f.Src), ">", side(f.Dst), "/", f.Proto, "/", f.Port)
	}
	seen := map[string]bool{}
	var allowed, deniedObserved int
	for _, f := range observed {
		if f.Proto != policy.ProtoTCP && f.Proto != policy.ProtoUDP && f.Proto != policy.ProtoSCTP {
			continue
		}
		seen[key(f)] = true
		ok, err := decide(f)
		if err != nil {
			continue // an endpoint gone since the flow: nothing to replay against
		}
		if ok {
			allowed++
		} else {
			deniedObserved++
			fmt.Fprintf(w, "observed but denied by the recommendation: %s\n", key(f))
		}
	}
	// Unobserved: every pair of sides seen in the flows, on every port
	// seen, that was not itself observed and touches the namespace.
	var sides []recommend.Workload
	sideSeen := map[string]bool{}
	var ports []recommend.Flow
	portSeen := map[[2]int]bool{}
	for _, f := range observed {
		for _, s := range []recommend.Workload{f.Src, f.Dst} {
			k := key(recommend.Flow{Src: s, Dst: s})
			if !sideSeen[k] {
				sideSeen[k] = true
				sides = append(sides, s)
			}
		}
		if pk := [2]int{int(f.Proto), int(f.Port)}; !portSeen[pk] {
			portSeen[pk] = true
			ports = append(ports, f)
		}
	}
	inScope := func(x recommend.Workload) bool {
		return !x.External() && x.Namespace == namespace && (cluster == "" || x.Cluster == cluster)
	}
	var deniedUnobserved, allowedUnobserved int
	for _, s := range sides {
		for _, d := range sides {
			if (!inScope(s) && !inScope(d)) || (s.External() && d.External()) {
				continue
			}
			for _, p := range ports {
				f := recommend.Flow{Src: s, Dst: d, Proto: p.Proto, Port: p.Port}
				if seen[key(f)] || sameWorkload(f, observed) {
					continue
				}
				ok, err := decide(f)
				if err != nil {
					continue
				}
				if ok {
					allowedUnobserved++
					fmt.Fprintf(w, "never observed but allowed by the recommendation: %s\n", key(f))
				} else {
					deniedUnobserved++
				}
			}
		}
	}
	fmt.Fprintf(w, "replay of namespace %s: %d observed flows allowed, %d denied; %d unobserved flows between the same workloads and ports denied, %d allowed\n",
		namespace, allowed, deniedObserved, deniedUnobserved, allowedUnobserved)
	if deniedObserved > 0 || allowedUnobserved > 0 {
		return errors.New("the recommendation does not match the observed traffic")
	}
	return nil
}

// sameWorkload reports whether an observed flow has the same workloads
// (cluster, namespace, workload labels) and port as f: the recommendation
// allows by workload, so another pod of an observed workload is observed.
func sameWorkload(f recommend.Flow, observed []recommend.Flow) bool {
	same := func(a, b recommend.Workload) bool {
		if a.External() || b.External() {
			return a.External() && b.External() && a.IP == b.IP
		}
		return a.Cluster == b.Cluster && a.Namespace == b.Namespace && recommend.SameWorkload(a.Labels, b.Labels)
	}
	for _, o := range observed {
		if o.Proto == f.Proto && o.Port == f.Port && same(o.Src, f.Src) && same(o.Dst, f.Dst) {
			return true
		}
	}
	return false
}
