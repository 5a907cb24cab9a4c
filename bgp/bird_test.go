package bgp

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// birdToR writes the ToR config: eBGP with the node over IPv4 and IPv6,
// routes exported to the kernel FIB, fast timers so tests run in seconds.
func birdToR(password string) string {
	pw := ""
	if password != "" {
		pw = fmt.Sprintf("  password %q;\n", password)
	}
	session := func(name, local, neighbor, family string) string {
		return fmt.Sprintf(`protocol bgp %s {
  local %s as %d;
  neighbor %s as %d;
  hold time 9;
  connect retry time 1;
  error wait time 1, 5;
  graceful restart on;
%s  %s { import all; export none; };
}
`, name, local, torASN, neighbor, nodeASN, pw, family)
	}
	return `router id 198.18.0.1;
protocol device { scan time 1; }
protocol kernel k4 { ipv4 { export all; import none; }; }
protocol kernel k6 { ipv6 { export all; import none; }; }
` + session("node4", torV4, nodeV4, "ipv4") + session("node6", torV6, nodeV6, "ipv6")
}

func nodeDesired(password string) Desired {
	return Desired{
		LocalASN:        nodeASN,
		RouterID:        netip.MustParseAddr(nodeV4),
		GracefulRestart: GracefulRestart{RestartTime: 60 * time.Second, DeferralTime: 5 * time.Second},
		Peers: []Peer{
			{Address: netip.MustParseAddr(torV4), ASN: torASN, Password: password, HoldTime: 9 * time.Second},
			{Address: netip.MustParseAddr(torV6), ASN: torASN, Password: password, HoldTime: 9 * time.Second},
		},
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix(podCIDR4), netip.MustParsePrefix(podCIDR6)},
		Prefixes: []Prefix{{CIDR: netip.MustParsePrefix(podCIDR4)}, {CIDR: netip.MustParsePrefix(podCIDR6)}},
	}
}

// birdHas reports "" when BIRD's table holds prefix (want) or not (!want).
func birdHas(t testing.TB, b *bird, prefix string, want bool) func() string {
	return func() string {
		out, err := b.cli("show", "route", prefix)
		if err != nil && !strings.Contains(out, "Network not found") {
			return fmt.Sprintf("%v: %s", err, out)
		}
		has := strings.Contains(out, prefix)
		if has != want {
			return fmt.Sprintf("birdc show route for %s: %s", prefix, out)
		}
		return ""
	}
}

func fibHas(t testing.TB, n ns, prefix string, want bool) func() string {
	return func() string {
		r := n.fib(t, prefix)
		if (r != "") != want {
			return fmt.Sprintf("ToR FIB for %s: %q", prefix, r)
		}
		return ""
	}
}

func pingable(n ns, dst string) func() string {
	return func() string {
		if err := n.ping(dst); err != nil {
			return fmt.Sprintf("ping %s: %v", dst, err)
		}
		return ""
	}
}

func TestBIRDLearnsPodCIDRsOverIPv4AndIPv6(t *testing.T) {
	l := newLab(t)
	b := startBird(t, l.tor, birdToR(""))
	sp := startSpeaker(t, l.node, nodeDesired(""))

	eventually(t, 30*time.Second, "sessions established", established(sp, t, torV4, torV6))
	for _, p := range []string{podCIDR4, podCIDR6} {
		eventually(t, 10*time.Second, "BIRD holds "+p, birdHas(t, b, p, true))
		eventually(t, 10*time.Second, "ToR FIB holds "+p, fibHas(t, l.tor, p, true))
	}
	if r := l.tor.fib(t, podCIDR4); !strings.Contains(r, "via "+nodeV4) {
		t.Errorf("ToR routes %s via %q, want the node %s", podCIDR4, r, nodeV4)
	}
	eventually(t, 10*time.Second, "pod reachable over IPv4 from behind the ToR", pingable(l.host, podV4))
	eventually(t, 10*time.Second, "pod reachable over IPv6 from behind the ToR", pingable(l.host, podV6))

	st, _ := statusOf(sp.status(t), torV4)
	if st.PrefixesSent != 1 || st.ASN != torASN {
		t.Errorf("status of %s = %+v, want 1 prefix sent", torV4, st)
	}
	// A no-op reconcile against the live server does nothing.
	if r := sp.call(t, "apply", nodeDesired("")); r.Error != "" || r.Actions != 0 {
		t.Errorf("re-applying the same state: %+v, want 0 actions", r)
	}

	// Communities and large communities reach the router.
	d := nodeDesired("")
	d.Prefixes[0].Communities = []Community{65000<<16 | 100}
	d.Prefixes[0].LargeCommunities = []LargeCommunity{{Global: nodeASN, Local1: 1, Local2: 2}}
	if r := sp.call(t, "apply", d); r.Error != "" || r.Actions != 1 {
		t.Fatalf("attach communities: %+v, want one add-path", r)
	}
	eventually(t, 10*time.Second, "BIRD sees the communities", func() string {
		out, err := b.cli("show", "route", "all", podCIDR4)
		if err != nil || !strings.Contains(out, "(65000,100)") || !strings.Contains(out, fmt.Sprintf("(%d, 1, 2)", nodeASN)) {
			return fmt.Sprintf("%v: %s", err, out)
		}
		return ""
	})
}

