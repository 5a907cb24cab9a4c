package auth

import (
	"errors"
	"testing"
)

func TestParsePrincipalRoundTrips(t *testing.T) {
	for _, p := range []Principal{Admin(), Syncer("east-1"), Node("east-1", "node-7.rack2"), Replica("cp1")} {
		got, err := ParsePrincipal(p.String())
		if err != nil {
			t.Fatalf("ParsePrincipal(%q): %v", p, err)
		}
		if got != p {
			t.Fatalf("ParsePrincipal(%q) = %+v, want %+v", p, got, p)
		}
		if p.URI().String() != p.String() {
			t.Fatalf("URI %q differs from String %q", p.URI(), p)
		}
	}
}

func TestParsePrincipalRejectsNonCanonicalURIs(t *testing.T) {
	for _, s := range []string{
		"",
		"spiffe://fedmesh",
		"spiffe://fedmesh/",
		"spiffe://other/admin",
		"SPIFFE://fedmesh/admin",
		"spiffe://fedmesh/admin/",
		"spiffe://fedmesh//admin",
		"spiffe://fedmesh/admin?x=1",
		"spiffe://fedmesh/admin#frag",
		"spiffe://user@fedmesh/admin",
		"spiffe://fedmesh:443/admin",
		"spiffe://fedmesh/cluster/a/syncer/",
		"spiffe://fedmesh/cluster//syncer",
		"spiffe://fedmesh/cluster/A/syncer",
		"spiffe://fedmesh/cluster/a%2Fb/syncer",
		"spiffe://fedmesh/cluster/a/node",
		"spiffe://fedmesh/cluster/a/node/",
		"spiffe://fedmesh/cluster/a/node/n1/extra",
		"spiffe://fedmesh/cluster/a/agent/n1",
		"spiffe://fedmesh/cluster/../admin",
		"spiffe://fedmesh/controlplane/",
		"spiffe://fedmesh/controlplane/a/b",
		"spiffe://fedmesh/cluster/" + string(make([]byte, 64)) + "/syncer",
		"spiffe://fedmesh/cluster/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/syncer",
	} {
		if p, err := ParsePrincipal(s); err == nil {
			t.Errorf("ParsePrincipal(%q) = %+v, want error", s, p)
		} else if !errors.Is(err, ErrBadPrincipal) {
			t.Errorf("ParsePrincipal(%q) error %v does not wrap ErrBadPrincipal", s, err)
		}
	}
}

func TestFlowScopeIsTheCallersClusterExceptForAdmins(t *testing.T) {
	for _, tc := range []struct {
		p    Principal
		want string
	}{
		{Admin(), ""},
		{Syncer("a"), "a"},
		{Node("b", "n1"), "b"},
	} {
		if got := FlowScope(tc.p); got != tc.want {
			t.Errorf("FlowScope(%s) = %q, want %q", tc.p, got, tc.want)
		}
	}
}
