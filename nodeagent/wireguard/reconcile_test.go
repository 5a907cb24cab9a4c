package wireguard

import (
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestReconcile(t *testing.T) {
	self, rotated := testKey(1), testKey(9)
	a, b, c, b2 := testKey(2).PublicKey(), testKey(3).PublicKey(), testKey(4).PublicKey(), testKey(5).PublicKey()
	peerA := Peer{PublicKey: a, Endpoint: ap("198.18.1.1:51871"), AllowedIPs: pfxs("10.2.1.0/24")}
	peerB := Peer{PublicKey: b, Endpoint: ap("198.18.1.2:51871"), AllowedIPs: pfxs("10.2.2.0/24", "fd00:2:2::/64")}
	peerC := Peer{PublicKey: c, Endpoint: ap("198.18.1.3:51871"), AllowedIPs: pfxs("10.2.3.0/24")}
	base := Actual{
		PrivateKey: self, ListenPort: 51871, MTU: 1420,
		Peers:  []Peer{peerA, peerB},
		Routes: pfxs("10.2.1.0/24", "10.2.2.0/24", "fd00:2:2::/64"),
	}
	want := func(peers ...Peer) Config {
		return Config{PrivateKey: self, ListenPort: 51871, MTU: 1420, Peers: peers}
	}
	with := func(p Peer, f func(*Peer)) Peer {
		p.AllowedIPs = slices.Clone(p.AllowedIPs)
		f(&p)
		return p
	}
	port := 52000

	tests := []struct {
		name string
		want Config
		have Actual
		plan Plan
	}{
		{name: "matching device changes nothing", want: want(peerA, peerB), have: base},
		{
			name: "order and unmasked or v4-mapped forms from the kernel are not changes",
			want: want(peerB, peerA),
			have: Actual{
				PrivateKey: self, ListenPort: 51871, MTU: 1420,
				Peers: []Peer{
					with(peerB, func(p *Peer) { p.AllowedIPs = pfxs("fd00:2:2::1/64", "10.2.2.9/24", "10.2.2.0/24") }),
					with(peerA, func(p *Peer) { p.Endpoint = ap("[::ffff:198.18.1.1]:51871") }),
				},
				Routes: pfxs("fd00:2:2::/64", "10.2.2.0/24", "10.2.1.0/24"),
			},
		},
		{
			name: "fresh device gets key, port, MTU, peers and routes",
			want: want(peerA, peerB),
			have: Actual{},
			plan: Plan{PrivateKey: &self, ListenPort: ptr(51871), MTU: 1420, AddPeers: []Peer{peerA, peerB},
				AddRoutes: pfxs("10.2.1.0/24", "10.2.2.0/24", "fd00:2:2::/64")},
		},
		{
			name: "new remote node adds a peer and its routes",
			want: want(peerA, peerB, peerC),
			have: base,
			plan: Plan{AddPeers: []Peer{peerC}, AddRoutes: pfxs("10.2.3.0/24")},
		},
		{
			name: "removed remote node removes its peer and routes",
			want: want(peerA),
			have: base,
			plan: Plan{RemovePeers: []wgtypes.Key{b}, DelRoutes: pfxs("10.2.2.0/24", "fd00:2:2::/64")},
		},
		{
			name: "remote key rotation replaces the peer and keeps the routes",
			want: want(peerA, with(peerB, func(p *Peer) { p.PublicKey = b2 })),
			have: base,
			plan: Plan{RemovePeers: []wgtypes.Key{b}, AddPeers: []Peer{with(peerB, func(p *Peer) { p.PublicKey = b2 })}, Kick: []wgtypes.Key{b2}},
		},
		{
			name: "local key rotation changes only the key",
			want: Config{PrivateKey: rotated, ListenPort: 51871, MTU: 1420, Peers: []Peer{peerA, peerB}},
			have: base,
			plan: Plan{PrivateKey: &rotated},
		},
		{
			name: "moved endpoint updates the peer in place",
			want: want(peerA, with(peerB, func(p *Peer) { p.Endpoint = ap("198.18.9.9:51871") })),
			have: base,
			plan: Plan{UpdatePeers: []Peer{with(peerB, func(p *Peer) { p.Endpoint = ap("198.18.9.9:51871") })}},
		},
		{
			name: "grown pod CIDR updates AllowedIPs and swaps the route",
			want: want(with(peerA, func(p *Peer) { p.AllowedIPs = pfxs("10.2.0.0/23") }), peerB),
			have: base,
			plan: Plan{
				UpdatePeers: []Peer{with(peerA, func(p *Peer) { p.AllowedIPs = pfxs("10.2.0.0/23") })},
				AddRoutes:   pfxs("10.2.0.0/23"), DelRoutes: pfxs("10.2.1.0/24"),
			},
		},
		{
			name: "keepalive change updates the peer",
			want: want(with(peerA, func(p *Peer) { p.PersistentKeepalive = 25 * time.Second }), peerB),
			have: base,
			plan: Plan{UpdatePeers: []Peer{with(peerA, func(p *Peer) { p.PersistentKeepalive = 25 * time.Second })}},
		},
		{
			name: "port and MTU changes",
			want: Config{PrivateKey: self, ListenPort: 52000, MTU: 1380, Peers: []Peer{peerA, peerB}},
			have: base,
			plan: Plan{ListenPort: &port, MTU: 1380},
		},
		{
			name: "a stray route of ours is deleted, a missing one restored",
			want: want(peerA, peerB),
			have: Actual{PrivateKey: self, ListenPort: 51871, MTU: 1420, Peers: []Peer{peerA, peerB},
				Routes: pfxs("10.2.1.0/24", "10.2.2.0/24", "10.66.0.0/16")},
			plan: Plan{AddRoutes: pfxs("fd00:2:2::/64"), DelRoutes: pfxs("10.66.0.0/16")},
		},
		{
			name: "names are not device state",
			want: want(with(peerA, func(p *Peer) { p.Cluster, p.Node = "west", "w1" }), peerB),
			have: base,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Reconcile(tt.want, tt.have)
			tt.plan.AddPeers = slices.Clone(tt.plan.AddPeers)
			sortPeers(tt.plan.AddPeers)
			if !planEqual(got, tt.plan) {
				t.Fatalf("plan =\n%s\nwant\n%s", fmtPlan(got), fmtPlan(tt.plan))
			}
			if got.Empty() != planEqual(tt.plan, Plan{}) {
				t.Fatalf("Empty() = %v for %s", got.Empty(), fmtPlan(got))
			}
			// Applying the plan to the actual state must reach the desired one.
			after := simulate(tt.have, got)
			if again := Reconcile(tt.want, after); !again.Empty() {
				t.Fatalf("plan does not converge; second plan:\n%s", fmtPlan(again))
			}
		})
	}
}

