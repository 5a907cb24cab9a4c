package dataplane

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/federation/policy"
)

// iperf3 throughput pod -> pod across veths and a bridge in a node netns,
// without and with the fedmesh programs, in the same run.
const (
	iperfPort    = 5201
	iperfSeconds = 2 // per measurement
	iperfRounds  = 3 // baseline/fedmesh pairs, alternated to spread noise
)

// requireIperf3 fails (CI=true) or skips when iperf3 or nsenter is missing.
func requireIperf3(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"iperf3", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s required in CI (apt-get install -y iperf3 util-linux)", bin)
			}
			t.Skipf("%s missing: apt-get install -y iperf3 util-linux", bin)
		}
	}
}

// startIperfServer runs iperf3 -s inside the pod's netns until cleanup.
func startIperfServer(t testing.TB, p pod) {
	t.Helper()
	cmd := exec.Command("nsenter", "--net="+p.path, "iperf3", "-s", "-p", fmt.Sprint(iperfPort))
	if err := cmd.Start(); err != nil {
		t.Fatalf("start iperf3 server in %s: %v", p.ns, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
}

// iperfResult is the part of `iperf3 -J` client output the benchmark reads.
type iperfResult struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperfClient runs one TCP measurement from one pod to another over the
// given address family (4 or 6) and returns the receiver's bits/s. The
// server may still be starting, so a refused connection is retried for a
// few seconds.
func iperfClient(from, to pod, family int) (float64, error) {
	addr := to.v4
	if family == 6 {
		addr = to.v6
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := exec.Command("nsenter", "--net="+from.path, "iperf3", "-c", addr.String(),
			"-p", fmt.Sprint(iperfPort), "-t", fmt.Sprint(iperfSeconds), "-J").Output()
		var res iperfResult
		if jerr := json.Unmarshal(out, &res); jerr != nil {
			return 0, fmt.Errorf("parse iperf3 output (%v): %w: %s", err, jerr, out)
		}
		switch {
		case res.Error == "" && err == nil && res.End.SumReceived.BitsPerSecond > 0:
			return res.End.SumReceived.BitsPerSecond, nil
		case strings.Contains(res.Error, "unable to connect") && time.Now().Before(deadline):
			time.Sleep(100 * time.Millisecond)
			continue
		}
		return 0, fmt.Errorf("iperf3 %s -> %s: %v: %s", from.ns, to.ns, err, res.Error)
	}
}

// throughputRevision has 100k ipcache entries (10.0.0.0/8 /32s, never sent
// to) plus the pods, and on each guarded endpoint 10k identity rules per
// direction, one of which lets the other pod's iperf3 flow through.
func throughputRevision(guarded []pod) *Revision {
	rev := &Revision{Number: 1, Rules: map[string]policy.EndpointRules{}}
	ipc := NewIPCacheBuilder(IPCache{})
	for i := range 100_000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		ipc.Set(netip.PrefixFrom(a, 32), uint32(1000+i%20_000))
	}
	for _, p := range guarded {
		ipc.Set(netip.PrefixFrom(p.v4, 32), p.identity)
		ipc.Set(netip.PrefixFrom(p.v6, 128), p.identity)
	}
	rev.IPCache = ipc.IPCache()
	rules := func(peer uint32) policy.DirectionRules {
		dr := policy.DirectionRules{Enforced: true}
		for i := range 10_000 - 1 {
			port := uint16(1 + i%60000)
			dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: uint32(1000 + i), Proto: protoTCP,
				Ports: policy.PortRange{First: port, Last: port}, Rule: policy.RuleID(i + 1)})
		}
		dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: peer, Proto: protoTCP,
			Ports: policy.PortRange{First: iperfPort, Last: iperfPort}, Rule: 10_000})
		return dr
	}
	client, server := guarded[0], guarded[1]
	rev.Rules[client.id] = policy.EndpointRules{Identity: client.identity,
		Egress: rules(server.identity), Ingress: policy.DirectionRules{Enforced: true}}
	rev.Rules[server.id] = policy.EndpointRules{Identity: server.identity,
		Ingress: rules(client.identity), Egress: policy.DirectionRules{Enforced: true}}
	return rev
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkIperf3Throughput measures TCP throughput between two pods whose
// host veths carry no program (baseline) and between two pods guarded by
// fedmesh with 10k rules per direction and 100k ipcache entries (both
// directions enforced; the flow is allowed by policy, then by conntrack).
// Both pairs share one node netns and bridge; measurements alternate so
// machine noise hits both. Target: fedmesh/baseline >= 0.95.
func BenchmarkIperf3Throughput(b *testing.B) {
	requireKernel(b)
	requireIperf3(b)
	pn := newPodNet(b, 4)
	base := pn.pods[0:2]
	guarded := pn.pods[2:4]
	dp, _ := newEBPF(b, pn.host)
	ctx := context.Background()
	for _, p := range guarded {
		if err := dp.Attach(ctx, Endpoint{ID: p.id, Interface: p.hostIface}); err != nil {
			b.Fatal(err)
		}
	}
	if err := dp.Apply(ctx, throughputRevision(guarded)); err != nil {
		b.Fatal(err)
	}
	startIperfServer(b, base[1])
	startIperfServer(b, guarded[1])

	// Both families over the same programs and rules (IPv6 beside IPv4, as
	// the dual-stack lab runs them).
	for _, family := range []int{4, 6} {
		b.Run(fmt.Sprintf("IPv%d", family), func(b *testing.B) {
			before, err := dp.Counters(ctx)
			if err != nil {
				b.Fatal(err)
			}
			var baseBps, fmBps, ratios []float64
			b.ResetTimer()
			for range b.N {
				for range iperfRounds {
					bb, err := iperfClient(base[0], base[1], family)
					if err != nil {
						b.Fatal(err)
					}
					fb, err := iperfClient(guarded[0], guarded[1], family)
					if err != nil {
						b.Fatal(err)
					}
					baseBps, fmBps, ratios = append(baseBps, bb), append(fmBps, fb), append(ratios, fb/bb)
				}
			}
			b.StopTimer()
			// The flow must really have crossed the programs: its first
			// packets were allowed by the iperf3 rule during this run.
			after, err := dp.Counters(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if after.Rules[10_000].Packets <= before.Rules[10_000].Packets {
				b.Fatalf("the iperf3 rule never matched over IPv%d: the guarded flow bypassed the programs (counters %+v)", family, after.Rules)
			}
			b.ReportMetric(median(baseBps), "baseline-bits/s")
			b.ReportMetric(median(fmBps), "fedmesh-bits/s")
			b.ReportMetric(median(ratios), "ratio")
		})
	}
}
