// Command fedmesh-agent runs on every node: it enforces federated policy in eBPF, tunnels to other sites and advertises the node's pod CIDR over BGP.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/fedmesh/fedmesh/bgp"
	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/authclient"
	"github.com/fedmesh/fedmesh/federation/buildinfo"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/agent/adapters"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/dns"
	"github.com/fedmesh/fedmesh/nodeagent/flows"
	"github.com/fedmesh/fedmesh/nodeagent/wireguard"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// options are the command-line flags.
type options struct {
	cluster, node  string
	controlplane   string
	underlayIP     string
	podCIDRs       []string
	podCIDRNode    bool
	labelsNode     bool
	stateDir       string
	metricsAddr    string
	creds          authclient.Flags
	dataplane      string
	bpfPinDir      string
	ipcacheMax     uint32
	netns          string
	readyLag       time.Duration
	wireguard      bool
	wireguardPort  uint32
	wireguardDev   string
	bgp            bool
	nodeLabels     map[string]string
	statusInterval time.Duration
	uninstall      bool
	shipFlows      bool
	serviceCgroup  string
	dnsListen      string
	dnsUpstream    string
	dnsLink        string
	dnsRedirect    string
	names          nameFlags // policy by DNS name (fqdn.go)
}

// parsed is what validate derives from the flags.
type parsed struct {
	replicas   []string
	underlayIP netip.Addr
	podCIDRs   []string
}

// validate checks the flags before anything is opened, with messages that
// say what to pass.
func (o *options) validate() (parsed, error) {
	var p parsed
	var errs []error
	if o.cluster == "" {
		errs = append(errs, errors.New("--cluster is required"))
	}
	if o.node == "" {
		errs = append(errs, errors.New("--node is required"))
	}
	for _, a := range strings.Split(o.controlplane, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("--controlplane %q: want host:port[,host:port...]: %w", a, err))
			continue
		}
		p.replicas = append(p.replicas, a)
	}
	if len(p.replicas) == 0 {
		errs = append(errs, errors.New("--controlplane is required: the replicas' host:port, comma separated"))
	}
	if o.underlayIP != "" {
		a, err := netip.ParseAddr(o.underlayIP)
		if err != nil {
			errs = append(errs, fmt.Errorf("--underlay-ip %q: %w", o.underlayIP, err))
		}
		p.underlayIP = a
	} else if o.wireguard || o.bgp {
		errs = append(errs, errors.New("--underlay-ip is required with WireGuard or BGP on (--wireguard=false --bgp=false to run without)"))
	}
	for _, c := range o.podCIDRs {
		pre, err := netip.ParsePrefix(c)
		if err != nil {
			errs = append(errs, fmt.Errorf("--pod-cidr %q: %w", c, err))
			continue
		}
		p.podCIDRs = append(p.podCIDRs, pre.Masked().String())
	}
	if o.podCIDRNode && len(o.podCIDRs) > 0 {
		errs = append(errs, errors.New("--pod-cidr-from-node excludes --pod-cidr"))
	}
	if err := dataplane.ValidateIPCacheMaxEntries(o.ipcacheMax); err != nil {
		errs = append(errs, err)
	}
	switch o.dataplane {
	case "ebpf", "memory":
	default:
		errs = append(errs, fmt.Errorf("--dataplane %q: want ebpf or memory", o.dataplane))
	}
	if o.stateDir == "" {
		errs = append(errs, errors.New("--state-dir is required (the WireGuard key and a joined certificate live there)"))
	}
	if err := authclient.Check(o.creds, authclient.Config{StateDir: o.stateDir, Name: "agent"}); err != nil {
		errs = append(errs, err)
	}
	if o.dnsListen != "" {
		if _, err := dnsAddrs(o.dnsListen); err != nil {
			errs = append(errs, err)
		}
		if o.netns != "" {
			errs = append(errs, errors.New("--dns-listen needs the agent to run inside the node's network namespace (without --netns): the resolver's sockets and address live there"))
		}
	}
	if _, err := dnsRedirect(o.dnsRedirect, o.dnsListen); err != nil {
		errs = append(errs, err)
	} else if o.dnsRedirect != "" && o.serviceCgroup == "" && o.dataplane != "memory" {
		errs = append(errs, errors.New("--dns-redirect needs --service-cgroup: the redirect lives in the socket hooks of the service translation"))
	}
	if o.dnsUpstream != "" {
		if _, _, err := net.SplitHostPort(o.dnsUpstream); err != nil {
			errs = append(errs, fmt.Errorf("--dns-upstream %q: want host:port of the cluster's DNS, or empty: %w", o.dnsUpstream, err))
		}
	}
	if o.dnsListen != "" {
		errs = append(errs, o.names.validate())
	}
	return p, errors.Join(errs...)
}

