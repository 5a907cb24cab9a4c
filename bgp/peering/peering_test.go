package peering

import (
	"net/netip"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func validPeer() *fedmeshv1.BGPPeerConfig {
	lp := uint32(200)
	return &fedmeshv1.BGPPeerConfig{
		Name: "tor-r1", Address: "198.18.1.1", Asn: 65000, Port: 1179,
		ClusterSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"site": "a"}},
		NodeSelector:    &fedmeshv1.LabelSelector{MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: "rack", Operator: "In", Values: []string{"r1"}}}},
		LocalAsn:        65101, LocalAsnLabel: "bgp.fedmesh.io/asn",
		HoldTimeSeconds: 9, KeepaliveSeconds: 3,
		GracefulRestart: &fedmeshv1.BGPGracefulRestart{RestartTimeSeconds: 120},
		EbgpMultihopTtl: 2,
		Password:        &fedmeshv1.BGPPasswordRef{Source: &fedmeshv1.BGPPasswordRef_File{File: "/etc/fedmesh/bgp/tor-r1"}},
		Filters:         []string{"only-pods", "no-default"},
		Attributes:      &fedmeshv1.BGPRouteAttributes{Communities: []string{"65000:100"}, LargeCommunities: []string{"65000:1:2"}, LocalPreference: &lp},
		Advertisements:  []*fedmeshv1.BGPAdvertisement{{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_POD_CIDR, Attributes: &fedmeshv1.BGPRouteAttributes{Communities: []string{"65000:200"}}}},
	}
}

func validFilter() *fedmeshv1.BGPFilter {
	return &fedmeshv1.BGPFilter{
		Name: "only-pods",
		ExportV4: []*fedmeshv1.BGPFilterRule{
			{Cidr: "10.244.0.0/16", MatchOperator: fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_IN, PrefixLength: &fedmeshv1.BGPPrefixLengthRange{Min: 24, Max: 28}, Action: fedmeshv1.BGPFilterAction_BGP_FILTER_ACTION_ACCEPT},
			{Action: fedmeshv1.BGPFilterAction_BGP_FILTER_ACTION_REJECT},
		},
		ImportV6: []*fedmeshv1.BGPFilterRule{
			{Cidr: "::/0", MatchOperator: fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_EQUAL, Action: fedmeshv1.BGPFilterAction_BGP_FILTER_ACTION_REJECT},
		},
	}
}

// fieldsOf returns the field paths of a validation error, and checks it is
// an InvalidArgument status as the edge returns it.
func fieldsOf(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	if c := status.Code(err); c != codes.InvalidArgument {
		t.Fatalf("error %v has code %s, want InvalidArgument", err, c)
	}
	var out []string
	for _, fe := range model.FieldErrors(err) {
		out = append(out, fe.Field)
	}
	return out
}

func TestValidatePeerAcceptsEveryFieldSet(t *testing.T) {
	if err := ValidatePeer(validPeer()); err != nil {
		t.Fatal(err)
	}
	if err := ValidatePeer(&fedmeshv1.BGPPeerConfig{Name: "minimal", Address: "fd18::1", Asn: 65000}); err != nil {
		t.Fatalf("a peer with only name, address and ASN: %v", err)
	}
}

