package wireguard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// lab is two nodes of two clusters in their own network namespaces, joined
// by an underlay veth in 198.18.0.0/15, each with pods in namespaces behind
// veths with /32 routes (the Calico layout). Everything is named with a
// random prefix and removed in t.Cleanup, also when the test fails.
type lab struct {
	t        testing.TB
	id       string
	clusters []*fedmeshv1.Cluster
	nodes    [2]*labNode
}

type labNode struct {
	cluster, name string
	ns            string // namespace name under /var/run/netns
	underlay      netip.Addr
	podCIDR       netip.Prefix
	pod           labPod // reached through WireGuard
	plainPod      labPod // reached over the bare underlay (baseline), if any
	keyPath       string
	key           wgtypes.Key
	dev           *Device
}

type labPod struct {
	ns string
	ip netip.Addr
}

const underlayIf = "ul0"

// testLogger shows warnings only: wireguard-go's goroutines may log after a
// test ends, so the log cannot go to t.Log.
var testLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// newLab builds the namespaces and links. With plain, each node also gets a
// second pod in a CIDR routed over the underlay without WireGuard, so the
// benchmark compares the same path with and without the tunnel.
func newLab(t testing.TB, plain bool) *lab {
	t.Helper()
	requireRoot(t)
	var rnd [3]byte
	rand.Read(rnd[:])
	l := &lab{t: t, id: "fmwg" + hex.EncodeToString(rnd[:])}
	l.clusters = []*fedmeshv1.Cluster{
		{Name: "east", PodCidrs: []string{"10.10.0.0/16"}, Wireguard: &fedmeshv1.WireGuardSettings{Enabled: true}},
		{Name: "west", PodCidrs: []string{"10.20.0.0/16"}, Wireguard: &fedmeshv1.WireGuardSettings{Enabled: true}},
	}
	dir := t.TempDir()
	for i, spec := range []struct{ cluster, octet string }{{"east", "10"}, {"west", "20"}} {
		n := &labNode{
			cluster:  spec.cluster,
			name:     fmt.Sprintf("%s-n%d", l.id, i),
			ns:       fmt.Sprintf("%s-n%d", l.id, i),
			underlay: netip.MustParseAddr(fmt.Sprintf("198.18.0.%d", i+1)),
			podCIDR:  netip.MustParsePrefix(fmt.Sprintf("10.%s.1.0/24", spec.octet)),
			pod:      labPod{ns: fmt.Sprintf("%s-p%d", l.id, i), ip: netip.MustParseAddr(fmt.Sprintf("10.%s.1.5", spec.octet))},
			keyPath:  filepath.Join(dir, fmt.Sprintf("node%d", i), "wg.key"),
		}
		if plain {
			n.plainPod = labPod{ns: fmt.Sprintf("%s-q%d", l.id, i), ip: netip.MustParseAddr(fmt.Sprintf("10.%s.2.5", spec.octet))}
		}
		l.nodes[i] = n
	}
	for _, n := range l.nodes {
		l.addNetns(n.ns)
		// No IPv6: the underlay capture must see nothing but WireGuard.
		l.ip("netns", "exec", n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
			"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
		l.ip("-n", n.ns, "link", "set", "lo", "up")
	}
	a, b := l.nodes[0], l.nodes[1]
	l.ip("link", "add", underlayIf, "netns", a.ns, "type", "veth", "peer", "name", underlayIf, "netns", b.ns)
	for _, n := range l.nodes {
		l.ip("-n", n.ns, "addr", "add", n.underlay.String()+"/24", "dev", underlayIf)
		l.ip("-n", n.ns, "link", "set", underlayIf, "up")
		l.addPod(n, n.pod, "hp0")
		if plain {
			l.addPod(n, n.plainPod, "hq0")
		}
	}
	if plain {
		l.ip("-n", a.ns, "route", "add", netip.PrefixFrom(b.plainPod.ip, 24).Masked().String(), "via", b.underlay.String())
		l.ip("-n", b.ns, "route", "add", netip.PrefixFrom(a.plainPod.ip, 24).Masked().String(), "via", a.underlay.String())
	}
	return l
}

func (l *lab) ip(args ...string) {
	l.t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (l *lab) addNetns(name string) {
	l.ip("netns", "add", name)
	l.t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			l.t.Errorf("remove netns %s: %v: %s", name, err, out)
		}
	})
}

