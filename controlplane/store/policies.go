package store

import (
	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func (s *State) applyApplyPolicies(tx *txn, req *fedmeshv1.ApplyPoliciesRequest) (*Result, error) {
	owner := req.GetCluster()
	var ce *clusterEntry
	if owner != "" {
		if ce = s.clusters[owner]; ce == nil {
			return nil, clusterNotFound(field.NewPath("cluster"), owner)
		}
	}
	gk := genKey{owner: owner, kind: genPolicies}
	stamp, err := s.checkGeneration(gk, req.GetResync())
	if err != nil {
		return nil, err
	}
	g := req.GetResync().GetGeneration()
	ps := inner(s.policies, owner)
	res := &Result{}
	for _, p := range req.GetPolicies() {
		key := nsName{p.GetNamespace(), p.GetName()}
		var oldMeta *fedmeshv1.ObjectMeta
		if old := ps[key]; old != nil {
			oldMeta = old.p.GetMeta()
		}
		p.Meta = tx.meta(oldMeta)
		s.ids.policyStored(ps[key].policy(), p)
		ps[key] = &policyEntry{p: p, gen: stamp}
		tx.putPolicy(p)
		res.Policies = append(res.Policies, p)
	}
	if g > s.gens[gk] {
		s.gens[gk] = g
	}
	if req.GetResync().GetFinal() {
		for _, k := range sortedNsNames(ps) {
			if ps[k].gen < g {
				s.ids.policyStored(ps[k].p, nil)
				tx.delPolicy(ps[k].p)
				delete(ps, k)
				res.Deleted++
			}
		}
	}
	if len(ps) == 0 {
		delete(s.policies, owner)
	}
	if ce != nil {
		ce.lastSync = tx.time
	}
	s.rekeyIdentities(tx)
	return res, nil
}

func (s *State) applyDeletePolicy(tx *txn, req *fedmeshv1.DeletePolicyRequest) (*Result, error) {
	k := req.GetKey()
	key := nsName{k.GetNamespace(), k.GetName()}
	old := s.policies[k.GetCluster()][key]
	if old == nil {
		return nil, &NotFoundError{Kind: "policy", Key: k.GetCluster() + "/" + key.String()}
	}
	delete(s.policies[k.GetCluster()], key)
	if len(s.policies[k.GetCluster()]) == 0 {
		delete(s.policies, k.GetCluster())
	}
	tx.delPolicy(old.p)
	s.ids.policyStored(old.p, nil)
	s.rekeyIdentities(tx)
	return &Result{}, nil
}

func (s *State) applySetMember(_ *txn, m *fedmeshv1.Member) (*Result, error) {
	m.Leader = false // derived from Raft on read
	s.members[m.GetId()] = m
	return &Result{}, nil
}

func (s *State) applyRemoveMember(_ *txn, m *fedmeshv1.Member) (*Result, error) {
	delete(s.members, m.GetId())
	return &Result{}, nil
}