func TestValidatePeerRejectsBadInputNamingTheField(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(p *fedmeshv1.BGPPeerConfig)
		field  string
	}{
		{"missing name", func(p *fedmeshv1.BGPPeerConfig) { p.Name = "" }, "peer.name"},
		{"name not a DNS label", func(p *fedmeshv1.BGPPeerConfig) { p.Name = "ToR_1" }, "peer.name"},
		{"missing address", func(p *fedmeshv1.BGPPeerConfig) { p.Address = "" }, "peer.address"},
		{"address not an IP", func(p *fedmeshv1.BGPPeerConfig) { p.Address = "tor1.example" }, "peer.address"},
		{"multicast address", func(p *fedmeshv1.BGPPeerConfig) { p.Address = "224.0.0.5" }, "peer.address"},
		{"zoned address", func(p *fedmeshv1.BGPPeerConfig) { p.Address = "fe80::1%eth0" }, "peer.address"},
		{"zero ASN", func(p *fedmeshv1.BGPPeerConfig) { p.Asn = 0 }, "peer.asn"},
		{"AS_TRANS", func(p *fedmeshv1.BGPPeerConfig) { p.Asn = 23456 }, "peer.asn"},
		{"reserved ASN", func(p *fedmeshv1.BGPPeerConfig) { p.Asn = 4294967295 }, "peer.asn"},
		{"port over 65535", func(p *fedmeshv1.BGPPeerConfig) { p.Port = 70000 }, "peer.port"},
		{"bad node selector operator", func(p *fedmeshv1.BGPPeerConfig) { p.NodeSelector.MatchExpressions[0].Operator = "Near" }, "peer.nodeSelector.matchExpressions[0].operator"},
		{"bad node selector label", func(p *fedmeshv1.BGPPeerConfig) {
			p.NodeSelector = &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"rack": "r 1"}}
		}, "peer.nodeSelector.matchLabels"},
		{"bad cluster selector", func(p *fedmeshv1.BGPPeerConfig) {
			p.ClusterSelector = &fedmeshv1.LabelSelector{MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: "site", Operator: "In"}}}
		}, "peer.clusterSelector.matchExpressions[0].values"},
		{"AS_TRANS local ASN", func(p *fedmeshv1.BGPPeerConfig) { p.LocalAsn = 23456 }, "peer.localAsn"},
		{"local ASN label not a key", func(p *fedmeshv1.BGPPeerConfig) { p.LocalAsnLabel = "rack asn" }, "peer.localAsnLabel"},
		{"hold time below 3s", func(p *fedmeshv1.BGPPeerConfig) { p.HoldTimeSeconds = 2 }, "peer.holdTimeSeconds"},
		{"keepalive not below hold", func(p *fedmeshv1.BGPPeerConfig) { p.KeepaliveSeconds = 9 }, "peer.keepaliveSeconds"},
		{"restart time over 4095s", func(p *fedmeshv1.BGPPeerConfig) { p.GracefulRestart.RestartTimeSeconds = 4096 }, "peer.gracefulRestart.restartTimeSeconds"},
		{"multihop TTL over 255", func(p *fedmeshv1.BGPPeerConfig) { p.EbgpMultihopTtl = 256 }, "peer.ebgpMultihopTtl"},
		{"multihop on iBGP", func(p *fedmeshv1.BGPPeerConfig) { p.LocalAsn = p.Asn }, "peer.ebgpMultihopTtl"},
		{"route-reflector client on eBGP", func(p *fedmeshv1.BGPPeerConfig) { p.RouteReflectorClient = true }, "peer.routeReflectorClient"},
		{"relative password file", func(p *fedmeshv1.BGPPeerConfig) {
			p.Password.Source = &fedmeshv1.BGPPasswordRef_File{File: "etc/pw"}
		}, "peer.password.file"},
		{"unclean password file", func(p *fedmeshv1.BGPPeerConfig) {
			p.Password.Source = &fedmeshv1.BGPPasswordRef_File{File: "/etc/../pw"}
		}, "peer.password.file"},
		{"password reference without a source", func(p *fedmeshv1.BGPPeerConfig) { p.Password = &fedmeshv1.BGPPasswordRef{} }, "peer.password"},
		{"secret reference without a key", func(p *fedmeshv1.BGPPeerConfig) {
			p.Password.Source = &fedmeshv1.BGPPasswordRef_Secret{Secret: &fedmeshv1.BGPSecretKeyRef{Namespace: "kube-system", Name: "bgp"}}
		}, "peer.password.secret.key"},
		{"secret reference with a bad namespace", func(p *fedmeshv1.BGPPeerConfig) {
			p.Password.Source = &fedmeshv1.BGPPasswordRef_Secret{Secret: &fedmeshv1.BGPSecretKeyRef{Namespace: "Kube System", Name: "bgp", Key: "tor"}}
		}, "peer.password.secret.namespace"},
		{"service class without addresses", func(p *fedmeshv1.BGPPeerConfig) {
			p.Advertisements = []*fedmeshv1.BGPAdvertisement{{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_SERVICE}}
		}, "peer.advertisements[0].service"},
		{"service addresses on the pod class", func(p *fedmeshv1.BGPPeerConfig) {
			p.Advertisements = []*fedmeshv1.BGPAdvertisement{{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_POD_CIDR,
				Service: &fedmeshv1.BGPServiceAddresses{LoadBalancerIpCidrs: []string{"203.0.113.0/24"}}}}
		}, "peer.advertisements[0].service"},
		{"load-balancer range not canonical", func(p *fedmeshv1.BGPPeerConfig) {
			p.Advertisements = []*fedmeshv1.BGPAdvertisement{{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_SERVICE,
				Service: &fedmeshv1.BGPServiceAddresses{LoadBalancerIpCidrs: []string{"203.0.113.1/24"}}}}
		}, "peer.advertisements[0].service.loadBalancerIpCidrs[0]"},
		{"external range not a CIDR", func(p *fedmeshv1.BGPPeerConfig) {
			p.Advertisements = []*fedmeshv1.BGPAdvertisement{{Class: fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_SERVICE,
				Service: &fedmeshv1.BGPServiceAddresses{ExternalIpCidrs: []string{"nope"}}}}
		}, "peer.advertisements[0].service.externalIpCidrs[0]"},
		{"filter name not a DNS label", func(p *fedmeshv1.BGPPeerConfig) { p.Filters[1] = "No Default" }, "peer.filters[1]"},
		{"duplicate filter", func(p *fedmeshv1.BGPPeerConfig) { p.Filters[1] = p.Filters[0] }, "peer.filters[1]"},
		{"bad community", func(p *fedmeshv1.BGPPeerConfig) { p.Attributes.Communities[0] = "65536:1" }, "peer.attributes.communities[0]"},
		{"community without colon", func(p *fedmeshv1.BGPPeerConfig) { p.Attributes.Communities[0] = "65000" }, "peer.attributes.communities[0]"},
		{"bad large community", func(p *fedmeshv1.BGPPeerConfig) { p.Attributes.LargeCommunities[0] = "1:2" }, "peer.attributes.largeCommunities[0]"},
		{"unspecified advertisement class", func(p *fedmeshv1.BGPPeerConfig) { p.Advertisements[0].Class = 0 }, "peer.advertisements[0].class"},
		{"duplicate advertisement class", func(p *fedmeshv1.BGPPeerConfig) { p.Advertisements = append(p.Advertisements, p.Advertisements[0]) }, "peer.advertisements[1].class"},
		{"bad class community", func(p *fedmeshv1.BGPPeerConfig) { p.Advertisements[0].Attributes.Communities[0] = "x:y" }, "peer.advertisements[0].attributes.communities[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := validPeer()
			tt.mutate(p)
			got := fieldsOf(t, ValidatePeer(p))
			if !slices.Contains(got, tt.field) {
				t.Fatalf("ValidatePeer named %v, want %s", got, tt.field)
			}
		})
	}
}

