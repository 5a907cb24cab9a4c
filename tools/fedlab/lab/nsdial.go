package lab

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

type netConn = net.Conn

// dialInNS opens a connection from inside network namespace ns: the socket
// is created on a thread switched into ns, and a socket stays in the
// namespace it was created in, so the rest of the process (and the root
// namespace) is untouched.
func dialInNS(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("read current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter netns %s: %w", ns, err)
	}
	var d net.Dialer
	c, dialErr := d.DialContext(ctx, network, addr)
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the lab's namespace: leave it locked so
		// the runtime retires it with this goroutine instead of reusing it.
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("return from netns %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return c, dialErr
}
