package store

import (
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// goldenServiceAdvertisementSteps are the golden scenario's service
// advertisement entries (log format 7): puts, an unchanged put that keeps
// its revision, a delete, a missing cluster, and a full resync.
func goldenServiceAdvertisementSteps(add func(note string, cmds ...Command)) []goldenStep {
	sync := func(r *fedmeshv1.SyncServiceAdvertisementsRequest) Command {
		return Command{Type: CmdSyncServiceAdvertisements, Payload: r}
	}
	lb := func(name, ip string, local bool, ready ...string) *fedmeshv1.ServiceAdvertisement {
		a := &fedmeshv1.ServiceAdvertisement{Namespace: "web", Name: name, ClusterIps: []string{"10.96.0.10", "fd00:96::10"},
			ExternalIps: []string{"192.0.2.7"}, LoadBalancerIps: []string{ip}, ReadyNodes: ready,
			ExternalTrafficPolicy: fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_CLUSTER}
		if local {
			a.ExternalTrafficPolicy = fedmeshv1.ServiceTrafficPolicy_SERVICE_TRAFFIC_POLICY_LOCAL
		}
		return a
	}
	add("service advertisements of cluster a: Local lb (n1 ready) and Cluster api",
		sync(&fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Replace: true,
			Puts: []*fedmeshv1.ServiceAdvertisement{lb("lb", "203.0.113.10", true, "n1"), lb("api", "203.0.113.20", false)}}))
	add("grouped entry: lb's backend leaves n1 (api unchanged keeps its revision), then api deleted",
		sync(&fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Puts: []*fedmeshv1.ServiceAdvertisement{lb("lb", "203.0.113.10", true), lb("api", "203.0.113.20", false)}}),
		sync(&fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Deletes: []*fedmeshv1.ServiceAdvertisementKey{{Namespace: "web", Name: "api"}}}))
	add("service advertisements of a missing cluster: rejected",
		sync(&fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "nope", Puts: []*fedmeshv1.ServiceAdvertisement{lb("x", "203.0.113.30", false)}}))
	add("full resync of cluster a: db replaces lb",
		sync(&fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Replace: true, Puts: []*fedmeshv1.ServiceAdvertisement{lb("db", "203.0.113.40", true, "n1", "n5")}}))
	return nil
}

func TestServiceAdvertisementsKeepTheirRevisionWhenUnchangedAndGoWithTheirCluster(t *testing.T) {
	s := NewState(0)
	apply(t, s, Command{Type: CmdRegisterCluster, Payload: &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}})
	sync := func(r *fedmeshv1.SyncServiceAdvertisementsRequest) uint64 {
		return apply(t, s, Command{Type: CmdSyncServiceAdvertisements, Payload: r}).Revision
	}
	adv := func(name string, ready ...string) *fedmeshv1.ServiceAdvertisement {
		return &fedmeshv1.ServiceAdvertisement{Namespace: "shop", Name: name, LoadBalancerIps: []string{"203.0.113.10"}, ReadyNodes: ready}
	}
	r1 := sync(&fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Replace: true, Puts: []*fedmeshv1.ServiceAdvertisement{adv("web", "n1"), adv("api")}})
	r2 := sync(&fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Puts: []*fedmeshv1.ServiceAdvertisement{adv("web"), adv("api")}})
	got := s.ServiceAdvertisements("a")
	if len(got) != 2 || got[0].GetName() != "api" || got[0].GetMeta().GetRevision() != r1 || got[1].GetMeta().GetRevision() != r2 || s.ServiceAdvertisementsRevision("a") != r2 {
		t.Fatalf("after an unchanged and a changed put: %v (set at %d)", got, s.ServiceAdvertisementsRevision("a"))
	}
	r3 := sync(&fedmeshv1.SyncServiceAdvertisementsRequest{Cluster: "a", Replace: true, Puts: []*fedmeshv1.ServiceAdvertisement{adv("web")}})
	if got := s.ServiceAdvertisements("a"); len(got) != 1 || got[0].GetName() != "web" || s.ServiceAdvertisementsRevision("a") != r3 {
		t.Fatalf("a replace keeps only its puts: %v", got)
	}
	apply(t, s, Command{Type: CmdDeleteCluster, Payload: &fedmeshv1.DeleteClusterRequest{Name: "a"}})
	if got := s.ServiceAdvertisements("a"); len(got) != 0 || s.ServiceAdvertisementsRevision("a") <= r3 {
		t.Fatalf("a deleted cluster keeps advertisements %v", got)
	}
}