// addPod makes a pod namespace behind a veth: the pod has its /32 and an
// on-link default route, the node answers its ARP requests by proxy ARP and
// routes the /32 to the host-side veth.
func (l *lab) addPod(n *labNode, p labPod, hostIf string) {
	l.addNetns(p.ns)
	l.ip("netns", "exec", p.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	l.ip("link", "add", "eth0", "netns", p.ns, "type", "veth", "peer", "name", hostIf, "netns", n.ns)
	l.ip("-n", p.ns, "link", "set", "lo", "up")
	l.ip("-n", p.ns, "addr", "add", p.ip.String()+"/32", "dev", "eth0")
	l.ip("-n", p.ns, "link", "set", "eth0", "up")
	l.ip("-n", p.ns, "route", "add", "default", "dev", "eth0", "scope", "link")
	// Proxy ARP answers after a random delay of up to proxy_delay (0.8 s by
	// default); Calico sets it to 0 as well.
	l.ip("netns", "exec", n.ns, "sysctl", "-qw", "net.ipv4.conf."+hostIf+".proxy_arp=1", "net.ipv4.neigh."+hostIf+".proxy_delay=0")
	l.ip("-n", n.ns, "link", "set", hostIf, "up")
	l.ip("-n", n.ns, "route", "add", p.ip.String()+"/32", "dev", hostIf)
}

// node is the API object the control plane would hold for n.
func (n *labNode) node() *fedmeshv1.Node {
	return &fedmeshv1.Node{
		Cluster: n.cluster, Name: n.name, UnderlayIp: n.underlay.String(),
		PodCidrs: []string{n.podCIDR.String()}, WireguardPublicKey: n.key.PublicKey().String(),
	}
}

func (l *lab) apiNodes() []*fedmeshv1.Node {
	return []*fedmeshv1.Node{l.nodes[0].node(), l.nodes[1].node()}
}

// startWireGuard loads each node's key and opens its device.
func (l *lab) startWireGuard(ctx context.Context) {
	l.t.Helper()
	for _, n := range l.nodes {
		var err error
		if n.key, err = LoadOrCreateKey(n.keyPath); err != nil {
			l.t.Fatal(err)
		}
		n.dev, err = Open(ctx, Options{Name: DeviceName(n.cluster, n.name), NetNS: "/var/run/netns/" + n.ns, Logger: testLogger})
		if err != nil {
			l.t.Fatalf("open device of %s: %v", n.name, err)
		}
		dev := n.dev
		l.t.Cleanup(func() {
			if err := dev.Teardown(context.Background()); err != nil {
				l.t.Errorf("teardown %s: %v", dev.Name(), err)
			}
		})
	}
}

// sync reconciles node i's device against what the control plane says.
func (l *lab) sync(ctx context.Context, i int) Plan {
	l.t.Helper()
	n := l.nodes[i]
	want, skipped := Desired(n.key, n.node(), l.clusters, l.apiNodes())
	if len(skipped) > 0 {
		l.t.Fatalf("node %s skipped peers: %+v", n.name, skipped)
	}
	p, err := n.dev.Sync(ctx, want)
	if err != nil {
		l.t.Fatalf("sync %s: %v", n.name, err)
	}
	return p
}

// inNS runs fn inside the named namespace (sockets it opens stay there).
func inNS(t testing.TB, name string, fn func() error) {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	defer h.Close()
	if err := inNetNS(h, fn); err != nil {
		t.Fatalf("in netns %s: %v", name, err)
	}
}

// listen opens a TCP listener on the pod's address.
func (p labPod) listen(t testing.TB) net.Listener {
	t.Helper()
	var ln net.Listener
	inNS(t, p.ns, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(p.ip, 8080).String())
		return err
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dial connects from pod p to addr.
func (p labPod) dial(t testing.TB, addr netip.Addr, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var derr error
	inNS(t, p.ns, func() error {
		c, derr = net.DialTimeout("tcp4", netip.AddrPortFrom(addr, 8080).String(), timeout)
		return nil
	})
	return c, derr
}