func TestBIRDWithdrawsOnUnhealthyAndOnRemoval(t *testing.T) {
	l := newLab(t)
	b := startBird(t, l.tor, birdToR(""))
	sp := startSpeaker(t, l.node, nodeDesired(""))
	eventually(t, 30*time.Second, "BIRD holds the pod CIDR", birdHas(t, b, podCIDR4, true))

	if r := sp.call(t, "healthy", false); r.Error != "" || r.Actions != 2 {
		t.Fatalf("set unhealthy: %+v", r)
	}
	eventually(t, 10*time.Second, "withdrawn from BIRD while unhealthy", birdHas(t, b, podCIDR4, false))
	eventually(t, 10*time.Second, "withdrawn from the ToR FIB while unhealthy", fibHas(t, l.tor, podCIDR4, false))
	eventually(t, 10*time.Second, "IPv6 withdrawn while unhealthy", birdHas(t, b, podCIDR6, false))
	if st, _ := statusOf(sp.status(t), torV4); st.State != StateEstablished {
		t.Errorf("session dropped while unhealthy: %+v", st)
	}

	if r := sp.call(t, "healthy", true); r.Error != "" || r.Actions != 2 {
		t.Fatalf("set healthy: %+v", r)
	}
	eventually(t, 10*time.Second, "re-advertised when healthy", birdHas(t, b, podCIDR4, true))
	eventually(t, 10*time.Second, "back in the ToR FIB", fibHas(t, l.tor, podCIDR4, true))

	d := nodeDesired("")
	d.Prefixes = d.Prefixes[1:]
	if r := sp.call(t, "apply", d); r.Error != "" || r.Actions != 1 {
		t.Fatalf("remove the IPv4 prefix: %+v", r)
	}
	eventually(t, 10*time.Second, "withdrawn on removal", birdHas(t, b, podCIDR4, false))
	eventually(t, 10*time.Second, "other family untouched", birdHas(t, b, podCIDR6, true))
}

func TestGracefulRestartKeepsRouteInToRDuringSpeakerRestart(t *testing.T) {
	l := newLab(t)
	b := startBird(t, l.tor, birdToR(""))
	sp := startSpeaker(t, l.node, nodeDesired(""))
	eventually(t, 30*time.Second, "ToR FIB holds the pod CIDR", fibHas(t, l.tor, podCIDR4, true))
	eventually(t, 10*time.Second, "pod reachable", pingable(l.host, podV4))

	sp.Stop() // SIGKILL: the agent dies without a word
	// The session is gone, but BIRD keeps the route as stale and traffic flows.
	eventually(t, 10*time.Second, "BIRD notices the restart", func() string {
		out, _ := b.cli("show", "protocols", "node4")
		if strings.Contains(out, "Established") {
			return out
		}
		return ""
	})
	for i := range 5 {
		if err := l.host.ping(podV4); err != nil {
			t.Fatalf("ping %d after SIGKILL: %v", i, err)
		}
		if r := l.tor.fib(t, podCIDR4); r == "" {
			t.Fatalf("ToR dropped the route %d s after the speaker died", i)
		}
		time.Sleep(time.Second)
	}
	out, _ := b.cli("show", "route", podCIDR4, "all")
	t.Logf("BIRD during restart:\n%s", out)

	sp2 := startSpeaker(t, l.node, nodeDesired(""))
	eventually(t, 30*time.Second, "session re-established", established(sp2, t, torV4, torV6))
	eventually(t, 20*time.Second, "route refreshed (not stale) in BIRD", func() string {
		out, _ := b.cli("show", "route", podCIDR4, "all")
		if !strings.Contains(out, podCIDR4) || strings.Contains(out, "stale") {
			return out
		}
		return ""
	})
	// The restarted speaker's End-of-RIB must not flush the route: it was
	// re-advertised before the marker.
	time.Sleep(2 * time.Second)
	if r := l.tor.fib(t, podCIDR4); r == "" {
		t.Fatal("ToR lost the route after the restarted speaker's End-of-RIB")
	}
	if err := l.host.ping(podV4); err != nil {
		t.Fatalf("ping after restart: %v", err)
	}
}

