package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func bgpCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bgp",
		Short: "BGP peers of the nodes' speakers, route filters and session status",
		Long: `BGP peers (routers the selected nodes peer with) and filters (Calico BGPFilter
rules: per family, ordered export and import rules matching a CIDR with Equal,
In or NotIn and a prefix-length range; the first match decides, no match
accepts). Peers and filters are written by admins; 'bgp status' shows every
node's sessions as its agent reports them.`,
	}
	peer := &cobra.Command{Use: "peer", Short: "Manage BGP peers"}
	peer.AddCommand(bgpApplyCmd(g, "BGPPeer"), bgpListPeersCmd(g), bgpGetCmd(g, "peer"), bgpDeleteCmd(g, "peer"))
	filter := &cobra.Command{Use: "filter", Short: "Manage BGP filters"}
	filter.AddCommand(bgpApplyCmd(g, "BGPFilter"), bgpListFiltersCmd(g), bgpGetCmd(g, "filter"), bgpDeleteCmd(g, "filter"))
	cmd.AddCommand(peer, filter, bgpStatusCmd(g), bgpServicesCmd(g))
	return cmd
}

const bgpManifestHelp = `Each document is

  apiVersion: fedmesh.io/v1
  kind: BGPPeer            # or BGPFilter
  metadata: {name: tor-r1}
  spec: ...                # the fields of fedmesh.v1.BGPPeerConfig / BGPFilter

with field names as in the API's JSON form (nodeSelector, localAsnLabel,
ebgpMultihopTtl, password: {file: /etc/fedmesh/tor-r1.md5}, ...). Enum values
take their API names or Calico's spellings: matchOperator Equal, In, NotIn;
action Accept, Reject; class PodCIDR.

Example:

  apiVersion: fedmesh.io/v1
  kind: BGPFilter
  metadata: {name: pods-only}
  spec:
    exportV4:
    - {cidr: 10.244.0.0/16, matchOperator: In, prefixLength: {min: 24, max: 26}, action: Accept}
    - {action: Reject}
  ---
  apiVersion: fedmesh.io/v1
  kind: BGPPeer
  metadata: {name: tor-r1}
  spec:
    address: 198.18.1.1
    asn: 65000
    nodeSelector: {matchLabels: {rack: r1}}
    filters: [pods-only]
    attributes: {communities: ["65000:100"]}`

func bgpApplyCmd(g *globals, kind string) *cobra.Command {
	var file string
	what := "peers"
	if kind == "BGPFilter" {
		what = "filters"
	}
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or replace BGP " + what + " from a manifest",
		Long:  "Create or replace BGP " + what + " from a multi-document YAML or JSON manifest. " + bgpManifestHelp,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("give the manifest with -f FILE (or -f - for stdin)")
			}
			objs, err := readBGPManifest(file, kind)
			if err != nil {
				return err
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				bc := fedmeshv1.NewBGPServiceClient(c.cc)
				for _, o := range objs {
					switch o := o.(type) {
					case *fedmeshv1.BGPPeerConfig:
						resp, err := bc.ApplyBGPPeer(ctx, &fedmeshv1.ApplyBGPPeerRequest{Peer: o})
						if err != nil {
							return fmt.Errorf("apply BGP peer %s: %w", o.GetName(), err)
						}
						fmt.Fprintf(g.out, "BGP peer %s applied at revision %d (selects %d nodes)\n", o.GetName(), resp.GetRevision(), resp.GetPeer().GetStatus().GetSelectedNodes())
					case *fedmeshv1.BGPFilter:
						resp, err := bc.ApplyBGPFilter(ctx, &fedmeshv1.ApplyBGPFilterRequest{Filter: o})
						if err != nil {
							return fmt.Errorf("apply BGP filter %s: %w", o.GetName(), err)
						}
						fmt.Fprintf(g.out, "BGP filter %s applied at revision %d\n", o.GetName(), resp.GetRevision())
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "manifest file (multi-document YAML or JSON; - for stdin)")
	return cmd
}

// bgpEnumNames maps Calico's spellings of the enum fields to the API's.
var bgpEnumNames = map[string]map[string]string{
	"matchOperator": {"Equal": "BGP_FILTER_MATCH_OPERATOR_EQUAL", "In": "BGP_FILTER_MATCH_OPERATOR_IN", "NotIn": "BGP_FILTER_MATCH_OPERATOR_NOT_IN"},
	"action":        {"Accept": "BGP_FILTER_ACTION_ACCEPT", "Reject": "BGP_FILTER_ACTION_REJECT"},
	"class":         {"PodCIDR": "BGP_PREFIX_CLASS_POD_CIDR", "Service": "BGP_PREFIX_CLASS_SERVICE"},
	"clusterIps":    {"ServiceCIDR": "BGP_CLUSTER_IP_ADVERTISEMENT_SERVICE_CIDR", "Addresses": "BGP_CLUSTER_IP_ADVERTISEMENT_ADDRESSES"},
}

// renameEnums rewrites Calico spellings in a decoded JSON value in place.
func renameEnums(v any) {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if s, ok := val.(string); ok {
				if n, ok := bgpEnumNames[k][s]; ok {
					x[k] = n
				}
				continue
			}
			renameEnums(val)
		}
	case []any:
		for _, e := range x {
			renameEnums(e)
		}
	}
}

