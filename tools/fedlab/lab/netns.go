package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// ip runs one iproute2 command and returns its error with the command line
// and stderr, so a failed build says which step broke.
func ip(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// sysctl sets a sysctl inside a namespace (each netns has its own net.*).
func sysctl(ctx context.Context, ns, key, value string) error {
	return run(ctx, "ip", "netns", "exec", ns, "sysctl", "-qw", key+"="+value)
}

func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Build creates every namespace, link, address and route of t. It stops at
// the first error; the caller runs Teardown, which removes whatever exists.
func Build(ctx context.Context, t *Topology) error {
	for _, ns := range t.Namespaces() {
		if err := ip(ctx, "netns", "add", ns); err != nil {
			return err
		}
		if err := ip(ctx, "-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	core := t.Core
	steps := [][]string{
		{"-n", core, "link", "add", "br0", "type", "bridge"},
		{"-n", core, "link", "set", "br0", "up"},
		// mgmt <-> core
		{"-n", t.Mgmt.NS, "link", "add", "eth0", "type", "veth", "peer", "name", "mgmt", "netns", core},
		{"-n", core, "link", "set", "mgmt", "master", "br0", "up"},
		{"-n", t.Mgmt.NS, "addr", "add", t.Mgmt.Addr.String(), "dev", "eth0"},
		{"-n", t.Mgmt.NS, "link", "set", "eth0", "up"},
	}
	for _, c := range t.Clusters {
		tor := c.ToR.NS
		port := fmt.Sprintf("tor%d", c.Index)
		steps = append(steps,
			[]string{"-n", tor, "link", "add", "core", "type", "veth", "peer", "name", port, "netns", core},
			[]string{"-n", core, "link", "set", port, "master", "br0", "up"},
			[]string{"-n", tor, "addr", "add", c.ToR.Addr.String(), "dev", "core"},
			[]string{"-n", tor, "link", "set", "core", "up"},
			[]string{"-n", tor, "link", "add", "rack", "type", "bridge"},
			[]string{"-n", tor, "addr", "add", c.RackAddr.String(), "dev", "rack"},
			// nodad: the lab's addresses are unique by plan, and a
			// tentative address would delay the first BGP session.
			[]string{"-n", tor, "addr", "add", c.RackAddr6.String(), "dev", "rack", "nodad"},
			[]string{"-n", tor, "link", "set", "rack", "up"},
			// mgmt reaches every rack through its ToR.
			[]string{"-n", t.Mgmt.NS, "route", "add", rackNet(c).String(), "via", c.ToR.Addr.Addr().String()},
		)
		for _, o := range t.Clusters {
			if o.Index != c.Index {
				// Racks reach each other's underlay (WireGuard endpoints) via the core.
				steps = append(steps, []string{"-n", tor, "route", "add", rackNet(o).String(), "via", o.ToR.Addr.Addr().String()})
			}
		}
		for ni, n := range c.Nodes {
			port := fmt.Sprintf("n%d", ni+1)
			steps = append(steps,
				[]string{"-n", n.Host.NS, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", tor},
				[]string{"-n", tor, "link", "set", port, "master", "rack", "up"},
				[]string{"-n", n.Host.NS, "addr", "add", n.Host.Addr.String(), "dev", "eth0"},
				[]string{"-n", n.Host.NS, "link", "set", "eth0", "up"},
				[]string{"-n", n.Host.NS, "route", "add", "default", "via", n.Host.Gateway.String()},
				[]string{"-n", n.Host.NS, "addr", "add", n.Host.Addr6.String(), "dev", "eth0", "nodad"},
				[]string{"-n", n.Host.NS, "-6", "route", "add", "default", "via", n.Host.Gateway6.String()},
			)
			for _, p := range n.Pods {
				steps = append(steps,
					[]string{"-n", n.Host.NS, "link", "add", p.HostVeth, "type", "veth", "peer", "name", p.PodVeth, "netns", p.NS},
					[]string{"-n", p.NS, "link", "set", p.PodVeth, "name", "eth0"},
					[]string{"-n", p.NS, "addr", "add", p.IP.String() + "/32", "dev", "eth0"},
					[]string{"-n", p.NS, "link", "set", "eth0", "up"},
					[]string{"-n", p.NS, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"},
					[]string{"-n", p.NS, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"},
					[]string{"-n", p.NS, "addr", "add", p.IP6.String() + "/128", "dev", "eth0", "nodad"},
					// The node's side answers fe80::1, the pod's IPv6
					// gateway, as Calico's CNI does for IPv6.
					[]string{"-n", n.Host.NS, "addr", "add", "fe80::1/64", "dev", p.HostVeth, "nodad"},
					[]string{"-n", n.Host.NS, "link", "set", p.HostVeth, "up"},
					[]string{"-n", p.NS, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"},
					// A /32 and a /128 per pod to its veth, as Calico's CNI does.
					[]string{"-n", n.Host.NS, "route", "add", p.IP.String() + "/32", "dev", p.HostVeth},
					[]string{"-n", n.Host.NS, "-6", "route", "add", p.IP6.String() + "/128", "dev", p.HostVeth},
				)
			}
		}
	}
	steps = append(steps, outsideSteps(t)...)
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			return err
		}
	}
	for _, c := range t.Clusters {
		for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}} {
			if err := sysctl(ctx, c.ToR.NS, kv[0], kv[1]); err != nil {
				return err
			}
		}
		for _, n := range c.Nodes {
			for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}, {"net.ipv4.conf.all.rp_filter", "0"}, {"net.ipv4.conf.default.rp_filter", "0"}} {
				if err := sysctl(ctx, n.Host.NS, kv[0], kv[1]); err != nil {
					return err
				}
			}
			for _, p := range n.Pods {
				// Proxy ARP answers the pod's 169.254.1.1 gateway from the node.
				if err := sysctl(ctx, n.Host.NS, "net.ipv4.conf."+p.HostVeth+".proxy_arp", "1"); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func rackNet(c Cluster) interface{ String() string } { return c.RackAddr.Masked() }

// Teardown deletes every namespace of t that exists; deleting a namespace
// removes its links, addresses and routes with it. It is idempotent.
func Teardown(ctx context.Context, t *Topology) error {
	var firstErr error
	ns := t.Namespaces()
	for i := len(ns) - 1; i >= 0; i-- {
		if !nsExists(ns[i]) {
			continue
		}
		if err := ip(ctx, "netns", "del", ns[i]); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

func nsExists(ns string) bool {
	_, err := os.Stat("/var/run/netns/" + ns)
	return err == nil
}
