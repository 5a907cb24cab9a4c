package model

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func goodCluster() *fedmeshv1.Cluster {
	return &fedmeshv1.Cluster{
		Name:         "east",
		Labels:       map[string]string{"region": "eu-west", "fedmesh.io/tier": "prod"},
		PodCidrs:     []string{"10.1.0.0/16", "fd00:1::/48"},
		ServiceCidrs: []string{"10.96.0.0/16"},
		Bgp: &fedmeshv1.BGPSettings{Enabled: true, LocalAsn: 64512, GracefulRestartSeconds: 120,
			UnhealthyCommunity: "64512:666",
			Peers:              []*fedmeshv1.BGPPeer{{Address: "198.18.0.1", Asn: 65000, HoldTimeSeconds: 9, KeepaliveSeconds: 3}}},
		Wireguard: &fedmeshv1.WireGuardSettings{Enabled: true, ListenPort: 51871, Mtu: 1420},
		Exports:   &fedmeshv1.NamespaceScope{ExcludeNames: []string{"kube-system"}},
	}
}

func goodNode() *fedmeshv1.Node {
	return &fedmeshv1.Node{
		Cluster: "east", Name: "node-1.example", UnderlayIp: "198.18.1.10",
		PodCidrs:           []string{"10.1.1.0/24", "fd00:1:0:1::/64"},
		WireguardPublicKey: "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
	}
}

func goodEndpoints() *fedmeshv1.UpsertEndpointsRequest {
	return &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{{
		Namespace: "shop", Name: "web-0", Ips: []string{"10.1.1.5", "fd00:1:0:1::5"}, Node: "node-1",
		Labels:     map[string]string{"app": "web"},
		NamedPorts: []*fedmeshv1.NamedPort{{Name: "http", Port: 8080}, {Name: "dns", Port: 53, Protocol: fedmeshv1.Protocol_PROTOCOL_UDP}},
	}}}
}

func goodExports() *fedmeshv1.ExportServicesRequest {
	return &fedmeshv1.ExportServicesRequest{Cluster: "east", Exports: []*fedmeshv1.ServiceExport{{
		Namespace: "shop", Name: "web", Type: fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP,
		Ports:    []*fedmeshv1.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "https", Port: 443}},
		Backends: []string{"10.1.1.5"},
	}}}
}

func goodPolicies() *fedmeshv1.ApplyPoliciesRequest {
	return &fedmeshv1.ApplyPoliciesRequest{Cluster: "east", Policies: []*fedmeshv1.Policy{{
		Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "east", Namespace: "shop", Name: "web-allow",
		Spec: &fedmeshv1.NetworkPolicySpec{
			PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{
				Ports: []*fedmeshv1.NetworkPolicyPort{
					{Port: &fedmeshv1.NetworkPolicyPort_Number{Number: 8000}, EndPort: 8100},
					{Protocol: fedmeshv1.Protocol_PROTOCOL_UDP, Port: &fedmeshv1.NetworkPolicyPort_Name{Name: "dns"}},
				},
				From: []*fedmeshv1.NetworkPolicyPeer{
					{PodSelector: &fedmeshv1.LabelSelector{}, NamespaceSelector: &fedmeshv1.LabelSelector{
						MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: "team", Operator: "In", Values: []string{"a", "b"}}}}},
					{IpBlock: &fedmeshv1.IPBlock{Cidr: "192.0.2.0/24", Except: []string{"192.0.2.128/25"}}},
				},
			}},
			PolicyTypes: []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_INGRESS},
		},
	}}}
}

func federated() *fedmeshv1.ApplyPoliciesRequest {
	return &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{{
		Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Name: "global-dns",
		ClusterSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}},
		Spec: &fedmeshv1.NetworkPolicySpec{
			PodSelector: &fedmeshv1.LabelSelector{},
			Egress: []*fedmeshv1.NetworkPolicyEgressRule{{
				To: []*fedmeshv1.NetworkPolicyPeer{{ClusterSelector: &fedmeshv1.LabelSelector{}, PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}}}},
			}},
			PolicyTypes: []fedmeshv1.PolicyType{fedmeshv1.PolicyType_POLICY_TYPE_EGRESS},
		},
	}}}
}

