package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/dns"
)

// The node-local resolver (--dns-listen) answers clusterset.local from the
// agent's service catalog and forwards every other name to --dns-upstream.
// Like NodeLocal DNSCache it listens on a link-local address that no pod
// and no node owns, e.g. 169.254.20.10:53, and on a dual-stack or IPv6
// node also on one of the other family, e.g. [fd00:169:254::10]:53 (one
// resolver, one socket pair per address: dns.ParseListen). The agent puts
// every address on a dummy link of its own (--dns-link) in the node's
// network namespace, so pods reach it through their default route to the
// node whatever the node's other addresses are, and every node of every
// cluster can use the same pod resolv.conf. The link stays when the agent
// exits (a restarted agent binds it again at once); --uninstall removes it.
// A kernel without dummy links (no dummy module) gets the addresses on the
// namespace's loopback instead, which serves the same (Linux accepts a
// packet for any local address on any interface); --uninstall removes them
// from there when given the same --dns-listen. An address the node already
// has (e.g. a node IP) is used as it is.

// defaultDNSLink is the dummy link carrying the resolver's address.
const defaultDNSLink = "fedmesh-dns"

// dnsAddrs checks --dns-listen: one IP:port, or one per IP family comma
// separated (the resolver's own rule, dns.ParseListen).
func dnsAddrs(listen string) ([]netip.AddrPort, error) {
	aps, err := dns.ParseListen(listen)
	if err != nil {
		return nil, fmt.Errorf("--dns-listen: %w", err)
	}
	return aps, nil
}

// ensureDNSAddr makes the resolver's address local in the agent's network
// namespace: nothing to do when an interface has it, else it goes on the
// dummy link (created if missing, brought up).
func ensureDNSAddr(ip netip.Addr, link string, log *slog.Logger) error {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return fmt.Errorf("list the node's addresses: %w", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if got, ok := netip.AddrFromSlice(n.IP); ok && got.Unmap() == ip {
				return nil
			}
		}
	}
	l, err := netlink.LinkByName(link)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: link}})
		if errors.Is(err, unix.EOPNOTSUPP) {
			log.Info("the kernel has no dummy links; the node-local DNS address goes on lo", "addr", ip)
			if l, err = netlink.LinkByName("lo"); err != nil {
				return fmt.Errorf("find lo: %w", err)
			}
			break
		}
		if err != nil {
			return fmt.Errorf("create dummy link %s for the DNS address %s: %w", link, ip, err)
		}
		if l, err = netlink.LinkByName(link); err != nil {
			return fmt.Errorf("find dummy link %s: %w", link, err)
		}
	case err != nil:
		return fmt.Errorf("find link %s: %w", link, err)
	case l.Type() != "dummy":
		return fmt.Errorf("link %s exists and is a %s, not the agent's dummy link; choose another --dns-link", link, l.Type())
	}
	bits := 32
	addr := &netlink.Addr{}
	if ip.Is6() {
		// Without duplicate address detection: the address is no one
		// else's by choice, and a tentative one cannot be bound.
		bits, addr.Flags = 128, unix.IFA_F_NODAD
	}
	addr.IPNet = &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, bits)}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("add %s to link %s: %w", ip, link, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring link %s up: %w", link, err)
	}
	log.Info("node-local DNS address in place", "addr", ip, "link", l.Attrs().Name)
	return nil
}

// removeDNSAddrsFromLo removes the resolver's addresses from lo, where a
// kernel without dummy links had them (--uninstall with --dns-listen), and
// returns those it removed.
func removeDNSAddrsFromLo(listen string) ([]netip.Addr, error) {
	aps, err := dnsAddrs(listen)
	if err != nil {
		return nil, err
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	addrs, err := netlink.AddrList(lo, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list the addresses of lo: %w", err)
	}
	var removed []netip.Addr
	for _, ap := range aps {
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ap.Addr() {
				if err := netlink.AddrDel(lo, &a); err != nil {
					return removed, fmt.Errorf("remove %s from lo: %w", ap.Addr(), err)
				}
				removed = append(removed, ap.Addr())
				break
			}
		}
	}
	return removed, nil
}

// removeDNSLink deletes the agent's dummy link (--uninstall); a missing
// link is no error, a link of another type is left alone.
func removeDNSLink(link string) (bool, error) {
	l, err := netlink.LinkByName(link)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("find link %s: %w", link, err)
	}
	if l.Type() != "dummy" {
		return false, fmt.Errorf("link %s is a %s, not the agent's dummy link: left alone", link, l.Type())
	}
	if err := netlink.LinkDel(l); err != nil {
		return false, fmt.Errorf("delete link %s: %w", link, err)
	}
	return true, nil
}

