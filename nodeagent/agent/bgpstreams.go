package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The BGP port's two inputs that do not travel in the generic watch: the
// node's cluster's service advertisements (WatchServiceAdvertisements) and
// the node's Secret-referenced peer passwords (WatchBGPPasswords). Both
// streams send a whole set each time, so a reconnect (to any replica) just
// delivers the current one; while the control plane is unreachable the
// port keeps what it last received.

// FollowServiceAdvertisements calls set with the cluster's whole set of
// service advertisements each time it changes, reconnecting across
// replicas until ctx ends. set is called from this goroutine only and may
// block (it applies to the speaker).
func (c *Client) FollowServiceAdvertisements(ctx context.Context, cluster string, log *slog.Logger, set func([]*fedmeshv1.ServiceAdvertisement)) {
	follow(ctx, c, log, "service advertisements", func(ctx context.Context, cc *grpc.ClientConn) (func() error, error) {
		s, err := fedmeshv1.NewBGPServiceClient(cc).WatchServiceAdvertisements(ctx, &fedmeshv1.WatchServiceAdvertisementsRequest{Cluster: cluster})
		if err != nil {
			return nil, err
		}
		return func() error {
			m, err := s.Recv()
			if err == nil {
				set(m.GetAdvertisements())
			}
			return err
		}, nil
	})
}

// FollowBGPPasswords calls set with the node's Secret-referenced peer
// passwords each time they change, like FollowServiceAdvertisements.
func (c *Client) FollowBGPPasswords(ctx context.Context, cluster, node string, log *slog.Logger, set func([]*fedmeshv1.BGPPeerPassword)) {
	follow(ctx, c, log, "BGP passwords", func(ctx context.Context, cc *grpc.ClientConn) (func() error, error) {
		s, err := fedmeshv1.NewBGPServiceClient(cc).WatchBGPPasswords(ctx, &fedmeshv1.WatchBGPPasswordsRequest{Cluster: cluster, Node: node})
		if err != nil {
			return nil, err
		}
		return func() error {
			m, err := s.Recv()
			if err == nil {
				set(m.GetPasswords())
			}
			return err
		}, nil
	})
}

// follow keeps one stream open on the current replica, moving on to the
// next after a failure, with jittered backoff (50 ms to 5 s).
func follow(ctx context.Context, c *Client, log *slog.Logger, what string, open func(context.Context, *grpc.ClientConn) (func() error, error)) {
	wait := 50 * time.Millisecond
	for ctx.Err() == nil {
		i := c.pick()
		recv, err := open(ctx, c.conns[i])
		for err == nil {
			if err = recv(); err == nil {
				wait = 50 * time.Millisecond
			}
		}
		if ctx.Err() != nil {
			return
		}
		if status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.Unimplemented {
			// A replica that does not serve it yet (an upgrade), or a
			// principal that may not: retry slowly.
			wait = 30 * time.Second
		} else if !errors.Is(err, io.EOF) {
			c.failed(i)
		}
		if log != nil {
			log.Warn("follow "+what+"; retrying", "replica", c.addrs[i], "err", err, "in", wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait/2 + rand.N(wait/2+1)):
		}
		wait = min(wait*2, 5*time.Second)
	}
}
