package main

import (
	"strings"
	"testing"

	"github.com/fedmesh/fedmesh/controlplane/auth/authclient"
)

func TestFlagValidationSaysWhatToPass(t *testing.T) {
	good := func() options {
		return options{cluster: "a", node: "n1", controlplane: "127.0.0.1:7000, 127.0.0.1:7001", underlayIP: "198.18.0.1",
			podCIDRs: []string{"10.0.1.7/24"}, dataplane: "memory", creds: authclient.Flags{InsecureDev: true}, stateDir: "/tmp/x", wireguard: true, bgp: true, names: defaultNameFlags()}
	}
	tests := []struct {
		name   string
		edit   func(*options)
		errHas string
	}{
		{name: "valid", edit: func(*options) {}},
		{name: "no cluster", edit: func(o *options) { o.cluster = "" }, errHas: "--cluster is required"},
		{name: "replica without port", edit: func(o *options) { o.controlplane = "cp1" }, errHas: "want host:port"},
		{name: "no replicas", edit: func(o *options) { o.controlplane = " , " }, errHas: "--controlplane is required"},
		{name: "pod CIDR from the node and from a flag", edit: func(o *options) { o.podCIDRNode = true }, errHas: "--pod-cidr-from-node excludes --pod-cidr"},
		{name: "pod CIDR from the node", edit: func(o *options) { o.podCIDRNode, o.podCIDRs = true, nil }},
		{name: "bad pod CIDR", edit: func(o *options) { o.podCIDRs = []string{"10.0.0.0/99"} }, errHas: "--pod-cidr"},
		{name: "unknown dataplane", edit: func(o *options) { o.dataplane = "xdp" }, errHas: "want ebpf or memory"},
		{name: "ipcache of 4M entries", edit: func(o *options) { o.ipcacheMax = 4 << 20 }},
		{name: "ipcache too small to hold anything", edit: func(o *options) { o.ipcacheMax = 10 }, errHas: "--ipcache-max-entries 10: want 1024"},
		{name: "no credentials", edit: func(o *options) { o.creds.InsecureDev = false }, errHas: "give --ca-file with --cert-file and --key-file (or --tls-dir), or --join-token"},
		{name: "insecure with TLS flags", edit: func(o *options) { o.creds.CAFile = "/ca.crt" }, errHas: "--insecure-dev excludes"},
		{name: "join token", edit: func(o *options) { o.creds = authclient.Flags{CAFile: "/ca.crt", JoinToken: "fmjt1.x.y"} }},
		{name: "join token without CA", edit: func(o *options) { o.creds = authclient.Flags{JoinToken: "fmjt1.x.y"} }, errHas: "give --ca-file"},
		{name: "cert without key", edit: func(o *options) { o.creds = authclient.Flags{CAFile: "/ca.crt", CertFile: "/c.crt"} }, errHas: "--cert-file and --key-file together"},
		{name: "tls dir", edit: func(o *options) { o.creds = authclient.Flags{TLSDir: "/etc/fedmesh"} }},
		{name: "underlay needed for WireGuard", edit: func(o *options) { o.underlayIP = "" }, errHas: "--underlay-ip is required"},
		{name: "node-local DNS on a link-local address, no upstream", edit: func(o *options) { o.dnsListen = "169.254.20.10:53" }},
		{name: "node-local DNS with the cluster DNS upstream", edit: func(o *options) { o.dnsListen, o.dnsUpstream = "169.254.20.10:53", "10.96.0.10:53" }},
		{name: "node-local DNS in both families", edit: func(o *options) { o.dnsListen = "169.254.20.10:53,[fd00:169:254::10]:53" }},
		{name: "node-local DNS on IPv6 only", edit: func(o *options) { o.dnsListen = "[fd00:169:254::10]:53" }},
		{name: "node-local DNS in both families on different ports", edit: func(o *options) { o.dnsListen = "[fd00:169:254::10]:5353, 169.254.20.10:53" }},
		{name: "DNS address without port", edit: func(o *options) { o.dnsListen = "169.254.20.10" }, errHas: "--dns-listen"},
		{name: "two DNS addresses of one family", edit: func(o *options) { o.dnsListen = "169.254.20.10:53,169.254.20.11:53" },
			errHas: "--dns-listen: invalid listen address: 169.254.20.10:53 and 169.254.20.11:53 are of one IP family"},
		{name: "two IPv6 DNS addresses", edit: func(o *options) { o.dnsListen = "[fd00::10]:53,169.254.20.10:53,[fd00::11]:53" },
			errHas: "--dns-listen: invalid listen address: [fd00::10]:53 and [fd00::11]:53 are of one IP family"},
		{name: "DNS addresses with a bad second entry", edit: func(o *options) { o.dnsListen = "169.254.20.10:53,fd00::10" },
			errHas: `--dns-listen: invalid listen address "fd00::10": want IP:port`},
		{name: "DNS on a wildcard address", edit: func(o *options) { o.dnsListen = "0.0.0.0:53" }, errHas: "--dns-listen: invalid listen address 0.0.0.0:53: a wildcard"},
		{name: "DNS address by name", edit: func(o *options) { o.dnsListen = "localhost:53" }, errHas: "want IP:port"},
		{name: "DNS in another netns", edit: func(o *options) { o.dnsListen, o.netns = "169.254.20.10:53", "/run/netns/n1" }, errHas: "inside the node's network namespace"},
		{name: "DNS redirect to the resolver", edit: func(o *options) { o.dnsListen, o.dnsRedirect = "169.254.20.10:53", "10.96.0.10" }},
		{name: "DNS redirect without resolver", edit: func(o *options) { o.dnsRedirect = "10.96.0.10" }, errHas: "--dns-redirect needs --dns-listen"},
		{name: "DNS redirect in both families", edit: func(o *options) {
			o.dnsListen, o.dnsRedirect = "169.254.20.10:53,[fd00:169:254::10]:53", "10.96.0.10,fd00:96::a"
		}},
		{name: "IPv6 DNS redirect without an IPv6 resolver", edit: func(o *options) {
			o.dnsListen, o.dnsRedirect = "169.254.20.10:53", "10.96.0.10,fd00:96::a"
		}, errHas: "--dns-redirect fd00:96::a: the resolver (--dns-listen 169.254.20.10:53) has no address of its IP family"},
		{name: "DNS redirect without service cgroup", edit: func(o *options) {
			o.dataplane, o.dnsListen, o.dnsRedirect = "ebpf", "169.254.20.10:53", "10.96.0.10"
		}, errHas: "--dns-redirect needs --service-cgroup"},
		{name: "DNS upstream without port", edit: func(o *options) { o.dnsUpstream = "10.96.0.10" }, errHas: "--dns-upstream"},
		{name: "underlay optional without WireGuard and BGP", edit: func(o *options) { o.underlayIP, o.wireguard, o.bgp = "", false, false }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good()
			tt.edit(&o)
			p, err := o.validate()
			if tt.errHas == "" {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				if len(p.replicas) != 2 || (o.podCIDRs != nil && p.podCIDRs[0] != "10.0.1.0/24") {
					t.Errorf("parsed = %+v", p)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Errorf("err = %v, want one containing %q", err, tt.errHas)
			}
		})
	}
}
