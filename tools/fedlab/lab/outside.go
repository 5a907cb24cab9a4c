package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// The outside namespace is the world beyond the clusters, as far as the
// pods can tell: a real DNS server (Debian's unbound, authoritative for
// the test zone fedlab.test from a zone file, recursion to nowhere) and
// the servers its names resolve to, IPv4 and IPv6, all on the outside
// namespace's loopback. It hangs off the core bridge beside the ToRs; the
// ToRs route 198.19.0.0/24 and fd00:198:19::/64 to it and it routes the
// clusters' pod and rack prefixes back through each cluster's ToR, so a
// pod's packets to a name's address leave its node like any egress (the
// lab does no SNAT, as a routed CNI with routable pod addresses) and the
// agents' resolvers forward to it from their node's underlay address.
// Nothing routes between it and the root namespace.

// Outside is the outside namespace: its core address and what it serves.
type Outside struct {
	Host
}

// Addresses of the outside world.
var (
	// OutsideNet and OutsideNet6 hold every address the outside serves.
	OutsideNet  = netip.MustParsePrefix("198.19.0.0/24")
	OutsideNet6 = netip.MustParsePrefix("fd00:198:19::/64")
	// OutsideDNS is unbound's address, every agent's --dns-upstream.
	OutsideDNS  = netip.MustParseAddr("198.19.0.53")
	OutsideDNS6 = netip.MustParseAddr("fd00:198:19::53")
	// ClusterDNS are every lab cluster's DNS service addresses, as
	// kube-dns's ClusterIP (10.96.0.10 in the kube-apiserver's service
	// range). Nothing listens there: the agents redirect pods' queries to
	// it to their own resolver (--dns-redirect), so pods keep the cluster
	// DNS address as their nameserver, as on a real cluster. IPv4 only: a
	// socket is redirected within its family, and the agents' resolver
	// (--dns-listen, NodeDNS) is IPv4; the pods' IPv6 traffic is tested
	// with AAAA answers and IPv6 connections, over IPv4 DNS.
	ClusterDNS = []netip.Addr{netip.MustParseAddr("10.96.0.10")}
)

// OutsideTCPPort is where every outside address answers TCP (a greeting,
// then an echo of every line: fedlab probe and fedlab hold) and UDP (an
// echo); OutsideHTTPPort where it answers HTTP GET with the address and
// Host it was asked for.
const (
	OutsideTCPPort  = 8080
	OutsideHTTPPort = 80
)

// OutsideZone is the test zone unbound is authoritative for.
const OutsideZone = "fedlab.test"

// OutsideName is one name of the test zone.
type OutsideName struct {
	Name  string // relative to OutsideZone; "*.wild" is a DNS wildcard
	TTL   uint32
	A     netip.Addr // invalid: none
	AAAA  netip.Addr // invalid: none
	CNAME string     // relative target; set alone
}

// FQDN is the name with the zone, without the trailing dot.
func (n OutsideName) FQDN() string { return n.Name + "." + OutsideZone }

func out4(last byte) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 0, last}) }
func out6(last uint16) netip.Addr {
	return v6Last(last, 0xfd00, 0x198, 0x19)
}

// OutsideNames is the test zone: what each name is for says the test that
// uses it. Every address is distinct, so reaching one says which name it
// was learned for.
var OutsideNames = []OutsideName{
	// allowed: a name the tests' policy accepts; denied: one it does not.
	{Name: "allowed", TTL: 60, A: out4(10), AAAA: out6(0x10)},
	{Name: "denied", TTL: 60, A: out4(11), AAAA: out6(0x11)},
	// other: accepted for a different pod than allowed's.
	{Name: "other", TTL: 60, A: out4(13), AAAA: out6(0x13)},
	// A CNAME chain: alias -> mid -> end; the policy names only alias.
	{Name: "alias", TTL: 60, CNAME: "mid"},
	{Name: "mid", TTL: 60, CNAME: "end"},
	{Name: "end", TTL: 60, A: out4(12), AAAA: out6(0x12)},
	// The wildcard zone: *.wild.fedlab.test in a policy matches one and
	// two labels below wild, never wild itself. The DNS wildcard answers
	// every other name below it.
	{Name: "wild", TTL: 60, A: out4(23), AAAA: out6(0x23)},
	{Name: "one.wild", TTL: 60, A: out4(21), AAAA: out6(0x21)},
	{Name: "two.deep.wild", TTL: 60, A: out4(22), AAAA: out6(0x22)},
	{Name: "*.wild", TTL: 60, A: out4(24), AAAA: out6(0x24)},
	// short: a 2 s TTL, for expiry.
	{Name: "short", TTL: 2, A: out4(30), AAAA: out6(0x30)},
	// tcp: asked over TCP only.
	{Name: "tcp", TTL: 60, A: out4(31), AAAA: out6(0x31)},
	// six: asked for AAAA only.
	{Name: "six", TTL: 60, A: out4(40), AAAA: out6(0x40)},
	// long: learned before an agent restart, still valid after it.
	{Name: "long", TTL: 300, A: out4(50), AAAA: out6(0x50)},
	// brief: learned before an agent restart, expired while it is down.
	{Name: "brief", TTL: 2, A: out4(51), AAAA: out6(0x51)},
	// after: asked once the restarted agent answers again.
	{Name: "after", TTL: 60, A: out4(52), AAAA: out6(0x52)},
}

