package store

import (
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/bgp/peering"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// BGP peers (BGPPeerConfig) and filters (BGPFilter) are federation-wide
// objects keyed by name. Their commands arrive only in log format 4
// (LogFormatBGP): the edge refuses them until every replica applies it.
const (
	CmdApplyBGPPeer    CommandType = 18
	CmdDeleteBGPPeer   CommandType = 19
	CmdApplyBGPFilter  CommandType = 20
	CmdDeleteBGPFilter CommandType = 21
)

// registerBGP adds the BGP commands to the dispatch table.
func registerBGP() {
	register(CmdApplyBGPPeer, "ApplyBGPPeer", false, (*State).applyApplyBGPPeer)
	register(CmdDeleteBGPPeer, "DeleteBGPPeer", false, (*State).applyDeleteBGPPeer)
	register(CmdApplyBGPFilter, "ApplyBGPFilter", false, (*State).applyApplyBGPFilter)
	register(CmdDeleteBGPFilter, "DeleteBGPFilter", false, (*State).applyDeleteBGPFilter)
	describe(CmdApplyBGPPeer, func(r *fedmeshv1.ApplyBGPPeerRequest, name func(string)) (string, int) {
		name(r.GetPeer().GetName())
		return "", 1
	})
	describe(CmdDeleteBGPPeer, func(r *fedmeshv1.DeleteBGPPeerRequest, name func(string)) (string, int) {
		name(r.GetName())
		return "", 1
	})
	describe(CmdApplyBGPFilter, func(r *fedmeshv1.ApplyBGPFilterRequest, name func(string)) (string, int) {
		name(r.GetFilter().GetName())
		return "", 1
	})
	describe(CmdDeleteBGPFilter, func(r *fedmeshv1.DeleteBGPFilterRequest, name func(string)) (string, int) {
		name(r.GetName())
		return "", 1
	})
}

// bgpState holds the BGP objects by name. Stored objects are never
// mutated (a change stores a new one); peers are stored without status,
// which is computed on read.
type bgpState struct {
	peers   map[string]*fedmeshv1.BGPPeerConfig
	filters map[string]*fedmeshv1.BGPFilter
}

func newBGPState() bgpState {
	return bgpState{peers: map[string]*fedmeshv1.BGPPeerConfig{}, filters: map[string]*fedmeshv1.BGPFilter{}}
}

// clone copies the indexes for a snapshot (not the immutable objects).
func (b bgpState) clone() bgpState {
	c := bgpState{
		peers:   make(map[string]*fedmeshv1.BGPPeerConfig, len(b.peers)),
		filters: make(map[string]*fedmeshv1.BGPFilter, len(b.filters)),
	}
	for k, v := range b.peers {
		c.peers[k] = v
	}
	for k, v := range b.filters {
		c.filters[k] = v
	}
	return c
}

func (b bgpState) empty() bool { return len(b.peers) == 0 && len(b.filters) == 0 }

func (s *State) applyApplyBGPPeer(tx *txn, req *fedmeshv1.ApplyBGPPeerRequest) (*Result, error) {
	p := req.GetPeer()
	var errs field.ErrorList
	for i, f := range p.GetFilters() {
		if s.bgp.filters[f] == nil {
			errs = append(errs, field.NotFound(field.NewPath("peer", "filters").Index(i), f))
		}
	}
	if err := model.AsError(errs); err != nil {
		return nil, err
	}
	p.Status = nil
	p.Meta = tx.meta(s.bgp.peers[p.GetName()].GetMeta())
	s.bgp.peers[p.GetName()] = p
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_PUT, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_BgpPeer{BgpPeer: p} })
	return &Result{BGPPeer: s.bgpPeerView(p)}, nil
}

func (s *State) applyDeleteBGPPeer(tx *txn, req *fedmeshv1.DeleteBGPPeerRequest) (*Result, error) {
	old := s.bgp.peers[req.GetName()]
	if old == nil {
		return nil, &NotFoundError{Kind: "BGP peer", Key: req.GetName()}
	}
	delete(s.bgp.peers, req.GetName())
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_DELETE, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_BgpPeer{BgpPeer: old} })
	return &Result{}, nil
}

func (s *State) applyApplyBGPFilter(tx *txn, req *fedmeshv1.ApplyBGPFilterRequest) (*Result, error) {
	f := req.GetFilter()
	f.Meta = tx.meta(s.bgp.filters[f.GetName()].GetMeta())
	s.bgp.filters[f.GetName()] = f
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_PUT, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_BgpFilter{BgpFilter: f} })
	return &Result{BGPFilter: f}, nil
}

// ErrFilterInUse is why a filter a peer references cannot be deleted.
type ErrFilterInUse struct {
	Filter string
	Peers  []string
}

func (e *ErrFilterInUse) Error() string {
	return fmt.Sprintf("BGP filter %q is referenced by peers %s; remove it from their filters first", e.Filter, strings.Join(e.Peers, ", "))
}

// GRPCStatus maps the error to FailedPrecondition.
func (e *ErrFilterInUse) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

