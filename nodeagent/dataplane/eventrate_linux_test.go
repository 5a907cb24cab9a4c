package dataplane

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// TestEventTokensLimitBurstsAndRefill: verdict events of one CPU stop after
// EventsBurst in a burst of denied packets and come back, EventsBurst
// again, once the tokens have refilled.
func TestEventTokensLimitBurstsAndRefill(t *testing.T) {
	requireKernel(t)
	ns, nsPath := newNetNS(t)
	run(t, "ip", "-n", ns, "link", "add", "er0", "type", "veth", "peer", "name", "per0")
	run(t, "ip", "-n", ns, "link", "set", "er0", "up")
	const burst, packets = 5, 20
	dp, _ := newEBPFWith(t, Config{NetNS: nsPath, EventsPerSecond: 1000, EventsBurst: burst})
	ctx := context.Background()
	if err := dp.Attach(ctx, Endpoint{ID: "ep", Interface: "er0"}); err != nil {
		t.Fatal(err)
	}
	rev := &Revision{Number: 1, Rules: map[string]policy.EndpointRules{"ep": {Identity: 1,
		Ingress: policy.DirectionRules{Enforced: true}}}}
	if err := dp.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	idx, err := ifindexIn(nsPath, "er0")
	if err != nil {
		t.Fatal(err)
	}
	frame := pktSpec{src: netip.MustParseAddr("198.18.0.2"), dst: netip.MustParseAddr("198.18.0.1"), proto: protoTCP,
		sport: 40000, dport: 4242, tcpFlags: 2}.frame()
	// batch runs the denied packet packets times in one call, on CPU 0 (the
	// buckets are per CPU), and counts the events that come out.
	batch := func() int {
		err := inNetNS(nsPath, func() error {
			var cpu0 unix.CPUSet
			cpu0.Set(0)
			if err := unix.SchedSetaffinity(0, &cpu0); err != nil {
				return err
			}
			ret, err := dp.coll.Programs["fm_to_pod"].Run(&ebpf.RunOptions{Data: frame, Context: skbCtx{Ifindex: idx},
				Repeat: packets})
			if err == nil && int32(ret) != 2 {
				t.Errorf("program returned %d, want the packet dropped", int32(ret))
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			select {
			case ev := <-dp.Events():
				if ev.DstPort == 4242 {
					n++
				}
			case <-time.After(300 * time.Millisecond):
				return n
			}
		}
	}
	// A tick of the packet clock may pass inside a batch and refill up to
	// a tick's worth of tokens (at most 4 ms at 1,000 a second).
	for i := range 2 {
		if n := batch(); n < burst || n > burst+4 {
			t.Fatalf("batch %d: %d events of %d denied packets, want the burst of %d (+4 at most)", i, n, packets, burst)
		}
	}
}