// readBGPManifest reads the documents of one kind (BGPPeer or BGPFilter).
func readBGPManifest(path, kind string) ([]proto.Message, error) {
	var r io.Reader
	if path == "-" {
		r = os.Stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
		defer f.Close()
		r = f
	}
	var out []proto.Message
	yr := utilyaml.NewYAMLReader(bufio.NewReader(r))
	for doc := 1; ; doc++ {
		raw, err := yr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 {
			continue
		}
		var d struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Spec map[string]any `json:"spec"`
		}
		if err := yaml.UnmarshalStrict(raw, &d); err != nil {
			return nil, fmt.Errorf("%s document %d: %w", path, doc, err)
		}
		if d.APIVersion != "fedmesh.io/v1" || (d.Kind != "BGPPeer" && d.Kind != "BGPFilter") {
			return nil, fmt.Errorf("%s document %d: unsupported %s/%s: want fedmesh.io/v1 BGPPeer or BGPFilter", path, doc, d.APIVersion, d.Kind)
		}
		if d.Kind != kind {
			other := "peer"
			if d.Kind == "BGPFilter" {
				other = "filter"
			}
			return nil, fmt.Errorf("%s document %d is a %s: apply it with 'fedctl bgp %s apply'", path, doc, d.Kind, other)
		}
		if d.Spec == nil {
			d.Spec = map[string]any{}
		}
		renameEnums(d.Spec)
		if _, ok := d.Spec["name"]; ok {
			return nil, fmt.Errorf("%s document %d: the name goes in metadata.name, not in spec", path, doc)
		}
		d.Spec["name"] = d.Metadata.Name
		spec, err := json.Marshal(d.Spec)
		if err != nil {
			return nil, fmt.Errorf("%s document %d: %w", path, doc, err)
		}
		var m proto.Message = &fedmeshv1.BGPPeerConfig{}
		if kind == "BGPFilter" {
			m = &fedmeshv1.BGPFilter{}
		}
		if err := protojson.Unmarshal(spec, m); err != nil {
			return nil, fmt.Errorf("%s document %d (%s %s): spec: %w", path, doc, d.Kind, d.Metadata.Name, err)
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s has no %s", path, kind)
	}
	return out, nil
}

func bgpListPeersCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List BGP peers with how many nodes each selects",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := fedmeshv1.NewBGPServiceClient(c.cc).ListBGPPeers(ctx, &fedmeshv1.ListBGPPeersRequest{})
				if err != nil {
					return err
				}
				t := &table{header: []string{"PEER", "ADDRESS", "ASN", "CLUSTERS", "NODES", "LOCAL-ASN", "FILTERS", "SELECTED", "REVISION"}}
				var objs []proto.Message
				for _, p := range resp.GetPeers() {
					local := "node's"
					if p.GetLocalAsn() != 0 {
						local = strconv.FormatUint(uint64(p.GetLocalAsn()), 10)
					}
					if p.GetLocalAsnLabel() != "" {
						local += " (label " + p.GetLocalAsnLabel() + ")"
					}
					t.add(p.GetName(), p.GetAddress(), strconv.FormatUint(uint64(p.GetAsn()), 10),
						selectorString(p.GetClusterSelector()), selectorString(p.GetNodeSelector()), local,
						orNone(p.GetFilters()), strconv.FormatUint(uint64(p.GetStatus().GetSelectedNodes()), 10),
						strconv.FormatUint(p.GetMeta().GetRevision(), 10))
					objs = append(objs, p)
				}
				return g.print(t, objs...)
			})
		},
	}
}

func bgpListFiltersCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List BGP filters with their rule counts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := fedmeshv1.NewBGPServiceClient(c.cc).ListBGPFilters(ctx, &fedmeshv1.ListBGPFiltersRequest{})
				if err != nil {
					return err
				}
				t := &table{header: []string{"FILTER", "EXPORT-V4", "IMPORT-V4", "EXPORT-V6", "IMPORT-V6", "REVISION"}}
				var objs []proto.Message
				for _, f := range resp.GetFilters() {
					n := func(rs []*fedmeshv1.BGPFilterRule) string { return strconv.Itoa(len(rs)) }
					t.add(f.GetName(), n(f.GetExportV4()), n(f.GetImportV4()), n(f.GetExportV6()), n(f.GetImportV6()),
						strconv.FormatUint(f.GetMeta().GetRevision(), 10))
					objs = append(objs, f)
				}
				return g.print(t, objs...)
			})
		},
	}
}

func bgpGetCmd(g *globals, what string) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show one BGP " + what + " (YAML by default)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				bc := fedmeshv1.NewBGPServiceClient(c.cc)
				var obj proto.Message
				if what == "peer" {
					resp, err := bc.GetBGPPeer(ctx, &fedmeshv1.GetBGPPeerRequest{Name: args[0]})
					if err != nil {
						return err
					}
					obj = resp.GetPeer()
				} else {
					resp, err := bc.GetBGPFilter(ctx, &fedmeshv1.GetBGPFilterRequest{Name: args[0]})
					if err != nil {
						return err
					}
					obj = resp.GetFilter()
				}
				if g.output == "table" {
					g.output = "yaml"
				}
				return g.print(nil, obj)
			})
		},
	}
}

func bgpDeleteCmd(g *globals, what string) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete one BGP " + what,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				bc := fedmeshv1.NewBGPServiceClient(c.cc)
				var rev uint64
				if what == "peer" {
					resp, err := bc.DeleteBGPPeer(ctx, &fedmeshv1.DeleteBGPPeerRequest{Name: args[0]})
					if err != nil {
						return err
					}
					rev = resp.GetRevision()
				} else {
					resp, err := bc.DeleteBGPFilter(ctx, &fedmeshv1.DeleteBGPFilterRequest{Name: args[0]})
					if err != nil {
						return err
					}
					rev = resp.GetRevision()
				}
				fmt.Fprintf(g.out, "BGP %s %s deleted at revision %d\n", what, args[0], rev)
				return nil
			})
		},
	}
}

