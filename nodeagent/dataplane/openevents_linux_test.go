package dataplane

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// TestOpenFlowsAreReportedOncePerFlow: a new flow into an endpoint no
// policy selects raises one verdict event (allowed, no rule, "open") in
// the kernel and in the twin, so flow logs and policy recommendation see
// all traffic; the flow's next packet, matched by conntrack, raises none.
func TestOpenFlowsAreReportedOncePerFlow(t *testing.T) {
	requireKernel(t)
	ns, nsPath := newNetNS(t)
	run(t, "ip", "-n", ns, "link", "add", "ov0", "type", "veth", "peer", "name", "pov0")
	run(t, "ip", "-n", ns, "link", "set", "ov0", "up")
	ipc := NewIPCacheBuilder(IPCache{})
	ipc.Set(netip.MustParsePrefix("198.18.0.1/32"), 300)
	ipc.Set(netip.MustParsePrefix("198.18.0.2/32"), 301)
	rev := &Revision{Number: 1, IPCache: ipc.IPCache(), Rules: map[string]policy.EndpointRules{"c/shop/web": {Identity: 300}}}
	ctx := context.Background()
	kern, _ := newEBPF(t, nsPath)
	mem := NewMemory(WithIfindexResolver(func(iface string) (uint32, error) { return ifindexIn(nsPath, iface) }))
	for _, dp := range []Dataplane{kern, mem} {
		if err := dp.Attach(ctx, Endpoint{ID: "c/shop/web", Interface: "ov0"}); err != nil {
			t.Fatal(err)
		}
		if err := dp.Apply(ctx, rev); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := ifindexIn(nsPath, "ov0")
	if err != nil {
		t.Fatal(err)
	}
	send := func(flags uint8) {
		t.Helper()
		p := pktSpec{src: netip.MustParseAddr("198.18.0.2"), dst: netip.MustParseAddr("198.18.0.1"), proto: protoTCP,
			sport: 40001, dport: 8080, tcpFlags: flags}
		if err := inNetNS(nsPath, func() error {
			_, err := kern.runProg(uint8(policy.Ingress), idx, p.frame())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := mem.Process("c/shop/web", policy.Ingress, p.frame()); err != nil {
			t.Fatal(err)
		}
	}
	send(2) // SYN: a new flow
	for name, dp := range map[string]Dataplane{"kernel": kern, "memory": mem} {
		ev := waitEvent(t, dp, 8080)
		if ev.Verdict != Allow || ev.Reason != ReasonAllowOpen || ev.Rule != 0 || ev.SrcIdentity != 301 || ev.DstIdentity != 300 {
			t.Errorf("%s: event %+v, want an allowed open-direction event from identity 301 to 300 without a rule", name, ev)
		}
	}
	send(0x10) // ACK of the same flow: conntrack, no event
	for name, dp := range map[string]Dataplane{"kernel": kern, "memory": mem} {
		select {
		case ev := <-dp.Events():
			t.Errorf("%s: a packet of an established flow raised %+v", name, ev)
		case <-time.After(300 * time.Millisecond):
		}
	}
}
