package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Replicas of the control plane, all in the management namespace.
const replicas = 3

// ControlPlaneAddrs are the gRPC addresses of the lab's replicas.
func (t *Topology) ControlPlaneAddrs() []string {
	var out []string
	for i := 1; i <= replicas; i++ {
		out = append(out, fmt.Sprintf("%s:%d", t.Mgmt.Addr.Addr(), 9000+i))
	}
	return out
}

func (t *Topology) raftAddr(i int) string { return fmt.Sprintf("%s:%d", t.Mgmt.Addr.Addr(), 7000+i) }

func (l *Lab) bin(name string) string { return filepath.Join(l.State.Config.BinDir, name) }

// startControlPlane runs three fedmesh-controlplane replicas, each with its
// own data dir, bootstrapped together.
func (l *Lab) startControlPlane(ctx context.Context) error {
	t := l.Topo
	if err := l.initPKI(); err != nil {
		return err
	}
	var peers []string
	for i := 1; i <= replicas; i++ {
		peers = append(peers, fmt.Sprintf("cp%d=%s/%s", i, t.raftAddr(i), t.ControlPlaneAddrs()[i-1]))
	}
	for i := 1; i <= replicas; i++ {
		dataDir := filepath.Join(l.Dir, fmt.Sprintf("cp%d", i))
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return err
		}
		p, err := start(l.Dir, t.Mgmt.NS, fmt.Sprintf("controlplane-%d", i), []string{
			l.bin("fedmesh-controlplane"),
			"--node-id", fmt.Sprintf("cp%d", i),
			"--data-dir", dataDir,
			"--raft-addr", t.raftAddr(i),
			"--grpc-addr", t.ControlPlaneAddrs()[i-1],
			"--metrics-addr", fmt.Sprintf("%s:%d", t.Mgmt.Addr.Addr(), 9100+i),
			"--ui-addr", t.UIAddr(i),
			"--bootstrap-peers", strings.Join(peers, ","),
			"--tls-dir", l.replicaTLSDir(i),
		})
		if err != nil {
			return err
		}
		if err := l.record(p); err != nil {
			return err
		}
	}
	return nil
}

// UIAddr is where replica i (1-based) serves the service-graph page, in
// the management namespace.
func (t *Topology) UIAddr(i int) string { return fmt.Sprintf("%s:%d", t.Mgmt.Addr.Addr(), 8440+i) }