func TestWgConfigRemovesBeforeAddingAndKicksOnlyReplacements(t *testing.T) {
	a, b, c := testKey(2).PublicKey(), testKey(3).PublicKey(), testKey(4).PublicKey()
	p := Plan{
		RemovePeers: []wgtypes.Key{a},
		AddPeers: []Peer{
			{PublicKey: b, Endpoint: ap("198.18.1.2:51871"), AllowedIPs: pfxs("10.2.1.0/24")},
			{PublicKey: c, Endpoint: ap("198.18.1.3:51871"), AllowedIPs: pfxs("10.2.3.0/24")},
		},
		Kick: []wgtypes.Key{b},
	}
	cfg, ok := p.wgConfig(kickInterval)
	if !ok || len(cfg.Peers) != 3 {
		t.Fatalf("wgConfig = %+v, %v", cfg, ok)
	}
	if !cfg.Peers[0].Remove || cfg.Peers[0].PublicKey != a {
		t.Errorf("first peer op = %+v, want removal of the old key", cfg.Peers[0])
	}
	add := cfg.Peers[1]
	if add.Remove || add.UpdateOnly || !add.ReplaceAllowedIPs || add.PersistentKeepaliveInterval == nil || *add.PersistentKeepaliveInterval != kickInterval {
		t.Errorf("add op = %+v, want a new peer with replaced AllowedIPs and a kick keepalive", add)
	}
	if ka := cfg.Peers[2].PersistentKeepaliveInterval; ka == nil || *ka != 0 {
		t.Errorf("brand-new peer got keepalive %v, want 0: only replacements are kicked", ka)
	}
	if _, ok := (Plan{AddRoutes: pfxs("10.0.0.0/8")}).wgConfig(kickInterval); ok {
		t.Error("a routes-only plan produced a wgctrl transaction")
	}
}