// openDNS prepares the node-local resolver and binds its sockets, so a bad
// address fails the start rather than later. The agent is its view's one
// writer (agent.DNS): it hands over the view of every revision that changed
// the services before it reports the revision enforced; until the first
// one, clusterset.local names are unknown. Policy by DNS name (names) is
// its one hook and names its clients' pods; rec (nil: none) gets every
// answered query's record.
func openDNS(o *options, reg prometheus.Registerer, log *slog.Logger, names *agent.NamePolicy, rec dns.Recorder) (*dns.Server, error) {
	aps, err := dnsAddrs(o.dnsListen)
	if err != nil {
		return nil, err
	}
	for _, ap := range aps {
		if err := ensureDNSAddr(ap.Addr(), o.dnsLink, log); err != nil {
			return nil, err
		}
	}
	srv, err := dns.New(dns.Config{Listen: o.dnsListen, Upstream: o.dnsUpstream},
		dns.Deps{Logger: log, Registry: reg, Hooks: []dns.Hook{names}, Pods: names, Recorder: rec})
	if err != nil {
		return nil, err
	}
	if err := srv.Listen(); err != nil {
		return nil, err
	}
	return srv, nil
}

// serveDNS runs the resolver until ctx ends; a failure is logged, since the
// agent's enforcement must go on without it.
func serveDNS(ctx context.Context, srv *dns.Server, log *slog.Logger) {
	if err := srv.Serve(ctx); err != nil {
		log.Error("node-local DNS stopped", "err", err)
	}
}

// The transparent DNS redirect (--dns-redirect, issue #22): pods keep their
// resolv.conf (the cluster DNS addresses, kube-dns's ClusterIPs), and the
// socket hooks of the service translation (--service-cgroup) send their
// UDP and TCP port-53 traffic to those addresses to the --dns-listen
// address of the same family instead, showing answers as coming from the
// cluster DNS address (mechanism and choice:
// nodeagent/dataplane/socklb.go). The resolver's forwarder marks its
// sockets with dns.UpstreamMark, which the redirect skips: its upstream is
// usually the very address being redirected.

// dnsRedirect parses --dns-redirect (cluster DNS addresses, comma
// separated, each of a family --dns-listen has an address of: a socket
// cannot be sent to a resolver of the other family) into the redirect to
// program; the zero DNSRedirect (redirect nothing) when the flag is empty.
func dnsRedirect(flag, listen string) (dataplane.DNSRedirect, error) {
	if flag == "" {
		return dataplane.DNSRedirect{}, nil
	}
	if listen == "" {
		return dataplane.DNSRedirect{}, errors.New("--dns-redirect needs --dns-listen: the pods' DNS is redirected to the agent's resolver")
	}
	resolvers, err := dnsAddrs(listen)
	if err != nil {
		return dataplane.DNSRedirect{}, err
	}
	r := dataplane.DNSRedirect{Resolvers: resolvers, SkipMark: dns.UpstreamMark}
	for s := range strings.SplitSeq(flag, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return dataplane.DNSRedirect{}, fmt.Errorf("--dns-redirect %q: want the cluster DNS addresses (kube-dns's ClusterIPs), comma separated: %w", flag, err)
		}
		if !slices.ContainsFunc(resolvers, func(ap netip.AddrPort) bool { return ap.Addr().Is4() == a.Is4() }) {
			return dataplane.DNSRedirect{}, fmt.Errorf("--dns-redirect %s: the resolver (--dns-listen %s) has no address of its IP family; "+
				"a socket is redirected within its family only: leave the address out or give --dns-listen an address of its family too", a, listen)
		}
		r.ClusterDNS = append(r.ClusterDNS, a)
	}
	if err := r.Validate(); err != nil {
		return dataplane.DNSRedirect{}, fmt.Errorf("--dns-redirect %q: %w", flag, err)
	}
	return r, nil
}

// setDNSRedirect programs the redirect into the service translation once
// the resolver listens (on a restart the pinned redirect kept sending pods
// to the addresses, which a restarted resolver binds again). Without
// --dns-redirect a redirect pinned by an earlier run is removed: the flag is
// the one source of truth.
func setDNSRedirect(ctx context.Context, o *options, svc dataplane.ServiceTranslator, log *slog.Logger) error {
	rd, ok := svc.(dataplane.DNSRedirector)
	if !ok {
		if o.dnsRedirect != "" {
			return errors.New("--dns-redirect needs the socket-level service translation: set --service-cgroup (with --dataplane=ebpf)")
		}
		return nil
	}
	r, err := dnsRedirect(o.dnsRedirect, o.dnsListen)
	if err != nil {
		return err
	}
	if err := rd.SetDNSRedirect(ctx, r); err != nil {
		return fmt.Errorf("program the DNS redirect: %w", err)
	}
	if len(r.ClusterDNS) > 0 {
		log.Info("pods' DNS redirected to the node-local resolver", "cluster_dns", r.ClusterDNS, "resolvers", r.Resolvers)
	}
	return nil
}
