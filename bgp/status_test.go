package bgp

import (
	"net/netip"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"google.golang.org/protobuf/types/known/timestamppb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestPeerStatusFromGoBGPAndToProto(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	p := &api.Peer{
		Conf:   &api.PeerConf{NeighborAddress: "198.18.0.1", PeerAsn: 65000},
		State:  &api.PeerState{SessionState: api.PeerState_SESSION_STATE_ESTABLISHED},
		Timers: &api.Timers{State: &api.TimersState{Uptime: timestamppb.New(now.Add(-90 * time.Second))}},
		AfiSafis: []*api.AfiSafi{
			{State: &api.AfiSafiState{Advertised: 1, Received: 3}},
			{State: &api.AfiSafiState{Advertised: 1, Received: 0}},
		},
	}
	st := peerStatusFromAPI(p, now, "Peer Down (reason=hold timer expired)")
	want := PeerStatus{Address: netip.MustParseAddr("198.18.0.1"), ASN: 65000, State: StateEstablished,
		Uptime: 90 * time.Second, PrefixesSent: 2, PrefixesReceived: 3, LastError: "Peer Down (reason=hold timer expired)"}
	if st != want {
		t.Fatalf("status = %+v, want %+v", st, want)
	}
	pb := st.ToProto()
	if pb.GetState() != fedmeshv1.BGPSessionState_BGP_SESSION_STATE_ESTABLISHED || pb.GetUptime().AsDuration() != 90*time.Second ||
		pb.GetPrefixesSent() != 2 || pb.GetPrefixesReceived() != 3 || pb.GetAddress() != "198.18.0.1" || pb.GetAsn() != 65000 || pb.GetLastError() == "" {
		t.Fatalf("proto = %v", pb)
	}
}

func TestSessionStatesMatchTheAPIEnum(t *testing.T) {
	pairs := map[SessionState]fedmeshv1.BGPSessionState{
		StateIdle:        fedmeshv1.BGPSessionState_BGP_SESSION_STATE_IDLE,
		StateConnect:     fedmeshv1.BGPSessionState_BGP_SESSION_STATE_CONNECT,
		StateActive:      fedmeshv1.BGPSessionState_BGP_SESSION_STATE_ACTIVE,
		StateOpenSent:    fedmeshv1.BGPSessionState_BGP_SESSION_STATE_OPEN_SENT,
		StateOpenConfirm: fedmeshv1.BGPSessionState_BGP_SESSION_STATE_OPEN_CONFIRM,
		StateEstablished: fedmeshv1.BGPSessionState_BGP_SESSION_STATE_ESTABLISHED,
	}
	for s, want := range pairs {
		if got := (PeerStatus{State: s}).ToProto().GetState(); got != want {
			t.Errorf("%v -> %v, want %v", s, got, want)
		}
		if got := peerStatusFromAPI(&api.Peer{State: &api.PeerState{SessionState: api.PeerState_SessionState(s)}}, time.Now(), "").State; got != s {
			t.Errorf("GoBGP state %d -> %v", s, got)
		}
	}
	if (PeerStatus{State: StateIdle}).ToProto().GetUptime() != nil {
		t.Error("a session that is not established reports an uptime")
	}
}
