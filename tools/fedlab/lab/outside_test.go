package lab

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestOutsideZoneCoversEveryCaseTheTestsNeed(t *testing.T) {
	seen := map[netip.Addr]string{}
	for _, n := range OutsideNames {
		if n.CNAME != "" && (n.A.IsValid() || n.AAAA.IsValid()) {
			t.Errorf("%s: a CNAME owner has no other data", n.Name)
		}
		for _, a := range []netip.Addr{n.A, n.AAAA} {
			if !a.IsValid() {
				continue
			}
			if !OutsideNet.Contains(a) && !OutsideNet6.Contains(a) {
				t.Errorf("%s: %s outside the outside's prefixes", n.Name, a)
			}
			if other, dup := seen[a]; dup {
				t.Errorf("%s and %s share %s: reaching it would not say which name was learned", n.Name, other, a)
			}
			seen[a] = n.Name
		}
	}
	for _, name := range []string{"allowed", "denied", "alias", "end", "wild", "one.wild", "two.deep.wild", "*.wild", "short", "tcp", "six", "long", "brief", "after", "other"} {
		if _, ok := LookupOutside(name + "." + OutsideZone + "."); !ok {
			t.Errorf("no %s in the zone", name)
		}
	}
	for _, n := range []string{"short", "brief"} {
		if e, _ := LookupOutside(n); e.TTL != 2 || AgentMinTTL.Seconds() >= 2 {
			t.Errorf("%s: TTL %d with the agents' floor %s: want 2 s above the floor", n, e.TTL, AgentMinTTL)
		}
	}
	if seen[OutsideDNS] != "" || seen[OutsideDNS6] != "" {
		t.Errorf("unbound's address is a name's address too")
	}
}

func TestOutsideIsRoutedThroughEveryToRAndDisjointFromTheLab(t *testing.T) {
	topo, err := Plan(Config{Name: "fl", Clusters: 3, Nodes: 2, Pods: 1})
	if err != nil {
		t.Fatal(err)
	}
	underlay := netip.MustParsePrefix("198.18.0.0/15")
	for _, p := range []netip.Prefix{OutsideNet, topo.Outside.Addr} {
		if !underlay.Contains(p.Addr()) {
			t.Errorf("%s is outside the lab underlay %s", p, underlay)
		}
	}
	steps := strings.Join(func() []string {
		var out []string
		for _, s := range outsideSteps(topo) {
			out = append(out, strings.Join(s, " "))
		}
		return out
	}(), "\n")
	for _, c := range topo.Clusters {
		for _, p := range c.PodCIDRs() {
			if p.Overlaps(OutsideNet) || p.Overlaps(OutsideNet6) {
				t.Errorf("%s pod CIDR %s overlaps the outside", c.Name, p)
			}
		}
		for _, want := range []string{
			"-n fl-tor" + string(rune('0'+c.Index)) + " route add 198.19.0.0/24 via 198.18.0.200",
			"-n fl-tor" + string(rune('0'+c.Index)) + " -6 route add fd00:198:19::/64 via fd00:198:18::200",
			"-n fl-out route add " + c.PodCIDR.String() + " via " + c.ToR.Addr.Addr().String(),
			"-n fl-out -6 route add " + c.PodCIDR6.String() + " via " + c.CoreAddr6.Addr().String(),
			"-n fl-out route add " + c.RackAddr.Masked().String() + " via " + c.ToR.Addr.Addr().String(),
		} {
			if !strings.Contains(steps, want) {
				t.Errorf("no step %q", want)
			}
		}
	}
	if strings.Contains(steps, "default") {
		t.Errorf("the outside has a default route: it must reach nothing but the lab\n%s", steps)
	}
}

// The generated config passes unbound's own checker (unbound is in make
// deps' APT list; the zone itself is checked by the lab's first query).
func TestUnboundAcceptsTheOutsideConfig(t *testing.T) {
	check, err := exec.LookPath("unbound-checkconf")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("unbound-checkconf not installed (apt-get install unbound): %v", err)
		}
		t.Skipf("unbound-checkconf not installed (apt-get install unbound; fails when CI=true): %v", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, OutsideZone+".zone"), []byte(OutsideZoneFile()), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(conf, []byte(UnboundConfig(dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(check, conf).CombinedOutput(); err != nil {
		t.Fatalf("unbound-checkconf: %v\n%s", err, out)
	}
}
