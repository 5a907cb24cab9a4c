package store

import (
	"net/netip"
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestClusterSetIPsAreKeptWhileTheImportLivesAndFreedWithIt(t *testing.T) {
	s := NewState(100)
	must := func(r *Result) {
		t.Helper()
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	export := func(name string) *Result {
		return s.Apply(Command{Type: CmdExportServices, Payload: &fedmeshv1.ExportServicesRequest{Cluster: "a", Exports: []*fedmeshv1.ServiceExport{{
			Namespace: "demo", Name: name, Ports: []*fedmeshv1.ServicePort{{Name: "p", Port: 80}}, Backends: []string{"10.1.0.1"}}}}})
	}
	ips := func(name string) []string { return s.imports[nsName{"demo", name}].GetIps() }
	must(s.Apply(Command{Type: CmdRegisterCluster, Payload: &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}}))
	must(export("redis"))
	if got := ips("redis"); len(got) != 0 {
		t.Fatalf("VIPs before the clusterset CIDRs are configured: %v", got)
	}
	// A /30 holds two usable addresses: the third import gets none.
	must(s.Apply(Command{Type: CmdConfigureServices, Payload: &fedmeshv1.ConfigureServicesRequest{ClustersetCidrs: []string{"100.127.0.0/30"}}}))
	first := ips("redis")
	if len(first) != 1 || !netip.MustParsePrefix("100.127.0.0/30").Contains(netip.MustParseAddr(first[0])) {
		t.Fatalf("redis VIPs = %v, want one in 100.127.0.0/30", first)
	}
	must(export("redis")) // a new version of the export keeps the VIP
	if got := ips("redis"); len(got) != 1 || got[0] != first[0] {
		t.Fatalf("VIP changed on re-export: %v, was %v", got, first)
	}
	must(export("cache"))
	if got := ips("cache"); len(got) != 1 || got[0] == first[0] {
		t.Fatalf("cache VIPs = %v, want the other free address (redis has %v)", got, first)
	}
	must(export("third"))
	if got := ips("third"); len(got) != 0 {
		t.Fatalf("third VIPs = %v in a full CIDR", got)
	}
	if c := s.imports[nsName{"demo", "third"}].GetConditions(); len(c) < 2 || c[len(c)-1].GetReason() != "CIDRExhausted" {
		t.Errorf("third's conditions %v, want CIDRExhausted", c)
	}
	must(s.Apply(Command{Type: CmdUnexportService, Payload: &fedmeshv1.UnexportServiceRequest{Cluster: "a", Namespace: "demo", Name: "redis"}}))
	must(export("fourth"))
	if got := ips("fourth"); len(got) != 1 || got[0] != first[0] {
		t.Errorf("fourth VIPs = %v, want redis's freed %v", got, first)
	}
	// A cluster overlapping the clusterset CIDR is refused, and so is a
	// CIDR overlapping a cluster.
	if r := s.Apply(Command{Type: CmdRegisterCluster, Payload: &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "b", PodCidrs: []string{"100.127.0.0/24"}}}}); r.Err == nil {
		t.Error("a cluster overlapping the clusterset CIDR was registered")
	}
	if r := s.Apply(Command{Type: CmdConfigureServices, Payload: &fedmeshv1.ConfigureServicesRequest{ClustersetCidrs: []string{"10.1.128.0/24"}}}); r.Err == nil {
		t.Error("a clusterset CIDR overlapping cluster a's pods was accepted")
	}
}

// The edge's clusterset CIDRs on an export configure ClusterSetIPs in that
// export's own revision (no write of their own); CIDRs that overlap a
// cluster are ignored there and the stored ones stay.
func TestExportCarryingClustersetCIDRsAllocatesInItsOwnRevision(t *testing.T) {
	s := NewState(100)
	if r := s.Apply(Command{Type: CmdRegisterCluster, Payload: &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}}); r.Err != nil {
		t.Fatal(r.Err)
	}
	export := func(cidrs ...string) *Result {
		return s.Apply(Command{Type: CmdExportServices, Payload: &fedmeshv1.ExportServicesRequest{Cluster: "a", ClustersetCidrs: cidrs,
			Exports: []*fedmeshv1.ServiceExport{{Namespace: "demo", Name: "redis", Ports: []*fedmeshv1.ServicePort{{Name: "p", Port: 80}}}}}})
	}
	before := s.Revision()
	if r := export("100.127.0.0/16"); r.Err != nil || r.Revision != before+1 {
		t.Fatalf("export: %v at revision %d, want %d", r.Err, r.Revision, before+1)
	}
	ips := s.imports[nsName{"demo", "redis"}].GetIps()
	if len(ips) != 1 || !netip.MustParsePrefix("100.127.0.0/16").Contains(netip.MustParseAddr(ips[0])) {
		t.Fatalf("VIPs %v, want one in 100.127.0.0/16 from the export's own revision", ips)
	}
	if r := export("10.1.0.0/24"); r.Err != nil {
		t.Fatalf("an export with misfit CIDRs was refused: %v", r.Err)
	}
	if got := s.ClustersetCIDRs(); len(got) != 1 || got[0].String() != "100.127.0.0/16" {
		t.Errorf("clusterset CIDRs %v after a misfit, want the stored 100.127.0.0/16", got)
	}
}