func TestValidateFilterRejectsBadInputNamingTheField(t *testing.T) {
	rule := func(f *fedmeshv1.BGPFilter) *fedmeshv1.BGPFilterRule { return f.ExportV4[0] }
	tests := []struct {
		name   string
		mutate func(f *fedmeshv1.BGPFilter)
		field  string
	}{
		{"missing name", func(f *fedmeshv1.BGPFilter) { f.Name = "" }, "filter.name"},
		{"no action", func(f *fedmeshv1.BGPFilter) { rule(f).Action = 0 }, "filter.exportV4[0].action"},
		{"CIDR without operator", func(f *fedmeshv1.BGPFilter) { rule(f).MatchOperator = 0 }, "filter.exportV4[0].matchOperator"},
		{"operator without CIDR", func(f *fedmeshv1.BGPFilter) { rule(f).Cidr = "" }, "filter.exportV4[0].cidr"},
		{"unknown operator", func(f *fedmeshv1.BGPFilter) { rule(f).MatchOperator = 9 }, "filter.exportV4[0].matchOperator"},
		{"CIDR not a prefix", func(f *fedmeshv1.BGPFilter) { rule(f).Cidr = "10.244.0.0" }, "filter.exportV4[0].cidr"},
		{"CIDR with host bits", func(f *fedmeshv1.BGPFilter) { rule(f).Cidr = "10.244.1.0/16" }, "filter.exportV4[0].cidr"},
		{"IPv6 CIDR in a v4 list", func(f *fedmeshv1.BGPFilter) { rule(f).Cidr = "fd00::/8" }, "filter.exportV4[0].cidr"},
		{"IPv4 CIDR in a v6 list", func(f *fedmeshv1.BGPFilter) { f.ImportV6[0].Cidr = "0.0.0.0/0" }, "filter.importV6[0].cidr"},
		{"min shorter than the CIDR", func(f *fedmeshv1.BGPFilter) { rule(f).PrefixLength.Min = 8 }, "filter.exportV4[0].prefixLength.min"},
		{"max beyond 32", func(f *fedmeshv1.BGPFilter) { rule(f).PrefixLength.Max = 33 }, "filter.exportV4[0].prefixLength.max"},
		{"min above max", func(f *fedmeshv1.BGPFilter) { rule(f).PrefixLength.Min, rule(f).PrefixLength.Max = 28, 24 }, "filter.exportV4[0].prefixLength"},
		{"range with EQUAL", func(f *fedmeshv1.BGPFilter) {
			rule(f).MatchOperator = fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_EQUAL
		}, "filter.exportV4[0].prefixLength"},
		{"range without CIDR", func(f *fedmeshv1.BGPFilter) {
			f.ExportV4[1].PrefixLength = &fedmeshv1.BGPPrefixLengthRange{Max: 24}
		}, "filter.exportV4[1].prefixLength"},
		{"too many rules", func(f *fedmeshv1.BGPFilter) {
			for range maxRules + 1 {
				f.ImportV4 = append(f.ImportV4, f.ExportV4[1])
			}
		}, "filter.importV4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := validFilter()
			tt.mutate(f)
			got := fieldsOf(t, ValidateFilter(f))
			if !slices.Contains(got, tt.field) {
				t.Fatalf("ValidateFilter named %v, want %s", got, tt.field)
			}
		})
	}
	if err := ValidateFilter(validFilter()); err != nil {
		t.Fatalf("valid filter: %v", err)
	}
}

