package agent

import (
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// BGP objects in the view. The control plane sends a node agent only the
// BGP peers that select its node (a peer that stops selecting it arrives
// as a delete) and every filter; the view keeps them by name for the BGP
// port, which resolves them (bgp.Resolve) against the node and cluster.

// decodeBGPEvent fills ch from a BGP event; false when ev is not one.
func decodeBGPEvent(ev *fedmeshv1.Event, ch *Change) bool {
	switch o := ev.GetObject().(type) {
	case *fedmeshv1.Event_BgpPeer:
		ch.Kind, ch.BGPName = fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER, o.BgpPeer.GetName()
		if !ch.Delete {
			ch.BGPPeer = o.BgpPeer
		}
	case *fedmeshv1.Event_BgpFilter:
		ch.Kind, ch.BGPName = fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER, o.BgpFilter.GetName()
		if !ch.Delete {
			ch.BGPFilter = o.BgpFilter
		}
	default:
		return false
	}
	return true
}

func bgpObject(ch Change) string {
	if ch.Kind == fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER {
		return "bgp-peer/" + ch.BGPName
	}
	return "bgp-filter/" + ch.BGPName
}

func (v *View) putBGP(ch Change) {
	switch {
	case ch.Kind == fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER && ch.Delete:
		delete(v.BGPPeers, ch.BGPName)
	case ch.Kind == fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER:
		v.BGPPeers[ch.BGPName] = ch.BGPPeer
	case ch.Delete:
		delete(v.BGPFilters, ch.BGPName)
	default:
		v.BGPFilters[ch.BGPName] = ch.BGPFilter
	}
}

// sameBGP reports whether a BGP put carries what the view holds.
func (v *View) sameBGP(ch Change) bool {
	var old, cur interface {
		proto.Message
		GetMeta() *fedmeshv1.ObjectMeta
	}
	if ch.Kind == fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER {
		o := v.BGPPeers[ch.BGPName]
		if o == nil {
			return false
		}
		old, cur = o, ch.BGPPeer
	} else {
		o := v.BGPFilters[ch.BGPName]
		if o == nil {
			return false
		}
		old, cur = o, ch.BGPFilter
	}
	if r := old.GetMeta().GetRevision(); r != 0 && r == cur.GetMeta().GetRevision() {
		return true
	}
	return proto.Equal(old, cur)
}

// eachBGP calls del for every BGP object of the view.
func (v *View) eachBGP(del func(Change)) {
	for n := range v.BGPPeers {
		del(Change{Kind: fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_PEER, BGPName: n})
	}
	for n := range v.BGPFilters {
		del(Change{Kind: fedmeshv1.ResourceKind_RESOURCE_KIND_BGP_FILTER, BGPName: n})
	}
}

// BGPPeerList and BGPFilterList are the view's BGP objects for the port.
func (v *View) BGPPeerList() []*fedmeshv1.BGPPeerConfig {
	out := make([]*fedmeshv1.BGPPeerConfig, 0, len(v.BGPPeers))
	for _, p := range v.BGPPeers {
		out = append(out, p)
	}
	return out
}

// BGPFilterList lists the filters the view holds.
func (v *View) BGPFilterList() []*fedmeshv1.BGPFilter {
	out := make([]*fedmeshv1.BGPFilter, 0, len(v.BGPFilters))
	for _, f := range v.BGPFilters {
		out = append(out, f)
	}
	return out
}
