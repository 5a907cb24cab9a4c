// Package adapters connects the agent's ports (nodeagent/agent) to the
// packages that implement them with a shape of their own: nodeagent/wireguard
// and bgp, whose desired state the adapters compute from the agent's input.
// Behaviour stays in the packages on either side. The dataplane needs no
// adapter: its implementations take the agent's revisions as they are
// (dataplane.Revision is the one contract type).
package adapters

import (
	"context"
	"fmt"
	"log/slog"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/wireguard"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// WireGuard is the agent's WireGuard port over a wireguard.Device and the
// node's key pair.
type WireGuard struct {
	Dev *wireguard.Device
	Key wgtypes.Key
	// Port is the listen port the node registers (0 = the cluster default).
	Port uint32
	Log  *slog.Logger
}

var _ agent.WireGuard = (*WireGuard)(nil)

// Sync computes the desired device config and reconciles the device.
func (w *WireGuard) Sync(ctx context.Context, cfg agent.WireGuardConfig) error {
	want, skipped := wireguard.Desired(w.Key, cfg.Local, cfg.Clusters, cfg.Peers)
	for _, s := range skipped {
		w.Log.Warn("node is not a WireGuard peer", "peer_cluster", s.Cluster, "peer_node", s.Node, "reason", s.Reason)
	}
	if _, err := w.Dev.Sync(ctx, want); err != nil {
		return fmt.Errorf("sync wireguard device %s: %w", w.Dev.Name(), err)
	}
	return nil
}

// PublicKey is the key the node publishes.
func (w *WireGuard) PublicKey() string { return w.Key.PublicKey().String() }

// ListenPort is the port the node registers.
func (w *WireGuard) ListenPort() uint32 { return w.Port }

// Status reports the device's peers.
func (w *WireGuard) Status(ctx context.Context) ([]*fedmeshv1.WireGuardPeerStatus, error) {
	st, err := w.Dev.Status(ctx)
	if err != nil {
		return nil, err
	}
	return wireguard.StatusProto(st), nil
}
