package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// TestCatalogUpdatedPerImportEqualsOneBuiltFromEveryImport replays random
// service changes (imports put with new backends, ports and ClusterSetIPs,
// imports deleted, clusters turning unreachable or reporting stale nodes,
// several in one revision) through the agent, which builds again only the
// services whose import changed unless a cluster did, and after every
// revision compares its catalog with one built from every import of the
// view.
func TestCatalogUpdatedPerImportEqualsOneBuiltFromEveryImport(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 11))
			a := newTestAgent(t)
			clusters := []string{"c0", "c1", "c2"}
			clusterObj := func(i int) *fedmeshv1.Cluster {
				c := cluster(clusters[i], fmt.Sprintf("10.%d.0.0/16", i))
				c.Status = &fedmeshv1.ClusterStatus{Reachability: fedmeshv1.Reachability(1 + rng.IntN(2))}
				if rng.IntN(3) == 0 {
					c.Status.StaleNodes = []string{"n1"}
				}
				return c
			}
			imp := func(rev uint64) *fedmeshv1.ServiceImport {
				k := rng.IntN(5)
				im := &fedmeshv1.ServiceImport{Namespace: "ns", Name: fmt.Sprintf("svc%d", k),
					Type:  fedmeshv1.ServiceType_SERVICE_TYPE_CLUSTER_SET_IP,
					Ports: []*fedmeshv1.ServicePort{{Name: "http", Port: uint32(80 + rng.IntN(2))}},
					Ips:   []string{fmt.Sprintf("240.0.0.%d", 1+k)}, Meta: &fedmeshv1.ObjectMeta{Revision: rev}}
				for i, c := range clusters {
					if rng.IntN(3) == 0 {
						continue
					}
					cb := &fedmeshv1.ClusterBackends{Cluster: c}
					for n := range 1 + rng.IntN(3) {
						cb.Endpoints = append(cb.Endpoints, &fedmeshv1.ServiceBackend{
							Address: fmt.Sprintf("10.%d.0.%d", i, 1+rng.IntN(9)), Node: fmt.Sprintf("n%d", n), Ready: rng.IntN(4) != 0})
					}
					im.Clusters = append(im.Clusters, cb)
				}
				return im
			}
			impEv := func(rev uint64) *fedmeshv1.Event {
				return &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Revision: rev,
					Object: &fedmeshv1.Event_ServiceImport{ServiceImport: imp(rev)}}
			}
			rev := uint64(1)
			var evs []*fedmeshv1.Event
			for i := range clusters {
				evs = append(evs, putEv(rev, clusterObj(i)))
			}
			for range 3 {
				evs = append(evs, impEv(rev))
			}
			a.handleBatch(context.Background(), []watchItem{{Resp: snap(rev, false, evs...)}})
			partial := 0
			for range 150 {
				rev++
				evs = nil
				clusterChanged := false
				for range 1 + rng.IntN(3) {
					switch op := rng.IntN(10); {
					case op < 6:
						evs = append(evs, impEv(rev))
					case op < 8:
						evs = append(evs, &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_DELETE, Revision: rev,
							Object: &fedmeshv1.Event_ServiceImport{ServiceImport: &fedmeshv1.ServiceImport{Namespace: "ns", Name: fmt.Sprintf("svc%d", rng.IntN(5))}}})
					default:
						evs = append(evs, putEv(rev, clusterObj(rng.IntN(len(clusters)))))
						clusterChanged = true
					}
				}
				a.handleBatch(context.Background(), []watchItem{{Resp: events(rev, evs...)}})
				if !clusterChanged {
					partial++
				}
				got, want := a.ServiceCatalog(), catalogOf(a.view, "c0")
				if got.Revision != rev || !reflect.DeepEqual(got, want) {
					t.Fatalf("revision %d: the catalog updated per import\n%+v\ndiffers from one built from every import\n%+v", rev, got, want)
				}
			}
			if partial == 0 {
				t.Fatal("every revision changed a cluster: the per-import update went untested")
			}
		})
	}
}
