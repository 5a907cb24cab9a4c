package cli

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func clusterCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "cluster", Short: "Register, list and inspect member clusters"}
	c.AddCommand(clusterRegisterCmd(g), clusterListCmd(g), clusterGetCmd(g), clusterDeleteCmd(g), clusterStatusCmd(g))
	return c
}

func clusterRegisterCmd(g *globals) *cobra.Command {
	var w waitFlags
	var (
		file                     string
		podCIDRs, svcCIDRs, lbls []string
		bgpASN                   uint32
		bgpPeers                 []string
		grSeconds                uint32
		unhealthyCommunity       string
		wg                       bool
		wgPort                   uint32
		tokenTTL                 time.Duration
		exportNS, exportExclude  []string
		importNS, importExclude  []string
	)
	cmd := &cobra.Command{
		Use:   "register NAME",
		Short: "Add a member cluster or update its spec",
		Long: `Add a member cluster or update its spec. Give the spec with flags, or as a
YAML/JSON file (-f) in the API's field names (see proto/fedmesh/v1/cluster.proto).
Pod CIDRs overlapping another cluster's are rejected.`,
		Example: `  fedctl cluster register east --pod-cidr 10.1.0.0/16 --pod-cidr fd00:1::/48 \
    --label env=prod --bgp-asn 64512 --bgp-peer 198.18.1.1:65001 --wireguard`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl := &fedmeshv1.Cluster{}
			if file != "" {
				if err := readProtoFile(file, cl); err != nil {
					return err
				}
			}
			if len(args) == 1 {
				cl.Name = args[0]
			}
			if cl.Name == "" {
				return fmt.Errorf("give the cluster's name as an argument or in the file")
			}
			cl.PodCidrs = append(cl.PodCidrs, podCIDRs...)
			cl.ServiceCidrs = append(cl.ServiceCidrs, svcCIDRs...)
			l, err := parseLabels(lbls)
			if err != nil {
				return err
			}
			if len(l) > 0 && cl.Labels == nil {
				cl.Labels = map[string]string{}
			}
			for k, v := range l {
				cl.Labels[k] = v
			}
			if bgpASN != 0 || len(bgpPeers) > 0 {
				if cl.Bgp == nil {
					cl.Bgp = &fedmeshv1.BGPSettings{}
				}
				cl.Bgp.Enabled = true
				if bgpASN != 0 {
					cl.Bgp.LocalAsn = bgpASN
				}
				if grSeconds != 0 {
					cl.Bgp.GracefulRestartSeconds = grSeconds
				}
				if unhealthyCommunity != "" {
					cl.Bgp.UnhealthyCommunity = unhealthyCommunity
				}
				for _, p := range bgpPeers {
					peer, err := parsePeer(p)
					if err != nil {
						return err
					}
					cl.Bgp.Peers = append(cl.Bgp.Peers, peer)
				}
			}
			if wg {
				if cl.Wireguard == nil {
					cl.Wireguard = &fedmeshv1.WireGuardSettings{}
				}
				cl.Wireguard.Enabled = true
				if wgPort != 0 {
					cl.Wireguard.ListenPort = wgPort
				}
			}
			if len(exportNS)+len(exportExclude) > 0 {
				cl.Exports = &fedmeshv1.NamespaceScope{Names: exportNS, ExcludeNames: exportExclude}
			}
			if len(importNS)+len(importExclude) > 0 {
				cl.Imports = &fedmeshv1.NamespaceScope{Names: importNS, ExcludeNames: importExclude}
			}
			settings, err := g.settings()
			if err != nil {
				return err
			}
			return g.runWith(cmd.Context(), settings, func(ctx context.Context, c *conn) error {
				resp, err := c.clusters.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: cl})
				if err != nil {
					return err
				}
				if g.output != "table" {
					return g.print(nil, resp.GetCluster())
				}
				fmt.Fprintf(g.out, "cluster %s registered at revision %d\n", resp.GetCluster().GetName(), resp.GetRevision())
				if err := g.waitEnforced(ctx, c, w, resp.GetRevision(), nil); err != nil {
					return err
				}
				if !g.isAdmin() {
					return nil
				}
				// The syncer's credential: a token it exchanges once for
				// its own certificate, so no key ever travels.
				tok, err := createJoinToken(ctx, c, resp.GetCluster().GetName(), "", tokenTTL)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.out, "join token for %s (single use, expires %s):\n%s\n", tok.GetPrincipal(), tok.GetExpireTime().AsTime().UTC().Format(time.RFC3339), tok.GetToken())
				fmt.Fprintf(g.out, "start the syncer with: fedmesh-syncer --cluster %s --ca-file %s --join-token <token>\n", resp.GetCluster().GetName(), settings.CA)
				return nil
			})
		},
	}
	w.register(cmd)
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "cluster spec as YAML or JSON")
	f.DurationVar(&tokenTTL, "token-ttl", auth.DefaultTokenTTL, "lifetime of the syncer's join token printed after registering (over mTLS as admin)")
	f.StringSliceVar(&podCIDRs, "pod-cidr", nil, "pod CIDR, one per family (repeat for dual-stack: an IPv4 and an IPv6 one)")
	f.StringSliceVar(&svcCIDRs, "service-cidr", nil, "service CIDR (one per family)")
	f.StringSliceVar(&lbls, "label", nil, "cluster label key=value, matched by federated policies' cluster selectors")
	f.Uint32Var(&bgpASN, "bgp-asn", 0, "ASN of the cluster's node speakers (enables BGP)")
	f.StringSliceVar(&bgpPeers, "bgp-peer", nil, "ToR peer ADDRESS:ASN (IPv6 as [ADDR]:ASN); give an MD5 password by reference with a BGP peer object (fedctl bgp peer apply), never here")
	f.Uint32Var(&grSeconds, "graceful-restart", 120, "BGP graceful-restart time in seconds (0 disables)")
	f.StringVar(&unhealthyCommunity, "unhealthy-community", "", "community attached instead of withdrawing when a node is unhealthy (ASN:VALUE)")
	f.BoolVar(&wg, "wireguard", false, "tunnel to other clusters' nodes over WireGuard")
	f.Uint32Var(&wgPort, "wireguard-port", 0, "default WireGuard UDP port of the nodes")
	f.StringSliceVar(&exportNS, "export-namespace", nil, "export only these namespaces (default all)")
	f.StringSliceVar(&exportExclude, "export-exclude-namespace", nil, "never export these namespaces")
	f.StringSliceVar(&importNS, "import-namespace", nil, "import only these namespaces from other clusters (default all)")
	f.StringSliceVar(&importExclude, "import-exclude-namespace", nil, "never import these namespaces")
	return cmd
}

