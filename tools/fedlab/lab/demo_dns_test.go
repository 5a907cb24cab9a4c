package lab

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation/field"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	"sigs.k8s.io/yaml"

	"github.com/fedmesh/fedmesh/federation/model"
)

// The DNS step's manifests are what fedctl and a member cluster's API
// accept: decoded strictly, converted and validated as the edge does.
func TestDNSManifestsAreValidPolicies(t *testing.T) {
	for name, raw := range map[string][]byte{"web": DemoDNSCNP, "deny": DemoDNSDeny} {
		var f model.FederatedClusterNetworkPolicy
		if err := yaml.UnmarshalStrict(raw, &f); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		p, err := model.ClusterPolicyFromFederated(&f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if errs := model.ValidateClusterPolicy(field.NewPath("policy"), p); len(errs) > 0 {
			t.Errorf("%s: %v", name, errs.ToAggregate())
		}
	}
	var cnp cnpv1.ClusterNetworkPolicy
	if err := yaml.UnmarshalStrict(DemoDNSAPI, &cnp); err != nil {
		t.Fatal(err)
	}
	if errs := model.ValidateClusterNetworkPolicy(field.NewPath("cnp"), cnp.Name, &cnp.Spec); len(errs) > 0 {
		t.Errorf("api: %v", errs.ToAggregate())
	}
	// Every name the web policy lists is in the outside's zone, and the
	// names the tests expect refused are not listed.
	for _, n := range []string{"allowed", "alias", "short", "tcp", "six", "long", "brief", "after"} {
		if !strings.Contains(string(DemoDNSCNP), "- "+n+"."+OutsideZone+"\n") {
			t.Errorf("the web policy does not list %s", n)
		}
	}
	for _, n := range []string{"denied", "other", "end", "mid"} {
		if strings.Contains(string(DemoDNSCNP), n+"."+OutsideZone) {
			t.Errorf("the web policy lists %s, which the tests expect refused", n)
		}
	}
}