func TestValidObjectsPass(t *testing.T) {
	c := goodCluster()
	for name, err := range map[string]error{
		"cluster":          ValidateCluster(c),
		"node":             ValidateNode(goodNode(), c),
		"endpoints":        ValidateUpsertEndpoints(goodEndpoints(), c),
		"exports":          ValidateExportServices(goodExports()),
		"policies":         ValidateApplyPolicies(goodPolicies()),
		"federated policy": ValidateApplyPolicies(federated()),
		"no overlap":       ValidateClusterOverlap(c, []*fedmeshv1.Cluster{c, {Name: "west", PodCidrs: []string{"10.2.0.0/16", "fd00:2::/48"}}}),
	} {
		if err != nil {
			t.Errorf("%s: unexpected error: %v", name, err)
		}
	}
}

// badCase mutates a valid object and expects one specific field error.
type badCase struct {
	name   string
	check  func() error
	field  string
	typ    field.ErrorType
	reason string // substring of the detail, "" to skip
}

func cluster(mut func(*fedmeshv1.Cluster)) func() error {
	return func() error { c := goodCluster(); mut(c); return ValidateCluster(c) }
}

func node(mut func(*fedmeshv1.Node)) func() error {
	return func() error { n := goodNode(); mut(n); return ValidateNode(n, goodCluster()) }
}

func endpoints(mut func(*fedmeshv1.UpsertEndpointsRequest)) func() error {
	return func() error { r := goodEndpoints(); mut(r); return ValidateUpsertEndpoints(r, goodCluster()) }
}

func exports(mut func(*fedmeshv1.ExportServicesRequest)) func() error {
	return func() error { r := goodExports(); mut(r); return ValidateExportServices(r) }
}

func policies(mut func(*fedmeshv1.ApplyPoliciesRequest)) func() error {
	return func() error { r := goodPolicies(); mut(r); return ValidateApplyPolicies(r) }
}

func fedPolicies(mut func(*fedmeshv1.ApplyPoliciesRequest)) func() error {
	return func() error { r := federated(); mut(r); return ValidateApplyPolicies(r) }
}

func ingressPort(r *fedmeshv1.ApplyPoliciesRequest) *fedmeshv1.NetworkPolicyPort {
	return r.Policies[0].Spec.Ingress[0].Ports[0]
}

func ingressPeer(r *fedmeshv1.ApplyPoliciesRequest, i int) *fedmeshv1.NetworkPolicyPeer {
	return r.Policies[0].Spec.Ingress[0].From[i]
}

