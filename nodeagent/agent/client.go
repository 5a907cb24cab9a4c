package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Client is the ControlPlane port over the generated gRPC clients, with
// one connection per control-plane replica. Every replica serves watches
// and forwards writes to the leader, so any of them will do; the order of
// the configured list is the order of preference (list the replica near
// the node, a read replica in its zone say, first). Each call and each new
// watch goes to the most preferred replica that has not failed in the last
// RetryPreferredAfter; a call or stream failing with a transport error
// marks its replica failed, moving the calls after it to the next one, and
// once the window has passed the preferred replica is tried again. An open
// watch stays on its replica until it ends. Safe for concurrent use.
type Client struct {
	addrs []string
	conns []*grpc.ClientConn
	// CallTimeout bounds each unary attempt (default 5s).
	CallTimeout time.Duration
	// RetryPreferredAfter is how long a failed replica is passed over
	// before calls go back to it (default 30s).
	RetryPreferredAfter time.Duration

	mu       sync.Mutex
	failedAt []time.Time // by replica; zero: not failed
	now      func() time.Time
}

// NewClient prepares connections to the replicas at addrs (host:port);
// connecting is lazy, so an unreachable replica is not an error here. opts
// carry the transport credentials (mTLS, or insecure for development).
func NewClient(addrs []string, opts ...grpc.DialOption) (*Client, error) {
	if len(addrs) == 0 {
		return nil, errors.New("new control-plane client: no replica addresses; pass --controlplane host:port[,host:port...]")
	}
	c := &Client{addrs: addrs, CallTimeout: 5 * time.Second, RetryPreferredAfter: 30 * time.Second,
		failedAt: make([]time.Time, len(addrs)), now: time.Now}
	// The agent paces retries with its own jittered backoff; gRPC's
	// reconnect backoff (up to 2 min by default) must stay short under it,
	// or a replica that came back would be used long after it did.
	// (ClientConn.ResetConnectBackoff would do, but races in grpc v1.85.)
	opts = append([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
		MinConnectTimeout: 2 * time.Second,
	})}, opts...)
	for _, a := range addrs {
		cc, err := grpc.NewClient(a, opts...)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("new control-plane client for %s: %w", a, err)
		}
		c.conns = append(c.conns, cc)
	}
	return c, nil
}

// Close closes every connection.
func (c *Client) Close() error {
	var errs []error
	for _, cc := range c.conns {
		errs = append(errs, cc.Close())
	}
	return errors.Join(errs...)
}

// Current returns the address the next call goes to.
func (c *Client) Current() string { return c.addrs[c.pick()] }

// pick returns the first replica in list order not failed within
// RetryPreferredAfter; when every one has, the one that failed longest
// ago (so a client whose replicas all failed still cycles through them).
func (c *Client) pick() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	oldest := 0
	for i, at := range c.failedAt {
		if at.IsZero() || now.Sub(at) >= c.RetryPreferredAfter {
			return i
		}
		if at.Before(c.failedAt[oldest]) {
			oldest = i
		}
	}
	return oldest
}

// failed passes over replica i for the next RetryPreferredAfter.
func (c *Client) failed(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failedAt[i] = c.now()
}

// answered clears replica i's failure: it is preferred again at once.
func (c *Client) answered(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failedAt[i] = time.Time{}
}

// retryable reports whether err says "this replica, not this request":
// worth the next replica.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted, codes.Unknown, codes.Canceled:
		return true
	}
	return false
}

// Watch opens a watch on the current replica, trying each replica once.
func (c *Client) Watch(ctx context.Context, req *fedmeshv1.WatchRequest) (WatchStream, error) {
	var errs []error
	for range c.conns {
		i := c.pick()
		s, err := fedmeshv1.NewWatchServiceClient(c.conns[i]).Watch(ctx, req)
		if err == nil {
			return &failoverStream{s: s, c: c, i: i, ctx: ctx}, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		errs = append(errs, fmt.Errorf("watch %s: %w", c.addrs[i], err))
		c.failed(i)
	}
	return nil, errors.Join(errs...)
}

type failoverStream struct {
	s   grpc.ServerStreamingClient[fedmeshv1.WatchResponse]
	c   *Client
	i   int
	ctx context.Context
}

func (f *failoverStream) Recv() (*fedmeshv1.WatchResponse, error) {
	m, err := f.s.Recv()
	if err != nil {
		if f.ctx.Err() == nil {
			f.c.failed(f.i)
		}
		return nil, fmt.Errorf("watch %s: %w", f.c.addrs[f.i], err)
	}
	return m, nil
}

// unary runs call against replicas until one answers or says the request
// itself is wrong.
func (c *Client) unary(ctx context.Context, call func(context.Context, *grpc.ClientConn) error) error {
	var errs []error
	for range c.conns {
		i := c.pick()
		actx, cancel := context.WithTimeout(ctx, c.CallTimeout)
		err := call(actx, c.conns[i])
		cancel()
		if err == nil || !retryable(err) {
			// The replica answered (the request may be wrong, it is not).
			c.answered(i)
		}
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", c.addrs[i], err))
		if ctx.Err() != nil || !retryable(err) {
			break
		}
		c.failed(i)
	}
	return errors.Join(errs...)
}

// RegisterNode adds or updates this node.
func (c *Client) RegisterNode(ctx context.Context, n *fedmeshv1.Node) error {
	err := c.unary(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := fedmeshv1.NewNodeServiceClient(cc).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: n})
		return err
	})
	if err != nil {
		return fmt.Errorf("register node %s/%s: %w", n.GetCluster(), n.GetName(), err)
	}
	return nil
}

// ReportNodeStatus records what this node enforces.
func (c *Client) ReportNodeStatus(ctx context.Context, cluster, node string, st *fedmeshv1.NodeStatus) error {
	err := c.unary(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := fedmeshv1.NewNodeServiceClient(cc).ReportNodeStatus(ctx, &fedmeshv1.ReportNodeStatusRequest{Cluster: cluster, Name: node, Status: st})
		return err
	})
	if err != nil {
		return fmt.Errorf("report status of node %s/%s: %w", cluster, node, err)
	}
	return nil
}

// RenewCertificate asks any replica to certify a new key for this node's
// principal (authclient.Renewer), failing over like every unary call.
func (c *Client) RenewCertificate(ctx context.Context, req *fedmeshv1.RenewCertificateRequest, opts ...grpc.CallOption) (*fedmeshv1.RenewCertificateResponse, error) {
	var resp *fedmeshv1.RenewCertificateResponse
	err := c.unary(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = fedmeshv1.NewAuthServiceClient(cc).RenewCertificate(ctx, req, opts...)
		return err
	})
	return resp, err
}
