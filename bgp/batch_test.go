package bgp

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

func TestNextRunGroupsConsecutivePathActionsOfOneKind(t *testing.T) {
	p := func(k ActionKind, cidr string) Action {
		return Action{Kind: k, Prefix: Prefix{CIDR: netip.MustParsePrefix(cidr)}}
	}
	peer := Action{Kind: ActionAddPeer, Peer: Peer{Address: netip.MustParseAddr("198.18.0.1"), ASN: 65000}}
	plan := []Action{
		{Kind: ActionStop}, {Kind: ActionStart},
		p(ActionDeletePath, "10.0.0.0/24"), p(ActionDeletePath, "10.0.1.0/24"),
		{Kind: ActionDeletePeer, Peer: peer.Peer},
		p(ActionAddPath, "10.0.2.0/24"), p(ActionAddPath, "fd00::/64"), p(ActionAddPath, "10.0.3.0/24"),
		peer,
	}
	var runs []int
	for i := 0; i < len(plan); {
		r := nextRun(plan[i:])
		runs = append(runs, len(r))
		i += len(r)
	}
	if want := []int{1, 1, 2, 1, 3, 1}; !slices.Equal(runs, want) {
		t.Errorf("run lengths = %v, want %v", runs, want)
	}
}

// fakeCall stands in for one GoBGP AddPath/DeletePath call: it fails when
// the batch holds a bad prefix (GoBGP rejects a malformed path every time)
// or when failAll is set (the server is not running).
type fakeCall struct {
	bad       map[netip.Prefix]bool
	failBatch bool // only a multi-path batch fails (nothing deterministic)
	failAll   bool
	calls     int
}

func (f *fakeCall) call(batch []Action) error {
	f.calls++
	if f.failAll {
		return errors.New("server stopped")
	}
	for _, a := range batch {
		if f.bad[a.Prefix.CIDR] {
			return errors.New("bad path " + a.Prefix.CIDR.String())
		}
	}
	if f.failBatch && len(batch) > 1 {
		return errors.New("transient")
	}
	return nil
}

func TestPathBatchReportsExactlyThePathsThatTookEffect(t *testing.T) {
	run := make([]Action, 4)
	for i := range run {
		run[i] = Action{Kind: ActionAddPath, Prefix: Prefix{CIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)}}
	}
	b := run[1].Prefix.CIDR
	tests := []struct {
		name  string
		f     fakeCall
		done  []Action
		err   string
		calls int
	}{
		{"all good in one call", fakeCall{}, run, "", 1},
		{"one bad path: the others still count", fakeCall{bad: map[netip.Prefix]bool{b: true}},
			[]Action{run[0], run[2], run[3]}, "bad path " + b.String(), 1 + len(run)},
		{"the batch fails but every path alone succeeds", fakeCall{failBatch: true}, run, "", 1 + len(run)},
		{"server down: nothing", fakeCall{failAll: true}, nil, "server stopped", 1 + len(run)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done, err := pathBatch(run, tt.f.call)
			if !reflect.DeepEqual(done, tt.done) {
				t.Errorf("done = %q, want %q", plan(done), plan(tt.done))
			}
			if got := errString(err); got != tt.err {
				t.Errorf("err = %q, want %q", got, tt.err)
			}
			if tt.f.calls != tt.calls {
				t.Errorf("calls = %d, want %d", tt.f.calls, tt.calls)
			}
		})
	}
	single := fakeCall{bad: map[netip.Prefix]bool{run[0].Prefix.CIDR: true}}
	if done, err := pathBatch(run[:1], single.call); done != nil || err == nil || single.calls != 1 {
		t.Errorf("a failing single path = %q, %v after %d calls; want nothing, the error, one call", plan(done), err, single.calls)
	}
}

// After a batch with a bad path, the applied state holds the others and
// the next plan retries only the bad one.
func TestFailedPathIsRetriedAndTheRestStayApplied(t *testing.T) {
	applied := validDesired()
	want := validDesired()
	extra := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/26"), netip.MustParsePrefix("10.244.1.64/26"), netip.MustParsePrefix("10.244.1.128/26")}
	for _, c := range extra {
		want.Prefixes = append(want.Prefixes, Prefix{CIDR: c})
	}
	p := Diff(&applied, &want)
	if len(p) != len(extra) {
		t.Fatalf("plan = %q, want three add-paths", plan(p))
	}
	f := fakeCall{bad: map[netip.Prefix]bool{extra[1]: true}}
	done, err := pathBatch(nextRun(p), f.call)
	if err == nil {
		t.Fatal("want the bad path's error")
	}
	next := Diff(advance(&applied, done, &want), &want)
	if got := plan(next); !slices.Equal(got, []string{"add-path 10.244.1.64/26"}) {
		t.Errorf("next plan = %q, want only the failed path", got)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestAPIPathBuildsAttributesGoBGPCanSerialize(t *testing.T) {
	tests := []struct {
		cidr   string
		family bgp.Family
		nh     bgp.BGPAttrType
	}{
		{"10.244.1.0/24", bgp.RF_IPv4_UC, bgp.BGP_ATTR_TYPE_NEXT_HOP},
		{"fd00:244:1::/64", bgp.RF_IPv6_UC, bgp.BGP_ATTR_TYPE_MP_REACH_NLRI},
	}
	for _, tt := range tests {
		t.Run(tt.cidr, func(t *testing.T) {
			p := Prefix{
				CIDR:             netip.MustParsePrefix(tt.cidr),
				Communities:      []Community{65000<<16 | 100},
				LargeCommunities: []LargeCommunity{{Global: 65010, Local1: 1, Local2: 2}},
			}
			path, err := apiPath(p, 1)
			if err != nil {
				t.Fatal(err)
			}
			if path.Family != tt.family || path.Nlri.String() != tt.cidr || path.Age != 1 {
				t.Fatalf("path = %v %v age %d, want %v %s", path.Family, path.Nlri, path.Age, tt.family, tt.cidr)
			}
			got := map[bgp.BGPAttrType]string{}
			for _, a := range path.Attrs {
				got[a.GetType()] = a.String()
				if _, err := a.Serialize(); err != nil {
					t.Errorf("serialize %v: %v", a.GetType(), err)
				}
			}
			want := map[bgp.BGPAttrType]string{
				bgp.BGP_ATTR_TYPE_ORIGIN:          "{Origin: i}",
				bgp.BGP_ATTR_TYPE_COMMUNITIES:     "{Communities: 65000:100}",
				bgp.BGP_ATTR_TYPE_LARGE_COMMUNITY: "{LargeCommunity: [ 65010:1:2]}",
				tt.nh:                             got[tt.nh],
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("attributes = %v, want %v", got, want)
			}
		})
	}
}
