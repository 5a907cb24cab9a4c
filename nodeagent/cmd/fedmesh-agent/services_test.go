package main

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/dns"
)

func TestOpenServicesPicksTheTranslation(t *testing.T) {
	tests := []struct {
		name    string
		o       options
		wantNil bool
	}{
		{"memory dataplane gets the in-memory twin", options{dataplane: "memory"}, false},
		{"ebpf without a cgroup translates nothing", options{dataplane: "ebpf", bpfPinDir: "/sys/fs/bpf/x"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, closeFn, err := openServices(context.Background(), &tt.o, slog.Default())
			if err != nil {
				t.Fatal(err)
			}
			defer closeFn()
			if (tr == nil) != tt.wantNil {
				t.Errorf("translator %v, want nil %v", tr, tt.wantNil)
			}
		})
	}
}

func TestServiceCollectorExportsTranslationStatus(t *testing.T) {
	ctx := context.Background()
	m := dataplane.NewSockLBMemory(dataplane.ServiceLimits{Backends: 2}, func() uint32 { return 0 })
	vip := netip.MustParseAddrPort("10.96.0.1:80")
	tbl := &dataplane.ServiceTable{Revision: 3, Frontends: []dataplane.ServiceFrontend{{
		Key: dataplane.ServiceKey{VIP: vip.Addr(), Port: vip.Port(), Protocol: 6},
		Backends: []dataplane.ServiceBackend{
			{Addr: netip.MustParseAddr("10.1.0.1"), Port: 8080, Weight: 1},
			{Addr: netip.MustParseAddr("10.1.0.2"), Port: 8080, Weight: 1},
		},
	}}}
	if err := m.ApplyServices(ctx, tbl); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Connect(1, 6, vip); err != nil {
		t.Fatal(err)
	}
	// One pod query redirected, one from the agent's marked socket left
	// alone.
	if err := m.SetDNSRedirect(ctx, dataplane.DNSRedirect{ClusterDNS: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Resolvers: []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53")}, SkipMark: dns.UpstreamMark}); err != nil {
		t.Fatal(err)
	}
	m.SetMark(3, dns.UpstreamMark)
	for _, sock := range []dataplane.SocketID{2, 3} {
		if _, err := m.Connect(sock, 17, netip.MustParseAddrPort("10.96.0.10:53")); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP fedmesh_dataplane_service_backends Backends the translation holds over all frontends.
# TYPE fedmesh_dataplane_service_backends gauge
fedmesh_dataplane_service_backends 1
# HELP fedmesh_dataplane_service_frontends ClusterSetIP frontends (VIP, port, protocol) the translation holds.
# TYPE fedmesh_dataplane_service_frontends gauge
fedmesh_dataplane_service_frontends 1
# HELP fedmesh_dataplane_service_socket_ops_total Socket calls the translation handled, by result: translated (sent to a backend), rejected (no backend), reversed (peer shown as the VIP or the cluster DNS address), dns_redirected (a pod's DNS sent to the node-local resolver), dns_exempt (DNS from a socket with the agent's upstream mark, left alone).
# TYPE fedmesh_dataplane_service_socket_ops_total counter
fedmesh_dataplane_service_socket_ops_total{result="dns_exempt"} 1
fedmesh_dataplane_service_socket_ops_total{result="dns_redirected"} 1
fedmesh_dataplane_service_socket_ops_total{result="rejected"} 0
fedmesh_dataplane_service_socket_ops_total{result="reversed"} 0
fedmesh_dataplane_service_socket_ops_total{result="translated"} 1
# HELP fedmesh_dataplane_service_truncated_frontends Frontends served with fewer backends than their table lists (translation maps full or invalid backends).
# TYPE fedmesh_dataplane_service_truncated_frontends gauge
fedmesh_dataplane_service_truncated_frontends 1
`
	// The backend map holds 2 entries, so 1 can be loaded: the service is
	// served by its first backend and reported truncated.
	if err := testutil.CollectAndCompare(newServiceCollector(m, slog.Default()), strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
