package bgp

import (
	"bufio"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// fibEvents follows a namespace's IPv4 FIB (ip monitor) and hands each
// change to whoever waits: "+prefix" when added, "-prefix" when deleted.
func fibEvents(b testing.TB, n ns) chan string {
	b.Helper()
	cmd := exec.Command("ip", "netns", "exec", string(n), "ip", "-4", "monitor", "route")
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("ip monitor route: %v", err)
	}
	d := &daemon{name: "ip monitor", cmd: cmd, done: make(chan struct{})}
	b.Cleanup(d.Stop)
	ch := make(chan string, 256)
	go func() {
		defer close(d.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) > 1 && f[0] == "Deleted":
				ch <- "-" + f[1]
			case len(f) > 0:
				ch <- "+" + f[0]
			}
		}
		_ = cmd.Wait()
	}()
	// ip monitor subscribes a moment after it starts: a route added
	// before then is never seen. Wait until a probe route is.
	n.run(b, "ip", "route", "add", "blackhole", "192.0.2.255/32")
	awaitFIB(b, ch, "+blackhole")
	n.run(b, "ip", "route", "del", "blackhole", "192.0.2.255/32")
	return ch
}

func awaitFIB(b testing.TB, ch chan string, event string) {
	b.Helper()
	timeout := time.After(30 * time.Second)
	var seen []string
	for {
		select {
		case e := <-ch:
			seen = append(seen, e)
			if e == event {
				return
			}
		case <-timeout:
			b.Fatalf("no FIB event %s at the ToR after 30s (saw %v)", event, seen)
		}
	}
}

const serviceTrials = 20

// BenchmarkServiceBackendReadyToToRFIB times a Service's load-balancer IP
// (externalTrafficPolicy Local) following its backend on a node: from the
// node's view of the backend changing (ready, then not ready) through the
// agent's steps (Resolve with the new ServiceAdvertisement, Apply to the
// speaker) until the /32 is added to, then deleted from, the ToR's kernel
// FIB (BIRD learns the UPDATE over an established eBGP session; ip
// monitor, not polling). 20 trials of each per iteration. In the same run,
// the baseline: a BIRD node on the same ToR announcing and withdrawing a
// /32 (its static protocol enabled and disabled through birdc). Reported:
// p50 and p99 of appear and disappear (ms; target p99 < 1000) and x-bird,
// the ratio of the appear p50s. The control plane's part (syncer write to
// the agent's watch) is not in it.
func BenchmarkServiceBackendReadyToToRFIB(b *testing.B) {
	const baseIP = "203.0.113.99"
	l := newSvcLab(b, 2)
	svcBird(b, l)
	ready := func(nodes ...string) Desired {
		return svcDesired(b, 0, lbService("local", lbLocal, true, nodes...))
	}
	sp := startSpeaker(b, l.nodes[0], ready())
	torAddr, _ := svcNodeAddrs(0)
	eventually(b, 30*time.Second, "session", established(sp, b, torAddr))
	// The baseline node (n2) runs BIRD with the same ASN.
	tor2, n2 := svcNodeAddrs(1)
	base := startBird(b, l.nodes[1], "router id "+n2+";\nprotocol device { }\n"+
		"protocol static svc { ipv4; route "+baseIP+"/32 blackhole; }\n"+
		birdSession("tor", n2, svcNodeASN, tor2, torASN, "", `ipv4 { import none; export where proto = "svc"; }`))
	if out, err := base.cli("disable", "svc"); err != nil {
		b.Fatalf("disable: %v %s", err, out)
	}
	eventually(b, 30*time.Second, "baseline session", birdEstablished(base, "tor", true))
	fib := fibEvents(b, l.tor)
	var up, down, baseUp, baseDown []time.Duration
	b.ResetTimer()
	for range b.N {
		for range serviceTrials {
			start := time.Now()
			if r := sp.call(b, "apply", ready("n1")); r.Error != "" {
				b.Fatal(r.Error)
			}
			awaitFIB(b, fib, "+"+lbLocal)
			up = append(up, time.Since(start))
			start = time.Now()
			if r := sp.call(b, "apply", ready()); r.Error != "" {
				b.Fatal(r.Error)
			}
			awaitFIB(b, fib, "-"+lbLocal)
			down = append(down, time.Since(start))

			start = time.Now()
			if out, err := base.cli("enable", "svc"); err != nil {
				b.Fatalf("enable: %v %s", err, out)
			}
			awaitFIB(b, fib, "+"+baseIP)
			baseUp = append(baseUp, time.Since(start))
			start = time.Now()
			if out, err := base.cli("disable", "svc"); err != nil {
				b.Fatalf("disable: %v %s", err, out)
			}
			awaitFIB(b, fib, "-"+baseIP)
			baseDown = append(baseDown, time.Since(start))
		}
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(percentile(up, 50)), "ready-p50-ms")
	b.ReportMetric(ms(percentile(up, 99)), "ready-p99-ms")
	b.ReportMetric(ms(percentile(down, 50)), "unready-p50-ms")
	b.ReportMetric(ms(percentile(down, 99)), "unready-p99-ms")
	b.ReportMetric(ms(percentile(baseUp, 50)), "bird-up-p50-ms")
	b.ReportMetric(ms(percentile(baseDown, 50)), "bird-down-p50-ms")
	b.ReportMetric(float64(percentile(up, 50))/float64(percentile(baseUp, 50)), "x-bird")
}
