package wireguard_test

import (
	"context"
	"log/slog"

	"github.com/fedmesh/fedmesh/nodeagent/wireguard"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The agent's sync loop drives the package like this: load the key once,
// open the device, and on every revision turn the federation's clusters and
// nodes into a Config and Sync it; the status goes into NodeStatus.
func Example() {
	ctx := context.Background()
	var (
		self     *fedmeshv1.Node      // this node as registered (its key published)
		clusters []*fedmeshv1.Cluster // from the watch
		nodes    []*fedmeshv1.Node    // from the watch
	)
	key, err := wireguard.LoadOrCreateKey("/var/lib/fedmesh/wireguard.key")
	if err != nil {
		return
	}
	// Publish key.PublicKey().String() as self.WireguardPublicKey.
	dev, err := wireguard.Open(ctx, wireguard.Options{Name: wireguard.DeviceName(self.GetCluster(), self.GetName())})
	if err != nil {
		return
	}
	defer dev.Close()

	want, skipped := wireguard.Desired(key, self, clusters, nodes)
	for _, s := range skipped {
		slog.Warn("node is not a wireguard peer", "cluster", s.Cluster, "node", s.Node, "reason", s.Reason)
	}
	if _, err := dev.Sync(ctx, want); err != nil {
		slog.Error("sync wireguard", "err", err) // retried on the next revision
	}
	if st, err := dev.Status(ctx); err == nil {
		_ = &fedmeshv1.NodeStatus{WireguardPeers: wireguard.StatusProto(st)}
	}
}
