package store

import (
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func (s *State) applyRegisterNode(tx *txn, req *fedmeshv1.RegisterNodeRequest) (*Result, error) {
	n := req.GetNode()
	ce := s.clusters[n.GetCluster()]
	if ce == nil {
		if err := model.ValidateNode(n, nil); err != nil {
			return nil, err
		}
		return nil, clusterNotFound(field.NewPath("node", "cluster"), n.GetCluster())
	}
	if err := model.ValidateNode(n, ce.spec); err != nil {
		return nil, err
	}
	old := s.nodes[n.GetCluster()][n.GetName()]
	n.Status = old.GetStatus() // status comes from reports only
	n.Meta = tx.meta(old.GetMeta())
	inner(s.nodes, n.GetCluster())[n.GetName()] = n
	tx.putNode(n)
	return &Result{Node: n}, nil
}

func (s *State) nodeKey(cluster, name string) error {
	errs := model.ClusterName(field.NewPath("cluster"), cluster)
	if name == "" {
		errs = append(errs, field.Required(field.NewPath("name"), ""))
	}
	return model.AsError(errs)
}

func (s *State) applyDeleteNode(tx *txn, req *fedmeshv1.DeleteNodeRequest) (*Result, error) {
	if err := s.nodeKey(req.GetCluster(), req.GetName()); err != nil {
		return nil, err
	}
	old := s.nodes[req.GetCluster()][req.GetName()]
	if old == nil {
		return nil, &NotFoundError{Kind: "node", Key: req.GetCluster() + "/" + req.GetName()}
	}
	delete(s.nodes[req.GetCluster()], req.GetName())
	if len(s.nodes[req.GetCluster()]) == 0 {
		delete(s.nodes, req.GetCluster())
	}
	tx.delNode(old)
	return &Result{}, nil
}

func (s *State) applyReportNodeStatus(tx *txn, req *fedmeshv1.ReportNodeStatusRequest) (*Result, error) {
	if err := s.nodeKey(req.GetCluster(), req.GetName()); err != nil {
		return nil, err
	}
	if req.GetStatus() == nil {
		return nil, model.AsError(field.ErrorList{field.Required(field.NewPath("status"), "")})
	}
	old := s.nodes[req.GetCluster()][req.GetName()]
	if old == nil {
		return nil, &NotFoundError{Kind: "node", Key: req.GetCluster() + "/" + req.GetName()}
	}
	n := proto.CloneOf(old)
	n.Status = req.GetStatus()
	n.Meta = tx.meta(old.GetMeta())
	s.nodes[req.GetCluster()][req.GetName()] = n
	tx.putNode(n)
	return &Result{Node: n}, nil
}

// applyRecordNodeStatus is CmdRecordNodeStatus: the node's status changes,
// its revisions stay (tx is internal: no revision, no event).
func (s *State) applyRecordNodeStatus(_ *txn, req *fedmeshv1.ReportNodeStatusRequest) (*Result, error) {
	if err := s.nodeKey(req.GetCluster(), req.GetName()); err != nil {
		return nil, err
	}
	if req.GetStatus() == nil {
		return nil, model.AsError(field.ErrorList{field.Required(field.NewPath("status"), "")})
	}
	old := s.nodes[req.GetCluster()][req.GetName()]
	if old == nil {
		return nil, &NotFoundError{Kind: "node", Key: req.GetCluster() + "/" + req.GetName()}
	}
	n := proto.CloneOf(old)
	n.Status = req.GetStatus()
	s.nodes[req.GetCluster()][req.GetName()] = n
	return &Result{Node: n}, nil
}
