package model

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	"sigs.k8s.io/yaml"
)

const goodCNP = `
tier: Admin
priority: 10
subject: {namespaces: {matchLabels: {env: prod}}}
ingress:
- name: deny-from-dev
  action: Deny
  from: [{namespaces: {matchLabels: {env: dev}}}, {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: x}}}}]
  protocols: [{tcp: {destinationPort: {number: 80}}}, {sctp: {destinationPort: {range: {start: 9000, end: 9100}}}}, {destinationNamedPort: http}]
egress:
- name: pass-pods
  action: Pass
  to: [{namespaces: {}}]
- action: Accept
  to: [{domainNames: ["example.com", "*.example.org"]}]
- name: deny-net
  action: Deny
  to: [{networks: ["10.0.0.0/8", "fd00::/8"]}]
  protocols: [{udp: {destinationPort: {number: 53}}}]
`

func goodCNPSpec(t *testing.T) *cnpv1.ClusterNetworkPolicySpec {
	t.Helper()
	var s cnpv1.ClusterNetworkPolicySpec
	if err := yaml.UnmarshalStrict([]byte(goodCNP), &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// TestClusterNetworkPolicyValidationNamesTheField: the valid spec passes,
// and each broken copy is rejected with an error at the named field path,
// following the upstream CRD's schema and CEL rules.
func TestClusterNetworkPolicyValidationNamesTheField(t *testing.T) {
	root := field.NewPath("policy")
	if errs := ValidateClusterNetworkPolicy(root, "guard", goodCNPSpec(t)); len(errs) != 0 {
		t.Fatalf("valid policy rejected: %v", errs)
	}
	cases := []struct {
		name string
		mut  func(*cnpv1.ClusterNetworkPolicySpec)
		obj  string // metadata.name, "guard" when empty
		path string
	}{
		{"unknown tier", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Tier = "Developer" }, "", "policy.spec.tier"},
		{"priority above 1000", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Priority = 1001 }, "", "policy.spec.priority"},
		{"negative priority", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Priority = -1 }, "", "policy.spec.priority"},
		{"both subject forms", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Subject.Pods = &cnpv1.NamespacedPod{} }, "", "policy.spec.subject"},
		{"no subject", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Subject.Namespaces = nil }, "", "policy.spec.subject"},
		{"bad subject selector", func(s *cnpv1.ClusterNetworkPolicySpec) {
			s.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: map[string]string{"bad key!": "x"}}
		}, "", "policy.spec.subject.namespaces.matchLabels"},
		{"unknown action", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Ingress[0].Action = "Allow" }, "", "policy.spec.ingress[0].action"},
		{"missing action", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Egress[0].Action = "" }, "", "policy.spec.egress[0].action"},
		{"rule name too long", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Ingress[0].Name = strings.Repeat("n", 101) }, "", "policy.spec.ingress[0].name"},
		{"too many ingress rules", func(s *cnpv1.ClusterNetworkPolicySpec) {
			for len(s.Ingress) < 26 {
				s.Ingress = append(s.Ingress, s.Ingress[0])
			}
		}, "", "policy.spec.ingress"},
		{"too many peers", func(s *cnpv1.ClusterNetworkPolicySpec) {
			for len(s.Egress[0].To) < 26 {
				s.Egress[0].To = append(s.Egress[0].To, s.Egress[0].To[0])
			}
		}, "", "policy.spec.egress[0].to"},
		{"no peers", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Ingress[0].From = nil }, "", "policy.spec.ingress[0].from"},
		{"empty peer", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Ingress[0].From[0].Namespaces = nil }, "", "policy.spec.ingress[0].from[0]"},
		{"two peer fields", func(s *cnpv1.ClusterNetworkPolicySpec) {
			s.Egress[2].To[0].Namespaces = &metav1.LabelSelector{}
		}, "", "policy.spec.egress[2].to[0]"},
		{"unmasked CIDR", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Egress[2].To[0].Networks[0] = "10.0.0.1/8" }, "", "policy.spec.egress[2].to[0].networks[0]"},
		{"not a CIDR", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Egress[2].To[0].Networks[1] = "fd00::" }, "", "policy.spec.egress[2].to[0].networks[1]"},
		{"duplicate CIDR", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Egress[2].To[0].Networks[1] = "10.0.0.0/8" }, "", "policy.spec.egress[2].to[0].networks[1]"},
		{"CIDR too long", func(s *cnpv1.ClusterNetworkPolicySpec) {
			s.Egress[2].To[0].Networks[1] = cnpv1.CIDR("fd00:0000:0000:0000:0000:0000:0000:0000/128" + " ")
		}, "", "policy.spec.egress[2].to[0].networks[1]"},
		{"domainNames in a Deny rule", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Egress[1].Action = cnpv1.ClusterNetworkPolicyRuleActionDeny }, "", "policy.spec.egress[1].to[0].domainNames"},
		{"domainNames in a Pass rule", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Egress[1].Action = cnpv1.ClusterNetworkPolicyRuleActionPass }, "", "policy.spec.egress[1].to[0].domainNames"},
		{"bad domain name", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Egress[1].To[0].DomainNames[0] = "www.*.example.com" }, "", "policy.spec.egress[1].to[0].domainNames[0]"},
		{"nodes peer", func(s *cnpv1.ClusterNetworkPolicySpec) {
			s.Egress[0].To[0] = cnpv1.ClusterNetworkPolicyEgressPeer{Nodes: &metav1.LabelSelector{}}
		}, "", "policy.spec.egress[0].to[0].nodes"},
		{"named port with networks peer", func(s *cnpv1.ClusterNetworkPolicySpec) {
			s.Egress[2].Protocols = append(s.Egress[2].Protocols, cnpv1.ClusterNetworkPolicyProtocol{DestinationNamedPort: "dns"})
		}, "", "policy.spec.egress[2].protocols[1].destinationNamedPort"},
		{"named port with a range", func(s *cnpv1.ClusterNetworkPolicySpec) {
			s.Ingress[0].Protocols[2].TCP = &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Range: &cnpv1.PortRange{Start: 1, End: 2}}}
		}, "", "policy.spec.ingress[0].protocols[2]"},
		{"bad named port", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Ingress[0].Protocols[2].DestinationNamedPort = "no spaces" }, "", "policy.spec.ingress[0].protocols[2].destinationNamedPort"},
		{"number and range", func(s *cnpv1.ClusterNetworkPolicySpec) {
			s.Ingress[0].Protocols[0].TCP.DestinationPort.Range = &cnpv1.PortRange{Start: 1, End: 2}
		}, "", "policy.spec.ingress[0].protocols[0].tcp.destinationPort"},
		{"port 0 range start", func(s *cnpv1.ClusterNetworkPolicySpec) {
			s.Ingress[0].Protocols[1].SCTP.DestinationPort.Range.Start = 0
		}, "", "policy.spec.ingress[0].protocols[1].sctp.destinationPort.range.start"},
		{"range start not below end", func(s *cnpv1.ClusterNetworkPolicySpec) {
			s.Ingress[0].Protocols[1].SCTP.DestinationPort.Range.End = 9000
		}, "", "policy.spec.ingress[0].protocols[1].sctp.destinationPort.range"},
		{"port above 65535", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Egress[2].Protocols[0].UDP.DestinationPort.Number = 65536 }, "", "policy.spec.egress[2].protocols[0].udp.destinationPort.number"},
		{"tcp without port", func(s *cnpv1.ClusterNetworkPolicySpec) { s.Ingress[0].Protocols[0].TCP.DestinationPort = nil }, "", "policy.spec.ingress[0].protocols[0].tcp.destinationPort"},
		{"empty protocol", func(s *cnpv1.ClusterNetworkPolicySpec) {
			s.Ingress[0].Protocols[0] = cnpv1.ClusterNetworkPolicyProtocol{}
		}, "", "policy.spec.ingress[0].protocols[0]"},
		{"empty protocols list", func(s *cnpv1.ClusterNetworkPolicySpec) {
			s.Ingress[0].Protocols = []cnpv1.ClusterNetworkPolicyProtocol{}
		}, "", "policy.spec.ingress[0].protocols"},
		{"bad object name", func(*cnpv1.ClusterNetworkPolicySpec) {}, "Not_A_Name", "policy.metadata.name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := goodCNPSpec(t)
			tc.mut(s)
			name := tc.obj
			if name == "" {
				name = "guard"
			}
			errs := ValidateClusterNetworkPolicy(root, name, s)
			if len(errs) == 0 {
				t.Fatalf("accepted; want an error at %s", tc.path)
			}
			for _, e := range errs {
				if e.Field == tc.path {
					if st := AsError(errs).(*ValidationError).GRPCStatus(); st.Code().String() != "InvalidArgument" {
						t.Fatalf("status %v, want InvalidArgument", st.Code())
					}
					return
				}
			}
			t.Fatalf("errors %v name no field %s", errs, tc.path)
		})
	}
}
