package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// nameRevision gives endpoint "a" an Admin Accept for TCP 443 to names
// matching *.example.com (rule 1) and a NetworkPolicy that enforces
// egress and allows nothing; endpoint "b" gets an Admin Accept for any
// port to api.example.com only (rule 1 of its own compile).
func nameRevision(n uint64) *Revision {
	enforcedNothing := func(names ...policy.NameRule) policy.EndpointRules {
		return policy.EndpointRules{Identity: 7, Egress: policy.DirectionRules{Enforced: true, Names: names}}
	}
	return &Revision{Number: n, Rules: map[string]policy.EndpointRules{
		"a": enforcedNothing(policy.NameRule{Names: []string{"*.example.com"}, Proto: policy.ProtoTCP,
			Ports: policy.PortRange{First: 443, Last: 443}, Rule: 1, Tier: policy.TierAdmin, Action: policy.ActionAccept}),
		"b": enforcedNothing(policy.NameRule{Names: []string{"api.example.com"}, Proto: policy.ProtoAny,
			Ports: policy.AllPorts, Rule: 1, Tier: policy.TierAdmin, Action: policy.ActionAccept}),
	}}
}

func TestMemoryNameRules(t *testing.T) {
	ctx := context.Background()
	src := netip.MustParseAddr("198.18.0.1")
	learnedAddr, other := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("203.0.113.6")
	v6 := netip.MustParseAddr("2001:db8::5")
	var mono uint64 = 1e12
	wall := time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC)
	m := NewMemory(WithClock(func() uint64 { return mono }), WithWallClock(func() time.Time { return wall }))
	if err := m.Apply(ctx, nameRevision(1)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		if err := m.Attach(ctx, Endpoint{ID: id, Interface: "veth-" + id}); err != nil {
			t.Fatal(err)
		}
	}
	sport := uint16(40000)
	syn := func(id string, dst netip.Addr, port uint16) (Verdict, Reason) {
		t.Helper()
		sport++ // a new flow each time
		s := src
		if dst.Is6() {
			s = netip.MustParseAddr("fd00:18::1")
		}
		v, r, _, err := m.Process(id, policy.Egress, pktSpec{src: s, dst: dst, proto: protoTCP, sport: sport, dport: port, tcpFlags: 2}.frame())
		if err != nil {
			t.Fatal(err)
		}
		return v, r
	}
	learn := func(id string, a netip.Addr, name string, ttl time.Duration) {
		t.Helper()
		if err := m.Learn(ctx, []LearnedAddr{{Endpoint: id, Addr: a, Name: name, Expires: wall.Add(ttl)}}); err != nil {
			t.Fatal(err)
		}
	}
	if v, _ := syn("a", learnedAddr, 443); v != Deny {
		t.Fatal("an address never learned is allowed")
	}
	learn("a", learnedAddr, "www.example.com", 30*time.Second)
	learn("a", v6, "deep.www.example.com", 30*time.Second)
	learn("a", other, "example.com", 30*time.Second) // the wildcard's parent: no match
	learn("b", learnedAddr, "www.example.com", 30*time.Second)
	cases := []struct {
		name string
		id   string
		dst  netip.Addr
		port uint16
		want Verdict
	}{
		{"learned for a matching name, rule's port", "a", learnedAddr, 443, Allow},
		{"IPv6, name two labels under the wildcard", "a", v6, 443, Allow},
		{"learned, another port", "a", learnedAddr, 80, Deny},
		{"learned for a name the wildcard does not match", "a", other, 443, Deny},
		{"other endpoint learned it for a name its rule does not match", "b", learnedAddr, 443, Deny},
		{"never learned by that endpoint", "b", v6, 443, Deny},
	}
	for _, tc := range cases {
		if v, r := syn(tc.id, tc.dst, tc.port); v != tc.want {
			t.Errorf("%s: %s (%s), want %s", tc.name, v, r, tc.want)
		}
	}
	learn("b", learnedAddr, "api.example.com", 10*time.Second)
	if v, _ := syn("b", learnedAddr, 8080); v != Allow {
		t.Error("endpoint b: address learned for api.example.com denied")
	}
	// An established flow outlives the answer; a new one does not.
	f := pktSpec{src: src, dst: learnedAddr, proto: protoTCP, sport: 1234, dport: 443, tcpFlags: 2}
	if v, _, _, _ := m.Process("a", policy.Egress, f.frame()); v != Allow {
		t.Fatal("first SYN denied")
	}
	mono += uint64(31 * time.Second)
	f.tcpFlags = 0x10
	if v, r, _, _ := m.Process("a", policy.Egress, f.frame()); v != Allow || r != ReasonAllowConntrack {
		t.Errorf("established flow after expiry: %s (%s), want allow by conntrack", v, r)
	}
	if v, _ := syn("a", learnedAddr, 443); v != Deny {
		t.Error("new flow to an expired address allowed")
	}
	if v, _ := syn("b", learnedAddr, 8080); v != Deny {
		t.Error("endpoint b: new flow after its answer expired allowed")
	}
	// A later Expires wins; an earlier one does not shorten it.
	wall = wall.Add(31 * time.Second)
	learn("a", learnedAddr, "www.example.com", 60*time.Second)
	learn("a", learnedAddr, "www.example.com", 5*time.Second)
	mono += uint64(10 * time.Second)
	if v, _ := syn("a", learnedAddr, 443); v != Allow {
		t.Error("an earlier Expires shortened a later one")
	}
	// A new revision without the rule stops it; restoring it restores the
	// learned state, re-rendered.
	rev := nameRevision(2)
	r := rev.Rules["a"]
	r.Egress.Names = nil
	rev.Rules["a"] = r
	if err := m.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if v, _ := syn("a", learnedAddr, 443); v != Deny {
		t.Error("allowed by a removed name rule")
	}
	if err := m.Apply(ctx, nameRevision(3)); err != nil {
		t.Fatal(err)
	}
	if v, _ := syn("a", learnedAddr, 443); v != Allow {
		t.Error("learned address lost across revisions")
	}
	if err := m.Forget(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if v, _ := syn("a", learnedAddr, 443); v != Deny {
		t.Error("allowed after Forget")
	}
}