func TestBadInputNamesFieldAndReason(t *testing.T) {
	long := strings.Repeat("a", 64)
	cases := []badCase{
		// Cluster.
		{"empty cluster name", cluster(func(c *fedmeshv1.Cluster) { c.Name = "" }), "cluster.name", field.ErrorTypeRequired, ""},
		{"cluster name too long", cluster(func(c *fedmeshv1.Cluster) { c.Name = long }), "cluster.name", field.ErrorTypeInvalid, "no more than 63"},
		{"cluster name upper case", cluster(func(c *fedmeshv1.Cluster) { c.Name = "East" }), "cluster.name", field.ErrorTypeInvalid, "lower case"},
		{"bad label key", cluster(func(c *fedmeshv1.Cluster) { c.Labels = map[string]string{"-bad": "x"} }), "cluster.labels", field.ErrorTypeInvalid, "name part must consist"},
		{"label value too long", cluster(func(c *fedmeshv1.Cluster) { c.Labels = map[string]string{"a": long} }), "cluster.labels", field.ErrorTypeInvalid, "63"},
		{"no pod CIDR", cluster(func(c *fedmeshv1.Cluster) { c.PodCidrs = nil }), "cluster.podCIDRs", field.ErrorTypeRequired, ""},
		{"pod CIDR not a CIDR", cluster(func(c *fedmeshv1.Cluster) { c.PodCidrs[1] = "fd00:1::" }), "cluster.podCIDRs[1]", field.ErrorTypeInvalid, "must be a CIDR"},
		{"pod CIDR host bits", cluster(func(c *fedmeshv1.Cluster) { c.PodCidrs[0] = "10.1.0.1/16" }), "cluster.podCIDRs[0]", field.ErrorTypeInvalid, "did you mean 10.1.0.0/16"},
		{"two v4 pod CIDRs where dual-stack meant one", cluster(func(c *fedmeshv1.Cluster) { c.PodCidrs = []string{"10.1.0.0/16", "10.2.0.0/16"} }), "cluster.podCIDRs[1]", field.ErrorTypeInvalid, "at most 1 IPv4"},
		{"two v6 pod CIDRs", cluster(func(c *fedmeshv1.Cluster) { c.PodCidrs = append(c.PodCidrs, "fd00:2::/48") }), "cluster.podCIDRs[2]", field.ErrorTypeInvalid, "at most 1 IPv6"},
		{"pod CIDRs overlap each other", cluster(func(c *fedmeshv1.Cluster) { c.PodCidrs = []string{"10.0.0.0/8", "10.1.0.0/16"} }), "cluster.podCIDRs[1]", field.ErrorTypeInvalid, "overlaps 10.0.0.0/8"},
		{"two v4 service CIDRs", cluster(func(c *fedmeshv1.Cluster) { c.ServiceCidrs = []string{"10.96.0.0/16", "10.97.0.0/16"} }), "cluster.serviceCIDRs[1]", field.ErrorTypeInvalid, "at most 1 IPv4"},
		{"service CIDR inside pod CIDR", cluster(func(c *fedmeshv1.Cluster) { c.ServiceCidrs = []string{"10.1.200.0/24"} }), "cluster.serviceCIDRs[0]", field.ErrorTypeInvalid, "overlaps pod CIDR"},
		{"BGP ASN zero", cluster(func(c *fedmeshv1.Cluster) { c.Bgp.LocalAsn = 0 }), "cluster.bgp.localAsn", field.ErrorTypeRequired, ""},
		{"BGP ASN reserved", cluster(func(c *fedmeshv1.Cluster) { c.Bgp.LocalAsn = 4294967295 }), "cluster.bgp.localAsn", field.ErrorTypeInvalid, "between 1 and 4294967294"},
		{"BGP AS_TRANS", cluster(func(c *fedmeshv1.Cluster) { c.Bgp.Peers[0].Asn = 23456 }), "cluster.bgp.peers[0].asn", field.ErrorTypeInvalid, "AS_TRANS"},
		{"BGP peer not an IP", cluster(func(c *fedmeshv1.Cluster) { c.Bgp.Peers[0].Address = "tor-1" }), "cluster.bgp.peers[0].address", field.ErrorTypeInvalid, "IPv4 or IPv6"},
		{"BGP duplicate peer", cluster(func(c *fedmeshv1.Cluster) {
			c.Bgp.Peers = append(c.Bgp.Peers, proto.Clone(c.Bgp.Peers[0]).(*fedmeshv1.BGPPeer))
		}), "cluster.bgp.peers[1].address", field.ErrorTypeDuplicate, ""},
		{"BGP hold time 2", cluster(func(c *fedmeshv1.Cluster) { c.Bgp.Peers[0].HoldTimeSeconds = 2 }), "cluster.bgp.peers[0].holdTimeSeconds", field.ErrorTypeInvalid, "RFC 4271"},
		{"BGP keepalive >= hold", cluster(func(c *fedmeshv1.Cluster) { c.Bgp.Peers[0].KeepaliveSeconds = 9 }), "cluster.bgp.peers[0].keepaliveSeconds", field.ErrorTypeInvalid, "less than the hold time"},
		{"BGP port 65536", cluster(func(c *fedmeshv1.Cluster) { c.Bgp.Peers[0].Port = 65536 }), "cluster.bgp.peers[0].port", field.ErrorTypeInvalid, "between 1 and 65535"},
		{"BGP MD5 password in clear", cluster(func(c *fedmeshv1.Cluster) { c.Bgp.Peers[0].Password = "s3cret" }), "cluster.bgp.peers[0].password", field.ErrorTypeForbidden, "stores no BGP password in clear"},
		{"BGP bad community", cluster(func(c *fedmeshv1.Cluster) { c.Bgp.UnhealthyCommunity = "65536:1" }), "cluster.bgp.unhealthyCommunity", field.ErrorTypeInvalid, "between 0 and 65535"},
		{"BGP graceful restart too long", cluster(func(c *fedmeshv1.Cluster) { c.Bgp.GracefulRestartSeconds = 5000 }), "cluster.bgp.gracefulRestartSeconds", field.ErrorTypeInvalid, "4095"},
		{"BGP peers while disabled", cluster(func(c *fedmeshv1.Cluster) { c.Bgp.Enabled = false }), "cluster.bgp.enabled", field.ErrorTypeInvalid, "not enabled"},
		{"WireGuard MTU too small", cluster(func(c *fedmeshv1.Cluster) { c.Wireguard.Mtu = 576 }), "cluster.wireguard.mtu", field.ErrorTypeInvalid, "1280"},
		{"WireGuard port 65536", cluster(func(c *fedmeshv1.Cluster) { c.Wireguard.ListenPort = 65536 }), "cluster.wireguard.listenPort", field.ErrorTypeInvalid, "between 1 and 65535"},
		{"export scope duplicate", cluster(func(c *fedmeshv1.Cluster) { c.Exports.ExcludeNames = []string{"a", "a"} }), "cluster.exports.excludeNames[1]", field.ErrorTypeDuplicate, ""},
		{"import scope bad namespace", cluster(func(c *fedmeshv1.Cluster) { c.Imports = &fedmeshv1.NamespaceScope{Names: []string{"Shop"}} }), "cluster.imports.names[0]", field.ErrorTypeInvalid, "lower case"},
		{"pod CIDR overlaps another cluster", func() error {
			return ValidateClusterOverlap(goodCluster(), []*fedmeshv1.Cluster{{Name: "west", PodCidrs: []string{"10.0.0.0/8"}}})
		}, "cluster.podCIDRs[0]", field.ErrorTypeInvalid, `cluster "west"`},
		{"v6 pod CIDR overlaps another cluster", func() error {
			return ValidateClusterOverlap(goodCluster(), []*fedmeshv1.Cluster{{Name: "west", PodCidrs: []string{"fd00:1:0:8::/64"}}})
		}, "cluster.podCIDRs[1]", field.ErrorTypeInvalid, "overlaps pod CIDR fd00:1:0:8::/64"},

		// Node.
		{"node without cluster", node(func(n *fedmeshv1.Node) { n.Cluster = "" }), "node.cluster", field.ErrorTypeRequired, ""},
		{"node name with underscore", node(func(n *fedmeshv1.Node) { n.Name = "node_1" }), "node.name", field.ErrorTypeInvalid, "RFC 1123"},
		{"node label value with a space", node(func(n *fedmeshv1.Node) { n.Labels = map[string]string{"rack": "r 1"} }), "node.labels", field.ErrorTypeInvalid, "a valid label must"},
		{"node underlay loopback", node(func(n *fedmeshv1.Node) { n.UnderlayIp = "127.0.0.1" }), "node.underlayIp", field.ErrorTypeInvalid, "non-loopback"},
		{"node underlay v4-mapped", node(func(n *fedmeshv1.Node) { n.UnderlayIp = "::ffff:198.18.1.10" }), "node.underlayIp", field.ErrorTypeInvalid, "plain IPv4"},
		{"node pod CIDR outside cluster", node(func(n *fedmeshv1.Node) { n.PodCidrs[0] = "10.9.1.0/24" }), "node.podCIDRs[0]", field.ErrorTypeInvalid, `not inside the IPv4 pod CIDR 10.1.0.0/16 of cluster "east"`},
		{"node v6 pod CIDR outside the cluster's v6", node(func(n *fedmeshv1.Node) { n.PodCidrs[1] = "fd00:9:0:1::/64" }), "node.podCIDRs[1]", field.ErrorTypeInvalid, "not inside the IPv6 pod CIDR fd00:1::/48"},
		{"node v6 pod CIDR wider than the cluster's v6", node(func(n *fedmeshv1.Node) { n.PodCidrs[1] = "fd00::/16" }), "node.podCIDRs[1]", field.ErrorTypeInvalid, "not inside the IPv6 pod CIDR fd00:1::/48"},
		{"node v6 pod CIDR in an IPv4-only cluster", func() error {
			c := goodCluster()
			c.PodCidrs = c.PodCidrs[:1]
			return ValidateNode(goodNode(), c)
		}, "node.podCIDRs[1]", field.ErrorTypeInvalid, "has no IPv6 pod CIDR"},
		{"node two v6 pod CIDRs", node(func(n *fedmeshv1.Node) { n.PodCidrs = append(n.PodCidrs, "fd00:1:0:2::/64") }), "node.podCIDRs[2]", field.ErrorTypeInvalid, "at most 1 IPv6"},
		{"node bad WireGuard key", node(func(n *fedmeshv1.Node) { n.WireguardPublicKey = "c2hvcnQ=" }), "node.wireguardPublicKey", field.ErrorTypeInvalid, "32 bytes"},

		// Endpoints.
		{"endpoint batch without cluster", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Cluster = "" }), "cluster", field.ErrorTypeRequired, ""},
		{"endpoint of another cluster", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Endpoints[0].Cluster = "west" }), "endpoints[0].cluster", field.ErrorTypeInvalid, `batch's cluster "east"`},
		{"endpoint empty namespace", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Endpoints[0].Namespace = "" }), "endpoints[0].namespace", field.ErrorTypeRequired, ""},
		{"endpoint without IPs", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Endpoints[0].Ips = nil }), "endpoints[0].ips", field.ErrorTypeRequired, ""},
		{"endpoint bad IP", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Endpoints[0].Ips[1] = "fd00:1::zz" }), "endpoints[0].ips[1]", field.ErrorTypeInvalid, "IPv4 or IPv6"},
		{"endpoint two v4 IPs", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Endpoints[0].Ips[1] = "10.1.1.6" }), "endpoints[0].ips[1]", field.ErrorTypeInvalid, "at most one IPv4"},
		{"endpoint IP outside cluster", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Endpoints[0].Ips[0] = "10.2.0.5" }), "endpoints[0].ips[0]", field.ErrorTypeInvalid, "not inside the IPv4 pod CIDR 10.1.0.0/16"},
		{"endpoint v6 IP outside the cluster's v6", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Endpoints[0].Ips[1] = "fd00:2::5" }), "endpoints[0].ips[1]", field.ErrorTypeInvalid, "not inside the IPv6 pod CIDR fd00:1::/48"},
		{"endpoint two v6 IPs", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Endpoints[0].Ips[0] = "fd00:1::6" }), "endpoints[0].ips[1]", field.ErrorTypeInvalid, "at most one IPv6"},
		{"endpoint duplicate key", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) {
			e := proto.Clone(r.Endpoints[0]).(*fedmeshv1.Endpoint)
			e.Ips = []string{"10.1.1.7"}
			r.Endpoints = append(r.Endpoints, e)
		}), "endpoints[1]", field.ErrorTypeDuplicate, "shop/web-0"},
		{"endpoint duplicate IP in batch", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) {
			e := proto.Clone(r.Endpoints[0]).(*fedmeshv1.Endpoint)
			e.Name = "web-1"
			r.Endpoints = append(r.Endpoints, e)
		}), "endpoints[1].ips[0]", field.ErrorTypeDuplicate, "10.1.1.5"},
		{"named port 0", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Endpoints[0].NamedPorts[0].Port = 0 }), "endpoints[0].namedPorts[0].port", field.ErrorTypeInvalid, "between 1 and 65535"},
		{"named port name too long", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Endpoints[0].NamedPorts[0].Name = "a-very-long-port-name" }), "endpoints[0].namedPorts[0].name", field.ErrorTypeInvalid, "15"},
		{"named port duplicate name", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Endpoints[0].NamedPorts[1].Name = "http" }), "endpoints[0].namedPorts[1].name", field.ErrorTypeDuplicate, ""},
		{"named port ICMP", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) {
			r.Endpoints[0].NamedPorts[0].Protocol = fedmeshv1.Protocol_PROTOCOL_ICMP
		}), "endpoints[0].namedPorts[0].protocol", field.ErrorTypeNotSupported, ""},
		{"final resync without generation", endpoints(func(r *fedmeshv1.UpsertEndpointsRequest) { r.Resync = &fedmeshv1.ResyncMarker{Final: true} }), "resync.generation", field.ErrorTypeInvalid, "above 0"},
		{"delete with bad key", func() error {
			return ValidateDeleteEndpoints(&fedmeshv1.DeleteEndpointsRequest{Cluster: "east", Keys: []*fedmeshv1.EndpointKey{{Namespace: "shop"}}})
		}, "keys[0].name", field.ErrorTypeRequired, ""},

		// Service exports.
		{"export name starts with digit", exports(func(r *fedmeshv1.ExportServicesRequest) { r.Exports[0].Name = "1web" }), "exports[0].name", field.ErrorTypeInvalid, "start with an alphabetic character"},
		{"export port 65536", exports(func(r *fedmeshv1.ExportServicesRequest) { r.Exports[0].Ports[0].Port = 65536 }), "exports[0].ports[0].port", field.ErrorTypeInvalid, "between 1 and 65535"},
		{"export unnamed port among two", exports(func(r *fedmeshv1.ExportServicesRequest) { r.Exports[0].Ports[1].Name = "" }), "exports[0].ports[1].name", field.ErrorTypeRequired, "more than one port"},
		{"export duplicate port", exports(func(r *fedmeshv1.ExportServicesRequest) { r.Exports[0].Ports[1].Port = 80 }), "exports[0].ports[1].port", field.ErrorTypeDuplicate, "80/PROTOCOL_TCP"},
		{"export unknown protocol", exports(func(r *fedmeshv1.ExportServicesRequest) { r.Exports[0].Ports[0].Protocol = 42 }), "exports[0].ports[0].protocol", field.ErrorTypeNotSupported, ""},
		{"export unknown type", exports(func(r *fedmeshv1.ExportServicesRequest) { r.Exports[0].Type = 9 }), "exports[0].type", field.ErrorTypeNotSupported, ""},
		{"export bad backend", exports(func(r *fedmeshv1.ExportServicesRequest) { r.Exports[0].Backends = []string{"10.1.1.5/32"} }), "exports[0].backends[0]", field.ErrorTypeInvalid, "IPv4 or IPv6"},

		// Policies.
		{"policy kind unspecified", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { r.Policies[0].Kind = 0 }), "policies[0].kind", field.ErrorTypeNotSupported, ""},
		{"policy without namespace", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { r.Policies[0].Namespace = "" }), "policies[0].namespace", field.ErrorTypeRequired, ""},
		{"policy name too long", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { r.Policies[0].Name = strings.Repeat("a", 254) }), "policies[0].name", field.ErrorTypeInvalid, "253"},
		{"policy of another owner", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { r.Policies[0].Cluster = "west" }), "policies[0].cluster", field.ErrorTypeInvalid, `owner "east"`},
		{"policy without spec", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { r.Policies[0].Spec = nil }), "policies[0].spec", field.ErrorTypeRequired, ""},
		{"policy without podSelector", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { r.Policies[0].Spec.PodSelector = nil }), "policies[0].spec.podSelector", field.ErrorTypeRequired, ""},
		{"policy port 0", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			ingressPort(r).Port = &fedmeshv1.NetworkPolicyPort_Number{Number: 0}
			ingressPort(r).EndPort = 0
		}), "policies[0].spec.ingress[0].ports[0].port", field.ErrorTypeInvalid, "between 1 and 65535"},
		{"policy port 65536", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			ingressPort(r).Port = &fedmeshv1.NetworkPolicyPort_Number{Number: 65536}
			ingressPort(r).EndPort = 0
		}), "policies[0].spec.ingress[0].ports[0].port", field.ErrorTypeInvalid, "between 1 and 65535"},
		{"policy endPort < port", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { ingressPort(r).EndPort = 7999 }), "policies[0].spec.ingress[0].ports[0].endPort", field.ErrorTypeInvalid, "greater than or equal to port (8000)"},
		{"policy endPort with named port", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			ingressPort(r).Port = &fedmeshv1.NetworkPolicyPort_Name{Name: "http"}
		}), "policies[0].spec.ingress[0].ports[0].endPort", field.ErrorTypeForbidden, "named port"},
		{"policy endPort without port", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { ingressPort(r).Port = nil }), "policies[0].spec.ingress[0].ports[0].port", field.ErrorTypeRequired, "numeric port"},
		{"policy unknown protocol", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { ingressPort(r).Protocol = 99 }), "policies[0].spec.ingress[0].ports[0].protocol", field.ErrorTypeNotSupported, ""},
		{"policy ICMP port", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { ingressPort(r).Protocol = fedmeshv1.Protocol_PROTOCOL_ICMP }), "policies[0].spec.ingress[0].ports[0].protocol", field.ErrorTypeNotSupported, `Unsupported value: "ICMP"`},
		{"policy bad selector operator", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			ingressPeer(r, 0).NamespaceSelector.MatchExpressions[0].Operator = "Like"
		}),
			"policies[0].spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator", field.ErrorTypeInvalid, "not a valid selector operator"},
		{"policy In without values", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			ingressPeer(r, 0).NamespaceSelector.MatchExpressions[0].Values = nil
		}),
			"policies[0].spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values", field.ErrorTypeRequired, ""},
		{"policy Exists with values", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			ingressPeer(r, 0).NamespaceSelector.MatchExpressions[0].Operator = "Exists"
		}),
			"policies[0].spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values", field.ErrorTypeForbidden, ""},
		{"policy duplicate selector value", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			ingressPeer(r, 0).NamespaceSelector.MatchExpressions[0].Values = []string{"a", "a"}
		}), "policies[0].spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values[1]", field.ErrorTypeDuplicate, ""},
		{"policy peer with nothing", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			r.Policies[0].Spec.Ingress[0].From[0] = &fedmeshv1.NetworkPolicyPeer{}
		}), "policies[0].spec.ingress[0].from[0]", field.ErrorTypeRequired, "must specify"},
		{"policy peer ipBlock and selector", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { ingressPeer(r, 1).PodSelector = &fedmeshv1.LabelSelector{} }),
			"policies[0].spec.ingress[0].from[1]", field.ErrorTypeForbidden, "both ipBlock and a selector"},
		{"policy ipBlock bad CIDR", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { ingressPeer(r, 1).IpBlock.Cidr = "192.0.2.0/33" }),
			"policies[0].spec.ingress[0].from[1].ipBlock.cidr", field.ErrorTypeInvalid, "must be a CIDR"},
		{"policy except outside cidr", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			ingressPeer(r, 1).IpBlock.Except = []string{"198.51.100.0/25"}
		}),
			"policies[0].spec.ingress[0].from[1].ipBlock.except[0]", field.ErrorTypeInvalid, "strict subset"},
		{"policy except equals cidr", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { ingressPeer(r, 1).IpBlock.Except = []string{"192.0.2.0/24"} }),
			"policies[0].spec.ingress[0].from[1].ipBlock.except[0]", field.ErrorTypeInvalid, "strict subset"},
		{"policy except v6 in v4 block", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { ingressPeer(r, 1).IpBlock.Except = []string{"fd00::/64"} }),
			"policies[0].spec.ingress[0].from[1].ipBlock.except[0]", field.ErrorTypeInvalid, "same address family"},
		{"policy duplicate policyType", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			r.Policies[0].Spec.PolicyTypes = append(r.Policies[0].Spec.PolicyTypes, fedmeshv1.PolicyType_POLICY_TYPE_INGRESS)
		}), "policies[0].spec.policyTypes[1]", field.ErrorTypeDuplicate, ""},
		{"policy unspecified policyType", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { r.Policies[0].Spec.PolicyTypes = []fedmeshv1.PolicyType{0} }),
			"policies[0].spec.policyTypes[0]", field.ErrorTypeNotSupported, ""},
		{"policy duplicate in batch", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			r.Policies = append(r.Policies, proto.Clone(r.Policies[0]).(*fedmeshv1.Policy))
		}), "policies[1]", field.ErrorTypeDuplicate, "shop/web-allow"},
		{"kubernetes policy selecting clusters", policies(func(r *fedmeshv1.ApplyPoliciesRequest) { r.Policies[0].ClusterSelector = &fedmeshv1.LabelSelector{} }),
			"policies[0].clusterSelector", field.ErrorTypeForbidden, "only a federated policy"},
		{"kubernetes peer selecting clusters", policies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			ingressPeer(r, 0).ClusterSelector = &fedmeshv1.LabelSelector{}
		}),
			"policies[0].spec.ingress[0].from[0].clusterSelector", field.ErrorTypeForbidden, "own cluster"},
		{"federated policy with cluster", fedPolicies(func(r *fedmeshv1.ApplyPoliciesRequest) { r.Policies[0].Cluster = "east"; r.Cluster = "east" }),
			"policies[0].cluster", field.ErrorTypeForbidden, "belongs to the federation"},
		{"federated bad cluster selector key", fedPolicies(func(r *fedmeshv1.ApplyPoliciesRequest) {
			r.Policies[0].ClusterSelector.MatchLabels = map[string]string{"bad key": "x"}
		}), "policies[0].clusterSelector.matchLabels", field.ErrorTypeInvalid, ""},
	}
	if len(cases) < 40 {
		t.Fatalf("only %d bad inputs; the foundation issue asks for at least 40", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.check()
			if err == nil {
				t.Fatalf("accepted; want %s error on %s", tc.typ, tc.field)
			}
			errs := FieldErrors(err)
			if errs == nil {
				t.Fatalf("error %v is not a *ValidationError", err)
			}
			for _, fe := range errs {
				if fe.Field == tc.field && fe.Type == tc.typ && strings.Contains(fe.Detail+fe.Error(), tc.reason) {
					return
				}
			}
			t.Fatalf("want %s on %s containing %q; got:\n%v", tc.typ, tc.field, tc.reason, err)
		})
	}
}