func main() {
	o := &options{}
	cmd := &cobra.Command{
		Use:          "fedmesh-agent",
		Short:        "The fedmesh node agent (eBPF policy, WireGuard, BGP)",
		Version:      buildinfo.Version(),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if o.uninstall {
				// The chart's pre-delete hook on every node: enforcement
				// ends with the release, not with a restart.
				if err := dataplane.Uninstall(ctx, o.bpfPinDir); err != nil {
					return err
				}
				fmt.Printf("removed the pinned dataplane under %s (policy and service translation)\n", o.bpfPinDir)
				removed, err := removeDNSLink(o.dnsLink)
				if err != nil {
					return err
				}
				if removed {
					fmt.Printf("removed the node-local DNS link %s\n", o.dnsLink)
				}
				if o.dnsListen != "" {
					removed, err := removeDNSAddrsFromLo(o.dnsListen)
					for _, a := range removed {
						fmt.Printf("removed the node-local DNS address %s from lo\n", a)
					}
					if err != nil {
						return err
					}
				}
				return nil
			}
			return run(ctx, o)
		},
	}
	cmd.SetVersionTemplate(buildinfo.VersionTemplate())
	f := cmd.Flags()
	f.StringVar(&o.cluster, "cluster", "", "name of this node's cluster")
	f.StringVar(&o.node, "node", "", "name of this node (the Kubernetes node name)")
	f.StringVar(&o.controlplane, "controlplane", "", "control-plane replicas, host:port comma separated; the agent fails over between them")
	f.StringVar(&o.underlayIP, "underlay-ip", "", "the node's underlay address (WireGuard endpoint, BGP router ID)")
	f.StringSliceVar(&o.podCIDRs, "pod-cidr", nil, "the node's pod CIDR (repeat or comma separate, one per family)")
	f.BoolVar(&o.podCIDRNode, "pod-cidr-from-node", false, "read the pod CIDRs from this node's Node object (spec.podCIDRs) with the pod's service account, waiting until they are set (a DaemonSet pod)")
	f.StringVar(&o.stateDir, "state-dir", "/var/lib/fedmesh", "directory for the node's state (WireGuard key, mode 0600)")
	f.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:9464", "address serving /metrics, /healthz and /readyz (empty: off)")
	o.creds.AddFlags(f)
	f.StringVar(&o.dataplane, "dataplane", "ebpf", "dataplane: ebpf (tcx on pod veths) or memory (simulation)")
	f.StringVar(&o.bpfPinDir, "bpf-pin-dir", dataplane.DefaultPinDir, "bpffs directory for the eBPF dataplane's pinned state")
	f.Uint32Var(&o.ipcacheMax, "ipcache-max-entries", 0, fmt.Sprintf("entries of each eBPF ipcache table (every cluster's pod addresses; 0: %d): a revision with more is refused and reported in the node's status; a restart with another size takes effect at the next two revisions, no uninstall needed", dataplane.DefaultIPCacheMaxEntries))
	f.StringVar(&o.netns, "netns", "", "network namespace of the node (path); empty: the agent's own")
	f.DurationVar(&o.readyLag, "ready-lag", 30*time.Second, "not ready when the enforced revision is older than this behind the newest seen")
	f.BoolVar(&o.wireguard, "wireguard", true, "run the WireGuard device to other clusters")
	f.Uint32Var(&o.wireguardPort, "wireguard-port", 0, "WireGuard listen port to register (0: the cluster's default)")
	f.StringVar(&o.wireguardDev, "wireguard-device", "", "name of the WireGuard link, unique on the machine (default: derived from cluster and node)")
	f.BoolVar(&o.bgp, "bgp", true, "run the BGP speaker that advertises the pod CIDR")
	f.BoolVar(&o.labelsNode, "node-labels-from-node", false, "take the node's labels from its Node object (metadata.labels) with the pod's service account, read at start; --node-label entries override them (a DaemonSet pod)")
	f.StringToStringVar(&o.nodeLabels, "node-label", nil, "the node's labels, key=value (repeat or comma separate); BGP peers select nodes by them (rack=r1)")
	f.StringVar(&o.serviceCgroup, "service-cgroup", "", "cgroup v2 directory whose processes' connections to ClusterSetIPs are translated (socket-level, with --dataplane=ebpf): the cgroup v2 root or the kubepods cgroup; empty: no translation")
	f.StringVar(&o.dnsListen, "dns-listen", "", "address of the node-local resolver answering <svc>.<ns>.svc.clusterset.local, e.g. 169.254.20.10:53, or one per IP family comma separated on a dual-stack or IPv6 node, e.g. 169.254.20.10:53,[fd00:169:254::10]:53 (the agent puts these link-local addresses on its --dns-link dummy link; pods use the one of their family as nameserver); empty: no resolver")
	f.StringVar(&o.dnsUpstream, "dns-upstream", "", "the cluster's DNS (host:port) every name outside clusterset.local is forwarded to; empty: only clusterset.local is answered, other names get REFUSED")
	f.StringVar(&o.dnsRedirect, "dns-redirect", "", "cluster DNS addresses (kube-dns's ClusterIPs, comma separated, each of an IP family --dns-listen has an address of) whose UDP and TCP port 53 traffic from pods in --service-cgroup goes to the --dns-listen address of the same family, answers shown from the cluster DNS address; pods keep their resolv.conf. Empty: no redirect (one pinned by an earlier run is removed)")
	f.StringVar(&o.dnsLink, "dns-link", defaultDNSLink, "dummy link that carries the --dns-listen addresses in the node's network namespace (removed by --uninstall)")
	o.names.addFlags(f)
	f.BoolVar(&o.uninstall, "uninstall", false, "remove the pinned dataplane under --bpf-pin-dir (detaching its policy programs and service hooks) and the --dns-link (with --dns-listen also its addresses on lo), and exit; other flags are ignored")
	f.BoolVar(&o.shipFlows, "ship-flows", true, "attribute the dataplane's verdict events and ship them to the control plane's FlowService (fedctl flows)")
	f.DurationVar(&o.statusInterval, "status-interval", 10*time.Second, "node status heartbeat")
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}