// The rules' semantics are Calico's BGPFilter: EQUAL the CIDR itself, IN
// the CIDR and what lies inside it within the length range, NOT_IN the
// rest; a rule without CIDR every route of its family; first match wins,
// no match accepts.
func TestFilterRulesMatchLikeCalico(t *testing.T) {
	mk := func(op fedmeshv1.BGPFilterMatchOperator, cidr string, lo, hi uint32) []*fedmeshv1.BGPFilterRule {
		r := &fedmeshv1.BGPFilterRule{Cidr: cidr, MatchOperator: op, Action: fedmeshv1.BGPFilterAction_BGP_FILTER_ACTION_REJECT}
		if lo != 0 || hi != 0 {
			r.PrefixLength = &fedmeshv1.BGPPrefixLengthRange{Min: lo, Max: hi}
		}
		return []*fedmeshv1.BGPFilterRule{r}
	}
	const (
		eq    = fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_EQUAL
		in    = fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_IN
		notIn = fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_NOT_IN
	)
	tests := []struct {
		name    string
		rules   []*fedmeshv1.BGPFilterRule
		prefix  string
		matched bool
	}{
		{"equal: the CIDR", mk(eq, "10.244.0.0/16", 0, 0), "10.244.0.0/16", true},
		{"equal: a prefix inside", mk(eq, "10.244.0.0/16", 0, 0), "10.244.1.0/24", false},
		{"in: the CIDR itself", mk(in, "10.244.0.0/16", 0, 0), "10.244.0.0/16", true},
		{"in: a prefix inside", mk(in, "10.244.0.0/16", 0, 0), "10.244.1.0/24", true},
		{"in: a wider prefix", mk(in, "10.244.0.0/16", 0, 0), "10.0.0.0/8", false},
		{"in: outside", mk(in, "10.244.0.0/16", 0, 0), "10.245.1.0/24", false},
		{"in with range: length inside", mk(in, "10.244.0.0/16", 24, 28), "10.244.1.0/26", true},
		{"in with range: too short", mk(in, "10.244.0.0/16", 24, 28), "10.244.0.0/20", false},
		{"in with range: too long", mk(in, "10.244.0.0/16", 24, 28), "10.244.1.1/32", false},
		{"in with only min", mk(in, "10.244.0.0/16", 30, 0), "10.244.1.4/30", true},
		{"not in: outside", mk(notIn, "10.244.0.0/16", 0, 0), "192.0.2.0/24", true},
		{"not in: inside", mk(notIn, "10.244.0.0/16", 0, 0), "10.244.1.0/24", false},
		{"not in with range: inside but too long", mk(notIn, "10.244.0.0/16", 0, 24), "10.244.1.0/25", true},
		{"v4 rule never matches v6", mk(notIn, "10.244.0.0/16", 0, 0), "fd00::/64", false},
		{"no CIDR: every route of the family", mk(0, "", 0, 0), "203.0.113.0/24", true},
		{"no CIDR v4 rule: not a v6 route", mk(0, "", 0, 0), "fd00::/64", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, errs := ParseFilter(nil, &fedmeshv1.BGPFilter{Name: "f", ExportV4: tt.rules})
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			act, matched := Decide(f.ExportV4, netip.MustParsePrefix(tt.prefix))
			if matched != tt.matched || (matched && act != Reject) {
				t.Fatalf("Decide(%v, %s) = %v %v, want matched=%v", f.ExportV4, tt.prefix, act, matched, tt.matched)
			}
		})
	}
}

