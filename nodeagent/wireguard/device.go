package wireguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	wgdevice "golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Mode chooses the WireGuard implementation.
type Mode int

const (
	// ModeAuto uses the kernel module when the kernel can create a
	// "wireguard" link and embedded wireguard-go otherwise.
	ModeAuto Mode = iota
	// ModeKernel requires the kernel module.
	ModeKernel
	// ModeUserspace always runs embedded wireguard-go on a TUN.
	ModeUserspace
)

func (m Mode) String() string {
	switch m {
	case ModeKernel:
		return "kernel"
	case ModeUserspace:
		return "userspace"
	default:
		return "auto"
	}
}

// RouteProtocol tags the routes this package installs (`ip route show proto
// 98`), so it manages only its own routes through the device and never one an
// operator or another daemon added.
const RouteProtocol netlink.RouteProtocol = 98

// kickInterval is the keepalive briefly given to a kicked peer (see
// Plan.Kick): turning a peer's persistent keepalive on makes both
// wireguard-go and the kernel send one keepalive at once, which starts the
// handshake before any traffic needs it.
const kickInterval = 25 * time.Second

var (
	// ErrKernelUnsupported is returned for ModeKernel when the kernel has
	// no WireGuard module.
	ErrKernelUnsupported = errors.New("kernel has no wireguard module (modprobe wireguard, or use the embedded userspace mode)")
	// ErrDeviceBusy is returned when another process serves the device.
	ErrDeviceBusy = errors.New("device is served by another process")
)

// Options says which device to open and where.
type Options struct {
	// Name of the link; use [DeviceName]. Must be unique on the machine.
	Name string
	// NetNS is the path of the network namespace the device lives in
	// (/var/run/netns/x, /proc/PID/ns/net); empty means the caller's.
	NetNS string
	Mode  Mode
	// MTU the link is created with; 0 means DefaultMTU. [Device.Apply]
	// changes it later.
	MTU    int
	Logger *slog.Logger
}

// Device is one node's WireGuard device. Its methods are meant to be called
// from one goroutine, the agent's sync loop; a mutex still serializes them so
// Status may be polled from a metrics or report goroutine. Calls block on
// netlink and the UAPI socket for milliseconds.
type Device struct {
	name   string
	log    *slog.Logger
	ns     *nsRef
	nl     *netlink.Handle
	wg     *wgctrl.Client
	kernel bool

	// Embedded wireguard-go only.
	wgdev *wgdevice.Device
	uapi  net.Listener

	mu     sync.Mutex
	closed bool
}

