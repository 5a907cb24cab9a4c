package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// TestNameRulesKernelAgreesWithTwin runs nameRevision's scenarios through
// the kernel program (BPF_PROG_TEST_RUN on real interfaces' indexes) and
// the in-memory twin: addresses learned for matching names pass, for
// other names or other endpoints or never learned they do not, and an
// answer stops matching in the datapath when it expires (the agent is not
// asked). Then a restart on the same pins keeps the entries without
// extending them.
func TestNameRulesKernelAgreesWithTwin(t *testing.T) {
	requireKernel(t)
	ns, nsPath := newNetNS(t)
	for _, i := range []string{"na", "nb"} {
		run(t, "ip", "-n", ns, "link", "add", i, "type", "veth", "peer", "name", "p"+i)
	}
	ctx := context.Background()
	kern, cfg := newEBPF(t, nsPath)
	mem := NewMemory(WithIfindexResolver(func(iface string) (uint32, error) { return ifindexIn(nsPath, iface) }))
	idx := map[string]uint32{}
	for _, dp := range []Dataplane{kern, mem} {
		if err := dp.Apply(ctx, nameRevision(1)); err != nil {
			t.Fatal(err)
		}
		for id, iface := range map[string]string{"a": "na", "b": "nb"} {
			if err := dp.Attach(ctx, Endpoint{ID: id, Interface: iface}); err != nil {
				t.Fatal(err)
			}
			idx[id], _ = ifindexIn(nsPath, iface)
		}
	}
	src4, src6 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("fd00:18::1")
	learnedAddr, other, v6 := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("203.0.113.6"), netip.MustParseAddr("2001:db8::5")
	short := netip.MustParseAddr("203.0.113.7")
	sport := uint16(30000)
	verdicts := func(kern *EBPF, id string, dst netip.Addr, port uint16) (kv, mv Verdict) {
		t.Helper()
		sport++
		src := src4
		if dst.Is6() {
			src = src6
		}
		f := pktSpec{src: src, dst: dst, proto: protoTCP, sport: sport, dport: port, tcpFlags: 2}.frame()
		var got int32
		if err := inNetNS(nsPath, func() (err error) { got, err = kern.runProg(uint8(policy.Egress), idx[id], f); return err }); err != nil {
			t.Fatal(err)
		}
		kv = Allow
		if got == retDrop {
			kv = Deny
		}
		mv, _, _, err := mem.Process(id, policy.Egress, f)
		if err != nil {
			t.Fatal(err)
		}
		return kv, mv
	}
	now := time.Now()
	learned := []LearnedAddr{
		{Endpoint: "a", Addr: learnedAddr, Name: "www.example.com", Expires: now.Add(time.Hour)},
		{Endpoint: "a", Addr: v6, Name: "deep.www.example.com", Expires: now.Add(time.Hour)},
		{Endpoint: "a", Addr: other, Name: "example.com", Expires: now.Add(time.Hour)},
		{Endpoint: "b", Addr: learnedAddr, Name: "www.example.com", Expires: now.Add(time.Hour)},
		{Endpoint: "a", Addr: short, Name: "short.example.com", Expires: now.Add(400 * time.Millisecond)},
	}
	for _, dp := range []Dataplane{kern, mem} {
		if err := dp.Learn(ctx, learned); err != nil {
			t.Fatal(err)
		}
	}
	type check struct {
		name string
		id   string
		dst  netip.Addr
		port uint16
		want Verdict
	}
	checks := func(kern *EBPF, cs []check) {
		t.Helper()
		for _, c := range cs {
			kv, mv := verdicts(kern, c.id, c.dst, c.port)
			if kv != c.want || mv != c.want {
				t.Errorf("%s: kernel %s, twin %s, want %s", c.name, kv, mv, c.want)
			}
		}
	}
	checks(kern, []check{
		{"learned for a matching name", "a", learnedAddr, 443, Allow},
		{"IPv6 learned for a name two labels under the wildcard", "a", v6, 443, Allow},
		{"short-lived answer, live", "a", short, 443, Allow},
		{"learned, port the rule does not name", "a", learnedAddr, 80, Deny},
		{"learned for the wildcard's parent", "a", other, 443, Deny},
		{"other endpoint learned it for a name its rule misses", "b", learnedAddr, 8080, Deny},
		{"never learned", "a", netip.MustParseAddr("203.0.113.99"), 443, Deny},
	})
	time.Sleep(500 * time.Millisecond)
	checks(kern, []check{{"short-lived answer, expired", "a", short, 443, Deny}})

	// Restart: close and re-open on the same pins. The entries stay in
	// force before and after the first Apply, with the same expiry.
	var before fqdnVal
	key := fqdnKey{Ifindex: idx["a"], IP: mapped(learnedAddr)}
	if err := kern.coll.Maps["fm_fqdn"].Lookup(key, &before); err != nil {
		t.Fatal(err)
	}
	kern.Close()
	kern2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer kern2.Close()
	restarted := []check{{"after restart, learned", "a", learnedAddr, 443, Allow}, {"after restart, never learned", "a", other, 443, Deny}}
	checks(kern2, restarted)
	if err := kern2.Apply(ctx, nameRevision(2)); err != nil {
		t.Fatal(err)
	}
	for id, iface := range map[string]string{"a": "na", "b": "nb"} {
		if err := kern2.Attach(ctx, Endpoint{ID: id, Interface: iface}); err != nil {
			t.Fatal(err)
		}
	}
	checks(kern2, restarted)
	var after fqdnVal
	if err := kern2.coll.Maps["fm_fqdn"].Lookup(key, &after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("restart changed the entry: before %+v, after %+v", before, after)
	}
	// Forget drops what the previous process learned, too, and nothing
	// of other endpoints.
	bLearns := []LearnedAddr{{Endpoint: "b", Addr: learnedAddr, Name: "api.example.com", Expires: time.Now().Add(time.Hour)}}
	if err := kern2.Learn(ctx, bLearns); err != nil {
		t.Fatal(err)
	}
	if err := mem.Learn(ctx, bLearns); err != nil {
		t.Fatal(err)
	}
	if err := kern2.Forget(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := mem.Forget(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	checks(kern2, []check{{"after Forget", "a", learnedAddr, 443, Deny}, {"other endpoint after Forget", "b", learnedAddr, 443, Allow}})
	if n := countEntries(t, kern2); n != 1 {
		t.Errorf("fm_fqdn holds %d entries after Forget, want 1 (endpoint b's)", n)
	}
}

func countEntries(t *testing.T, e *EBPF) int {
	t.Helper()
	var k fqdnKey
	var v fqdnVal
	n := 0
	it := e.coll.Maps["fm_fqdn"].Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(fmt.Errorf("iterate fm_fqdn: %w", err))
	}
	return n
}

// TestReusedNameSlotDropsOldAnswers: an endpoint with all 16 name slots
// taken, one pattern set replaced, so the new set reuses the freed slot.
// An address learned for the old set must not match the new rule, for
// addresses this process learned (names known) and for those a previous
// process wrote (adopted after a restart, names unknown).
func TestReusedNameSlotDropsOldAnswers(t *testing.T) {
	requireKernel(t)
	ns, nsPath := newNetNS(t)
	run(t, "ip", "-n", ns, "link", "add", "na", "type", "veth", "peer", "name", "pna")
	ctx := context.Background()
	rev := func(n uint64, replace bool) *Revision {
		dr := policy.DirectionRules{Enforced: true}
		for i := range maxNameSlots {
			name, port := fmt.Sprintf("n%d.example", i), uint16(1000+i)
			if replace && i == 3 {
				name, port = "other.example", 2000
			}
			dr.Names = append(dr.Names, policy.NameRule{Names: []string{name}, Proto: protoTCP, Ports: policy.PortRange{First: port, Last: port},
				Rule: policy.RuleID(i + 1), Tier: policy.TierAdmin, Action: policy.ActionAccept})
		}
		return &Revision{Number: n, Rules: map[string]policy.EndpointRules{"a": {Identity: 7, Egress: dr}}}
	}
	old, restarted := netip.MustParseAddr("203.0.113.3"), netip.MustParseAddr("203.0.113.4")
	syn := func(kern *EBPF, dst netip.Addr, port uint16) Verdict {
		t.Helper()
		idx, _ := ifindexIn(nsPath, "na")
		return egressSYN(t, kern, nsPath, idx, dst, port+40000, port)
	}
	kern, cfg := newEBPF(t, nsPath)
	if err := kern.Apply(ctx, rev(1, false)); err != nil {
		t.Fatal(err)
	}
	if err := kern.Attach(ctx, Endpoint{ID: "a", Interface: "na"}); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	if err := kern.Learn(ctx, []LearnedAddr{{Endpoint: "a", Addr: restarted, Name: "n3.example", Expires: exp}}); err != nil {
		t.Fatal(err)
	}
	kern.Close()
	kern2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer kern2.Close()
	if err := kern2.Attach(ctx, Endpoint{ID: "a", Interface: "na"}); err != nil {
		t.Fatal(err)
	}
	if err := kern2.Apply(ctx, rev(2, false)); err != nil {
		t.Fatal(err)
	}
	if err := kern2.Learn(ctx, []LearnedAddr{{Endpoint: "a", Addr: old, Name: "n3.example", Expires: exp}}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{old, restarted} {
		if syn(kern2, a, 1003) != Allow {
			t.Fatalf("%s: the n3.example rule does not allow its own answer", a)
		}
	}
	if err := kern2.Apply(ctx, rev(3, true)); err != nil {
		t.Fatal(err)
	}
	if got := kern2.fq.activeSlots()[kern2.attached["a"].ifindex][3].Patterns; len(got) != 1 || got[0] != "other.example" {
		t.Fatalf("slot 3 holds %v, want other.example (the test needs the slot reused)", got)
	}
	for _, a := range []netip.Addr{old, restarted} {
		if v := syn(kern2, a, 2000); v != Deny {
			t.Errorf("%s, learned for n3.example: allowed by the other.example rule that reused its slot", a)
		}
	}
}
