package wireguard

import (
	"net"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestPeerStatusConvertsToTheAPI(t *testing.T) {
	k := testKey(2).PublicKey()
	hs := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		in   wgtypes.Peer
		want *fedmeshv1.WireGuardPeerStatus
	}{
		{
			name: "handshaken peer reports time, endpoint and counters",
			in: wgtypes.Peer{PublicKey: k, Endpoint: &net.UDPAddr{IP: net.ParseIP("198.18.1.1"), Port: 51871},
				LastHandshakeTime: hs, ReceiveBytes: 1200, TransmitBytes: 3400},
			want: &fedmeshv1.WireGuardPeerStatus{PublicKey: k.String(), Endpoint: "198.18.1.1:51871",
				LastHandshakeTime: timestamppb.New(hs), RxBytes: 1200, TxBytes: 3400},
		},
		{
			name: "peer never handshaken has no handshake time (zero or epoch)",
			in:   wgtypes.Peer{PublicKey: k, LastHandshakeTime: time.Unix(0, 0)},
			want: &fedmeshv1.WireGuardPeerStatus{PublicKey: k.String()},
		},
		{
			name: "IPv6 endpoint",
			in:   wgtypes.Peer{PublicKey: k, Endpoint: &net.UDPAddr{IP: net.ParseIP("fd00::1"), Port: 51871}},
			want: &fedmeshv1.WireGuardPeerStatus{PublicKey: k.String(), Endpoint: "[fd00::1]:51871"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := StatusProto([]PeerStatus{peerStatus(tt.in)})
			if len(got) != 1 || !proto.Equal(got[0], tt.want) {
				t.Fatalf("status = %v, want %v", got, tt.want)
			}
		})
	}
}