// Open creates the device, or adopts a kernel device of that name left by a
// previous run (its peers and routes are then reconciled, never flushed). An
// embedded device cannot outlive its process, so a userspace device is
// always created fresh. The link is brought up.
func Open(ctx context.Context, opts Options) (_ *Device, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts.Name == "" || len(opts.Name) > unix.IFNAMSIZ-1 {
		return nil, fmt.Errorf("open wireguard device: name %q must be 1 to 15 bytes; use DeviceName", opts.Name)
	}
	d := &Device{name: opts.Name, log: opts.Logger, ns: &nsRef{h: -1}}
	if d.log == nil {
		d.log = slog.Default()
	}
	d.log = d.log.With("device", opts.Name)
	createdKernel := false
	defer func() {
		if err == nil {
			return
		}
		if createdKernel { // don't leave a half-configured link behind
			if link, lerr := d.nl.LinkByName(opts.Name); lerr == nil {
				d.nl.LinkDel(link)
			}
		}
		d.release()
	}()
	if d.ns.h, err = openNetNS(opts.NetNS); err != nil {
		return nil, err
	}
	d.ns.own = opts.NetNS == ""
	if d.ns.own {
		d.nl, err = netlink.NewHandle()
	} else {
		d.nl, err = netlink.NewHandleAt(d.ns.h)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink in namespace %q: %w", opts.NetNS, err)
	}
	mtu := opts.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}

	existing, err := d.nl.LinkByName(opts.Name)
	switch {
	case err == nil && existing.Type() == "wireguard" && opts.Mode != ModeUserspace:
		d.kernel = true
		d.log.Info("adopting kernel wireguard device")
	case err == nil:
		if sockAlive(opts.Name) {
			return nil, fmt.Errorf("open wireguard device %s: %w", opts.Name, ErrDeviceBusy)
		}
		return nil, fmt.Errorf("open wireguard device %s: a %s link of that name exists; delete it", opts.Name, existing.Type())
	case !errors.As(err, new(netlink.LinkNotFoundError)):
		return nil, fmt.Errorf("look up link %s: %w", opts.Name, err)
	default:
		if opts.Mode != ModeUserspace {
			d.kernel, err = d.tryKernel(opts.Name, mtu)
			if err != nil {
				return nil, err
			}
			createdKernel = d.kernel
			if !d.kernel && opts.Mode == ModeKernel {
				return nil, fmt.Errorf("open wireguard device %s: %w", opts.Name, ErrKernelUnsupported)
			}
		}
		if !d.kernel {
			if err := d.startUserspace(opts.Name, mtu); err != nil {
				return nil, err
			}
		}
	}

	if err := d.ns.do(func() (err error) {
		d.wg, err = wgctrl.New()
		return err
	}); err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	link, err := d.nl.LinkByName(opts.Name)
	if err != nil {
		return nil, fmt.Errorf("look up link %s: %w", opts.Name, err)
	}
	if err := d.nl.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set link %s up: %w", opts.Name, err)
	}
	if d.wgdev != nil {
		// The TUN's up event would bring the device up too, but
		// asynchronously; do it now so the socket is open on return.
		if err := d.wgdev.Up(); err != nil {
			return nil, fmt.Errorf("bring wireguard-go device %s up: %w", opts.Name, err)
		}
	}
	d.log.Info("wireguard device open", "kernel", d.kernel)
	return d, nil
}

func openNetNS(path string) (netns.NsHandle, error) {
	if path == "" {
		// netns.Get reads the calling thread's namespace; lock so it is
		// the one this goroutine runs in.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		h, err := netns.Get()
		if err != nil {
			return -1, fmt.Errorf("open own network namespace: %w", err)
		}
		return h, nil
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return -1, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return h, nil
}

// tryKernel creates a kernel WireGuard link; false without error means the
// kernel has no module.
func (d *Device) tryKernel(name string, mtu int) (bool, error) {
	err := d.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP):
		d.log.Debug("kernel has no wireguard module; using embedded wireguard-go")
		return false, nil
	default:
		return false, fmt.Errorf("create wireguard link %s: %w", name, err)
	}
}

