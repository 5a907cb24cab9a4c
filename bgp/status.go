package bgp

import (
	"net/netip"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"google.golang.org/protobuf/types/known/durationpb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// SessionState is the RFC 4271 state of a session.
type SessionState uint8

// Session states, numbered like fedmeshv1.BGPSessionState.
const (
	StateUnknown SessionState = iota
	StateIdle
	StateConnect
	StateActive
	StateOpenSent
	StateOpenConfirm
	StateEstablished
)

var stateNames = [...]string{"Unknown", "Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established"}

func (s SessionState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "Unknown"
}

// PeerStatus is what the speaker knows about one session.
type PeerStatus struct {
	Address netip.Addr
	ASN     uint32
	// Name is the BGPPeerConfig of the session ("" for a cluster-level
	// peer) and LocalASN the node's ASN on it.
	Name             string
	LocalASN         uint32
	State            SessionState
	Uptime           time.Duration // zero unless Established
	PrefixesSent     uint32
	PrefixesReceived uint32
	// LastError is the last reason the session went down or failed to come
	// up (a NOTIFICATION, a dial error, a hold-timer expiry); it survives a
	// later recovery so an operator can see why a session flapped.
	LastError string
}

// ToProto converts to the API's per-peer status.
func (s PeerStatus) ToProto() *fedmeshv1.BGPPeerStatus {
	out := &fedmeshv1.BGPPeerStatus{
		Address:          s.Address.String(),
		Asn:              s.ASN,
		Name:             s.Name,
		LocalAsn:         s.LocalASN,
		State:            fedmeshv1.BGPSessionState(s.State),
		PrefixesSent:     s.PrefixesSent,
		PrefixesReceived: s.PrefixesReceived,
		LastError:        s.LastError,
	}
	if s.State == StateEstablished {
		out.Uptime = durationpb.New(s.Uptime)
	}
	return out
}

// StatusToProto converts a Status result for the node's status report.
func StatusToProto(st []PeerStatus) []*fedmeshv1.BGPPeerStatus {
	out := make([]*fedmeshv1.BGPPeerStatus, len(st))
	for i, s := range st {
		out[i] = s.ToProto()
	}
	return out
}

// peerStatusFromAPI converts GoBGP's view of a peer; now and lastErr are
// inputs so the conversion stays pure.
func peerStatusFromAPI(p *api.Peer, now time.Time, lastErr string) PeerStatus {
	addr, _ := netip.ParseAddr(p.GetConf().GetNeighborAddress())
	st := PeerStatus{
		Address:   addr,
		ASN:       p.GetConf().GetPeerAsn(),
		LastError: lastErr,
	}
	if s := p.GetState().GetSessionState(); s >= api.PeerState_SESSION_STATE_IDLE && s <= api.PeerState_SESSION_STATE_ESTABLISHED {
		st.State = SessionState(s)
	}
	if st.State == StateEstablished {
		if up := p.GetTimers().GetState().GetUptime(); up != nil && up.GetSeconds() > 0 {
			st.Uptime = max(now.Sub(up.AsTime()).Truncate(time.Second), 0)
		}
	}
	// GoBGP v4 counts only paths as advertised, not the End-of-RIB marker
	// (ListPeer asks for the best paths without it).
	for _, af := range p.GetAfiSafis() {
		st.PrefixesSent += uint32(af.GetState().GetAdvertised())
		st.PrefixesReceived += uint32(af.GetState().GetReceived())
	}
	return st
}
