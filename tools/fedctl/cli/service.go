package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/federation/services"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func serviceCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "service", Aliases: []string{"services", "svc"}, Short: "Multi-cluster services: exports and the aggregated imports"}
	var cluster string
	exports := &cobra.Command{
		Use:   "exports",
		Short: "List service exports with their conditions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.services.ListServiceExports(ctx, &fedmeshv1.ListServiceExportsRequest{Cluster: cluster})
				if err != nil {
					return err
				}
				t := &table{header: []string{"CLUSTER", "NAMESPACE", "NAME", "TYPE", "AFFINITY", "PORTS", "BACKENDS", "CONDITIONS"}}
				var objs []proto.Message
				for _, x := range resp.GetExports() {
					t.add(x.GetCluster(), x.GetNamespace(), x.GetName(), svcType(x.GetType()), affinityName(x.GetAffinity()), portsString(x.GetPorts()),
						strconv.Itoa(len(x.GetBackends())), conditionsString(x.GetConditions()))
					objs = append(objs, x)
				}
				return g.print(t, objs...)
			})
		},
	}
	imports := &cobra.Command{
		Use:     "imports",
		Aliases: []string{"list"},
		Short:   "List aggregated service imports (as --cluster would see them): ClusterSetIPs, affinity, per-cluster ready backends and reachability",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.services.ListServiceImports(ctx, &fedmeshv1.ListServiceImportsRequest{Cluster: cluster})
				if err != nil {
					return err
				}
				t := &table{header: []string{"NAMESPACE", "NAME", "TYPE", "CLUSTERSET IPS", "AFFINITY", "PORTS", "CLUSTERS", "CONDITIONS"}}
				var objs []proto.Message
				for _, im := range resp.GetImports() {
					var cl []string
					for _, b := range im.GetClusters() {
						cl = append(cl, clusterBackendsSummary(b))
					}
					t.add(im.GetNamespace(), im.GetName(), svcType(im.GetType()), orNone(im.GetIps()), affinityName(im.GetAffinity()),
						portsString(im.GetPorts()), orNone(cl), conditionsString(im.GetConditions()))
					objs = append(objs, im)
				}
				return g.print(t, objs...)
			})
		},
	}
	get := &cobra.Command{
		Use:   "get NAMESPACE/NAME",
		Short: "Show one import's backends per cluster: node, readiness, the cluster's reachability, the affinity in force and (with --cluster) the backends that cluster's nodes translate to",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, ok := strings.Cut(args[0], "/")
			if !ok || ns == "" || name == "" {
				return fmt.Errorf("service %q: give it as NAMESPACE/NAME", args[0])
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.services.ListServiceImports(ctx, &fedmeshv1.ListServiceImportsRequest{Cluster: cluster})
				if err != nil {
					return err
				}
				var imp *fedmeshv1.ServiceImport
				for _, im := range resp.GetImports() {
					if im.GetNamespace() == ns && im.GetName() == name {
						imp = im
					}
				}
				if imp == nil {
					where := ""
					if cluster != "" {
						where = " visible to cluster " + cluster
					}
					return fmt.Errorf("no service import %s/%s%s; `fedctl service imports` lists them", ns, name, where)
				}
				cls, err := c.clusters.ListClusters(ctx, &fedmeshv1.ListClustersRequest{})
				if err != nil {
					return err
				}
				return g.print(serviceBackendsTable(imp, cluster, services.LivenessOf(cls.GetClusters())), imp)
			})
		},
	}
	c.PersistentFlags().StringVar(&cluster, "cluster", "", "exports of / imports visible to this cluster (default all); for get, the importing cluster whose choice to show")
	c.AddCommand(exports, imports, get)
	return c
}

// serviceBackendsTable lists every backend of imp; with an importing
// cluster, CHOSEN says which ones that cluster's nodes translate to (the
// agents' own rule, federation/services.Choose).
func serviceBackendsTable(imp *fedmeshv1.ServiceImport, importer string, live services.Liveness) *table {
	chosen := map[string]bool{}
	header := []string{"CLUSTER", "REACHABLE", "AFFINITY", "ADDRESS", "NODE", "READY", "NODE LIVE"}
	if importer != "" {
		header = append(header, "CHOSEN")
		for _, b := range services.Choose(imp, importer, live).Backends {
			chosen[b.Cluster+"/"+b.Addr.String()] = true
		}
	}
	t := &table{header: header}
	for _, cb := range imp.GetClusters() {
		eps := cb.GetEndpoints()
		if len(eps) == 0 { // an export without details lists ready addresses only
			for _, a := range cb.GetAddresses() {
				eps = append(eps, &fedmeshv1.ServiceBackend{Address: a, Ready: true})
			}
		}
		for _, e := range eps {
			nodeLive := "yes"
			if live.Stale[services.NodeKey{Cluster: cb.GetCluster(), Node: e.GetNode()}] {
				nodeLive = "no (stale)"
			}
			row := []string{cb.GetCluster(), reachableString(cb.GetReachability()), affinityName(imp.GetAffinity()), e.GetAddress(),
				orDash(e.GetNode()), strconv.FormatBool(e.GetReady()), nodeLive}
			if importer != "" {
				row = append(row, strconv.FormatBool(chosen[cb.GetCluster()+"/"+e.GetAddress()]))
			}
			t.add(row...)
		}
	}
	return t
}

// clusterBackendsSummary is "cluster(ready/total)" and, when the cluster is
// unreachable, "!unreachable".
func clusterBackendsSummary(b *fedmeshv1.ClusterBackends) string {
	ready, total := len(b.GetAddresses()), len(b.GetAddresses())
	if eps := b.GetEndpoints(); len(eps) > 0 {
		ready, total = 0, len(eps)
		for _, e := range eps {
			if e.GetReady() {
				ready++
			}
		}
	}
	s := fmt.Sprintf("%s(%d/%d)", b.GetCluster(), ready, total)
	if b.GetReachability() == fedmeshv1.Reachability_REACHABILITY_UNREACHABLE {
		s += "!unreachable"
	}
	return s
}

func affinityName(a fedmeshv1.Affinity) string {
	return strings.ToLower(strings.TrimPrefix(services.EffectiveAffinity(a).String(), "AFFINITY_"))
}

// reachableString renders a reachability for the REACHABLE columns.
func reachableString(r fedmeshv1.Reachability) string {
	switch r {
	case fedmeshv1.Reachability_REACHABILITY_REACHABLE:
		return "yes"
	case fedmeshv1.Reachability_REACHABILITY_UNREACHABLE:
		return "no"
	}
	return "unknown" // no heartbeat yet: not judged, backends kept
}