// parsePeer reads ADDRESS:ASN[:PASSWORD]; an IPv6 address is bracketed.
func parsePeer(s string) (*fedmeshv1.BGPPeer, error) {
	var addr, rest string
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 || len(s) < end+2 || s[end+1] != ':' {
			return nil, fmt.Errorf("bgp peer %q: want [IPV6]:ASN[:PASSWORD]", s)
		}
		addr, rest = s[1:end], s[end+2:]
	} else {
		var ok bool
		addr, rest, ok = strings.Cut(s, ":")
		if !ok {
			return nil, fmt.Errorf("bgp peer %q: want ADDRESS:ASN[:PASSWORD]", s)
		}
	}
	asnStr, password, _ := strings.Cut(rest, ":")
	asn, err := strconv.ParseUint(asnStr, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("bgp peer %q: ASN %q is not a number", s, asnStr)
	}
	return &fedmeshv1.BGPPeer{Address: addr, Asn: uint32(asn), Password: password}, nil
}

// readProtoFile reads a YAML or JSON file in protojson field names into m.
func readProtoFile(path string, m proto.Message) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	if err := protojson.Unmarshal(js, m); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	return nil
}

func clusterListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List member clusters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.clusters.ListClusters(ctx, &fedmeshv1.ListClustersRequest{})
				if err != nil {
					return err
				}
				t := &table{header: []string{"NAME", "LABELS", "POD CIDRS", "NODES", "ENDPOINTS", "REACHABLE", "STALE NODES", "BGP ASN", "REVISION"}}
				var objs []proto.Message
				for _, cl := range resp.GetClusters() {
					asn := "-"
					if cl.GetBgp().GetEnabled() {
						asn = strconv.FormatUint(uint64(cl.GetBgp().GetLocalAsn()), 10)
					}
					t.add(cl.GetName(), labelString(cl.GetLabels()), orNone(cl.GetPodCidrs()),
						strconv.Itoa(int(cl.GetStatus().GetNodes())), strconv.Itoa(int(cl.GetStatus().GetEndpoints())),
						reachableString(cl.GetStatus().GetReachability()), orNone(cl.GetStatus().GetStaleNodes()), asn, strconv.FormatUint(cl.GetMeta().GetRevision(), 10))
					objs = append(objs, cl)
				}
				return g.print(t, objs...)
			})
		},
	}
}

func clusterGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show one cluster's spec and status (YAML by default)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.clusters.GetCluster(ctx, &fedmeshv1.GetClusterRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if g.output == "table" {
					g.output = "yaml"
				}
				return g.print(nil, resp.GetCluster())
			})
		},
	}
}

func clusterDeleteCmd(g *globals) *cobra.Command {
	var w waitFlags
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Remove a cluster and everything it owned (nodes, endpoints, exports, its policies)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.clusters.DeleteCluster(ctx, &fedmeshv1.DeleteClusterRequest{Name: args[0]})
				if err != nil {
					return err
				}
				fmt.Fprintf(g.out, "cluster %s deleted at revision %d\n", args[0], resp.GetRevision())
				// The deleted cluster's nodes are gone: wait on the others.
				return g.waitEnforced(ctx, c, w, resp.GetRevision(), nil)
			})
		},
	}
	w.register(cmd)
	return cmd
}

func clusterStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status [NAME]",
		Short: "Show every node: the revision it enforces, its BGP sessions, WireGuard peers and service translation problems",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cluster := ""
			if len(args) == 1 {
				cluster = args[0]
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := c.nodes.ListNodes(ctx, &fedmeshv1.ListNodesRequest{Cluster: cluster})
				if err != nil {
					return err
				}
				t := &table{header: []string{"CLUSTER", "NODE", "ENFORCED", "BEHIND", "READY", "BGP", "WIREGUARD", "SERVICES", "REPORTED"}}
				var objs []proto.Message
				for _, n := range resp.GetNodes() {
					st := n.GetStatus()
					behind := "-"
					if st.GetEnforcedRevision() > 0 {
						behind = strconv.FormatUint(resp.GetRevision()-min(resp.GetRevision(), st.GetEnforcedRevision()), 10)
					}
					reported := "never"
					if st.GetReportTime() != nil {
						reported = time.Since(st.GetReportTime().AsTime()).Round(time.Second).String() + " ago"
					}
					t.add(n.GetCluster(), n.GetName(), strconv.FormatUint(st.GetEnforcedRevision(), 10), behind,
						strconv.FormatBool(st.GetReady()), bgpSummary(st.GetBgpPeers()), wgSummary(st.GetWireguardPeers()),
						servicesSummary(st.GetServiceProblems()), reported)
					// Which services, and why, under the table: a
					// truncated service is served with the backends that fit.
					for _, p := range st.GetServiceProblems() {
						t.notes = append(t.notes, fmt.Sprintf("%s/%s: %s", n.GetCluster(), n.GetName(), p))
					}
					// Why a node is not ready, or what its dataplane
					// refuses (a full ipcache map): never only in its log.
					if m := st.GetMessage(); m != "" {
						t.notes = append(t.notes, fmt.Sprintf("%s/%s: %s", n.GetCluster(), n.GetName(), m))
					}
					objs = append(objs, n)
				}
				return g.print(t, objs...)
			})
		},
	}
}

func bgpSummary(peers []*fedmeshv1.BGPPeerStatus) string {
	if len(peers) == 0 {
		return "-"
	}
	var parts []string
	for _, p := range peers {
		state := strings.TrimPrefix(p.GetState().String(), "BGP_SESSION_STATE_")
		parts = append(parts, fmt.Sprintf("%s=%s(%d/%d)", p.GetAddress(), strings.ToLower(state), p.GetPrefixesSent(), p.GetPrefixesReceived()))
	}
	return strings.Join(parts, " ")
}

// servicesSummary is a node's SERVICES cell: "-" or how many frontends its
// translation truncates (the notes under the table name them).
func servicesSummary(problems []string) string {
	if len(problems) == 0 {
		return "-"
	}
	return fmt.Sprintf("%d truncated", len(problems))
}

func wgSummary(peers []*fedmeshv1.WireGuardPeerStatus) string {
	if len(peers) == 0 {
		return "-"
	}
	up := 0
	for _, p := range peers {
		if p.GetLastHandshakeTime() != nil && time.Since(p.GetLastHandshakeTime().AsTime()) < 3*time.Minute {
			up++
		}
	}
	return fmt.Sprintf("%d/%d handshaken", up, len(peers))
}