func TestValidationErrorIsInvalidArgumentWithBadRequest(t *testing.T) {
	c := goodCluster()
	c.PodCidrs[1] = "nope"
	err := ValidateCluster(c)
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("code = %v, want InvalidArgument", st.Code())
	}
	var br *errdetails.BadRequest
	for _, d := range st.Details() {
		if b, ok := d.(*errdetails.BadRequest); ok {
			br = b
		}
	}
	if br == nil || len(br.FieldViolations) != 1 {
		t.Fatalf("want one BadRequest field violation, got %v", st.Details())
	}
	if fv := br.FieldViolations[0]; fv.Field != "cluster.podCIDRs[1]" || !strings.Contains(fv.Description, "must be a CIDR") {
		t.Fatalf("violation = %v", fv)
	}
}

func TestInScope(t *testing.T) {
	s := &fedmeshv1.NamespaceScope{Names: []string{"a", "b"}, ExcludeNames: []string{"b"}}
	for ns, want := range map[string]bool{"a": true, "b": false, "c": false} {
		if got := InScope(s, ns); got != want {
			t.Errorf("InScope(%q) = %v, want %v", ns, got, want)
		}
	}
	if !InScope(nil, "anything") {
		t.Error("nil scope must admit every namespace")
	}
}

// A batch checks each distinct label key and value once; the errors must
// still be exactly those of checking every endpoint on its own, each
// invalid occurrence at its own path.
func TestBatchLabelChecksReportWhatPerEndpointChecksReport(t *testing.T) {
	shared := map[string]string{"app": "web", "example.com/team": "a-team"}
	bad := map[string]string{"-bad-key": "v", "ok": "bad value!", "app": "web"}
	var eps []*fedmeshv1.Endpoint
	for i := range 6 {
		l := shared
		if i%2 == 1 {
			l = bad
		}
		eps = append(eps, &fedmeshv1.Endpoint{Namespace: "ns", Name: fmt.Sprintf("p%d", i), Ips: []string{fmt.Sprintf("10.0.0.%d", i+1)},
			Labels: l, NamespaceLabels: bad, Node: "n1"})
	}
	req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: eps}
	var want []string
	for i, e := range eps {
		for _, err := range validateEndpoint(field.NewPath("endpoints").Index(i), e, "east", nil, nil) {
			want = append(want, err.Error())
		}
	}
	var got []string
	if err := ValidateUpsertEndpoints(req, nil); err != nil {
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Fatalf("error %T %v, want a *ValidationError", err, err)
		}
		for _, e := range ve.Errs {
			got = append(got, e.Error())
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	// Every endpoint has bad namespace labels, every other one bad labels.
	if len(want) < 6*2+3*2 || !slices.Equal(got, want) {
		t.Fatalf("batch errors (%d):\n%s\nper-endpoint errors (%d):\n%s", len(got), strings.Join(got, "\n"), len(want), strings.Join(want, "\n"))
	}
}

func TestLabelCheckerStaysBoundedAndKeepsReportingInvalidLabels(t *testing.T) {
	lc := &labelChecker{keys: map[string]struct{}{}, values: map[string]struct{}{}}
	p := field.NewPath("labels")
	for i := range maxKnownLabels + 100 {
		if errs := lc.check(p, map[string]string{"app": fmt.Sprintf("v%d", i)}); len(errs) != 0 {
			t.Fatalf("valid label reported: %v", errs)
		}
		if n := len(lc.keys) + len(lc.values); n > maxKnownLabels {
			t.Fatalf("cache holds %d strings, bound %d", n, maxKnownLabels)
		}
	}
	// A bad key or value is never remembered: every request reports it.
	for range 3 {
		errs := lc.check(p, map[string]string{"-bad": "ok", "ok": "bad value!"})
		if len(errs) != 2 {
			t.Fatalf("errors %v, want the bad key and the bad value", errs)
		}
	}
}