// LookupOutside returns the zone's entry for a name (relative or fully
// qualified).
func LookupOutside(name string) (OutsideName, bool) {
	name = strings.TrimSuffix(strings.TrimSuffix(strings.ToLower(name), "."), "."+OutsideZone)
	for _, n := range OutsideNames {
		if n.Name == name {
			return n, true
		}
	}
	return OutsideName{}, false
}

// OutsideAddrs lists every address the outside serves (unbound's and every
// name's), IPv4 first, sorted, each once.
func OutsideAddrs() []netip.Addr {
	seen := map[netip.Addr]bool{OutsideDNS: true, OutsideDNS6: true}
	for _, n := range OutsideNames {
		for _, a := range []netip.Addr{n.A, n.AAAA} {
			if a.IsValid() {
				seen[a] = true
			}
		}
	}
	out := make([]netip.Addr, 0, len(seen))
	for a := range seen {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

// OutsideZoneFile renders the zone file unbound serves (RFC 1035 master
// file). The SOA's minimum (the negative TTL) is 5 s so a name's absence
// is not remembered long.
func OutsideZoneFile() string {
	var b strings.Builder
	fmt.Fprintf(&b, "$ORIGIN %s.\n$TTL 60\n", OutsideZone)
	fmt.Fprintf(&b, "@ IN SOA ns.%[1]s. hostmaster.%[1]s. 1 3600 600 86400 5\n@ IN NS ns.%[1]s.\n", OutsideZone)
	fmt.Fprintf(&b, "ns IN A %s\nns IN AAAA %s\n", OutsideDNS, OutsideDNS6)
	for _, n := range OutsideNames {
		if n.CNAME != "" {
			fmt.Fprintf(&b, "%s %d IN CNAME %s\n", n.Name, n.TTL, n.CNAME)
			continue
		}
		if n.A.IsValid() {
			fmt.Fprintf(&b, "%s %d IN A %s\n", n.Name, n.TTL, n.A)
		}
		if n.AAAA.IsValid() {
			fmt.Fprintf(&b, "%s %d IN AAAA %s\n", n.Name, n.TTL, n.AAAA)
		}
	}
	return b.String()
}

// UnboundConfig renders unbound.conf for the outside namespace: an
// authoritative server for the test zone on OutsideDNS and OutsideDNS6,
// port 53, UDP and TCP, that refuses every other name (it has nowhere to
// recurse to and must not try: the lab has no route out).
func UnboundConfig(dir string) string {
	return fmt.Sprintf(`# fedlab outside DNS (unbound): authoritative for %[1]s only
server:
	interface: %[2]s
	interface: %[3]s
	port: 53
	do-ip4: yes
	do-ip6: yes
	do-udp: yes
	do-tcp: yes
	do-daemonize: no
	use-syslog: no
	logfile: ""
	log-queries: yes
	verbosity: 1
	chroot: ""
	username: ""
	directory: "%[4]s"
	pidfile: "%[4]s/unbound.pid"
	access-control: 0.0.0.0/0 allow
	access-control: ::/0 allow
	module-config: "iterator"
	# Every name outside the zone is refused here, before any recursion.
	local-zone: "." refuse
	local-zone: "%[1]s." transparent
	# Answers as they are: no prefetching or caching games.
	prefetch: no
	serve-expired: no
auth-zone:
	name: "%[1]s."
	zonefile: "%[4]s/%[1]s.zone"
	for-downstream: yes
	for-upstream: no
	fallback-enabled: no
remote-control:
	control-enable: no
`, OutsideZone, OutsideDNS, OutsideDNS6, dir)
}

// outsideSteps are the iproute2 steps that build the outside namespace and
// the routes between it and the clusters (after the core and the ToRs).
func outsideSteps(t *Topology) [][]string {
	o, core := t.Outside, t.Core
	steps := [][]string{
		{"-n", o.NS, "link", "add", "eth0", "type", "veth", "peer", "name", "out", "netns", core},
		{"-n", core, "link", "set", "out", "master", "br0", "up"},
		{"-n", o.NS, "addr", "add", o.Addr.String(), "dev", "eth0"},
		{"-n", o.NS, "addr", "add", o.Addr6.String(), "dev", "eth0", "nodad"},
		{"-n", o.NS, "link", "set", "eth0", "up"},
	}
	for _, a := range OutsideAddrs() {
		steps = append(steps, []string{"-n", o.NS, "addr", "add", netip.PrefixFrom(a, a.BitLen()).String(), "dev", "lo"})
	}
	for _, c := range t.Clusters {
		tor := c.ToR.NS
		steps = append(steps,
			[]string{"-n", tor, "addr", "add", c.CoreAddr6.String(), "dev", "core", "nodad"},
			[]string{"-n", tor, "route", "add", OutsideNet.String(), "via", o.Addr.Addr().String()},
			[]string{"-n", tor, "-6", "route", "add", OutsideNet6.String(), "via", o.Addr6.Addr().String()},
			// Back to the pods and the nodes (the agents' DNS upstream
			// queries come from their underlay address).
			[]string{"-n", o.NS, "route", "add", c.PodCIDR.String(), "via", c.ToR.Addr.Addr().String()},
			[]string{"-n", o.NS, "route", "add", rackNet(c).String(), "via", c.ToR.Addr.Addr().String()},
			[]string{"-n", o.NS, "-6", "route", "add", c.PodCIDR6.String(), "via", c.CoreAddr6.Addr().String()},
			[]string{"-n", o.NS, "-6", "route", "add", c.RackAddr6.Masked().String(), "via", c.CoreAddr6.Addr().String()},
		)
	}
	return steps
}

// startOutside starts unbound and the outside servers in the outside
// namespace and waits until unbound answers for the zone.
func (l *Lab) startOutside(ctx context.Context) error {
	o := l.Topo.Outside
	dir := filepath.Join(l.Dir, o.NS)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, OutsideZone+".zone"), []byte(OutsideZoneFile()), 0o644); err != nil {
		return err
	}
	conf := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(conf, []byte(UnboundConfig(dir)), 0o644); err != nil {
		return err
	}
	if err := run(ctx, "unbound-checkconf", conf); err != nil {
		return fmt.Errorf("check the outside's unbound config: %w", err)
	}
	p, err := start(l.Dir, o.NS, o.NS+"-unbound", []string{"/usr/sbin/unbound", "-d", "-c", conf})
	if err != nil {
		return err
	}
	if err := l.record(p); err != nil {
		return err
	}
	s, err := start(l.Dir, o.NS, o.NS+"-servers", []string{l.bin("fedlab"), "outside-serve",
		"--port", fmt.Sprint(OutsideTCPPort), "--http-port", fmt.Sprint(OutsideHTTPPort)})
	if err != nil {
		return err
	}
	if err := l.record(s); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	want, _ := LookupOutside("allowed")
	return waitFor(wctx, "unbound in "+o.NS, func() error {
		for _, network := range []string{"udp", "tcp"} {
			for _, server := range []netip.Addr{OutsideDNS, OutsideDNS6} {
				res, err := digInNS(wctx, o.NS, netip.AddrPortFrom(server, 53).String(), network, want.FQDN(), "A", time.Second)
				if err != nil {
					return err
				}
				if got := res.Addrs(); res.Rcode != "NOERROR" || len(got) != 1 || got[0] != want.A {
					return fmt.Errorf("unbound %s/%s answered %s %v for %s, want %s", server, network, res.Rcode, got, want.FQDN(), want.A)
				}
			}
		}
		return nil
	})
}