// Fedctl runs the real CLI inside the management namespace, as a user of
// the lab would, and returns its output.
func (l *Lab) Fedctl(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{"--net=/var/run/netns/" + l.Topo.Mgmt.NS, "--", l.bin("fedctl"),
		"--server", strings.Join(l.Topo.ControlPlaneAddrs(), ",")}, l.fedctlCreds()...)
	argv = append(argv, args...)
	out, err := exec.CommandContext(ctx, "nsenter", argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("fedctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// registerClusters registers every cluster with `fedctl cluster register`,
// retrying while the replicas elect a leader.
func (l *Lab) registerClusters(ctx context.Context) error {
	for _, c := range l.Topo.Clusters {
		args := []string{"cluster", "register", c.Name,
			"--pod-cidr", c.PodCIDR.String(),
			"--pod-cidr", c.PodCIDR6.String(),
			"--label", "env=prod", "--label", "site=" + c.Name,
			"--bgp-asn", fmt.Sprint(c.ASN),
			// One session per family: the IPv6 pod prefix goes on the
			// IPv6 one, with the node's rack address as next hop.
			"--bgp-peer", fmt.Sprintf("%s:%d", c.RackAddr.Addr(), c.ToRASN),
			"--bgp-peer", fmt.Sprintf("[%s]:%d", c.RackAddr6.Addr(), c.ToRASN),
			"--graceful-restart", "60",
			"--wireguard",
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		var out string
		err := waitFor(wctx, "control plane to register "+c.Name, func() error {
			var err error
			out, err = l.Fedctl(wctx, args...)
			return err
		})
		cancel()
		if err != nil {
			return err
		}
		// Registering as admin prints the syncer's join token.
		tok, err := tokenFromRegister(out)
		if err != nil {
			return fmt.Errorf("fedctl cluster register %s: %w", c.Name, err)
		}
		if err := os.WriteFile(syncerTokenFile(l.Dir, c.Name), []byte(tok), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// tokenFromRegister picks the join token out of `fedctl cluster register`.
func tokenFromRegister(out string) (string, error) {
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, "fmjt1.") {
			return f, nil
		}
	}
	return "", fmt.Errorf("no join token in its output (is the connection mTLS as admin?): %s", out)
}

// startAgents runs fedmesh-agent in every node namespace with the eBPF
// dataplane (pins under the lab's own bpffs dir), WireGuard and BGP.
func (l *Lab) startAgents(ctx context.Context) error {
	agentFlags, err := BinaryFlags(ctx, l.bin("fedmesh-agent"))
	if err != nil {
		return err
	}
	for _, c := range l.Topo.Clusters {
		for _, n := range c.Nodes {
			stateDir := filepath.Join(l.Dir, n.Host.NS)
			if err := os.MkdirAll(stateDir, 0o700); err != nil {
				return err
			}
			tok, err := l.joinToken(ctx, c.Name, n.Name)
			if err != nil {
				return err
			}
			p, err := start(l.Dir, n.Host.NS, "agent-"+n.Name, slices.Concat([]string{
				l.bin("fedmesh-agent"),
				"--cluster", c.Name,
				"--node", n.Name,
				"--controlplane", strings.Join(l.Topo.ControlPlaneAddrs(), ","),
				"--underlay-ip", n.Host.Addr.Addr().String(),
				"--pod-cidr", n.PodCIDR.String(),
				"--pod-cidr", n.PodCIDR6.String(),
				"--state-dir", stateDir,
				"--bpf-pin-dir", l.pinDir(n),
				// Translate ClusterSetIPs for the node's pods: the
				// processes the lab runs in them live in this cgroup.
				"--service-cgroup", l.Topo.NodeCgroup(n),
				// The pods' resolver (their resolv.conf names it), which
				// forwards every name but clusterset.local to the
				// outside's unbound.
				"--dns-listen", NodeDNS + ":53",
			}, dnsAgentArgs(agentFlags, c), []string{
				"--metrics-addr", fmt.Sprintf("%s:9464", n.Host.Addr.Addr()),
				"--wireguard-port", fmt.Sprint(n.WGPort),
				// Unique per lab: the UAPI socket path is machine-wide.
				"--wireguard-device", "wg" + n.Host.NS,
				"--status-interval", "2s",
				// Exchanged once for the node's certificate, kept in
				// the state dir: a restart uses the stored one.
				"--ca-file", caFile(l.Dir),
				"--join-token", tok,
			}))
			if err != nil {
				return err
			}
			if err := l.record(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// bpfPinRoot is the agent's default BPF pin root
// (nodeagent/dataplane.DefaultPinDir); each lab pins under its own name.
const bpfPinRoot = "/sys/fs/bpf/fedmesh"

func (l *Lab) pinDir(n Node) string {
	return filepath.Join(bpfPinRoot, l.Topo.Name, n.Host.NS)
}

// Dial connects to the control plane from fedlab's own process. fedlab runs
// in the root namespace, which has no route into the lab, so the
// connection is made from a socket opened inside the management namespace.
func (l *Lab) Dial() (*grpc.ClientConn, error) {
	creds, err := l.adminDialOption()
	if err != nil {
		return nil, err
	}
	return grpc.NewClient("passthrough:///"+l.Topo.ControlPlaneAddrs()[0], creds,
		grpc.WithContextDialer(func(ctx context.Context, addr string) (netConn, error) {
			return dialInNS(ctx, l.Topo.Mgmt.NS, "tcp", addr)
		}))
}

// WaitEnforced waits until every node enforces the newest revision.
func (l *Lab) WaitEnforced(ctx context.Context, timeout time.Duration) (uint64, error) {
	cc, err := l.Dial()
	if err != nil {
		return 0, err
	}
	defer cc.Close()
	nodes := fedmeshv1.NewNodeServiceClient(cc)
	want := 0
	for _, c := range l.Topo.Clusters {
		want += len(c.Nodes)
	}
	// The agents register themselves; wait for all of them first.
	var rev uint64
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = waitFor(wctx, "every agent to register", func() error {
		resp, err := nodes.ListNodes(wctx, &fedmeshv1.ListNodesRequest{})
		if err != nil {
			return err
		}
		if len(resp.GetNodes()) < want {
			return fmt.Errorf("%d of %d nodes registered", len(resp.GetNodes()), want)
		}
		rev = resp.GetRevision()
		return nil
	})
	if err != nil {
		return 0, err
	}
	// Every pod published (by the syncers) and every BGP session up, so the
	// lab is whole when Up returns.
	pods := 0
	for _, c := range l.Topo.Clusters {
		for _, n := range c.Nodes {
			pods += len(n.Pods)
		}
	}
	eps := fedmeshv1.NewEndpointServiceClient(cc)
	err = waitFor(wctx, "every pod to be published", func() error {
		resp, err := eps.ListEndpoints(wctx, &fedmeshv1.ListEndpointsRequest{})
		if err != nil {
			return err
		}
		if len(resp.GetEndpoints()) < pods {
			return fmt.Errorf("%d of %d endpoints published", len(resp.GetEndpoints()), pods)
		}
		rev = resp.GetRevision()
		return nil
	})
	if err != nil {
		return 0, err
	}
	err = waitFor(wctx, "every BGP session to its ToR", func() error {
		resp, err := nodes.ListNodes(wctx, &fedmeshv1.ListNodesRequest{})
		if err != nil {
			return err
		}
		for _, n := range resp.GetNodes() {
			peers := n.GetStatus().GetBgpPeers()
			if len(peers) == 0 {
				return fmt.Errorf("node %s/%s reports no BGP session", n.GetCluster(), n.GetName())
			}
			for _, p := range peers {
				if p.GetState() != fedmeshv1.BGPSessionState_BGP_SESSION_STATE_ESTABLISHED {
					return fmt.Errorf("node %s/%s: session to %s is %s", n.GetCluster(), n.GetName(), p.GetAddress(), p.GetState())
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	err = waitFor(wctx, "every pod CIDR (both families) in its ToR's FIB", func() error {
		for _, c := range l.Topo.Clusters {
			routes, err := ToRRoutes(wctx, c)
			if err != nil {
				return err
			}
			for _, n := range c.Nodes {
				for _, cidr := range n.PodCIDRs() {
					if !strings.Contains(routes, cidr.String()+" ") {
						return fmt.Errorf("%s has no route to %s yet", c.ToR.NS, cidr)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	resp, err := nodes.WaitEnforced(wctx, &fedmeshv1.WaitEnforcedRequest{Revision: rev, Timeout: durationpb.New(timeout)})
	if err != nil {
		return 0, fmt.Errorf("wait for revision %d: %w", rev, err)
	}
	if !resp.GetEnforced() {
		return rev, fmt.Errorf("revision %d not enforced by %v", rev, resp.GetLagging())
	}
	return rev, nil
}

// publishEndpoints writes every pod of the lab as an endpoint, one batch per
// cluster with a final resync marker: what a syncer does, without a
// kube-apiserver (fedlab up --no-kube).
func (l *Lab) publishEndpoints(ctx context.Context) error {
	cc, err := l.Dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	eps := fedmeshv1.NewEndpointServiceClient(cc)
	for _, c := range l.Topo.Clusters {
		req := &fedmeshv1.UpsertEndpointsRequest{Cluster: c.Name, Resync: &fedmeshv1.ResyncMarker{Generation: uint64(time.Now().UnixNano()), Final: true}}
		for _, n := range c.Nodes {
			for _, p := range n.Pods {
				req.Endpoints = append(req.Endpoints, &fedmeshv1.Endpoint{
					Cluster: c.Name, Namespace: p.Namespace, Name: p.Name, Ips: []string{p.IP.String(), p.IP6.String()},
					Labels: p.Labels, NamespaceLabels: map[string]string{"team": "demo", "kubernetes.io/metadata.name": p.Namespace},
					NamedPorts: []*fedmeshv1.NamedPort{{Name: "http", Port: 8080, Protocol: fedmeshv1.Protocol_PROTOCOL_TCP}},
					Node:       n.Name,
				})
			}
		}
		if _, err := eps.UpsertEndpoints(ctx, req); err != nil {
			return fmt.Errorf("publish endpoints of %s: %w", c.Name, err)
		}
	}
	return nil
}
