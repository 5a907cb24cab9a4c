package store

import (
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func (s *State) applyRegisterCluster(tx *txn, req *fedmeshv1.RegisterClusterRequest) (*Result, error) {
	c := req.GetCluster()
	others := make([]*fedmeshv1.Cluster, 0, len(s.clusters))
	for _, name := range sortedKeys(s.clusters) {
		others = append(others, s.clusters[name].spec)
	}
	if err := model.ValidateClusterOverlap(c, others); err != nil {
		return nil, err
	}
	if err := s.checkClusterset(c); err != nil {
		return nil, err
	}
	old := s.clusters[c.GetName()]
	if old != nil {
		var nodes []*fedmeshv1.Node
		for _, n := range sortedKeys(s.nodes[c.GetName()]) {
			nodes = append(nodes, s.nodes[c.GetName()][n])
		}
		var eps []*fedmeshv1.Endpoint
		for _, k := range sortedNsNames(s.endpoints[c.GetName()]) {
			eps = append(eps, s.endpoints[c.GetName()][k].ep)
		}
		if err := model.ValidateClusterKeepsMembers(c, nodes, eps); err != nil {
			return nil, err
		}
	}
	c.Status = nil
	var ce clusterEntry
	if old != nil {
		c.Status = livenessOf(old.spec.GetStatus())
		ce = *old
		c.Meta = tx.meta(old.spec.GetMeta())
	} else {
		c.Meta = tx.meta(nil)
	}
	ce.spec = c
	ce.pods = nil // parsed again from the new spec
	s.clusters[c.GetName()] = &ce
	tx.putCluster(c)
	if old != nil && !proto.Equal(old.spec.GetExports(), c.GetExports()) {
		// The export scope decides which exports feed imports.
		for _, k := range sortedNsNames(s.exports[c.GetName()]) {
			s.recomputeImport(tx, k, nil)
		}
	}
	return &Result{Cluster: s.clusterView(&ce)}, nil
}

func (s *State) applyDeleteCluster(tx *txn, req *fedmeshv1.DeleteClusterRequest) (*Result, error) {
	name := req.GetName()
	ce, ok := s.clusters[name]
	if !ok {
		return nil, &NotFoundError{Kind: "cluster", Key: name}
	}
	for _, n := range sortedKeys(s.nodes[name]) {
		tx.delNode(s.nodes[name][n])
	}
	delete(s.nodes, name)
	delete(s.reported, name)
	for _, k := range sortedNsNames(s.endpoints[name]) {
		s.deleteEndpoint(tx, epRef{cluster: name, key: k})
	}
	delete(s.endpoints, name)
	exported := sortedNsNames(s.exports[name])
	for _, k := range exported {
		tx.delExport(s.exports[name][k].x)
	}
	delete(s.exports, name)
	for _, k := range exported {
		s.recomputeImport(tx, k, nil)
	}
	for _, k := range sortedNsNames(s.policies[name]) {
		tx.delPolicy(s.policies[name][k].p)
		s.ids.policyStored(s.policies[name][k].p, nil)
	}
	delete(s.policies, name)
	s.deleteClusterPolicies(tx, name)
	s.adverts.dropCluster(tx, name) // svcadverts.go
	for _, k := range []genKind{genEndpoints, genExports, genPolicies} {
		delete(s.gens, genKey{owner: name, kind: k})
	}
	delete(s.clusters, name)
	tx.delCluster(ce.spec)
	s.rekeyIdentities(tx)
	return &Result{}, nil
}

// clusterView is the stored spec with its computed status.
func (s *State) clusterView(ce *clusterEntry) *fedmeshv1.Cluster {
	c := proto.CloneOf(ce.spec)
	c.Status = &fedmeshv1.ClusterStatus{
		Nodes:            uint32(len(s.nodes[c.GetName()])),
		Endpoints:        uint32(len(s.endpoints[c.GetName()])),
		ResyncGeneration: ce.resyncGen,
	}
	if lv := ce.spec.GetStatus(); lv != nil {
		c.Status.Reachability, c.Status.ReachabilityTime, c.Status.StaleNodes = lv.GetReachability(), lv.GetReachabilityTime(), lv.GetStaleNodes()
	}
	if ce.lastSync != 0 {
		c.Status.LastSyncTime = unixNanoToTimestamp(ce.lastSync)
	}
	return c
}

func clusterNotFound(p *field.Path, name string) error {
	return model.AsError(field.ErrorList{field.NotFound(p, name)})
}