func ptr[T any](v T) *T { return &v }

// simulate applies a plan to an Actual the way the device would.
func simulate(have Actual, p Plan) Actual {
	out := Actual{PrivateKey: have.PrivateKey, ListenPort: have.ListenPort, MTU: have.MTU}
	if p.PrivateKey != nil {
		out.PrivateKey = *p.PrivateKey
	}
	if p.ListenPort != nil {
		out.ListenPort = *p.ListenPort
	}
	if p.MTU != 0 {
		out.MTU = p.MTU
	}
	peers := map[wgtypes.Key]Peer{}
	for _, x := range have.Peers {
		peers[x.PublicKey] = x
	}
	for _, k := range p.RemovePeers {
		delete(peers, k)
	}
	for _, x := range append(slices.Clone(p.AddPeers), p.UpdatePeers...) {
		peers[x.PublicKey] = x
	}
	for _, x := range peers {
		out.Peers = append(out.Peers, x)
	}
	sortPeers(out.Peers)
	routes := map[netip.Prefix]bool{}
	for _, r := range have.Routes {
		routes[r.Masked()] = true
	}
	for _, r := range p.DelRoutes {
		delete(routes, r)
	}
	for _, r := range p.AddRoutes {
		routes[r] = true
	}
	for r := range routes {
		out.Routes = append(out.Routes, r)
	}
	return out
}

func planEqual(a, b Plan) bool {
	keyEq := func(x, y *wgtypes.Key) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	intEq := func(x, y *int) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	peersEq := func(x, y []Peer) bool { return slices.EqualFunc(x, y, Peer.equalState) }
	return keyEq(a.PrivateKey, b.PrivateKey) && intEq(a.ListenPort, b.ListenPort) && a.MTU == b.MTU &&
		slices.Equal(a.RemovePeers, b.RemovePeers) && peersEq(a.AddPeers, b.AddPeers) && peersEq(a.UpdatePeers, b.UpdatePeers) &&
		slices.Equal(a.AddRoutes, b.AddRoutes) && slices.Equal(a.DelRoutes, b.DelRoutes) && slices.Equal(a.Kick, b.Kick)
}

func fmtPlan(p Plan) string {
	s := ""
	if p.PrivateKey != nil {
		s += " key=" + p.PrivateKey.PublicKey().String()[:8]
	}
	if p.ListenPort != nil {
		s += " port=" + itoa(*p.ListenPort)
	}
	if p.MTU != 0 {
		s += " mtu=" + itoa(p.MTU)
	}
	for _, k := range p.RemovePeers {
		s += " -peer=" + k.String()[:8]
	}
	for _, x := range p.AddPeers {
		s += " +peer=" + x.PublicKey.String()[:8] + x.Endpoint.String()
	}
	for _, x := range p.UpdatePeers {
		s += " ~peer=" + x.PublicKey.String()[:8] + x.Endpoint.String()
	}
	for _, k := range p.Kick {
		s += " kick=" + k.String()[:8]
	}
	for _, r := range p.AddRoutes {
		s += " +route=" + r.String()
	}
	for _, r := range p.DelRoutes {
		s += " -route=" + r.String()
	}
	if s == "" {
		return " (empty)"
	}
	return s
}

func itoa(i int) string { return strconv.Itoa(i) }