func run(ctx context.Context, o *options) error {
	p, err := o.validate()
	if err != nil {
		return err
	}
	facts, err := readHostFacts(o.bpfPinDir)
	if err != nil {
		return err
	}
	if err := preflight(o, facts); err != nil {
		return fmt.Errorf("this host lacks what the agent needs:\n%w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "fedmesh-agent")
	if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir %s: %w", o.stateDir, err)
	}
	if o.podCIDRNode || o.labelsNode {
		api, err := inClusterNodeAPI()
		if err != nil {
			return err
		}
		if o.podCIDRNode {
			if p.podCIDRs, err = api.waitPodCIDRs(ctx, o.node, 2*time.Second, log); err != nil {
				return err
			}
			log.Info("pod CIDRs from the Node object", "node", o.node, "cidrs", p.podCIDRs)
		}
		if o.labelsNode {
			fromNode, err := api.nodeLabels(ctx, o.node)
			if err != nil {
				return fmt.Errorf("read the labels of node %s: %w", o.node, err)
			}
			o.nodeLabels = mergeLabels(fromNode, o.nodeLabels)
			log.Info("node labels from the Node object", "node", o.node, "labels", len(fromNode))
		}
	}

	creds, err := authclient.Load(ctx, o.creds, authclient.Config{
		StateDir: o.stateDir, Name: "agent", Want: auth.Node(o.cluster, o.node),
		Replicas: p.replicas, Logger: log,
	})
	if err != nil {
		return err
	}
	client, err := agent.NewClient(p.replicas, creds.DialOption())
	if err != nil {
		return err
	}
	defer client.Close()
	// Renewal swaps the key pair under the open connections: the watch
	// stream is not reopened.
	go creds.Rotate(ctx, client, authclient.RotateOptions{Logger: log})

	deps := agent.Deps{ControlPlane: client, Logger: log, Registry: prometheus.NewRegistry()}
	deps.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var dpEvents <-chan dataplane.Event
	switch o.dataplane {
	case "memory":
		mem := dataplane.NewMemory()
		deps.Dataplane = mem
		dpEvents = mem.Events()
	case "ebpf":
		// Adopts pinned state from a previous run: enforcement continues
		// until the first revision after the snapshot replaces it.
		dp, err := dataplane.New(ctx, dataplane.Config{PinDir: o.bpfPinDir, NetNS: o.netns, IPCacheMaxEntries: o.ipcacheMax, Logger: log})
		if err != nil {
			return fmt.Errorf("open eBPF dataplane: %w", err)
		}
		defer dp.Close() // keeps the pins: enforcement outlives the process
		deps.Dataplane = dp
		dpEvents = dp.Events()
		res, err := agent.NewNetlinkResolver(o.netns)
		if err != nil {
			return err
		}
		defer res.Close()
		deps.Interfaces = res
	}

	svc, closeSvc, err := openServices(ctx, o, log)
	if err != nil {
		return err
	}
	defer closeSvc() // keeps the pins: translation outlives the process
	if svc != nil {
		deps.Services = svc
		deps.Registry.MustRegister(newServiceCollector(svc, log))
	}

	if o.wireguard {
		key, err := wireguard.LoadOrCreateKey(filepath.Join(o.stateDir, "wireguard.key"))
		if err != nil {
			return fmt.Errorf("load WireGuard key: %w", err)
		}
		dev, err := wireguard.Open(ctx, wireguard.Options{Name: o.deviceName(), NetNS: o.netns, Logger: log})
		if err != nil {
			return fmt.Errorf("open WireGuard device: %w", err)
		}
		defer dev.Close()
		deps.WireGuard = &adapters.WireGuard{Dev: dev, Key: key, Port: o.wireguardPort, Log: log}
	}

	if o.bgp {
		sp := bgp.New(bgp.WithLogger(log))
		bctx, cancel := context.WithCancel(context.Background())
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			if err := sp.Run(bctx); err != nil {
				log.Error("BGP speaker stopped", "err", err)
			}
		}()
		// A deliberate exit withdraws the pod CIDR (CEASE to every ToR)
		// before the process ends; returning first would race the exit
		// against the NOTIFICATION, and a ToR that sees only the TCP session
		// die keeps the route for the graceful-restart time.
		defer func() {
			cancel()
			<-stopped
		}()
		port := &adapters.BGP{Speaker: sp, Log: log}
		deps.BGP = port
		// Service addresses and Secret passwords arrive on streams of
		// their own (nodeagent/agent/bgpstreams.go).
		go client.FollowServiceAdvertisements(bctx, o.cluster, log, func(s []*fedmeshv1.ServiceAdvertisement) {
			if err := port.SetServices(bctx, s); err != nil {
				log.Error("apply BGP service advertisements; the next change retries", "err", err)
			}
		})
		go client.FollowBGPPasswords(bctx, o.cluster, o.node, log, func(p []*fedmeshv1.BGPPeerPassword) {
			if err := port.SetPasswords(bctx, p); err != nil {
				log.Error("apply BGP passwords; the next change retries", "err", err)
			}
		})
	}

	// Flow records: verdict events attributed to their deciding rule and
	// workloads, shipped to every replica over the node's mTLS identity
	// (never served from the node). The resolver's query records go the
	// same way, and its answers name the flows' destinations.
	var dnsRec dns.Recorder
	if o.shipFlows {
		deps.Flows = flows.NewDirectory()
		shipper := agent.NewFlowShipper(client, o.cluster, o.node, deps.Registry, log)
		flowNames := agent.NewNameCache(agent.NameCacheConfig{}, deps.Registry)
		deps.FlowNames = flowNames
		dnsRec = &agent.DNSLog{Cluster: o.cluster, Node: o.node, Sink: shipper, Names: flowNames}
		go flowNames.Run(ctx, 30*time.Second)
		go shipper.Run(ctx)
		go (&flows.Reader{Cluster: o.cluster, Node: o.node, Dir: deps.Flows, Sink: shipper, Names: flowNames}).Run(ctx, dpEvents)
	}

	if o.dnsListen != "" {
		names, closeNames, err := openNamePolicy(ctx, o, deps.Dataplane, deps.Registry, log)
		if err != nil {
			return fmt.Errorf("start policy by DNS name: %w", err)
		}
		defer closeNames()
		deps.Names = names
		srv, err := openDNS(o, deps.Registry, log, names, dnsRec)
		if err != nil {
			return fmt.Errorf("start the node-local DNS: %w", err)
		}
		deps.DNS = srv
		go serveDNSWhenReady(ctx, srv, names, log)
		log.Info("node-local DNS bound; it serves once the first revision named the local pods", "addrs", srv.Addrs(), "upstream", o.dnsUpstream)
	}
	if err := setDNSRedirect(ctx, o, svc, log); err != nil {
		return err
	}

	a, err := agent.New(agent.Config{
		Cluster: o.cluster, Node: o.node, UnderlayIP: p.underlayIP, PodCIDRs: p.podCIDRs, Labels: o.nodeLabels,
		DataplaneName: o.dataplane, ReadyLag: o.readyLag, StatusInterval: o.statusInterval,
	}, deps)
	if err != nil {
		return err
	}
	if o.metricsAddr != "" {
		lis, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("listen for metrics on %s: %w", o.metricsAddr, err)
		}
		srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(lis)
		defer srv.Close()
		log.Info("serving metrics and probes", "addr", lis.Addr().String())
	}
	log.Info("starting", "cluster", o.cluster, "node", o.node, "controlplane", p.replicas, "dataplane", o.dataplane)
	return a.Run(ctx)
}

// deviceName is the WireGuard link's name. The embedded device's UAPI socket
// path is shared by every network namespace, so two agents on one machine
// (a lab) need distinct names even for equal cluster and node names.
func (o *options) deviceName() string {
	if o.wireguardDev != "" {
		return o.wireguardDev
	}
	return wireguard.DeviceName(o.cluster, o.node)
}
