package server

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestExportAffinityAndEndpointsAreValidatedNamingTheField(t *testing.T) {
	export := func(mut func(x *fedmeshv1.ServiceExport)) *fedmeshv1.ExportServicesRequest {
		x := &fedmeshv1.ServiceExport{Namespace: "demo", Name: "redis", Ports: []*fedmeshv1.ServicePort{{Port: 6379}},
			Endpoints: []*fedmeshv1.ServiceBackend{{Address: "10.1.0.1", Node: "n1", Ready: true}}}
		mut(x)
		return &fedmeshv1.ExportServicesRequest{Cluster: "a", Exports: []*fedmeshv1.ServiceExport{x}}
	}
	tests := []struct {
		name  string
		req   *fedmeshv1.ExportServicesRequest
		field string // "" = valid
	}{
		{"affinity local with endpoints is valid", export(func(x *fedmeshv1.ServiceExport) { x.Affinity = fedmeshv1.Affinity_AFFINITY_LOCAL }), ""},
		{"an unknown affinity is refused", export(func(x *fedmeshv1.ServiceExport) { x.Affinity = 9 }), "exports[0].affinity"},
		{"an endpoint address that is no IP is refused", export(func(x *fedmeshv1.ServiceExport) { x.Endpoints[0].Address = "redis-0" }), "exports[0].endpoints[0].address"},
		{"a duplicate endpoint is refused", export(func(x *fedmeshv1.ServiceExport) { x.Endpoints = append(x.Endpoints, x.Endpoints[0]) }), "exports[0].endpoints[1].address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateCommand(store.CmdExportServices, tt.req)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("err = %v, want InvalidArgument naming %s", err, tt.field)
			}
		})
	}
}