// startUserspace runs an embedded wireguard-go device on a TUN created inside
// the device's namespace and serves its UAPI socket for wgctrl.
func (d *Device) startUserspace(name string, mtu int) error {
	uapiFile, err := ipc.UAPIOpen(name)
	if err != nil {
		if sockAlive(name) {
			return fmt.Errorf("open UAPI socket of %s: %w", name, ErrDeviceBusy)
		}
		return fmt.Errorf("open UAPI socket %s: %w", sockPath(name), err)
	}
	var tdev tun.Device
	err = d.ns.do(func() (err error) {
		tdev, err = tun.CreateTUN(name, mtu)
		return err
	})
	if err != nil {
		uapiFile.Close()
		os.Remove(sockPath(name))
		return fmt.Errorf("create TUN %s (is /dev/net/tun there and are we root?): %w", name, err)
	}
	logger := &wgdevice.Logger{
		Verbosef: func(format string, args ...any) { d.log.Debug(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { d.log.Warn(fmt.Sprintf(format, args...)) },
	}
	d.wgdev = wgdevice.NewDevice(&nsTUN{Device: tdev, ns: d.ns}, &nsBind{Bind: conn.NewDefaultBind(), ns: d.ns}, logger)
	d.uapi, err = ipc.UAPIListen(name, uapiFile)
	if err != nil {
		uapiFile.Close()
		return fmt.Errorf("listen on UAPI socket %s: %w", sockPath(name), err)
	}
	go func() {
		for {
			c, err := d.uapi.Accept()
			if err != nil {
				return
			}
			go d.wgdev.IpcHandle(c)
		}
	}()
	return nil
}

func sockPath(name string) string { return filepath.Join("/var/run/wireguard", name+".sock") }

func sockAlive(name string) bool {
	c, err := net.DialTimeout("unix", sockPath(name), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Name is the link name.
func (d *Device) Name() string { return d.name }

// Kernel reports whether the device is the kernel module's.
func (d *Device) Kernel() bool { return d.kernel }

// Actual reads the device's state: key, port and peers from wgctrl, MTU from
// the link, and the routes this package installed through it.
func (d *Device) Actual(ctx context.Context) (Actual, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.actual(ctx)
}

func (d *Device) actual(ctx context.Context) (Actual, error) {
	if err := d.usable(ctx); err != nil {
		return Actual{}, err
	}
	dev, err := d.wg.Device(d.name)
	if err != nil {
		return Actual{}, fmt.Errorf("read wireguard device %s: %w", d.name, err)
	}
	a := Actual{PrivateKey: dev.PrivateKey, ListenPort: dev.ListenPort}
	for _, p := range dev.Peers {
		peer := Peer{PublicKey: p.PublicKey, PersistentKeepalive: p.PersistentKeepaliveInterval}
		if p.Endpoint != nil {
			peer.Endpoint = p.Endpoint.AddrPort()
		}
		for _, n := range p.AllowedIPs {
			if pfx, ok := prefixOf(n); ok {
				peer.AllowedIPs = append(peer.AllowedIPs, pfx)
			}
		}
		a.Peers = append(a.Peers, normalizePeer(peer))
	}
	sortPeers(a.Peers)
	link, err := d.nl.LinkByName(d.name)
	if err != nil {
		return Actual{}, fmt.Errorf("look up link %s: %w", d.name, err)
	}
	a.MTU = link.Attrs().MTU
	routes, err := d.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{
		LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol,
	}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return Actual{}, fmt.Errorf("list routes through %s: %w", d.name, err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if pfx, ok := prefixOf(*r.Dst); ok {
			a.Routes = append(a.Routes, pfx)
		}
	}
	a.Routes = canonicalPrefixes(a.Routes)
	return a, nil
}

func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	ip = ip.Unmap()
	if ip.Is4() && ones > 32 {
		ones -= 96
	}
	return netip.PrefixFrom(ip, ones).Masked(), true
}

// Sync reads the device, reconciles it against want and applies the plan;
// it returns the plan it applied (empty when the device already matched).
func (d *Device) Sync(ctx context.Context, want Config) (Plan, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	have, err := d.actual(ctx)
	if err != nil {
		return Plan{}, err
	}
	p := Reconcile(want, have)
	return p, d.apply(ctx, p)
}

// Apply carries out a plan: MTU, then peers and key in one wgctrl
// transaction, then routes. An empty plan makes no call at all. Peers in
// p.Kick handshake now rather than on their first packet.
func (d *Device) Apply(ctx context.Context, p Plan) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.apply(ctx, p)
}

func (d *Device) apply(ctx context.Context, p Plan) error {
	if p.Empty() {
		return nil
	}
	if err := d.usable(ctx); err != nil {
		return err
	}
	link, err := d.nl.LinkByName(d.name)
	if err != nil {
		return fmt.Errorf("look up link %s: %w", d.name, err)
	}
	if p.MTU != 0 {
		if err := d.nl.LinkSetMTU(link, p.MTU); err != nil {
			return fmt.Errorf("set MTU of %s to %d: %w", d.name, p.MTU, err)
		}
	}
	if cfg, ok := p.wgConfig(kickInterval); ok {
		if err := d.wg.ConfigureDevice(d.name, cfg); err != nil {
			return fmt.Errorf("configure wireguard device %s: %w", d.name, err)
		}
		// Turn the kick's keepalive back off where the peer wants none.
		var unkick wgtypes.Config
		for _, np := range p.AddPeers {
			if np.PersistentKeepalive == 0 && p.kicked(np.PublicKey) {
				zero := time.Duration(0)
				unkick.Peers = append(unkick.Peers, wgtypes.PeerConfig{PublicKey: np.PublicKey, UpdateOnly: true, PersistentKeepaliveInterval: &zero})
			}
		}
		if len(unkick.Peers) > 0 {
			if err := d.wg.ConfigureDevice(d.name, unkick); err != nil {
				return fmt.Errorf("configure wireguard device %s: %w", d.name, err)
			}
		}
	}
	for _, dst := range p.DelRoutes {
		if err := d.nl.RouteDel(d.route(link, dst)); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete route %s via %s: %w", dst, d.name, err)
		}
	}
	for _, dst := range p.AddRoutes {
		if err := d.nl.RouteReplace(d.route(link, dst)); err != nil {
			return fmt.Errorf("add route %s via %s: %w", dst, d.name, err)
		}
	}
	d.log.Info("wireguard device reconciled",
		"keyChanged", p.PrivateKey != nil, "addPeers", len(p.AddPeers), "updatePeers", len(p.UpdatePeers),
		"removePeers", len(p.RemovePeers), "addRoutes", len(p.AddRoutes), "delRoutes", len(p.DelRoutes))
	return nil
}

func (d *Device) route(link netlink.Link, dst netip.Prefix) *netlink.Route {
	return &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
		Scope:     netlink.SCOPE_LINK,
		Table:     unix.RT_TABLE_MAIN,
		Protocol:  RouteProtocol,
	}
}

