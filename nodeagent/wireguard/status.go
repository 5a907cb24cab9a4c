package wireguard

import (
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"google.golang.org/protobuf/types/known/timestamppb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// PeerStatus is what the device reports about one peer.
type PeerStatus struct {
	PublicKey wgtypes.Key
	Endpoint  netip.AddrPort
	// LastHandshake is zero when no handshake has completed.
	LastHandshake    time.Time
	RxBytes, TxBytes int64
}

// Proto converts the status to the API's WireGuardPeerStatus.
func (s PeerStatus) Proto() *fedmeshv1.WireGuardPeerStatus {
	out := &fedmeshv1.WireGuardPeerStatus{
		PublicKey: s.PublicKey.String(),
		RxBytes:   uint64(max(s.RxBytes, 0)),
		TxBytes:   uint64(max(s.TxBytes, 0)),
	}
	if s.Endpoint.IsValid() {
		out.Endpoint = s.Endpoint.String()
	}
	if !s.LastHandshake.IsZero() {
		out.LastHandshakeTime = timestamppb.New(s.LastHandshake)
	}
	return out
}

// StatusProto converts a device's peer statuses for a NodeStatus report.
func StatusProto(ss []PeerStatus) []*fedmeshv1.WireGuardPeerStatus {
	out := make([]*fedmeshv1.WireGuardPeerStatus, 0, len(ss))
	for _, s := range ss {
		out = append(out, s.Proto())
	}
	return out
}

// peerStatus reads one wgctrl peer. wgctrl reports "never" as the zero
// time.Time for wireguard-go and as the Unix epoch for some kernels.
func peerStatus(p wgtypes.Peer) PeerStatus {
	s := PeerStatus{PublicKey: p.PublicKey, RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes}
	if p.Endpoint != nil {
		s.Endpoint = p.Endpoint.AddrPort()
		s.Endpoint = netip.AddrPortFrom(s.Endpoint.Addr().Unmap(), s.Endpoint.Port())
	}
	if !p.LastHandshakeTime.IsZero() && p.LastHandshakeTime.Unix() != 0 {
		s.LastHandshake = p.LastHandshakeTime
	}
	return s
}