func (s *State) applyDeleteBGPFilter(tx *txn, req *fedmeshv1.DeleteBGPFilterRequest) (*Result, error) {
	old := s.bgp.filters[req.GetName()]
	if old == nil {
		return nil, &NotFoundError{Kind: "BGP filter", Key: req.GetName()}
	}
	var users []string
	for _, n := range sortedKeys(s.bgp.peers) {
		for _, f := range s.bgp.peers[n].GetFilters() {
			if f == req.GetName() {
				users = append(users, n)
				break
			}
		}
	}
	if len(users) > 0 {
		return nil, &ErrFilterInUse{Filter: req.GetName(), Peers: users}
	}
	delete(s.bgp.filters, req.GetName())
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_DELETE, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_BgpFilter{BgpFilter: old} })
	return &Result{}, nil
}

// BGPPeer returns one peer with its status, or nil.
func (s *State) BGPPeer(name string) *fedmeshv1.BGPPeerConfig {
	if p := s.bgp.peers[name]; p != nil {
		return s.bgpPeerView(p)
	}
	return nil
}

// BGPPeers lists the peers with their status, sorted by name.
func (s *State) BGPPeers() []*fedmeshv1.BGPPeerConfig {
	out := make([]*fedmeshv1.BGPPeerConfig, 0, len(s.bgp.peers))
	for _, n := range sortedKeys(s.bgp.peers) {
		out = append(out, s.bgpPeerView(s.bgp.peers[n]))
	}
	return out
}

// BGPPeerSpecs lists the peers as stored (no status), sorted by name.
func (s *State) BGPPeerSpecs() []*fedmeshv1.BGPPeerConfig {
	out := make([]*fedmeshv1.BGPPeerConfig, 0, len(s.bgp.peers))
	for _, n := range sortedKeys(s.bgp.peers) {
		out = append(out, s.bgp.peers[n])
	}
	return out
}

// BGPFilter returns one filter, or nil.
func (s *State) BGPFilter(name string) *fedmeshv1.BGPFilter { return s.bgp.filters[name] }

// BGPFilters lists the filters sorted by name.
func (s *State) BGPFilters() []*fedmeshv1.BGPFilter {
	out := make([]*fedmeshv1.BGPFilter, 0, len(s.bgp.filters))
	for _, n := range sortedKeys(s.bgp.filters) {
		out = append(out, s.bgp.filters[n])
	}
	return out
}

// BGPPeerSelects reports whether the stored peer p selects node n, by the
// labels of the node and of its cluster as they are now.
func (s *State) BGPPeerSelects(p *fedmeshv1.BGPPeerConfig, n *fedmeshv1.Node) bool {
	ce := s.clusters[n.GetCluster()]
	if ce == nil {
		return false
	}
	return peering.Selects(p, ce.spec.GetLabels(), n.GetLabels())
}

// BGPPeersSelecting names the peers that select node n, sorted.
func (s *State) BGPPeersSelecting(n *fedmeshv1.Node) []string {
	var out []string
	for _, name := range sortedKeys(s.bgp.peers) {
		if s.BGPPeerSelects(s.bgp.peers[name], n) {
			out = append(out, name)
		}
	}
	return out
}

// bgpPeerView is the stored peer with its computed status.
func (s *State) bgpPeerView(p *fedmeshv1.BGPPeerConfig) *fedmeshv1.BGPPeerConfig {
	v := proto.CloneOf(p)
	st := &fedmeshv1.BGPPeerConfigStatus{}
	for _, c := range sortedKeys(s.nodes) {
		for _, n := range s.nodes[c] {
			if s.BGPPeerSelects(p, n) {
				st.SelectedNodes++
			}
		}
	}
	if st.SelectedNodes == 0 {
		st.Message = "selects no registered node: check clusterSelector and nodeSelector against the clusters' and nodes' labels"
	}
	v.Status = st
	return v
}

// forEachBGP calls put for every BGP object, filters first (a peer refers
// to them), until it returns false.
func (s *State) forEachBGP(put func(set func(e *fedmeshv1.Event)) bool) bool {
	for _, n := range sortedKeys(s.bgp.filters) {
		f := s.bgp.filters[n]
		if !put(func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_BgpFilter{BgpFilter: f} }) {
			return false
		}
	}
	for _, n := range sortedKeys(s.bgp.peers) {
		p := s.bgp.peers[n]
		if !put(func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_BgpPeer{BgpPeer: p} }) {
			return false
		}
	}
	return true
}

// write writes the BGP records of a snapshot (version 5).
func (b bgpState) write(rw *recWriter) {
	for _, n := range sortedKeys(b.filters) {
		rw.msg(recBGPFilter, 0, false, b.filters[n])
	}
	for _, n := range sortedKeys(b.peers) {
		rw.msg(recBGPPeer, 0, false, b.peers[n])
	}
}

// read restores one BGP record of a snapshot; false for a kind it does not
// own.
func (b bgpState) read(kind recKind, data []byte) (bool, error) {
	switch kind {
	case recBGPPeer:
		p := &fedmeshv1.BGPPeerConfig{}
		if err := proto.Unmarshal(data, p); err != nil {
			return true, fmt.Errorf("read snapshot BGP peer: %w", err)
		}
		b.peers[p.GetName()] = p
	case recBGPFilter:
		f := &fedmeshv1.BGPFilter{}
		if err := proto.Unmarshal(data, f); err != nil {
			return true, fmt.Errorf("read snapshot BGP filter: %w", err)
		}
		b.filters[f.GetName()] = f
	default:
		return false, nil
	}
	return true, nil
}
