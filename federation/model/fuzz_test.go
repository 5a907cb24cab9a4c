package model

import (
	"testing"

	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// FuzzValidatePolicy feeds arbitrary wire bytes decoded as a policy batch to
// the validator: it must never panic, and whatever it accepts must convert
// to a gRPC status cleanly when rejected.
func FuzzValidatePolicy(f *testing.F) {
	for _, r := range []*fedmeshv1.ApplyPoliciesRequest{goodPolicies(), federated()} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req := &fedmeshv1.ApplyPoliciesRequest{}
		if proto.Unmarshal(data, req) != nil {
			return
		}
		err := ValidateApplyPolicies(req)
		if err != nil {
			ve := FieldErrors(err)
			if len(ve) == 0 {
				t.Fatalf("rejection without field errors: %v", err)
			}
			_ = (&ValidationError{Errs: ve}).GRPCStatus()
		}
		for _, p := range req.GetPolicies() {
			_ = ValidatePolicy(p)
		}
	})
}

// FuzzValidateClusterAndEndpoints does the same for the cluster and the
// endpoint-batch validators: decoded from arbitrary bytes, never a panic,
// and a rejection always names at least one field.
func FuzzValidateClusterAndEndpoints(f *testing.F) {
	for _, m := range []proto.Message{goodCluster(), goodEndpoints().Endpoints[0]} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &fedmeshv1.Cluster{}
		if proto.Unmarshal(data, c) == nil {
			if err := ValidateCluster(c); err != nil && len(FieldErrors(err)) == 0 {
				t.Fatalf("cluster rejection without field errors: %v", err)
			}
			_ = ValidateClusterOverlap(c, []*fedmeshv1.Cluster{goodCluster()})
		}
		e := &fedmeshv1.Endpoint{}
		if proto.Unmarshal(data, e) == nil {
			req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east", Endpoints: []*fedmeshv1.Endpoint{e}}
			if err := ValidateUpsertEndpoints(req, goodCluster()); err != nil && len(FieldErrors(err)) == 0 {
				t.Fatalf("endpoint rejection without field errors: %v", err)
			}
		}
	})
}

// FuzzValidateApplyClusterPolicies feeds arbitrary ClusterNetworkPolicy
// batches to the edge check: it never panics, every refusal names a field,
// and an accepted policy's spec decodes and re-encodes canonically to what
// decodes to the same spec.
func FuzzValidateApplyClusterPolicies(f *testing.F) {
	for _, s := range []string{
		`{"tier":"Admin","priority":1,"subject":{"namespaces":{}},"ingress":[{"action":"Deny","from":[{"namespaces":{}}]}]}`,
		`{"tier":"Baseline","priority":0,"subject":{"pods":{"namespaceSelector":{},"podSelector":{}}},"egress":[{"action":"Pass","to":[{"networks":["10.0.0.0/8"]}]}]}`,
	} {
		b, err := proto.Marshal(&fedmeshv1.ApplyClusterPoliciesRequest{Policies: []*fedmeshv1.ClusterNetworkPolicy{{Name: "p", SpecJson: []byte(s),
			IngressPeerClusters: []*fedmeshv1.ClusterPolicyRulePeers{{Peers: []*fedmeshv1.ClusterPolicyPeerScope{{ClusterSelector: &fedmeshv1.LabelSelector{}}}}}}}})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req := &fedmeshv1.ApplyClusterPoliciesRequest{}
		if proto.Unmarshal(data, req) != nil {
			return
		}
		if err := ValidateApplyClusterPolicies(req); err != nil {
			if len(FieldErrors(err)) == 0 {
				t.Fatalf("rejection without field errors: %v", err)
			}
			return
		}
		for _, p := range req.GetPolicies() {
			c, err := CanonicalClusterPolicySpec(p.GetSpecJson())
			if err != nil {
				t.Fatalf("accepted spec does not decode: %v", err)
			}
			if c2, err := CanonicalClusterPolicySpec(c); err != nil || string(c2) != string(c) {
				t.Fatalf("canonical form is not stable: %s -> %s (%v)", c, c2, err)
			}
		}
	})
}
