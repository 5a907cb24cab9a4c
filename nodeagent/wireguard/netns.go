package wireguard

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/fedmesh/fedmesh/internal/netnsrun"
)

// inNetNS runs fn on a fresh OS thread switched into ns, so the caller's
// thread never changes namespace. Sockets and file descriptors fn opens stay
// bound to ns after it returns. If the thread cannot switch back it stays
// locked, and Go discards it when the goroutine exits.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	return netnsrun.DoFD(int(ns), fn)
}

// nsRef is the device's namespace handle shared with the wireguard-go
// wrappers below, whose goroutines may still call in while the device is
// being torn down: once closed, they fail cleanly instead of using a closed
// (or reused) file descriptor.
type nsRef struct {
	mu sync.RWMutex
	h  netns.NsHandle
	// own: the device lives in the process's own namespace, so fn runs
	// where it is; entering a namespace (even one's own) needs
	// CAP_SYS_ADMIN, which an agent pod does not get.
	own bool
}

func (r *nsRef) do(fn func() error) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if !r.h.IsOpen() {
		return fmt.Errorf("enter network namespace: %w", net.ErrClosed)
	}
	if r.own {
		return fn()
	}
	return inNetNS(r.h, fn)
}

func (r *nsRef) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h.IsOpen() {
		r.h.Close()
	}
	r.h = -1
}

// nsBind opens wireguard-go's UDP sockets inside the device's namespace,
// whichever goroutine (TUN event reader, UAPI handler) asks for them. See the
// package doc.
type nsBind struct {
	conn.Bind
	ns *nsRef
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	nsErr := b.ns.do(func() error {
		fns, actual, err = b.Bind.Open(port)
		return nil
	})
	if nsErr != nil {
		return nil, 0, nsErr
	}
	return fns, actual, err
}

// nsTUN answers MTU() from inside the namespace: NativeTun looks its device
// up by name on a fresh socket, which would otherwise search the namespace of
// whatever thread wireguard-go's event reader runs on. After teardown it
// answers with the last MTU it saw.
type nsTUN struct {
	tun.Device
	ns      *nsRef
	lastMTU atomic.Int64
}

func (t *nsTUN) MTU() (mtu int, err error) {
	if nsErr := t.ns.do(func() error {
		mtu, err = t.Device.MTU()
		return nil
	}); nsErr != nil {
		return int(t.lastMTU.Load()), nil
	}
	if err == nil {
		t.lastMTU.Store(int64(mtu))
	}
	return mtu, err
}