func TestLearnRejectsBadInputWhole(t *testing.T) {
	m := NewMemory()
	exp := time.Now().Add(time.Minute)
	good := LearnedAddr{Endpoint: "a", Addr: netip.MustParseAddr("192.0.2.1"), Name: "api.example.com", Expires: exp}
	for _, tc := range []struct {
		bad   LearnedAddr
		field string
	}{
		{LearnedAddr{Addr: good.Addr, Name: good.Name, Expires: exp}, "Endpoint"},
		{LearnedAddr{Endpoint: "a", Name: good.Name, Expires: exp}, "Addr"},
		{LearnedAddr{Endpoint: "a", Addr: good.Addr, Name: "API.example.com.", Expires: exp}, "Name"},
	} {
		err := m.Learn(context.Background(), []LearnedAddr{good, tc.bad})
		if err == nil || !strings.Contains(err.Error(), "addrs[1]."+tc.field) {
			t.Errorf("Learn(%+v) = %v, want an error naming addrs[1].%s", tc.bad, err, tc.field)
		}
	}
	if len(m.learned) != 0 {
		t.Errorf("a rejected batch was applied in part: %v", m.learned)
	}
}

func TestNameSlotsStayAcrossRevisions(t *testing.T) {
	rule := func(names ...string) policy.NameRule {
		return policy.NameRule{Names: names, Ports: policy.AllPorts, Rule: 1, Tier: policy.TierAdmin, Action: policy.ActionAccept}
	}
	s1, _, err := assignNameSlots([]policy.NameRule{rule("a.com"), rule("b.com"), rule("a.com")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s1[0].Patterns[0] != "a.com" || s1[1].Patterns[0] != "b.com" || s1[2].Hash != 0 {
		t.Fatalf("first assignment %+v", s1[:3])
	}
	// b.com stays in slot 1; c.com takes slot 2, not a.com's freed slot 0.
	s2, by, err := assignNameSlots([]policy.NameRule{rule("c.com"), rule("b.com")}, s1)
	if err != nil {
		t.Fatal(err)
	}
	if by[patternHash([]string{"b.com"})] != 1 || by[patternHash([]string{"c.com"})] != 2 || s2[0].Hash != 0 {
		t.Errorf("second assignment %+v", s2[:3])
	}
	var many []policy.NameRule
	for i := range maxNameSlots + 1 {
		many = append(many, rule(strings.Repeat("x", i+1)+".com"))
	}
	if _, _, err := assignNameSlots(many, nil); err == nil || !strings.Contains(err.Error(), "over the 16") {
		t.Errorf("%d pattern sets: err %v, want refused", len(many), err)
	}
}

func TestApplyRefusesTooManyNameSlots(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	if err := m.Apply(ctx, nameRevision(1)); err != nil {
		t.Fatal(err)
	}
	if err := m.Attach(ctx, Endpoint{ID: "a", Interface: "veth-a"}); err != nil {
		t.Fatal(err)
	}
	rev := nameRevision(2)
	r := rev.Rules["a"]
	r.Egress.Names = nil
	for i := range maxNameSlots + 1 {
		r.Egress.Names = append(r.Egress.Names, policy.NameRule{Names: []string{fmt.Sprintf("n%d.example", i)}, Ports: policy.AllPorts,
			Rule: policy.RuleID(i + 1), Tier: policy.TierAdmin, Action: policy.ActionAccept})
	}
	rev.Rules["a"] = r
	err := m.Apply(ctx, rev)
	if err == nil || !strings.Contains(err.Error(), "render endpoint a: 17 distinct domainNames pattern sets") {
		t.Fatalf("Apply of 17 pattern sets: %v, want refused naming the endpoint", err)
	}
	if c, _ := m.Counters(ctx); c.Revision != 1 {
		t.Errorf("revision %d enforced after a refused Apply, want 1", c.Revision)
	}
}