// A deliberate stop (the agent's SIGTERM, a node leaving) must not leave the
// ToR forwarding to a node that is gone for the restart time: the speaker
// sends CEASE, which ends graceful restart, and the ToR withdraws at once.
func TestDeliberateStopWithdrawsAtOnceDespiteGracefulRestart(t *testing.T) {
	l := newLab(t)
	// BIRD traces the routes it imports and removes, so the test can see
	// how our routes left: by an UPDATE, or only with the session.
	conf := "log stderr all;\n" + strings.ReplaceAll(birdToR(""), "graceful restart on;", "graceful restart on;\n  debug { states, events, routes, packets };")
	b := startBird(t, l.tor, conf)
	sp := startSpeaker(t, l.node, nodeDesired(""))
	eventually(t, 30*time.Second, "ToR FIB holds the pod CIDR", fibHas(t, l.tor, podCIDR4, true))
	// Stop a synced speaker, as an agent is stopped in practice: once both
	// sessions delivered their End-of-RIB no UPDATE is left queued that
	// could pass for the withdrawal.
	eventually(t, 10*time.Second, "End-of-RIB on both sessions", func() string {
		lg := birdLog(t, b)
		for _, proto := range []string{"node4", "node6"} {
			if !strings.Contains(lg, proto+": Got END-OF-RIB") {
				return lg
			}
		}
		return ""
	})

	if r := sp.call(t, "stop", nil); r.Error != "" {
		t.Fatalf("stop: %s", r.Error)
	}
	// Well inside the 60 s restart time the ToR would keep a stale route for.
	eventually(t, 5*time.Second, "withdrawn from BIRD", birdHas(t, b, podCIDR4, false))
	eventually(t, 5*time.Second, "withdrawn from the ToR FIB", fibHas(t, l.tor, podCIDR4, false))
	eventually(t, 5*time.Second, "IPv6 withdrawn", birdHas(t, b, podCIDR6, false))

	// Withdrawn by an UPDATE before the session ended, so a CEASE that never
	// arrives (the ToR then sees a restart) cannot leave a stale route.
	eventually(t, 5*time.Second, "sessions ended in BIRD's log", func() string {
		lg := birdLog(t, b)
		if strings.Count(lg, "Received: Peer de-configured") < 2 {
			return lg
		}
		return ""
	})
	lg := birdLog(t, b)
	for _, c := range []struct{ proto, channel, prefix string }{{"node4", "ipv4", podCIDR4}, {"node6", "ipv6", podCIDR6}} {
		removed := strings.Index(lg, c.proto+"."+c.channel+" > removed [sole] "+c.prefix)
		ended := strings.Index(lg, c.proto+": Received: Peer de-configured")
		if removed < 0 || ended < 0 || removed > ended {
			t.Errorf("%s: BIRD must remove %s on an UPDATE before the CEASE (removed at %d, CEASE at %d in the log):\n%s", c.proto, c.prefix, removed, ended, lg)
		}
	}
}

// birdLog is what BIRD has logged so far.
func birdLog(t testing.TB, b *bird) string {
	t.Helper()
	lg, err := os.ReadFile(filepath.Join(filepath.Dir(b.sock), "bird.log"))
	if err != nil {
		t.Fatalf("read BIRD's log: %v", err)
	}
	return string(lg)
}

func TestMD5SessionComesUpOnlyWithTheRightPassword(t *testing.T) {
	l := newLab(t)
	b := startBird(t, l.tor, birdToR("tor-secret"))

	wrong := startSpeaker(t, l.node, nodeDesired("not-the-secret"))
	time.Sleep(6 * time.Second) // several connect attempts from both sides
	for _, s := range wrong.status(t) {
		if s.State == StateEstablished {
			t.Fatalf("session with a wrong MD5 key came up: %+v", s)
		}
	}
	if out, _ := b.cli("show", "route", podCIDR4); strings.Contains(out, podCIDR4) {
		t.Fatalf("BIRD learned the route over a wrong key: %s", out)
	}
	wrong.Stop()

	right := startSpeaker(t, l.node, nodeDesired("tor-secret"))
	eventually(t, 30*time.Second, "MD5 sessions established", established(right, t, torV4, torV6))
	eventually(t, 10*time.Second, "BIRD holds the pod CIDR", birdHas(t, b, podCIDR4, true))
}

func TestSpeakerSurvivesToRDeathAndGarbage(t *testing.T) {
	l := newLab(t)
	b := startBird(t, l.tor, birdToR(""))
	sp := startSpeaker(t, l.node, nodeDesired(""))
	eventually(t, 30*time.Second, "sessions established", established(sp, t, torV4, torV6))

	b.Stop() // the ToR dies mid-session
	eventually(t, 20*time.Second, "speaker sees the session drop with a reason", func() string {
		st, _ := statusOf(sp.status(t), torV4)
		if st.State == StateEstablished || st.LastError == "" {
			return fmt.Sprintf("%+v", st)
		}
		return ""
	})
	t.Logf("last error after ToR death: %q", func() string { st, _ := statusOf(sp.status(t), torV4); return st.LastError }())

	// Garbage from the ToR's address on the BGP port, then a half OPEN.
	for _, payload := range []string{"GET / HTTP/1.0\\r\\n\\r\\n", "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\x13\\x09"} {
		_, _ = l.tor.try("bash", "-c", fmt.Sprintf("printf '%s' > /dev/tcp/%s/179; sleep 0.2", payload, nodeV4))
	}
	if !sp.Alive() {
		t.Fatal("speaker died after garbage")
	}

	b2 := startBird(t, l.tor, birdToR(""))
	eventually(t, 30*time.Second, "sessions re-established with the restarted ToR", established(sp, t, torV4, torV6))
	eventually(t, 10*time.Second, "the new ToR learns the pod CIDR", birdHas(t, b2, podCIDR4, true))
}
