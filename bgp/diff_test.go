package bgp

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/bgp/peering"
)

func plan(actions []Action) []string {
	out := make([]string, len(actions))
	for i, a := range actions {
		out[i] = a.String()
	}
	return out
}

func TestDiffPlans(t *testing.T) {
	base := validDesired()
	with := func(f func(*Desired)) *Desired {
		d := validDesired()
		f(&d)
		return &d
	}
	tests := []struct {
		name    string
		applied *Desired
		want    *Desired
		plan    []string
	}{
		{"off stays off", nil, &Desired{}, nil},
		{"start adds paths then peers", nil, &base, []string{
			"start asn=65010 router-id=198.18.0.2 port=0",
			"set-policy peers=0",
			"add-path 10.244.1.0/24",
			"add-path fd00:244:1::/64 communities=65000:100",
			"add-peer 198.18.0.1 asn=65000",
			"add-peer fd18::1 asn=65010",
		}},
		{"no-op reconcile touches nothing", &base, with(func(*Desired) {}), nil},
		{"reordered input is no change", &base, with(func(d *Desired) {
			slices.Reverse(d.Peers)
			slices.Reverse(d.Prefixes)
		}), nil},
		{"disable stops", &base, &Desired{}, []string{"stop"}},
		{"router ID change restarts", &base, with(func(d *Desired) { d.RouterID = netip.MustParseAddr("198.18.0.9") }), []string{
			"stop",
			"start asn=65010 router-id=198.18.0.9 port=0",
			"set-policy peers=0",
			"add-path 10.244.1.0/24",
			"add-path fd00:244:1::/64 communities=65000:100",
			"add-peer 198.18.0.1 asn=65000",
			"add-peer fd18::1 asn=65010",
		}},
		{"new peer only adds it", &base, with(func(d *Desired) {
			d.Peers = append(d.Peers, Peer{Address: netip.MustParseAddr("198.18.0.5"), ASN: 65001})
		}), []string{"add-peer 198.18.0.5 asn=65001"}},
		{"removed peer only deletes it", &base, with(func(d *Desired) { d.Peers = d.Peers[:1] }), []string{"delete-peer fd18::1 asn=65010"}},
		{"timer change updates the peer", &base, with(func(d *Desired) { d.Peers[0].HoldTime = 30 * time.Second }), []string{"update-peer 198.18.0.1 asn=65000"}},
		{"password change updates the peer", &base, with(func(d *Desired) { d.Peers[0].Password = "new" }), []string{"update-peer 198.18.0.1 asn=65000"}},
		{"graceful restart change updates every peer", &base, with(func(d *Desired) { d.GracefulRestart.RestartTime = 30 * time.Second }), []string{
			"update-peer 198.18.0.1 asn=65000", "update-peer fd18::1 asn=65010",
		}},
		{"community change re-advertises that prefix", &base, with(func(d *Desired) {
			d.Prefixes[0].Communities = []Community{65000<<16 | 666}
		}), []string{"add-path 10.244.1.0/24 communities=65000:666"}},
		{"removed prefix is withdrawn", &base, with(func(d *Desired) { d.Prefixes = d.Prefixes[1:] }), []string{"delete-path 10.244.1.0/24"}},
		{"interleaved prefix changes: each withdrawn, changed or new prefix once, in order", with(func(d *Desired) {
			d.Prefixes = append(d.Prefixes[1:],
				Prefix{CIDR: netip.MustParsePrefix("10.244.1.0/26")},
				Prefix{CIDR: netip.MustParsePrefix("10.244.1.64/26")},
				Prefix{CIDR: netip.MustParsePrefix("10.244.1.128/26")})
		}), with(func(d *Desired) {
			d.Prefixes = append(d.Prefixes[1:],
				Prefix{CIDR: netip.MustParsePrefix("10.244.1.128/26"), Communities: []Community{65000<<16 | 1}},
				Prefix{CIDR: netip.MustParsePrefix("10.244.1.192/26")},
				Prefix{CIDR: netip.MustParsePrefix("10.244.1.0/26")},
				Prefix{CIDR: netip.MustParsePrefix("10.0.0.0/26")})
		}), []string{
			"delete-path 10.244.1.64/26",
			"add-path 10.0.0.0/26",
			"add-path 10.244.1.128/26 communities=65000:1",
			"add-path 10.244.1.192/26",
		}},
		{"a filter change sets the policy and resets no session", &base, with(func(d *Desired) {
			d.Policy.Peers = []PeerPolicy{{Address: d.Peers[0].Address, Export: []peering.Rule{{Family: peering.IPv4, Action: peering.Reject}}}}
		}), []string{"set-policy peers=1"}},
		{"an empty peer policy is no policy", &base, with(func(d *Desired) {
			d.Policy.Peers = []PeerPolicy{{Address: d.Peers[0].Address, Attributes: peering.Attributes{Communities: []Community{}}}}
		}), nil},
		{"policy order and community order are no change", with(func(d *Desired) {
			d.Policy.Peers = []PeerPolicy{
				{Address: d.Peers[0].Address, Attributes: peering.Attributes{Communities: []Community{2, 1}}},
				{Address: d.Peers[1].Address, Import: []peering.Rule{{Family: peering.IPv6, Action: peering.Reject}}},
			}
		}), with(func(d *Desired) {
			d.Policy.Peers = []PeerPolicy{
				{Address: d.Peers[1].Address, Import: []peering.Rule{{Family: peering.IPv6, Action: peering.Reject}}},
				{Address: d.Peers[0].Address, Attributes: peering.Attributes{Communities: []Community{1, 2, 1}}},
			}
		}), nil},
		{"a peer's name is not a session change", &base, with(func(d *Desired) { d.Peers[0].Name = "tor-r1" }), nil},
		{"a session local ASN change updates the peer", &base, with(func(d *Desired) { d.Peers[0].LocalASN = 65101 }), []string{"update-peer 198.18.0.1 asn=65000"}},
		{"a session's own graceful restart is kept over the global change", with(func(d *Desired) {
			d.Peers[0].GracefulRestart = &GracefulRestart{RestartTime: 60 * time.Second}
		}), with(func(d *Desired) {
			d.Peers[0].GracefulRestart = &GracefulRestart{RestartTime: 60 * time.Second}
			d.GracefulRestart.RestartTime = 30 * time.Second
		}), []string{"update-peer fd18::1 asn=65010"}},
		{"peer and prefix swap: withdraw before add", &base, with(func(d *Desired) {
			d.Prefixes[0].CIDR = netip.MustParsePrefix("10.244.1.0/25")
			d.Peers[0].Address = netip.MustParseAddr("198.18.0.5")
		}), []string{
			"delete-path 10.244.1.0/24",
			"delete-peer 198.18.0.1 asn=65000",
			"add-path 10.244.1.0/25",
			"add-peer 198.18.0.5 asn=65000",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := plan(Diff(tt.applied, tt.want))
			if !reflect.DeepEqual(got, tt.plan) && !(len(got) == 0 && len(tt.plan) == 0) {
				t.Errorf("Diff plan:\n got %q\nwant %q", got, tt.plan)
			}
		})
	}
}