// Rotate replaces the node's private key: it stores a new key at keyPath
// (0600, atomically) before handing it to the device, so a crash leaves the
// device's key on disk. The caller must publish the returned key's public
// half on its Node and pass the returned key to [Desired] from now on, or the
// next Sync would restore the old one. Peers keep working once they replace
// the old public key (see the package doc).
func (d *Device) Rotate(ctx context.Context, keyPath string) (wgtypes.Key, error) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate wireguard private key: %w", err)
	}
	if err := SaveKey(keyPath, k); err != nil {
		return wgtypes.Key{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.apply(ctx, Plan{PrivateKey: &k}); err != nil {
		return wgtypes.Key{}, fmt.Errorf("rotate key of %s (the new key is already stored at %s; the next sync retries): %w", d.name, keyPath, err)
	}
	d.log.Info("wireguard key rotated", "publicKey", k.PublicKey().String())
	return k, nil
}

// Status reports every peer's endpoint, last handshake and byte counters,
// sorted by public key.
func (d *Device) Status(ctx context.Context) ([]PeerStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(ctx); err != nil {
		return nil, err
	}
	dev, err := d.wg.Device(d.name)
	if err != nil {
		return nil, fmt.Errorf("read wireguard device %s: %w", d.name, err)
	}
	out := make([]PeerStatus, 0, len(dev.Peers))
	for _, p := range dev.Peers {
		out = append(out, peerStatus(p))
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return slices.Compare(a.PublicKey[:], b.PublicKey[:]) })
	return out, nil
}

// Close releases the process's hold on the device. A kernel device stays,
// with its peers and routes, for the next run to adopt; an embedded device
// cannot outlive the process and is torn down.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if d.wgdev != nil {
		d.stopUserspace()
	}
	d.release()
	return nil
}

// Teardown removes the device and everything this package made for it: the
// link (the kernel drops the routes through it), the UAPI socket and the
// wireguard-go goroutines. The key file stays.
func (d *Device) Teardown(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	defer d.release()
	if d.wgdev != nil {
		d.stopUserspace()
		return nil
	}
	link, err := d.nl.LinkByName(d.name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up link %s: %w", d.name, err)
	}
	if err := d.nl.LinkDel(link); err != nil {
		return fmt.Errorf("delete link %s: %w", d.name, err)
	}
	return nil
}

// stopUserspace closes the UAPI socket (and removes its file, which
// wireguard-go leaves behind) and the device; closing the TUN fd removes the
// link and its routes.
func (d *Device) stopUserspace() {
	if d.uapi != nil {
		d.uapi.Close()
	}
	os.Remove(sockPath(d.name))
	d.wgdev.Close()
	d.wgdev = nil
}

func (d *Device) release() {
	if d.wg != nil {
		d.wg.Close()
		d.wg = nil
	}
	if d.wgdev != nil {
		d.stopUserspace()
	}
	if d.nl != nil {
		d.nl.Close()
		d.nl = nil
	}
	d.ns.close()
}

func (d *Device) usable(ctx context.Context) error {
	if d.closed {
		return fmt.Errorf("use wireguard device %s: %w", d.name, net.ErrClosed)
	}
	return ctx.Err()
}