func TestFirstMatchingRuleDecides(t *testing.T) {
	f, errs := ParseFilter(nil, validFilter())
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, tt := range []struct {
		prefix  string
		act     Action
		matched bool
	}{
		{"10.244.1.0/24", Accept, true},   // first rule
		{"10.244.0.0/16", Reject, true},   // not in 24..28: the catch-all
		{"192.0.2.0/24", Reject, true},    // the catch-all
		{"fd00:1::/64", 0, false},         // no v6 export rule: accepted
		{"10.244.1.0/28", Accept, true},   // the range's longest
		{"10.244.1.0/29", Reject, true},   // just past it
		{"::/0", 0, false},                // an import rule, not an export one
		{"10.244.255.0/24", Accept, true}, // still inside the CIDR
	} {
		act, matched := Decide(f.Export(), netip.MustParsePrefix(tt.prefix))
		if act != tt.act || matched != tt.matched {
			t.Errorf("%s: %v %v, want %v %v", tt.prefix, act, matched, tt.act, tt.matched)
		}
	}
}

func TestPeerSelectsNodesByClusterAndNodeLabels(t *testing.T) {
	site := map[string]string{"site": "a"}
	rack := func(r string) map[string]string { return map[string]string{"rack": r} }
	tests := []struct {
		name          string
		clusterSel    *fedmeshv1.LabelSelector
		nodeSel       *fedmeshv1.LabelSelector
		cluster, node map[string]string
		want          bool
	}{
		{"no selectors: every node", nil, nil, site, rack("r1"), true},
		{"empty selectors: every node", &fedmeshv1.LabelSelector{}, &fedmeshv1.LabelSelector{}, nil, nil, true},
		{"rack r1 node, r1 selector", nil, &fedmeshv1.LabelSelector{MatchLabels: rack("r1")}, site, rack("r1"), true},
		{"rack r2 node, r1 selector", nil, &fedmeshv1.LabelSelector{MatchLabels: rack("r1")}, site, rack("r2"), false},
		{"unlabelled node, r1 selector", nil, &fedmeshv1.LabelSelector{MatchLabels: rack("r1")}, site, nil, false},
		{"other cluster", &fedmeshv1.LabelSelector{MatchLabels: site}, nil, map[string]string{"site": "b"}, rack("r1"), false},
		{"NotIn r2", nil, &fedmeshv1.LabelSelector{MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: "rack", Operator: "NotIn", Values: []string{"r2"}}}}, site, rack("r1"), true},
		{"unparsable selector selects nothing", nil, &fedmeshv1.LabelSelector{MatchExpressions: []*fedmeshv1.LabelSelectorRequirement{{Key: "rack", Operator: "Near"}}}, site, rack("r1"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &fedmeshv1.BGPPeerConfig{ClusterSelector: tt.clusterSel, NodeSelector: tt.nodeSel}
			if got := Selects(p, tt.cluster, tt.node); got != tt.want {
				t.Fatalf("Selects = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParsePeerKeepsWhatTheNodeNeeds(t *testing.T) {
	p, errs := ParsePeer(nil, validPeer())
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	want := Peer{
		Name: "tor-r1", Address: netip.MustParseAddr("198.18.1.1"), ASN: 65000, Port: 1179,
		LocalASN: 65101, LocalASNLabel: "bgp.fedmesh.io/asn", HoldTime: 9e9, Keepalive: 3e9,
		RestartTime: 120e9, HasRestartTime: true, MultihopTTL: 2, PasswordFile: "/etc/fedmesh/bgp/tor-r1",
		Filters:        []string{"only-pods", "no-default"},
		Attributes:     Attributes{Communities: []Community{65000<<16 | 100}, LargeCommunities: []LargeCommunity{{Global: 65000, Local1: 1, Local2: 2}}, LocalPref: 200, HasLocalPref: true},
		Advertisements: []Advertisement{{Class: ClassPodCIDR, Attributes: Attributes{Communities: []Community{65000<<16 | 200}}}},
	}
	p.ClusterSelector, p.NodeSelector = nil, nil
	if !peerEqualForTest(p, want) {
		t.Fatalf("ParsePeer =\n%+v\nwant\n%+v", p, want)
	}
}

func peerEqualForTest(a, b Peer) bool {
	return a.Name == b.Name && a.Address == b.Address && a.ASN == b.ASN && a.Port == b.Port &&
		a.LocalASN == b.LocalASN && a.LocalASNLabel == b.LocalASNLabel && a.HoldTime == b.HoldTime &&
		a.Keepalive == b.Keepalive && a.RestartTime == b.RestartTime && a.HasRestartTime == b.HasRestartTime &&
		a.MultihopTTL == b.MultihopTTL && a.RouteReflectorClient == b.RouteReflectorClient &&
		a.PasswordFile == b.PasswordFile && slices.Equal(a.Filters, b.Filters) &&
		attrsEqual(a.Attributes, b.Attributes) &&
		slices.EqualFunc(a.Advertisements, b.Advertisements, func(x, y Advertisement) bool {
			return x.Class == y.Class && attrsEqual(x.Attributes, y.Attributes)
		})
}

func attrsEqual(a, b Attributes) bool {
	return slices.Equal(a.Communities, b.Communities) && slices.Equal(a.LargeCommunities, b.LargeCommunities) &&
		a.LocalPref == b.LocalPref && a.HasLocalPref == b.HasLocalPref
}