func bgpStatusCmd(g *globals) *cobra.Command {
	var cluster string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every node's BGP sessions: state, uptime, prefixes sent/received, last error",
		Long: `Show every node's BGP sessions as its agent last reported them: per node and
peer, the session state, uptime, prefixes sent and received and the last error.
A peer that selects the node but has no reported session shows as "not
reported"; what the agent could not resolve (a conflicting address, a bad ASN
label, an unreadable password file) follows the table, as do peers that
select no node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := fedmeshv1.NewBGPServiceClient(c.cc).GetBGPStatus(ctx, &fedmeshv1.GetBGPStatusRequest{Cluster: cluster})
				if err != nil {
					return err
				}
				if g.output != "table" && g.output != "" {
					return g.print(nil, resp)
				}
				return printBGPStatus(g.out, resp)
			})
		},
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "only this cluster's nodes")
	return cmd
}

func printBGPStatus(out io.Writer, resp *fedmeshv1.GetBGPStatusResponse) error {
	t := &table{header: []string{"CLUSTER", "NODE", "PEER", "ADDRESS", "ASN", "LOCAL-ASN", "STATE", "UPTIME", "SENT", "RECEIVED", "LAST-ERROR"}}
	addrOf := map[string]string{}
	for _, p := range resp.GetPeers() {
		addrOf[p.GetName()] = p.GetAddress()
	}
	var notes []string
	for _, n := range resp.GetNodes() {
		reported := map[string]bool{}
		for _, s := range n.GetSessions() {
			name := s.GetName()
			if name == "" {
				name = "(cluster)"
			}
			reported[s.GetName()] = true
			uptime := "-"
			if s.GetUptime() != nil {
				uptime = s.GetUptime().AsDuration().Truncate(time.Second).String()
			}
			local := "-"
			if s.GetLocalAsn() != 0 {
				local = strconv.FormatUint(uint64(s.GetLocalAsn()), 10)
			}
			lastErr := s.GetLastError()
			if lastErr == "" {
				lastErr = "-"
			}
			t.add(n.GetCluster(), n.GetNode(), name, s.GetAddress(), strconv.FormatUint(uint64(s.GetAsn()), 10), local,
				strings.TrimPrefix(s.GetState().String(), "BGP_SESSION_STATE_"), uptime,
				strconv.FormatUint(uint64(s.GetPrefixesSent()), 10), strconv.FormatUint(uint64(s.GetPrefixesReceived()), 10), lastErr)
		}
		for _, p := range n.GetSelectedBy() {
			if !reported[p] {
				t.add(n.GetCluster(), n.GetNode(), p, addrOf[p], "-", "-", "not reported", "-", "-", "-", "-")
			}
		}
		for _, pr := range n.GetProblems() {
			notes = append(notes, fmt.Sprintf("node %s/%s: %s", n.GetCluster(), n.GetNode(), pr))
		}
	}
	for _, p := range resp.GetPeers() {
		if p.GetStatus().GetSelectedNodes() == 0 {
			notes = append(notes, fmt.Sprintf("peer %s %s", p.GetName(), p.GetStatus().GetMessage()))
		}
	}
	g := &globals{out: out, output: "table"}
	if err := g.print(t); err != nil {
		return err
	}
	for _, n := range notes {
		if _, err := fmt.Fprintln(out, n); err != nil {
			return err
		}
	}
	return nil
}

func bgpServicesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "services CLUSTER",
		Short: "List a cluster's service advertisements: addresses, traffic policy, nodes with a ready backend",
		Long: `List what a cluster's syncer published of its Services for BGP: cluster,
external and LoadBalancer IPs, externalTrafficPolicy and the nodes with a
ready backend. Peers whose advertisements list the SERVICE class send these
addresses: with policy LOCAL only from the nodes listed under READY-NODES.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := fedmeshv1.NewBGPServiceClient(c.cc).ListServiceAdvertisements(ctx, &fedmeshv1.ListServiceAdvertisementsRequest{Cluster: args[0]})
				if err != nil {
					return err
				}
				t := &table{header: []string{"NAMESPACE", "NAME", "POLICY", "LB-IPS", "EXTERNAL-IPS", "CLUSTER-IPS", "READY-NODES"}}
				var objs []proto.Message
				for _, a := range resp.GetAdvertisements() {
					policy := "CLUSTER"
					if a.GetExternalTrafficPolicy() == fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL {
						policy = "LOCAL"
					}
					t.add(a.GetNamespace(), a.GetName(), policy, orNone(a.GetLoadBalancerIps()), orNone(a.GetExternalIps()),
						orNone(a.GetClusterIps()), orNone(a.GetReadyNodes()))
					objs = append(objs, a)
				}
				return g.print(t, objs...)
			})
		},
	}
}
