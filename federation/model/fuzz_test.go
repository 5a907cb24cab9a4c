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
