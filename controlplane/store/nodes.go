package store

import (
	"fmt"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func (s *State) applyRegisterNode(tx *txn, req *fedmeshv1.RegisterNodeRequest) (*Result, error) {
	n := req.GetNode()
	ce := s.clusters[n.GetCluster()]
	if ce == nil {
		return nil, clusterNotFound(field.NewPath("node", "cluster"), n.GetCluster())
	}
	if err := ce.checkNodeCIDRs(n); err != nil {
		return nil, err
	}
	old := s.nodes[n.GetCluster()][n.GetName()]
	n.Status = old.GetStatus() // status comes from reports only
	n.Meta = tx.meta(old.GetMeta())
	inner(s.nodes, n.GetCluster())[n.GetName()] = n
	tx.putNode(n)
	return &Result{Node: n}, nil
}

// checkNodeCIDRs rejects a node whose pod CIDRs do not lie inside the
// cluster's current ones (the edge checked their syntax; one that does not
// parse lies inside none).
func (ce *clusterEntry) checkNodeCIDRs(n *fedmeshv1.Node) error {
	var errs field.ErrorList
	for i, v := range n.GetPodCidrs() {
		pfx, _ := netip.ParsePrefix(v)
		inside := slices.ContainsFunc(ce.podCIDRs(), func(c netip.Prefix) bool {
			return pfx.IsValid() && c.Bits() <= pfx.Bits() && c.Contains(pfx.Addr())
		})
		if !inside {
			errs = append(errs, field.Invalid(field.NewPath("node", "podCIDRs").Index(i), v, ce.outside(pfx.Addr())))
		}
	}
	return model.AsError(errs)
}

// outside says why a (node or pod) address of the cluster is refused,
// naming the cluster's pod CIDR of that address's family.
func (ce *clusterEntry) outside(a netip.Addr) string {
	if !a.IsValid() {
		return fmt.Sprintf("is not inside any pod CIDR of cluster %q %v", ce.spec.GetName(), ce.spec.GetPodCidrs())
	}
	return model.OutsidePodCIDRs(ce.spec, a)
}

func (s *State) applyDeleteNode(tx *txn, req *fedmeshv1.DeleteNodeRequest) (*Result, error) {
	old := s.nodes[req.GetCluster()][req.GetName()]
	if old == nil {
		return nil, &NotFoundError{Kind: "node", Key: req.GetCluster() + "/" + req.GetName()}
	}
	delete(s.nodes[req.GetCluster()], req.GetName())
	if len(s.nodes[req.GetCluster()]) == 0 {
		delete(s.nodes, req.GetCluster())
	}
	tx.delNode(old)
	delete(s.reported[req.GetCluster()], req.GetName())
	return &Result{}, nil
}

func (s *State) noteReport(cluster, node string, t int64) {
	if s.reported == nil {
		s.reported = map[string]map[string]int64{}
	}
	inner(s.reported, cluster)[node] = t
}

// ReportedNodes returns, per node of cluster that has a status, when it
// last reported (command time, Unix nanoseconds; 0 when unknown because
// this replica restored a snapshot since).
func (s *State) ReportedNodes(cluster string) map[string]int64 {
	out := map[string]int64{}
	for name, n := range s.nodes[cluster] {
		if n.GetStatus() != nil {
			out[name] = s.reported[cluster][name]
		}
	}
	return out
}

func (s *State) applyReportNodeStatus(tx *txn, req *fedmeshv1.ReportNodeStatusRequest) (*Result, error) {
	old := s.nodes[req.GetCluster()][req.GetName()]
	if old == nil {
		return nil, &NotFoundError{Kind: "node", Key: req.GetCluster() + "/" + req.GetName()}
	}
	n := proto.CloneOf(old)
	n.Status = req.GetStatus()
	n.Meta = tx.meta(old.GetMeta())
	s.noteReport(req.GetCluster(), req.GetName(), tx.time)
	s.nodes[req.GetCluster()][req.GetName()] = n
	tx.putNode(n)
	return &Result{Node: n}, nil
}

// applyRecordNodeStatus is CmdRecordNodeStatus: the node's status changes,
// its revisions stay (tx is internal: no revision, no event).
func (s *State) applyRecordNodeStatus(tx *txn, req *fedmeshv1.ReportNodeStatusRequest) (*Result, error) {
	old := s.nodes[req.GetCluster()][req.GetName()]
	if old == nil {
		return nil, &NotFoundError{Kind: "node", Key: req.GetCluster() + "/" + req.GetName()}
	}
	s.noteReport(req.GetCluster(), req.GetName(), tx.time)
	n := proto.CloneOf(old)
	n.Status = req.GetStatus()
	s.nodes[req.GetCluster()][req.GetName()] = n
	return &Result{Node: n}, nil
}