// Folding a plan over the applied state with advance must reach the
// desired state, whatever the pair: that is what lets the Speaker track
// GoBGP's state action by action.
func TestPlanFoldedOverAppliedReachesDesired(t *testing.T) {
	states := []*Desired{nil, {}}
	for _, f := range []func(*Desired){
		func(*Desired) {},
		func(d *Desired) { d.Peers = d.Peers[:1]; d.Prefixes = nil },
		func(d *Desired) { d.RouterID = netip.MustParseAddr("198.18.0.9") },
		func(d *Desired) { d.Peers[1].Password = "x"; d.GracefulRestart = GracefulRestart{} },
		func(d *Desired) { d.Prefixes[0].LargeCommunities = []LargeCommunity{{Global: 1, Local1: 2, Local2: 3}} },
	} {
		d := validDesired()
		f(&d)
		states = append(states, &d)
	}
	for i, from := range states {
		for j, to := range states {
			cur := from
			if cur != nil && cur.Enabled() {
				n := normalize(cur)
				cur = &n
			}
			steps := Diff(cur, to)
			// One action at a time (the error path) and all at once agree.
			whole := advance(cur, steps, to)
			for k := range steps {
				cur = advance(cur, steps[k:k+1], to)
			}
			if (whole == nil) != (cur == nil) || (whole != nil && !reflect.DeepEqual(normalize(whole), normalize(cur))) {
				t.Errorf("state %d -> %d: stepwise and whole-plan advance disagree", i, j)
			}
			if cur != nil && to != nil {
				cur.GracefulRestart = to.GracefulRestart
			}
			if rest := Diff(cur, to); len(rest) != 0 {
				t.Errorf("state %d -> %d: after the plan, Diff still wants %q", i, j, plan(rest))
			}
		}
	}
}
